//! The command line: one subcommand per thing a person does to a
//! workspace, a workspace named by id or by name.
//! No server contract (C1–C20): the caller's side; it relies on C13 and C20.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use workspace_lifecycle_client::{Error, proto as pb};

/// `wl`: drive the workspace lifecycle control plane.
#[derive(Parser, Debug)]
#[command(
    name = "wl",
    version,
    about = "Drive the workspace lifecycle control plane",
    after_help = "Exit codes: 0 done; 1 other error; 2 usage; 3 the cycle failed; \
                  4 no cycle ran (debounced or stored); 5 not found; \
                  6 refused (invalid, precondition, exists); 7 not authorised; \
                  8 unavailable (server or database)."
)]
pub(crate) struct Cli {
    /// The server.
    #[arg(
        long,
        env = "WL_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub(crate) endpoint: String,
    /// A file holding the bearer token (default: the embedded server's
    /// `.wl-data/admin-token`, unless WL_TOKEN is set).
    #[arg(long, env = "WL_TOKEN_FILE", global = true)]
    pub(crate) token_file: Option<PathBuf>,
    /// How to print: text (a table, live progress on a terminal) or json
    /// (one object per line).
    #[arg(long, short = 'o', value_enum, default_value = "text", global = true)]
    pub(crate) output: Output,
    /// CA certificate (PEM) for an https:// endpoint.
    #[arg(long, global = true)]
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate (PEM), for mTLS.
    #[arg(long, global = true)]
    pub(crate) cert: Option<PathBuf>,
    /// Client key (PEM), for mTLS.
    #[arg(long, global = true)]
    pub(crate) key: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// The token: `--token-file`, else `WL_TOKEN`, else the embedded
    /// server's admin token file.
    pub(crate) fn token(&self) -> Result<String, Error> {
        if self.token_file.is_none() {
            if let Ok(token) = std::env::var("WL_TOKEN") {
                return Ok(token.trim().to_owned());
            }
        }
        let path = self
            .token_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(".wl-data/admin-token"));
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| Error::Config(format!("token file {}: {e}", path.display())))
    }
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// For people.
    Text,
    /// For scripts: one JSON object per line.
    Json,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// List workspaces.
    Ls {
        /// Include deleted workspaces.
        #[arg(long)]
        all: bool,
    },
    /// Show one workspace.
    Get {
        /// Id or name.
        workspace: String,
    },
    /// Create a workspace.
    Create {
        /// Its name.
        name: String,
        /// Where it runs.
        #[arg(long, value_enum, default_value = "process")]
        backend: Backend,
        /// Container image (docker).
        #[arg(long)]
        image: Option<String>,
        /// Plain environment, NAME=VALUE (repeatable).
        #[arg(long, value_parser = env_pair)]
        env: Vec<(String, String)>,
        /// Wait until its first generation is online.
        #[arg(long)]
        follow: bool,
    },
    /// Restart a workspace.
    Restart {
        /// Id or name.
        workspace: String,
        /// Who is asking.
        #[arg(long, value_enum, default_value = "manual")]
        trigger: TriggerArg,
        /// Kept with the cycle.
        #[arg(long, default_value = "wl restart")]
        reason: String,
        /// Follow the cycle to its end.
        #[arg(long, short)]
        follow: bool,
    },
    /// Stop a workspace.
    Stop {
        /// Id or name.
        workspace: String,
        /// Kept with the cycle.
        #[arg(long, default_value = "wl stop")]
        reason: String,
        /// Follow the cycle to its end.
        #[arg(long, short)]
        follow: bool,
    },
    /// Delete a workspace.
    Delete {
        /// Id or name.
        workspace: String,
        /// Kept with the cycle.
        #[arg(long, default_value = "wl delete")]
        reason: String,
        /// Follow the cycle to its end.
        #[arg(long, short)]
        follow: bool,
    },
    /// Set or remove secrets.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Write files.
    #[command(subcommand)]
    File(FileCommand),
    /// Print every change of a workspace as it happens.
    Watch {
        /// Id or name.
        workspace: String,
    },
    /// A workspace's cycles, newest first.
    Cycles {
        /// Id or name.
        workspace: String,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// `wl secret …`.
#[derive(Subcommand, Debug)]
pub(crate) enum SecretCommand {
    /// Set a secret; the value is read from stdin unless --value is given.
    Set {
        /// Id or name.
        workspace: String,
        /// The variable name.
        name: String,
        /// The value (visible in shell history; prefer stdin).
        #[arg(long)]
        value: Option<String>,
    },
    /// Remove a secret.
    Rm {
        /// Id or name.
        workspace: String,
        /// The variable name.
        name: String,
    },
}

/// `wl file …`.
#[derive(Subcommand, Debug)]
pub(crate) enum FileCommand {
    /// Write a file into the workspace.
    Put {
        /// Id or name.
        workspace: String,
        /// Its path in the workspace.
        path: String,
        /// The local file ("-": stdin).
        from: PathBuf,
    },
}

/// A backend kind.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Backend {
    /// A child process of the server.
    Process,
    /// A Docker container.
    Docker,
    /// An EC2 instance.
    Ec2,
}

impl Backend {
    pub(crate) fn proto(self) -> pb::BackendKind {
        match self {
            Self::Process => pb::BackendKind::Process,
            Self::Docker => pb::BackendKind::Docker,
            Self::Ec2 => pb::BackendKind::Ec2,
        }
    }
}

/// A restart trigger.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum TriggerArg {
    /// An operator.
    Manual,
    /// A config change.
    ConfigChanged,
    /// A health probe that cannot reach the workspace.
    HealthProbe,
    /// Drift found by a reconciler.
    Reconciler,
}

impl TriggerArg {
    pub(crate) fn proto(self) -> pb::Trigger {
        match self {
            Self::Manual => pb::Trigger::Manual,
            Self::ConfigChanged => pb::Trigger::ConfigChanged,
            Self::HealthProbe => pb::Trigger::HealthProbe,
            Self::Reconciler => pb::Trigger::Reconciler,
        }
    }
}

fn env_pair(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not NAME=VALUE"))
}

//! The agent that runs inside every workspace: the proof that its
//! generation is really up (C10), and gone once it is stale (C12).
//!
//! It registers with the token of its generation and the config version it
//! booted with, then heartbeats. A cycle is ONLINE only when *its*
//! generation's agent registered (C10), and a token of an older generation
//! is refused (C12), so an agent that outlived its generation exits by
//! itself.

pub mod env;

use std::{collections::BTreeSet, future::Future, path::PathBuf, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use tonic::{Code, transport::Channel};

mod proto {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("workspace.lifecycle.v1");
}

use proto::{HeartbeatRequest, RegisterRequest, workspace_agent_client::WorkspaceAgentClient};

/// Everything the agent needs, read from the environment its backend set.
#[derive(Clone)]
pub struct AgentConfig {
    /// The control plane's gRPC address.
    pub service_url: String,
    /// The generation's bearer token.
    pub token: String,
    /// The workspace this agent serves (its token is valid for no other).
    pub workspace_id: String,
    /// The config version this generation booted with.
    pub config_version: u64,
    /// What the agent reports as its endpoint.
    pub endpoint: String,
    /// Secret names the backend says it injected.
    pub secret_names: Vec<String>,
    /// The directory holding the workspace's files.
    pub files_dir: Option<PathBuf>,
    /// Exit when this process (the launching server) goes away.
    pub parent_pid: Option<i32>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("service_url", &self.service_url)
            .field("token", &"<redacted>")
            .field("config_version", &self.config_version)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Why the agent stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop (SIGTERM/SIGINT).
    Shutdown,
    /// The control plane refused the token: a newer generation replaced
    /// this one, or the workspace was stopped.
    Superseded,
}

/// A failure that ends the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A required variable is missing or malformed.
    #[error("agent configuration: {0}")]
    Config(String),
    /// The control plane could not be reached in time.
    #[error("control plane unreachable: {0}")]
    Unreachable(String),
}

impl AgentConfig {
    /// Reads the variables set by the backend (see [`env`]).
    pub fn from_env() -> Result<Self, AgentError> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| AgentError::Config(format!("{name} is not set")))
        };
        let config_version = var(env::CONFIG_VERSION)?
            .parse()
            .map_err(|_| AgentError::Config(format!("{} is not a number", env::CONFIG_VERSION)))?;
        let secret_names = std::env::var(env::SECRET_NAMES)
            .unwrap_or_default()
            .split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        let parent_pid = match std::env::var(env::PARENT_PID) {
            Ok(pid) => Some(
                pid.parse()
                    .map_err(|_| AgentError::Config(format!("{} is not a pid", env::PARENT_PID)))?,
            ),
            Err(_) => None,
        };
        Ok(Self {
            service_url: var(env::SERVICE_URL)?,
            token: var(env::TOKEN)?,
            workspace_id: var(env::WORKSPACE_ID)?,
            config_version,
            endpoint: std::env::var(env::ENDPOINT)
                .unwrap_or_else(|_| format!("pid:{}", std::process::id())),
            secret_names,
            files_dir: std::env::var_os(env::FILES_DIR).map(PathBuf::from),
            parent_pid,
        })
    }

    /// The secret names actually present in this process's environment.
    fn secrets_seen(&self) -> Vec<String> {
        self.secret_names
            .iter()
            .filter(|name| std::env::var_os(name).is_some())
            .cloned()
            .collect()
    }

    /// The relative paths of every file under the files directory.
    fn files_seen(&self) -> Vec<String> {
        let mut found = BTreeSet::new();
        if let Some(root) = &self.files_dir {
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if let Ok(rel) = path.strip_prefix(root) {
                        found.insert(rel.to_string_lossy().replace('\\', "/"));
                    }
                }
            }
        }
        found.into_iter().collect()
    }
}

/// Registers, then heartbeats until `shutdown` resolves or the control plane
/// refuses the token.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Exit, AgentError> {
    tokio::pin!(shutdown);
    let channel = Channel::from_shared(config.service_url.clone())
        .map_err(|e| AgentError::Config(format!("bad service url: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    let mut client = WorkspaceAgentClient::new(channel);

    let register = RegisterRequest {
        token: config.token.clone(),
        workspace_id: config.workspace_id.clone(),
        config_version: config.config_version,
        endpoint: config.endpoint.clone(),
        secret_names: config.secrets_seen(),
        file_paths: config.files_seen(),
    };
    // The service may be restarting or briefly unreachable: retry with
    // backoff, but never retry a refused token.
    let attempt = || {
        let mut client = client.clone();
        let request = register.clone();
        async move { client.register(request).await }
    };
    let registered = tokio::select! {
        _ = &mut shutdown => return Ok(Exit::Shutdown),
        result = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(60),
            )
            .when(|status| !matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied)) => result,
    };
    let response = match registered {
        Ok(response) => response.into_inner(),
        Err(status)
            if matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ) =>
        {
            return Ok(Exit::Superseded);
        }
        Err(status) => return Err(AgentError::Unreachable(status.message().to_owned())),
    };
    tracing::info!(
        workspace = %response.workspace_id,
        generation = response.generation,
        "registered"
    );

    let every = Duration::from_secs(u64::from(response.heartbeat_interval_seconds.max(1)));
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(Exit::Shutdown),
            _ = ticker.tick() => {}
        }
        let beat = client
            .heartbeat(HeartbeatRequest {
                token: config.token.clone(),
                workspace_id: config.workspace_id.clone(),
            })
            .await;
        match beat {
            Ok(_) => {}
            Err(status) if status.code() == Code::Unauthenticated => return Ok(Exit::Superseded),
            // A missed heartbeat is not fatal: the control plane decides
            // what silence means.
            Err(status) => tracing::warn!(code = ?status.code(), "heartbeat failed"),
        }
    }
}

/// Ties the agent's life to the process that launched it, so a control plane
/// killed with SIGKILL leaves no agent behind.
pub fn die_with_parent(parent_pid: i32) -> Result<(), AgentError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| AgentError::Config(format!("prctl(PR_SET_PDEATHSIG): {e}")))?;
    // The parent may have died before the call above took effect.
    if nix::unistd::getppid().as_raw() != parent_pid {
        return Err(AgentError::Config("launching process already gone".into()));
    }
    Ok(())
}

/// The whole agent program: configuration from the environment, signals, run.
/// Returns the process exit code.
pub async fn main_from_env() -> i32 {
    let config = match AgentConfig::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("workspace-agent: {err}");
            return 2;
        }
    };
    if let Some(parent) = config.parent_pid {
        if let Err(err) = die_with_parent(parent) {
            eprintln!("workspace-agent: {err}");
            return 3;
        }
    }
    match run(config, shutdown_signal()).await {
        Ok(Exit::Shutdown) => 0,
        Ok(Exit::Superseded) => {
            eprintln!("workspace-agent: token refused (generation superseded); exiting");
            0
        }
        Err(err) => {
            eprintln!("workspace-agent: {err}");
            1
        }
    }
}

/// Resolves on SIGTERM, SIGINT or SIGHUP: a closed terminal or a dropped
/// SSH session (SIGHUP) gets the same clean exit as Ctrl-C, where the
/// default action would kill the process mid-cycle and leave its embedded
/// Postgres running.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = hangup.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

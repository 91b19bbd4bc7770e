//! Configuration: command-line flags, each also settable from the
//! environment. Defaults give the embedded setup (a project-local Postgres
//! and the process backend on 127.0.0.1:50051).
//! No lifecycle contract (C1–C20): how the process runs.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::domain::BackendKind;
use crate::telemetry::LogFormat;

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "workspace-lifecycle",
    version,
    about = "The workspace lifecycle control plane"
)]
pub struct Cli {
    /// What to run (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags for `serve` (also accepted without the subcommand).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the control plane (the default).
    Serve,
    /// Run the workspace agent (what the process backend launches); reads
    /// its configuration from `WL_*` variables.
    Agent,
    /// Make a new bearer token: prints the token, then the line to add to
    /// the token file (which holds only its hash).
    NewToken {
        /// reader, operator or admin.
        #[arg(long)]
        role: crate::auth::Role,
        /// The name the audit log records for calls with this token.
        #[arg(long)]
        name: String,
    },
}

fn duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| e.to_string())
}

fn backend(raw: &str) -> Result<BackendKind, String> {
    raw.parse()
}

/// Flags for serving.
#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "WL_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Postgres URL. Without it, the server initialises and starts a
    /// project-local Postgres under --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Directory for the embedded Postgres and the process backend's state.
    #[arg(long, env = "WL_DATA_DIR", default_value = ".wl-data")]
    pub data_dir: PathBuf,

    /// The URL agents use to reach this server (default: http://<listen>).
    #[arg(long, env = "WL_AGENT_URL")]
    pub agent_url: Option<String>,

    /// Backends to enable, comma-separated: process, docker, ec2.
    #[arg(long, env = "WL_BACKENDS", value_delimiter = ',', default_value = "process", value_parser = backend)]
    pub backends: Vec<BackendKind>,

    /// The image Docker workspaces run when their spec names none (built by
    /// `scripts/build-agent-image`).
    #[arg(
        long,
        env = "WL_DOCKER_IMAGE",
        default_value = "workspace-agent:latest"
    )]
    pub docker_image: String,

    /// Docker network mode for workspace containers (`host` lets agents
    /// reach a control plane on 127.0.0.1). Default: the engine's default.
    #[arg(long, env = "WL_DOCKER_NETWORK")]
    pub docker_network: Option<String>,

    /// Append a record of every process-backend start and stop (begin and
    /// end time, generation, config version, server pid) to this file,
    /// shared by every server on the machine.
    #[arg(long, env = "WL_PROCESS_JOURNAL")]
    pub process_journal: Option<PathBuf>,

    /// The user process-backend agents run as. Default: `nobody` when the
    /// server runs as root, else the server's own user. The server checks
    /// at startup that this user can reach --data-dir and run the agent.
    #[arg(long, env = "WL_PROCESS_RUN_AS")]
    pub process_run_as: Option<String>,

    /// Stopped generation directories (with their agent logs) the process
    /// backend keeps per workspace.
    #[arg(long, env = "WL_PROCESS_KEEP_GENERATIONS", default_value_t = 3)]
    pub process_keep_generations: usize,

    /// How long a Docker container created but not yet running counts as
    /// booting; past it, it is failed.
    #[arg(long, env = "WL_DOCKER_BOOT_WINDOW", default_value = "120s", value_parser = duration)]
    pub docker_boot_window: Duration,

    /// EC2-compatible endpoint (moto, LocalStack…); default: AWS's, or
    /// the standard chain's AWS_ENDPOINT_URL. Credentials always come from
    /// the standard AWS chain (environment, profile, instance role).
    #[arg(long, env = "WL_EC2_ENDPOINT")]
    pub ec2_endpoint: Option<String>,

    /// EC2 region; default: the standard chain's (AWS_REGION, profile).
    #[arg(long, env = "WL_EC2_REGION")]
    pub ec2_region: Option<String>,

    /// The AMI EC2 workspaces boot when their spec names none; it must
    /// carry the agent at /usr/local/bin/workspace-agent.
    #[arg(long, env = "WL_EC2_AMI", default_value = "")]
    pub ec2_ami: String,

    /// Instance type when a spec names none.
    #[arg(long, env = "WL_EC2_INSTANCE_TYPE", default_value = "t3.micro")]
    pub ec2_instance_type: String,

    /// Subnet EC2 workspaces launch into; default: the account's default.
    #[arg(long, env = "WL_EC2_SUBNET")]
    pub ec2_subnet: Option<String>,

    /// Security groups for EC2 workspaces, comma-separated.
    #[arg(long, env = "WL_EC2_SECURITY_GROUPS", value_delimiter = ',')]
    pub ec2_security_groups: Vec<String>,

    /// After a cycle starts, probe and reconciler triggers are dropped and
    /// config changes deferred for this long.
    #[arg(long, env = "WL_DEBOUNCE_WINDOW", default_value = "60s", value_parser = duration)]
    pub debounce_window: Duration,

    /// A file-write burst ends after this long without a write.
    #[arg(long, env = "WL_BURST_QUIET", default_value = "5s", value_parser = duration)]
    pub burst_quiet: Duration,

    /// A burst holds its cycle back at most this long after its first write.
    #[arg(long, env = "WL_BURST_MAX_WAIT", default_value = "60s", value_parser = duration)]
    pub burst_max_wait: Duration,

    /// A cycle not ONLINE by then fails — counted from its first start,
    /// across takeovers — and its instance is removed.
    #[arg(long, env = "WL_PROVISION_DEADLINE", default_value = "120s", value_parser = duration)]
    pub provision_deadline: Duration,

    /// Ended cycles, superseded generations and deleted workspaces older
    /// than this are pruned (audit rows are kept; see the README).
    #[arg(long, env = "WL_HISTORY_RETENTION", default_value = "7days", value_parser = duration)]
    pub history_retention: Duration,

    /// A cycle taken over more often than this (each runner died with it)
    /// is failed and cleaned up rather than run again.
    #[arg(long, env = "WL_MAX_TAKEOVERS", default_value_t = 3)]
    pub max_takeovers: u32,

    /// How long a replica may stay silent before its cycles are taken over.
    #[arg(long, env = "WL_LEASE_TTL", default_value = "15s", value_parser = duration)]
    pub lease_ttl: Duration,

    /// How often the scheduler looks for due work it was not told about.
    #[arg(long, env = "WL_SWEEP_INTERVAL", default_value = "1s", value_parser = duration)]
    pub sweep_interval: Duration,

    /// How often the reconciler checks serving workspaces against their
    /// backends (a vanished or crashed instance gets a RECONCILER cycle).
    #[arg(long, env = "WL_RECONCILE_INTERVAL", default_value = "10s", value_parser = duration)]
    pub reconcile_interval: Duration,

    /// How often agents heartbeat.
    #[arg(long, env = "WL_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = duration)]
    pub heartbeat_interval: Duration,

    /// How long a stopped process gets between SIGTERM and SIGKILL.
    #[arg(long, env = "WL_STOP_GRACE", default_value = "10s", value_parser = duration)]
    pub stop_grace: Duration,

    /// How long shutdown waits for running cycles.
    #[arg(long, env = "WL_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// Most Postgres connections this server opens.
    #[arg(long, env = "WL_DB_CONNECTIONS", default_value_t = 32)]
    pub db_connections: usize,

    /// The agent program the process backend runs (default: this binary's
    /// `agent` subcommand).
    #[arg(long, env = "WL_AGENT_COMMAND", value_delimiter = ' ')]
    pub agent_command: Option<Vec<String>>,

    /// Log format.
    #[arg(long, env = "WL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics (`GET /metrics`) on this address (off when
    /// unset). Traces and OTLP metrics are configured by the standard
    /// `OTEL_*` variables instead.
    #[arg(long, env = "WL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// File of accepted bearer tokens, one `role:name:sha256-hex` per line
    /// (role: reader, operator or admin; the SHA-256 of the token, never the
    /// token). Without it and without --auth-tokens, the server creates an
    /// admin token in <data-dir>/admin-token (mode 0600) on first start.
    #[arg(long, env = "WL_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// Accepted bearer tokens inline, as in --auth-tokens-file, separated
    /// by commas or newlines.
    #[arg(long, env = "WL_AUTH_TOKENS", hide_env_values = true)]
    pub auth_tokens: Option<String>,

    /// File holding the 32-byte key that seals secrets at rest (64 hex
    /// digits or base64). Without it and without WL_SECRETS_KEY, the server
    /// creates one in <data-dir>/secrets-key (mode 0600) on first start.
    /// Every replica on one database needs the same key.
    #[arg(long, env = "WL_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,

    /// The secrets key itself (as in --secrets-key-file); prefer the file.
    #[arg(long, env = "WL_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<String>,

    /// PEM certificate chain: serve TLS (rustls) with it and --tls-key.
    #[arg(long, env = "WL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "WL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: with TLS, require a client certificate signed
    /// by one of them (mTLS).
    #[arg(long, env = "WL_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Largest request message accepted, in bytes (larger: OUT_OF_RANGE).
    #[arg(long, env = "WL_MAX_MESSAGE_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Most calls one caller (token) may have in flight, server streams
    /// included; one more is answered RESOURCE_EXHAUSTED.
    #[arg(long, env = "WL_MAX_CALLS_PER_CALLER", default_value_t = 64)]
    pub max_calls_per_caller: usize,

    /// Most public calls (health, reflection) in flight, from everyone
    /// together; one more is answered RESOURCE_EXHAUSTED.
    #[arg(long, env = "WL_MAX_PUBLIC_CALLS", default_value_t = 256)]
    pub max_public_calls: usize,

    /// Most agent calls (Register, Heartbeat) in flight, from everyone
    /// together — anyone can make them, so they are kept well below the
    /// database pool; one more is answered RESOURCE_EXHAUSTED (agents
    /// retry).
    #[arg(long, env = "WL_MAX_AGENT_CALLS", default_value_t = 16)]
    pub max_agent_calls: usize,

    /// Most TCP connections open at once (lowered to fit the open-file
    /// limit); one more is closed at once.
    #[arg(long, env = "WL_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Most concurrent calls (HTTP/2 streams) on one connection; a stream
    /// beyond it is refused.
    #[arg(long, env = "WL_MAX_CONCURRENT_STREAMS", default_value_t = 100)]
    pub max_concurrent_streams: u32,

    /// A connection that has made no call this long after it was accepted
    /// (TLS handshake and HTTP/2 preface included) is closed.
    #[arg(long, env = "WL_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub handshake_timeout: Duration,

    /// A connection without an open call for this long is closed.
    #[arg(long, env = "WL_IDLE_TIMEOUT", default_value = "5m", value_parser = duration)]
    pub idle_timeout: Duration,

    /// How often the server pings each connection (HTTP/2 PING).
    #[arg(long, env = "WL_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = duration)]
    pub keepalive_interval: Duration,

    /// A connection whose ping is not answered within this is closed.
    #[arg(long, env = "WL_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub keepalive_timeout: Duration,

    /// How often refused calls (UNAUTHENTICATED, PERMISSION_DENIED) are
    /// written to the audit log, one row per (method, code, caller or
    /// peer) with a count.
    #[arg(long, env = "WL_AUDIT_FLUSH_INTERVAL", default_value = "10s", value_parser = duration)]
    pub audit_flush_interval: Duration,

    /// How often the health checker pings Postgres; `grpc.health.v1`
    /// answers NOT_SERVING while the ping fails.
    #[arg(long, env = "WL_HEALTH_CHECK_INTERVAL", default_value = "500ms", value_parser = duration)]
    pub health_check_interval: Duration,

    /// How long SIGTERM keeps the listener open answering NOT_SERVING
    /// before it stops accepting, so load balancers move traffic away
    /// first.
    #[arg(long, env = "WL_DRAIN_DELAY", default_value = "1s", value_parser = duration)]
    pub drain_delay: Duration,

    /// How long a mutation's `request_id` is remembered: a repeat within
    /// it gets the first answer and changes nothing (AIP-155).
    #[arg(long, env = "WL_REQUEST_ID_RETENTION", default_value = "24h", value_parser = duration)]
    pub request_id_retention: Duration,
}

impl fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The database URL may carry a password.
        f.debug_struct("ServeArgs")
            .field("listen", &self.listen)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field("data_dir", &self.data_dir)
            .field("backends", &self.backends)
            .field("debounce_window", &self.debounce_window)
            .field("provision_deadline", &self.provision_deadline)
            .field("max_takeovers", &self.max_takeovers)
            .field("history_retention", &self.history_retention)
            .field("auth_tokens_file", &self.auth_tokens_file)
            .field("secrets_key_file", &self.secrets_key_file)
            .field(
                "secrets_key",
                &self.secrets_key.as_ref().map(|_| "<redacted>"),
            )
            .field("tls_cert", &self.tls_cert)
            .field("tls_client_ca", &self.tls_client_ca)
            .finish_non_exhaustive()
    }
}

impl ServeArgs {
    /// The defaults, as if no flag were given (tests start from these).
    pub fn defaults() -> Self {
        Cli::parse_from(["workspace-lifecycle"]).serve
    }
}

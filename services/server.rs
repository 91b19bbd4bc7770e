//! Assembling and serving the control plane: database, backends, engine,
//! gRPC services, health and reflection, graceful shutdown — and the
//! limits every connection and call is served under (`transport`,
//! `auth::limit`), so no peer, authenticated or not, can take the server
//! from the others.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use workspace_backends::{
    docker::{DockerBackend, DockerConfig},
    ec2::{Ec2Backend, Ec2Config},
    process::{ProcessBackend, ProcessConfig},
};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::domain::Error;
use crate::{
    auth::{
        AuthLayer, Tokens, TokensError, limit::CallerLimitLayer, load_or_create_admin_token,
        refusals::Refusals,
    },
    config::ServeArgs,
    domain::{BackendKind, ReplicaId},
    domain::{
        clock::{DatabaseClock, SharedClock},
        ledger::Timing,
    },
    embedded_pg::{self, EmbeddedPostgres},
    engine::{Engine, EngineConfig, backends::Backends, cycle::CycleSettings},
    grpc::{AgentService, LifecycleService},
    health::{Health, HealthGrpc},
    proto::{
        self, workspace_agent_server::WorkspaceAgentServer,
        workspace_lifecycle_server::WorkspaceLifecycleServer,
    },
    store::{SecretsKey, Store, StoreConfig, sealing::KeyError},
    telemetry::{caller::CallerContextLayer, prometheus_endpoint},
    transport::{self, TrackCallsLayer},
};

pub use crate::transport::raise_fd_limit;

/// A failure to start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The embedded database could not be provided.
    #[error(transparent)]
    Embedded(#[from] crate::embedded_pg::EmbeddedError),
    /// The engine or store could not start.
    #[error(transparent)]
    Engine(#[from] Error),
    /// A backend could not start.
    #[error(transparent)]
    Backend(#[from] workspace_backends::BackendError),
    /// The listen address could not be bound.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    /// The bearer tokens could not be read.
    #[error(transparent)]
    Tokens(#[from] TokensError),
    /// The secrets key could not be read.
    #[error(transparent)]
    SecretsKey(#[from] KeyError),
    /// The TLS files could not be used.
    #[error("TLS: {0}")]
    Tls(String),
}

/// How calls are guarded: who may call, over what, and how much.
#[derive(Clone, Debug)]
pub struct Guarding {
    /// Accepted bearer tokens.
    pub tokens: Arc<Tokens>,
    /// TLS (and mTLS) settings; `None` serves plain HTTP/2.
    pub tls: Option<ServerTlsConfig>,
    /// Largest request message.
    pub max_message_bytes: usize,
    /// Most calls in flight per caller.
    pub max_calls_per_caller: usize,
    /// Most public calls in flight, from everyone together.
    pub max_public_calls: usize,
    /// Most agent calls in flight, from everyone together.
    pub max_agent_calls: usize,
    /// Connections, streams and timeouts.
    pub transport: transport::Limits,
    /// Where refused calls are counted for the audit log.
    pub refusals: Arc<Refusals>,
}

/// The accepted tokens from the flags: the token file and inline entries,
/// or else the embedded default admin token under the data directory.
pub fn tokens(args: &ServeArgs) -> Result<Tokens, ServeError> {
    let mut tokens = Tokens::default();
    if let Some(path) = &args.auth_tokens_file {
        tokens = tokens.merge(Tokens::from_file(path)?);
    }
    if let Some(inline) = &args.auth_tokens {
        tokens = tokens.merge(Tokens::parse(inline)?);
    }
    if args.auth_tokens_file.is_none() && args.auth_tokens.is_none() {
        let (path, admin) = load_or_create_admin_token(&args.data_dir)?;
        tracing::info!(path = %path.display(), "no token file configured; the admin token is in this file");
        return Ok(admin);
    }
    if tokens.is_empty() {
        tracing::warn!(
            "the token configuration accepts no token: every call except health and reflection is refused"
        );
    }
    Ok(tokens)
}

/// The secrets key from the flags, or else the embedded default under the
/// data directory.
pub fn secrets_key(args: &ServeArgs) -> Result<SecretsKey, ServeError> {
    if let Some(text) = &args.secrets_key {
        return Ok(SecretsKey::from_text(text)?);
    }
    if let Some(path) = &args.secrets_key_file {
        return Ok(SecretsKey::from_file(path)?);
    }
    let (path, key) = SecretsKey::load_or_create(&args.data_dir)?;
    tracing::info!(path = %path.display(), "no secrets key configured; using the key in this file");
    Ok(key)
}

/// The TLS settings from the flags (`None`: plain HTTP/2).
pub fn tls(args: &ServeArgs) -> Result<Option<ServerTlsConfig>, ServeError> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    // Two rustls providers are linked (ring for tonic, aws-lc-rs for the AWS
    // SDK), so rustls cannot pick one itself: choose ring for the process.
    // An error only says one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|e| ServeError::Tls(format!("{}: {e}", path.display())))
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &args.tls_client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
}

/// The guarding the flags ask for.
pub fn guarding(args: &ServeArgs) -> Result<Guarding, ServeError> {
    Ok(Guarding {
        tokens: Arc::new(tokens(args)?),
        tls: tls(args)?,
        max_message_bytes: args.max_message_bytes,
        max_calls_per_caller: args.max_calls_per_caller,
        max_public_calls: args.max_public_calls,
        max_agent_calls: args.max_agent_calls,
        transport: transport::Limits {
            max_connections: transport::effective_max_connections(args.max_connections),
            max_concurrent_streams: args.max_concurrent_streams,
            handshake_timeout: args.handshake_timeout,
            idle_timeout: args.idle_timeout,
            keepalive_interval: args.keepalive_interval,
            keepalive_timeout: args.keepalive_timeout,
        },
        refusals: Refusals::new(),
    })
}

/// Everything a server needs besides its flags (tests inject their own).
#[derive(Default)]
pub struct Parts {
    /// The clock (tests use a manual one); by default the database's (C19).
    pub clock: Option<SharedClock>,
    /// Extra or replacement backends (tests inject fakes).
    pub backends: Vec<Arc<dyn workspace_backends::Backend>>,
}

/// A server that is up.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it serves Prometheus metrics, if asked to.
    pub metrics_addr: Option<SocketAddr>,
    /// Its engine.
    pub engine: Arc<Engine>,
    /// What `grpc.health.v1` answers; shutdown turns it NOT_SERVING first.
    pub health: Health,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    shutdown_grace: Duration,
    drain_delay: Duration,
    /// The refused-call counter's flusher (ends after a last flush).
    audit: tokio::task::JoinHandle<()>,
    embedded: Option<embedded_pg::Owned>,
}

impl RunningServer {
    /// Stops accepting, drains running cycles (up to the grace period), and
    /// returns. It never touches an instance: process-backend agents end
    /// with the server process that launched them.
    ///
    /// Health says NOT_SERVING first, and the listener stays open for the
    /// drain delay, so load balancers stop sending calls before the port
    /// closes.
    pub async fn shutdown(self) {
        self.health.drain().await;
        tokio::time::sleep(self.drain_delay).await;
        self.engine.close_streams();
        self.health.close();
        self.stop.cancel();
        let mut served = self.served;
        if tokio::time::timeout(Duration::from_secs(10), &mut served)
            .await
            .is_err()
        {
            tracing::warn!("connections did not drain in time; closing them");
            served.abort();
        }
        self.engine.shutdown(self.shutdown_grace).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.audit).await;
        drop(self.engine);
        // Stop the embedded Postgres if this server started it (one that was
        // already running belongs to someone else).
        if let Some(pg) = self.embedded {
            if let Err(err) = pg.stop().await {
                tracing::warn!(%err, "could not stop the embedded Postgres");
            }
        }
    }

    /// Stops serving without draining (what a crash looks like to peers,
    /// minus the dead process).
    pub fn abort(self) {
        self.health.close();
        self.served.abort();
        self.stop.cancel();
    }
}

/// The engine's timing from the flags.
pub fn timing(args: &ServeArgs) -> Timing {
    Timing {
        debounce_window: args.debounce_window,
        burst_quiet: args.burst_quiet,
        burst_max_wait: args.burst_max_wait,
        lease_ttl: args.lease_ttl,
    }
}

/// Starts a server: database (embedded if no URL), migrations, backends,
/// engine, and gRPC on `args.listen` (bound last, so a caller that can
/// connect is served). An embedded Postgres started here is stopped again
/// on any later failure — a port in use included — since dropping
/// [`embedded_pg::Owned`] stops it, and so when this future is dropped
/// half-way.
pub async fn start(args: &ServeArgs, parts: Parts) -> Result<RunningServer, ServeError> {
    let guarding = guarding(args)?;
    let secrets_key = secrets_key(args)?;
    let (url, embedded) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let pg = EmbeddedPostgres::ensure(&args.data_dir).await?;
            tracing::info!(port = pg.port(), "using the embedded Postgres");
            (pg.url(), Some(embedded_pg::Owned::new(pg)))
        }
    };
    let (clock, database_clock): (SharedClock, _) = match parts.clock {
        Some(clock) => (clock, None),
        None => {
            let clock = DatabaseClock::new();
            (Arc::new(clock.clone()), Some(clock))
        }
    };
    let store = Store::connect(
        &StoreConfig {
            url,
            max_connections: args.db_connections,
            acquire_timeout: Duration::from_secs(5),
            secrets_key,
        },
        ReplicaId::new(),
        timing(args),
        clock.clone(),
    )
    .await?;
    if let Some(database_clock) = &database_clock {
        store.sync_clock(database_clock).await?;
    }
    store.migrate().await?;

    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let agent_url = args
        .agent_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));

    let mut backends = enabled_backends(args).await?;
    for backend in parts.backends {
        backends = backends.with(backend);
    }

    let engine = Engine::start(
        store,
        backends,
        clock,
        EngineConfig {
            cycle: CycleSettings {
                provision_deadline: args.provision_deadline,
                agent_poll: Duration::from_secs(1),
                lease_renewal: args.lease_ttl / 3,
                max_takeovers: args.max_takeovers,
                agent_service_url: agent_url,
            },
            sweep_interval: args.sweep_interval,
            reconcile_interval: args.reconcile_interval,
            history_retention: args.history_retention,
        },
    )
    .await?;

    let stop = CancellationToken::new();
    if let Some(database_clock) = database_clock {
        tokio::spawn(
            engine
                .store()
                .clone()
                .keep_clock_synced(database_clock, stop.clone()),
        );
    }
    let metrics_addr = match args.metrics_listen {
        Some(addr) => {
            let bound = prometheus_endpoint::serve(addr, stop.clone()).await?;
            tracing::info!(addr = %bound, "serving Prometheus metrics on /metrics");
            Some(bound)
        }
        None => None,
    };
    let audit = tokio::spawn(guarding.refusals.clone().flush_every(
        engine.store().clone(),
        args.audit_flush_interval,
        stop.clone(),
    ));
    let (health, health_grpc) = Health::new().await;
    health.check_database(engine.store(), args.health_check_interval, stop.clone());
    // Expired request ids go in the background, a few times per retention
    // period (a claim treats an expired row as absent meanwhile).
    engine.store().prune_request_ids_every(
        args.request_id_retention,
        (args.request_id_retention / 8).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        stop.clone(),
    );
    let served = tokio::spawn(serve(
        listener,
        engine.clone(),
        health_grpc,
        args.request_id_retention,
        guarding,
        args.heartbeat_interval,
        stop.clone().cancelled_owned(),
    ));
    tracing::info!(%addr, "serving");
    Ok(RunningServer {
        addr,
        metrics_addr,
        engine,
        health,
        stop,
        served,
        shutdown_grace: args.shutdown_grace,
        drain_delay: args.drain_delay,
        audit,
        embedded,
    })
}

/// The backends `args` enables.
async fn enabled_backends(args: &ServeArgs) -> Result<Backends, ServeError> {
    let mut backends = Backends::new();
    for kind in &args.backends {
        match kind {
            BackendKind::Process => {
                let agent_command = match &args.agent_command {
                    Some(command) if !command.is_empty() => command.clone(),
                    _ => vec![
                        std::env::current_exe()?.to_string_lossy().into_owned(),
                        "agent".into(),
                    ],
                };
                let backend = ProcessBackend::new(ProcessConfig {
                    root: std::path::absolute(args.data_dir.join("process"))?,
                    agent_command,
                    stop_grace: args.stop_grace,
                    journal: args.process_journal.clone(),
                    run_as: args.process_run_as.clone(),
                    keep_generations: args.process_keep_generations,
                })
                .await?;
                backends = backends.with(Arc::new(backend));
            }
            BackendKind::Docker => {
                let backend = DockerBackend::connect(DockerConfig {
                    default_image: args.docker_image.clone(),
                    network_mode: args.docker_network.clone(),
                    stop_grace: args.stop_grace,
                    boot_window: args.docker_boot_window,
                })
                .await?;
                backends = backends.with(Arc::new(backend));
            }
            BackendKind::Ec2 => {
                let backend = Ec2Backend::connect(Ec2Config {
                    endpoint_url: args.ec2_endpoint.clone(),
                    region: args.ec2_region.clone(),
                    default_ami: args.ec2_ami.clone(),
                    default_instance_type: args.ec2_instance_type.clone(),
                    subnet_id: args.ec2_subnet.clone(),
                    security_group_ids: args.ec2_security_groups.clone(),
                    ..Ec2Config::default()
                })
                .await?;
                backends = backends.with(Arc::new(backend));
            }
        }
    }
    Ok(backends)
}

/// Serves the gRPC API, `health` and reflection on `listener` until
/// `shutdown` resolves: connections under `guarding.transport`, every call
/// through authentication (refusals counted for the audit log) and the
/// in-flight limits.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    health: HealthGrpc,
    request_id_retention: Duration,
    guarding: Guarding,
    heartbeat: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    // grpcurl 1.8 asks reflection v1alpha, newer clients v1: serve both.
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // So grpcurl can print the google.rpc error details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("descriptor sets are valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("descriptor sets are valid");

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = guarding.tls {
        builder = builder.tls_config(tls)?;
    }
    let limits = guarding.transport;
    builder = builder
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout));
    let limit = guarding.max_message_bytes;
    builder
        .layer(TrackCallsLayer)
        .layer(CallerContextLayer)
        .layer(AuthLayer::new(guarding.tokens).recording(guarding.refusals))
        .layer(
            CallerLimitLayer::new(guarding.max_calls_per_caller)
                .anonymous(guarding.max_public_calls, guarding.max_agent_calls),
        )
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            WorkspaceLifecycleServer::new(LifecycleService::new(
                engine.clone(),
                request_id_retention,
            ))
            .max_decoding_message_size(limit),
        )
        .add_service(
            WorkspaceAgentServer::new(AgentService::new(engine, heartbeat))
                .max_decoding_message_size(limit),
        )
        .serve_with_incoming_shutdown(transport::incoming(listener, limits), shutdown)
        .await
}

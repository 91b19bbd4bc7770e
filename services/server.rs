//! Assembling and serving the control plane: database, backends, engine,
//! gRPC services, health and reflection, and graceful shutdown; the
//! engine runs on the database's clock unless a test injects one (C19).
//!
//! How calls are guarded (tokens, TLS, limits) is in `guarding`; which
//! backends run, in `enabled_backends`.

mod enabled_backends;
mod guarding;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::domain::Error;
use crate::{
    auth::{AuthLayer, TokensError, limit::CallerLimitLayer},
    config::ServeArgs,
    domain::{
        ReplicaId,
        clock::{DatabaseClock, SharedClock},
        ledger::Timing,
    },
    embedded_pg::{self, EmbeddedPostgres},
    engine::{Engine, EngineConfig, cycle::CycleSettings},
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
use enabled_backends::enabled_backends;
pub use guarding::{Guarding, guarding, tls, tokens};

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
    tokio::spawn(guarding::reload_tokens_on_change(
        args.clone(),
        guarding.tokens.clone(),
        stop.clone(),
    ));
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
        .layer(AuthLayer::live(guarding.tokens).recording(guarding.refusals))
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

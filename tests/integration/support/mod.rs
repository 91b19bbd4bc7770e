//! What every integration test stands on: a server on port 0 in this
//! process over a fresh database, a fake (counting) or real backend, a
//! manual clock for debounce windows, and bounded waits driven by events.
//! The pieces the benchmarks share too (fresh databases, the fakes, server
//! processes, polling waits) are the `test-support` crate's, re-exported
//! here under the names the suites use.

pub mod moto;
pub mod otlp;
pub mod pg_proxy;

use std::{net::SocketAddr, sync::Arc, time::Duration};

pub use test_support::{
    WAIT, agent_reachable_tempdir, bounded, counted, db,
    db::TestDb,
    fake_backend,
    fake_backend::{AgentMode, FakeBackend},
    free_port, server_binary, server_process, workspace,
};

use futures::StreamExt;
use tonic::Streaming;
use workspace_backends::{
    Backend, BackendKind,
    docker::{DockerBackend, DockerConfig},
};
use workspace_lifecycle::{
    auth::{
        Role,
        client::{LifecycleClient, lifecycle_client},
        entry,
    },
    config::ServeArgs,
    domain::{WorkspaceId, clock::ManualClock},
    engine::Engine,
    proto::{self as pb, workspace_lifecycle_client::WorkspaceLifecycleClient},
    server::{self, Parts, RunningServer},
    store::SecretsKey,
};

/// How a test server is set up.
#[derive(Clone)]
pub struct Options {
    pub window: Duration,
    pub burst_quiet: Duration,
    pub burst_max_wait: Duration,
    pub deadline: Duration,
    pub lease_ttl: Duration,
    /// Which backend serves PROCESS workspaces (or DOCKER ones).
    pub backend: BackendChoice,
    /// Use the wall clock instead of a manual one.
    pub wall_clock: bool,
    /// A backend built by the test (EC2 on moto or on scripted responses);
    /// overrides `backend`.
    pub given: Option<Arc<dyn Backend>>,
    /// Servers on the same database, clock and backend; `client()` spreads
    /// calls over all of them.
    pub replicas: usize,
    /// Most calls in flight per caller (tests storm with one token).
    pub max_calls_per_caller: usize,
    /// Last word on the server's flags (TLS tests set certificates).
    pub configure: Option<Configure>,
}

impl Options {
    /// The defaults, with the server on the database `url` (a proxy in
    /// front of the test database, say).
    pub fn on_database(url: String) -> Self {
        Self {
            configure: Some(Arc::new(move |args| {
                args.database_url = Some(url.clone());
            })),
            ..Self::default()
        }
    }
}

/// A last change to a test server's flags.
pub type Configure = Arc<dyn Fn(&mut ServeArgs) + Send + Sync>;

/// The bearer tokens every test server accepts, one per role.
pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const OPERATOR_TOKEN: &str = "test-operator-token";
pub const READER_TOKEN: &str = "test-reader-token";

/// The token-file entries for the test tokens.
pub fn test_token_entries() -> String {
    [
        entry(Role::Admin, "test-admin", ADMIN_TOKEN),
        entry(Role::Operator, "test-operator", OPERATOR_TOKEN),
        entry(Role::Reader, "test-reader", READER_TOKEN),
    ]
    .join("\n")
}

/// The secrets key of every test server (tests read the secrets table).
pub const SECRETS_KEY_HEX: &str =
    "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";

impl Default for Options {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            burst_quiet: Duration::from_secs(5),
            burst_max_wait: Duration::from_secs(60),
            deadline: Duration::from_secs(20),
            // Leases never expire on the manual clock unless a test wants it.
            lease_ttl: Duration::from_secs(3600),
            backend: BackendChoice::Fake,
            wall_clock: false,
            given: None,
            replicas: 1,
            max_calls_per_caller: 10_000,
            configure: None,
        }
    }
}

/// The backend a test server runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// The counting fake (kind PROCESS).
    Fake,
    /// The real process backend with the real agent binary.
    Process,
    /// The real Docker Engine (host networking, the project's agent image),
    /// counted.
    Docker,
}

/// The image the Docker tests run (`scripts/build-agent-image` builds it).
pub const AGENT_IMAGE: &str = "workspace-agent:latest";

/// A server on a fresh database.
pub struct TestServer {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    /// A client with the admin token.
    pub client: LifecycleClient,
    pub backend: Arc<FakeBackend>,
    /// The counted Docker backend, when the test runs on Docker.
    pub docker: Option<Arc<counted::Counted<DockerBackend>>>,
    /// The kind of workspace `create` asks for.
    pub kind: BackendKind,
    pub clock: ManualClock,
    pub db: Arc<TestDb>,
    pub data_dir: Arc<tempfile::TempDir>,
    running: Option<RunningServer>,
    /// The other replicas (see `Options::replicas`).
    peers: Vec<TestServer>,
    /// Picks the replica of the next `client()`.
    next_client: Arc<std::sync::atomic::AtomicUsize>,
}

impl TestServer {
    pub async fn start(options: Options) -> Self {
        let db = Arc::new(TestDb::create().await);
        let data_dir = Arc::new(agent_reachable_tempdir());
        let clock = ManualClock::new(chrono::Utc::now());
        let backend = FakeBackend::new(BackendKind::Process);
        let mut first = Self::start_on(db, data_dir, clock, backend, options.clone()).await;
        for _ in 1..options.replicas {
            let peer = first.replica(options.clone()).await;
            first.peers.push(peer);
        }
        first
    }

    /// Another server (replica) on the same database, clock and backend.
    pub async fn replica(&self, options: Options) -> Self {
        Self::start_on(
            self.db.clone(),
            self.data_dir.clone(),
            self.clock.clone(),
            self.backend.clone(),
            options,
        )
        .await
    }

    async fn start_on(
        db: Arc<TestDb>,
        data_dir: Arc<tempfile::TempDir>,
        clock: ManualClock,
        backend: Arc<FakeBackend>,
        options: Options,
    ) -> Self {
        let mut args = ServeArgs::defaults();
        args.listen = "127.0.0.1:0".parse().unwrap();
        args.database_url = Some(db.url.clone());
        args.data_dir = data_dir.path().to_path_buf();
        args.debounce_window = options.window;
        args.burst_quiet = options.burst_quiet;
        args.burst_max_wait = options.burst_max_wait;
        args.provision_deadline = options.deadline;
        args.lease_ttl = options.lease_ttl;
        args.sweep_interval = Duration::from_millis(200);
        args.reconcile_interval = Duration::from_millis(200);
        args.stop_grace = Duration::from_secs(2);
        args.shutdown_grace = Duration::from_secs(5);
        // In-process servers need no time for a load balancer to notice.
        args.drain_delay = Duration::ZERO;
        args.heartbeat_interval = Duration::from_secs(1);
        args.db_connections = 16;
        args.auth_tokens = Some(test_token_entries());
        args.secrets_key = Some(SECRETS_KEY_HEX.into());
        args.max_calls_per_caller = options.max_calls_per_caller;
        let mut parts = Parts::default();
        if !options.wall_clock {
            parts.clock = Some(Arc::new(clock.clone()));
        }
        let mut docker = None;
        let mut kind = BackendKind::Process;
        match options.backend {
            BackendChoice::Process => {
                args.backends = vec![BackendKind::Process];
                args.agent_command = Some(vec![server_binary(), "agent".into()]);
            }
            BackendChoice::Fake => {
                args.backends = vec![];
                parts.backends = vec![backend.clone()];
            }
            BackendChoice::Docker => {
                args.backends = vec![];
                let real = DockerBackend::connect(DockerConfig {
                    default_image: AGENT_IMAGE.into(),
                    network_mode: Some("host".into()),
                    stop_grace: Duration::from_secs(2),
                    ..DockerConfig::default()
                })
                .await
                .expect("the Docker tests need a Docker Engine");
                let counted = counted::Counted::new(real);
                parts.backends = vec![counted.clone()];
                docker = Some(counted);
                kind = BackendKind::Docker;
            }
        }
        if let Some(given) = &options.given {
            args.backends = vec![];
            kind = given.kind();
            parts.backends = vec![given.clone()];
        }
        if let Some(configure) = &options.configure {
            configure(&mut args);
        }
        let running = server::start(&args, parts).await.expect("server starts");
        let addr = running.addr;
        // Lazy: a TLS server is driven by grpcurl, not this client.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let client = lifecycle_client(channel, ADMIN_TOKEN).unwrap();
        Self {
            addr,
            engine: running.engine.clone(),
            client,
            backend,
            docker,
            kind,
            clock,
            db,
            data_dir,
            running: Some(running),
            peers: Vec::new(),
            next_client: Arc::default(),
        }
    }

    /// A client of this server sending `token`.
    pub async fn client_with(&self, token: &str) -> LifecycleClient {
        lifecycle_client(self.channel().await, token).unwrap()
    }

    /// The client crate's client of this server, with the admin token.
    pub async fn typed_client(&self) -> workspace_lifecycle_client::Client {
        workspace_lifecycle_client::Client::connect(format!("http://{}", self.addr), ADMIN_TOKEN)
            .await
            .unwrap()
    }

    /// A client of this server that sends no token.
    pub async fn anonymous_client(&self) -> WorkspaceLifecycleClient<tonic::transport::Channel> {
        WorkspaceLifecycleClient::new(self.channel().await)
    }

    /// A fresh connection to this server.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// The secrets key the test servers seal with.
    pub fn secrets_key() -> SecretsKey {
        SecretsKey::from_text(SECRETS_KEY_HEX).unwrap()
    }

    /// A client of this server or, with replicas, of each in turn.
    pub fn client(&self) -> LifecycleClient {
        let n = self
            .next_client
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match n % (self.peers.len() + 1) {
            0 => self.client.clone(),
            i => self.peers[i - 1].client.clone(),
        }
    }

    /// Cycles running in this server and its replicas.
    pub fn running_cycles(&self) -> usize {
        self.engine.running_cycles()
            + self
                .peers
                .iter()
                .map(|p| p.engine.running_cycles())
                .sum::<usize>()
    }

    /// Creates a workspace and waits until it is ONLINE.
    pub async fn create_online(&self, name: &str) -> WorkspaceId {
        let ws = self.create(name).await;
        self.wait_for(ws, workspace::is_online).await;
        ws
    }

    /// Waits until the workspace is ONLINE with generation `generation`'s
    /// agent registered.
    pub async fn online_at(&self, ws: WorkspaceId, generation: u64) -> pb::Workspace {
        self.wait_for(ws, workspace::online_at(generation)).await
    }

    /// Creates a workspace (returns at once, PROVISIONING).
    pub async fn create(&self, name: &str) -> WorkspaceId {
        let backend = match self.kind {
            BackendKind::Process => pb::BackendKind::Process,
            BackendKind::Docker => pb::BackendKind::Docker,
            BackendKind::Ec2 => pb::BackendKind::Ec2,
        };
        workspace::create(&self.client(), workspace::create_request(name, backend))
            .await
            .parse()
            .unwrap()
    }

    /// The first page of ListWorkspaces.
    pub async fn listed(&self) -> Vec<pb::Workspace> {
        self.client()
            .list_workspaces(pb::ListWorkspacesRequest::default())
            .await
            .expect("ListWorkspaces")
            .into_inner()
            .workspaces
    }

    pub async fn get(&self, ws: WorkspaceId) -> pb::Workspace {
        workspace::get(&self.client(), &ws.to_string()).await
    }

    /// Sets a secret of the workspace (it must succeed).
    pub async fn set_secret(
        &self,
        ws: WorkspaceId,
        name: &str,
        value: &str,
    ) -> pb::ConfigChangeResponse {
        self.client()
            .set_secret(pb::SetSecretRequest {
                workspace_id: ws.to_string(),
                name: name.into(),
                value: value.into(),
                request_id: String::new(),
            })
            .await
            .expect("SetSecret")
            .into_inner()
    }

    /// Writes a file of the workspace (it must succeed).
    pub async fn write_file(
        &self,
        ws: WorkspaceId,
        path: &str,
        content: &[u8],
    ) -> pb::ConfigChangeResponse {
        self.client()
            .write_file(pb::WriteFileRequest {
                workspace_id: ws.to_string(),
                path: path.into(),
                content: content.to_vec(),
                request_id: String::new(),
            })
            .await
            .expect("WriteFile")
            .into_inner()
    }

    /// Opens a RestartWorkspace stream.
    pub async fn restart_stream(
        &self,
        ws: WorkspaceId,
        trigger: pb::Trigger,
    ) -> Result<Streaming<pb::RestartEvent>, tonic::Status> {
        self.client()
            .restart_workspace(pb::RestartWorkspaceRequest {
                workspace_id: ws.to_string(),
                trigger: trigger as i32,
                reason: "test".into(),
                request_id: String::new(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Restarts and collects the whole stream (bounded).
    pub async fn restart(&self, ws: WorkspaceId, trigger: pb::Trigger) -> Vec<pb::RestartEvent> {
        let stream = self.restart_stream(ws, trigger).await.expect("restart");
        in_order(collect(stream).await)
    }

    /// Stops the workspace and collects the whole stream (bounded).
    pub async fn stop(&self, ws: WorkspaceId, reason: &str) -> Vec<pb::RestartEvent> {
        stop(&mut self.client(), ws, reason).await
    }

    /// Deletes the workspace and collects the whole stream (bounded).
    pub async fn delete(&self, ws: WorkspaceId, reason: &str) -> Vec<pb::RestartEvent> {
        delete(&mut self.client(), ws, reason).await
    }

    /// Waits until GetWorkspace satisfies `ready`, re-checking on every
    /// event of the workspace (and at least every 500 ms), for at most WAIT.
    pub async fn wait_for(
        &self,
        ws: WorkspaceId,
        ready: impl Fn(&pb::Workspace) -> bool,
    ) -> pb::Workspace {
        let mut events = self.engine.subscribe(ws);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let current = self.get(ws).await;
            if ready(&current) {
                return current;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("workspace never reached the expected state; last seen: {current:#?}");
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
        }
    }

    /// Moves the manual clock and gives the scheduler a moment to act.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub async fn shutdown(mut self) {
        for peer in std::mem::take(&mut self.peers) {
            Box::pin(peer.shutdown()).await;
        }
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    /// Stops serving abruptly: no draining, leases left to expire.
    pub fn crash(mut self) {
        if let Some(running) = self.running.take() {
            running.abort();
        }
    }
}

/// Collects a server stream to its end (bounded).
pub async fn collect<T>(stream: Streaming<T>) -> Vec<T> {
    tokio::time::timeout(
        WAIT,
        stream.map(|item| item.expect("stream item")).collect(),
    )
    .await
    .expect("stream ended in time")
}

/// `events`, checked to be stamped in the order they came: the first (how
/// the request was admitted) never after a phase of the cycle it started,
/// as found from outside once.
pub fn in_order(events: Vec<pb::RestartEvent>) -> Vec<pb::RestartEvent> {
    let at = |e: &pb::RestartEvent| e.at.map(|t| (t.seconds, t.nanos));
    for pair in events.windows(2) {
        assert!(
            at(&pair[0]) <= at(&pair[1]),
            "events stamped out of order: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    events
}

/// StopWorkspace through `c`, the whole stream collected (bounded).
pub async fn stop(c: &mut LifecycleClient, ws: WorkspaceId, reason: &str) -> Vec<pb::RestartEvent> {
    let stream = c
        .stop_workspace(pb::StopWorkspaceRequest {
            workspace_id: ws.to_string(),
            reason: reason.into(),
            request_id: String::new(),
        })
        .await
        .expect("StopWorkspace")
        .into_inner();
    in_order(collect(stream).await)
}

/// DeleteWorkspace through `c`, the whole stream collected (bounded).
pub async fn delete(
    c: &mut LifecycleClient,
    ws: WorkspaceId,
    reason: &str,
) -> Vec<pb::RestartEvent> {
    let stream = c
        .delete_workspace(pb::DeleteWorkspaceRequest {
            workspace_id: ws.to_string(),
            reason: reason.into(),
            request_id: String::new(),
        })
        .await
        .expect("DeleteWorkspace")
        .into_inner();
    in_order(collect(stream).await)
}

/// The event kinds of a restart stream, as short names.
pub fn kinds(events: &[pb::RestartEvent]) -> Vec<&'static str> {
    use pb::restart_event::Event;
    events
        .iter()
        .map(|e| match &e.event {
            Some(Event::Accepted(_)) => "accepted",
            Some(Event::Coalesced(_)) => "coalesced",
            Some(Event::Debounced(_)) => "debounced",
            Some(Event::Phase(_)) => "phase",
            Some(Event::Online(_)) => "online",
            Some(Event::Failed(_)) => "failed",
            Some(Event::Stopped(_)) => "stopped",
            Some(Event::Deleted(_)) => "deleted",
            None => "none",
        })
        .collect()
}

/// The terminal event of a restart stream.
/// A refusal for a backend's limit: `RESOURCE_EXHAUSTED`, naming it.
pub fn assert_limit_refusal(refused: &tonic::Status, limit: &str) {
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains(limit),
        "the refusal names {limit}: {refused:?}"
    );
}

pub fn last(events: &[pb::RestartEvent]) -> &pb::restart_event::Event {
    events
        .last()
        .and_then(|e| e.event.as_ref())
        .expect("a non-empty stream")
}

/// Every cycle of the workspace (ListCycles, one page).
pub async fn cycles(
    s: &TestServer,
    ws: workspace_lifecycle::domain::WorkspaceId,
) -> Vec<pb::Cycle> {
    workspace::cycles(&s.client(), &ws.to_string()).await
}

/// The workspace's counts for one trigger.
pub fn stats(w: &pb::Workspace, trigger: pb::Trigger) -> pb::TriggerStats {
    w.trigger_stats
        .iter()
        .find(|s| s.trigger == trigger as i32)
        .cloned()
        .unwrap_or_default()
}

/// One health-probe report.
pub async fn report_unreachable(
    s: &TestServer,
    ws: workspace_lifecycle::domain::WorkspaceId,
) -> pb::ReportUnreachableResponse {
    s.client()
        .report_unreachable(pb::ReportUnreachableRequest {
            workspace_id: ws.to_string(),
            detail: "probe".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

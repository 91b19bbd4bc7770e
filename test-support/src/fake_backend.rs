//! A backend that runs nothing but records everything, so contract tests
//! count what the backend saw (SPEC: "cycle counts are counts of backend
//! Start calls"). It plays the agent over the real gRPC API, and a test can
//! hold starts, fail or panic them, and script the instance state.
//! No contract of its own: the tests and benches check C1–C20 with it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::{Notify, Semaphore};
use workspace_backends::{
    Backend, BackendError, BackendKind, ConfigFootprint, ConfigVersion, Generation, Halt,
    InstancePhase, InstanceRef, InstanceState, Launch, LimitExceeded, SpecRejected, WorkspaceId,
    WorkspaceSpec,
};
use workspace_lifecycle::proto::{RegisterRequest, workspace_agent_client::WorkspaceAgentClient};

use crate::counted::{InFlight, InFlightGuard};

/// One Start the backend saw, with the config it was given.
#[derive(Clone, Debug)]
pub struct Start {
    /// The workspace started.
    pub workspace: WorkspaceId,
    /// The generation it was started as.
    pub generation: Generation,
    /// The config version it was handed.
    pub config_version: ConfigVersion,
    /// Its secrets, opened.
    pub secrets: BTreeMap<String, String>,
    /// Its files.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The agent token it was given.
    pub token: String,
}

/// What the fake agent does after a start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentMode {
    /// Registers at once.
    Register,
    /// Never registers (the cycle runs into its deadline).
    Silent,
    /// Registers, claiming a config version it was not handed.
    Misreport,
}

#[derive(Default)]
struct State {
    starts: Vec<Start>,
    stops: Vec<WorkspaceId>,
    /// Per workspace, the calls in order: 'S' stop, 'T' start.
    calls: HashMap<WorkspaceId, String>,
    running: HashMap<WorkspaceId, Generation>,
    scripted: HashMap<WorkspaceId, InstancePhase>,
    fail_starts: usize,
    fail_deletes: usize,
    panic_starts: usize,
    state_queries: usize,
}

mod holds;
use holds::Holds;

/// The fake.
pub struct FakeBackend {
    kind: BackendKind,
    state: Mutex<State>,
    in_flight: InFlight,
    /// When set, each start waits for a permit (tests release them).
    hold: Mutex<Option<Arc<Semaphore>>>,
    /// Per workspace, gates for its next starts, one each.
    hold_next: Holds,
    /// Per workspace, gates for its next stops, one each.
    hold_stops: Holds,
    /// Notified whenever a start begins (so tests can wait for it).
    started: Notify,
    agent: Mutex<AgentMode>,
}

impl FakeBackend {
    /// A fake serving workspaces of `kind`, its agent registering.
    pub fn new(kind: BackendKind) -> Arc<Self> {
        Arc::new(Self {
            kind,
            state: Mutex::default(),
            in_flight: InFlight::default(),
            hold: Mutex::default(),
            hold_next: Holds::default(),
            hold_stops: Holds::default(),
            started: Notify::new(),
            agent: Mutex::new(AgentMode::Register),
        })
    }

    /// Makes every start wait for a permit from the returned semaphore.
    pub fn hold_starts(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        *self.hold.lock().unwrap() = Some(gate.clone());
        gate
    }

    /// Makes only the next start of `workspace` wait, for one permit.
    pub fn hold_next_start(&self, workspace: WorkspaceId) -> Arc<Semaphore> {
        self.hold_next.add(workspace)
    }

    /// Makes only the next stop of `workspace` wait, for one permit.
    pub fn hold_next_stop(&self, workspace: WorkspaceId) -> Arc<Semaphore> {
        self.hold_stops.add(workspace)
    }

    /// An instance of `generation` that nobody started through the
    /// service: what a crash between a start and the record of its end
    /// leaves behind.
    pub fn plant(&self, workspace: WorkspaceId, generation: Generation) {
        self.state
            .lock()
            .unwrap()
            .running
            .insert(workspace, generation);
    }

    /// Lets starts through freely again (releasing any held ones).
    pub fn release_starts(&self) {
        if let Some(gate) = self.hold.lock().unwrap().take() {
            gate.add_permits(10_000);
        }
    }

    /// The next `n` starts fail (after being counted).
    pub fn fail_next_starts(&self, n: usize) {
        self.state.lock().unwrap().fail_starts = n;
    }

    /// The next `n` deletes fail after stopping (a backend that cannot
    /// remove what it keeps, for now).
    pub fn fail_next_deletes(&self, n: usize) {
        self.state.lock().unwrap().fail_deletes = n;
    }

    /// The next `n` starts panic (after being counted).
    pub fn panic_next_starts(&self, n: usize) {
        self.state.lock().unwrap().panic_starts = n;
    }

    /// What the fake agent does after later starts.
    pub fn set_agent(&self, mode: AgentMode) {
        *self.agent.lock().unwrap() = mode;
    }

    /// Makes `state` report `phase` for the workspace (None: real state).
    pub fn script_phase(&self, workspace: WorkspaceId, phase: Option<InstancePhase>) {
        let mut state = self.state.lock().unwrap();
        match phase {
            Some(phase) => state.scripted.insert(workspace, phase),
            None => state.scripted.remove(&workspace),
        };
    }

    /// The instance disappears out of band (a `docker kill`, say).
    pub fn stop_instance(&self, workspace: WorkspaceId) {
        self.state.lock().unwrap().running.remove(&workspace);
    }

    /// Every start of `workspace`, in order.
    pub fn starts(&self, workspace: WorkspaceId) -> Vec<Start> {
        self.state
            .lock()
            .unwrap()
            .starts
            .iter()
            .filter(|s| s.workspace == workspace)
            .cloned()
            .collect()
    }

    /// How many starts `workspace` saw.
    pub fn start_count(&self, workspace: WorkspaceId) -> usize {
        self.starts(workspace).len()
    }

    /// How many starts all workspaces saw.
    pub fn total_starts(&self) -> usize {
        self.state.lock().unwrap().starts.len()
    }

    /// How many stops `workspace` saw.
    pub fn stop_count(&self, workspace: WorkspaceId) -> usize {
        let state = self.state.lock().unwrap();
        state.stops.iter().filter(|w| **w == workspace).count()
    }

    /// The most backend calls ever in flight at once for the workspace.
    pub fn max_in_flight(&self, workspace: WorkspaceId) -> usize {
        self.in_flight.max(workspace)
    }

    /// The calls in order ('S' stop, 'T' start).
    pub fn calls(&self, workspace: WorkspaceId) -> String {
        self.state
            .lock()
            .unwrap()
            .calls
            .get(&workspace)
            .cloned()
            .unwrap_or_default()
    }

    /// How many times the instance state was asked for.
    pub fn state_queries(&self) -> usize {
        self.state.lock().unwrap().state_queries
    }

    /// Waits (bounded) until `n` starts have begun in total.
    pub async fn wait_for_starts(&self, n: usize) {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let notified = self.started.notified();
                if self.total_starts() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} starts never began (saw {})", self.total_starts()));
    }

    /// A call begins: counted in flight until the guard drops, and
    /// appended to the workspace's calls.
    fn enter(&self, workspace: WorkspaceId, call: char) -> InFlightGuard<'_> {
        let guard = self.in_flight.enter(workspace);
        self.state
            .lock()
            .unwrap()
            .calls
            .entry(workspace)
            .or_default()
            .push(call);
        guard
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }

    fn admits(&self, _footprint: &ConfigFootprint) -> Result<(), LimitExceeded> {
        Ok(())
    }

    fn check_spec(&self, _spec: &WorkspaceSpec) -> Result<(), SpecRejected> {
        Ok(())
    }

    async fn start(&self, launch: &Launch) -> Result<(), BackendError> {
        let _call = self.enter(launch.workspace, 'T');
        let hold =
            (self.hold_next.next(launch.workspace)).or_else(|| self.hold.lock().unwrap().clone());
        let record = Start {
            workspace: launch.workspace,
            generation: launch.generation,
            config_version: launch.config_version,
            secrets: launch
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                .collect(),
            files: launch.files.clone(),
            token: launch.token.expose().to_owned(),
        };
        let (fail, panic) = {
            let mut state = self.state.lock().unwrap();
            state.starts.push(record);
            let fail = state.fail_starts > 0;
            state.fail_starts = state.fail_starts.saturating_sub(1);
            let panic = !fail && state.panic_starts > 0;
            state.panic_starts = state.panic_starts.saturating_sub(usize::from(panic));
            (fail, panic)
        };
        self.started.notify_waiters();
        if let Some(hold) = hold {
            hold.acquire().await.unwrap().forget();
        }
        if panic {
            panic!("the fake backend was told to panic");
        }
        if fail {
            return Err(BackendError::Unavailable(
                "the fake backend was told to fail".into(),
            ));
        }
        self.state
            .lock()
            .unwrap()
            .running
            .insert(launch.workspace, launch.generation);
        let mode = *self.agent.lock().unwrap();
        if mode != AgentMode::Silent {
            let url = launch.service_url.clone();
            let request = RegisterRequest {
                token: launch.token.expose().to_owned(),
                workspace_id: launch.workspace.to_string(),
                config_version: match mode {
                    AgentMode::Misreport => launch.config_version.0 + 100,
                    _ => launch.config_version.0,
                },
                endpoint: "fake".into(),
                secret_names: launch.secrets.keys().cloned().collect(),
                file_paths: launch.files.keys().cloned().collect(),
            };
            tokio::spawn(async move {
                let mut client = WorkspaceAgentClient::connect(url)
                    .await
                    .expect("agent connects");
                // As the real agent does: a full agent pool is asked again.
                for _ in 0..100 {
                    match client.register(request.clone()).await {
                        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        _ => return,
                    }
                }
            });
        }
        Ok(())
    }

    async fn stop(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        _halt: Halt,
    ) -> Result<(), BackendError> {
        let _call = self.enter(workspace, 'S');
        if let Some(hold) = self.hold_stops.next(workspace) {
            hold.acquire().await.unwrap().forget();
        }
        let mut state = self.state.lock().unwrap();
        state.stops.push(workspace);
        if state.running.get(&workspace).is_some_and(|g| *g <= through) {
            state.running.remove(&workspace);
        }
        Ok(())
    }

    async fn delete(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError> {
        self.stop(workspace, through, halt).await?;
        let mut state = self.state.lock().unwrap();
        if state.fail_deletes > 0 {
            state.fail_deletes -= 1;
            return Err(BackendError::Unavailable(
                "the fake backend was told to fail deletes".into(),
            ));
        }
        Ok(())
    }

    async fn inventory(&self) -> Result<Vec<InstanceRef>, BackendError> {
        let state = self.state.lock().unwrap();
        Ok(state
            .running
            .iter()
            .map(|(workspace, generation)| InstanceRef {
                workspace: *workspace,
                generation: Some(*generation),
                phase: InstancePhase::Running,
            })
            .collect())
    }

    async fn state(&self, workspace: WorkspaceId) -> Result<InstanceState, BackendError> {
        let mut state = self.state.lock().unwrap();
        state.state_queries += 1;
        let generation = state.running.get(&workspace).copied();
        if let Some(phase) = state.scripted.get(&workspace) {
            return Ok(InstanceState {
                phase: phase.clone(),
                generation,
            });
        }
        Ok(match generation {
            Some(g) => InstanceState::of(g, InstancePhase::Running),
            None => InstanceState::missing(),
        })
    }
}

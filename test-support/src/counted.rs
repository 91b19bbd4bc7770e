//! Backend calls counted: [`InFlight`], the per-workspace count of calls in
//! flight (and the most ever seen) that every counting backend keeps, and
//! [`Counted`], which wraps a real backend (Docker, EC2 on moto, the
//! process backend) and records what it is asked — Start calls per
//! workspace (the contracts count cycles that way), errors, overlap, how
//! long stop and start took — and, while armed, holds every Start until
//! released (so a storm arrives while the cycle it interrupts is in
//! flight).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::watch;
use workspace_backends::{
    Backend, BackendError, BackendKind, ConfigFootprint, Generation, Halt, InstanceRef,
    InstanceState, Launch, LimitExceeded, SpecRejected, WorkspaceId, WorkspaceSpec,
};

/// Backend calls in flight per workspace, and the most ever seen at once.
#[derive(Default)]
pub struct InFlight {
    counts: Mutex<HashMap<WorkspaceId, (usize, usize)>>,
}

impl InFlight {
    /// A call on `workspace` begins; it ends when the guard drops.
    pub fn enter(&self, workspace: WorkspaceId) -> InFlightGuard<'_> {
        let mut counts = self.counts.lock().unwrap();
        let (now, most) = counts.entry(workspace).or_default();
        *now += 1;
        *most = (*most).max(*now);
        InFlightGuard {
            in_flight: self,
            workspace,
        }
    }

    /// The most calls ever in flight at once for `workspace`.
    pub fn max(&self, workspace: WorkspaceId) -> usize {
        self.counts
            .lock()
            .unwrap()
            .get(&workspace)
            .map_or(0, |(_, most)| *most)
    }
}

/// One call in flight (see [`InFlight::enter`]).
pub struct InFlightGuard<'a> {
    in_flight: &'a InFlight,
    workspace: WorkspaceId,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut counts = self.in_flight.counts.lock().unwrap();
        if let Some((now, _)) = counts.get_mut(&self.workspace) {
            *now -= 1;
        }
    }
}

/// One timed backend call.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    /// How long the wrapped backend took.
    pub took: Duration,
    /// Wall-clock end (to compare with server timestamps).
    pub ended: chrono::DateTime<chrono::Utc>,
}

#[derive(Default)]
struct Tally {
    starts: HashMap<WorkspaceId, Vec<Generation>>,
    errors: Vec<String>,
    start_calls: Vec<Call>,
    stop_calls: Vec<Call>,
}

/// A backend that counts (see the module docs).
pub struct Counted<B> {
    inner: B,
    tally: Mutex<Tally>,
    in_flight: InFlight,
    armed: AtomicBool,
    holding: AtomicUsize,
    release: watch::Sender<bool>,
}

impl<B: Backend> Counted<B> {
    /// Wraps `inner`, counting from zero, not holding.
    pub fn new(inner: B) -> Arc<Self> {
        Arc::new(Self {
            inner,
            tally: Mutex::default(),
            in_flight: InFlight::default(),
            armed: AtomicBool::new(false),
            holding: AtomicUsize::new(0),
            release: watch::channel(false).0,
        })
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The generations Start was asked for on `workspace`, in order.
    pub fn starts(&self, workspace: WorkspaceId) -> Vec<Generation> {
        self.tally
            .lock()
            .unwrap()
            .starts
            .get(&workspace)
            .cloned()
            .unwrap_or_default()
    }

    /// Every error the backend returned, as text.
    pub fn errors(&self) -> Vec<String> {
        self.tally.lock().unwrap().errors.clone()
    }

    /// The most backend calls ever in flight at once for `workspace`.
    pub fn max_in_flight(&self, workspace: WorkspaceId) -> usize {
        self.in_flight.max(workspace)
    }

    /// The last Start call's timing.
    pub fn last_start(&self) -> Option<Call> {
        self.tally.lock().unwrap().start_calls.last().copied()
    }

    /// The last Stop call's timing.
    pub fn last_stop(&self) -> Option<Call> {
        self.tally.lock().unwrap().stop_calls.last().copied()
    }

    /// From now on, Starts wait for [`Counted::release`].
    pub fn arm(&self) {
        self.release.send_replace(false);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Lets every held Start (and later ones) through.
    pub fn release(&self) {
        self.armed.store(false, Ordering::SeqCst);
        self.release.send_replace(true);
    }

    /// How many Starts are waiting now.
    pub fn holding(&self) -> usize {
        self.holding.load(Ordering::SeqCst)
    }

    /// [`Self::call`], counted in flight for `workspace` while it runs.
    async fn call_in<T>(
        &self,
        workspace: WorkspaceId,
        timed: Option<fn(&mut Tally) -> &mut Vec<Call>>,
        f: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let _call = self.in_flight.enter(workspace);
        self.call(timed, f).await
    }

    /// Runs one call of the wrapped backend: its time appended to `timed`
    /// (when given) and its error to the errors.
    async fn call<T>(
        &self,
        timed: Option<fn(&mut Tally) -> &mut Vec<Call>>,
        f: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let began = tokio::time::Instant::now();
        let result = f.await;
        let mut tally = self.tally.lock().unwrap();
        if let Some(log) = timed {
            log(&mut tally).push(Call {
                took: began.elapsed(),
                ended: chrono::Utc::now(),
            });
        }
        if let Err(err) = &result {
            tally.errors.push(err.to_string());
        }
        result
    }
}

#[async_trait]
impl<B: Backend> Backend for Counted<B> {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    async fn start(&self, launch: &Launch) -> Result<(), BackendError> {
        let _call = self.in_flight.enter(launch.workspace);
        self.tally
            .lock()
            .unwrap()
            .starts
            .entry(launch.workspace)
            .or_default()
            .push(launch.generation);
        if self.armed.load(Ordering::SeqCst) {
            self.holding.fetch_add(1, Ordering::SeqCst);
            let _ = self.release.subscribe().wait_for(|r| *r).await;
            self.holding.fetch_sub(1, Ordering::SeqCst);
        }
        self.call(Some(|t| &mut t.start_calls), self.inner.start(launch))
            .await
    }

    async fn stop(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError> {
        self.call_in(
            workspace,
            Some(|t| &mut t.stop_calls),
            self.inner.stop(workspace, through, halt),
        )
        .await
    }

    async fn delete(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError> {
        self.call_in(workspace, None, self.inner.delete(workspace, through, halt))
            .await
    }

    async fn state(&self, workspace: WorkspaceId) -> Result<InstanceState, BackendError> {
        self.inner.state(workspace).await
    }

    fn admits(&self, footprint: &ConfigFootprint) -> Result<(), LimitExceeded> {
        self.inner.admits(footprint)
    }

    fn check_spec(&self, spec: &WorkspaceSpec) -> Result<(), SpecRejected> {
        self.inner.check_spec(spec)
    }

    async fn inventory(&self) -> Result<Vec<InstanceRef>, BackendError> {
        self.inner.inventory().await
    }
}

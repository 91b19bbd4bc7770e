//! The cycle service: what happens once a request holds the gate.
//!
//! A cycle is: Stop the old instance → (for provisioning) Start the new
//! generation with the config read when the gate was taken → wait until
//! *that* generation's agent registers (C10) → ONLINE. It ends FAILED on a
//! backend error, the provision deadline, a panic or a lost lease — and in
//! every case it records its end and releases the gate (C6). Release and the
//! claim of a due follow-up are one transaction, so the follow-up runs next
//! in the same task with no window for anyone to slip in between.
//!
//! Before each action on the backend the cycle re-checks that it still holds
//! the gate, so a runner that stalled past its lease never stops or starts
//! an instance under a newer cycle.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{FutureExt, future::BoxFuture};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::Service;
use tracing::Instrument;
use workspace_backends::{AgentToken, Backend, BackendError, Halt, Launch};

use super::{
    EngineError,
    backends::Backends,
    events::{EventBus, EventKind, Received},
    gate::Gated,
    intent::{Admission, Intent, Verdict},
    scheduler::SchedulerHandle,
};
use crate::{
    domain::{Generation, Goal, Phase},
    store::{Finish, LeaseGuard, Registration, Store, token_hash},
    telemetry::cycle_trace::CycleTrace,
};

/// The knobs of a cycle.
#[derive(Clone, Debug)]
pub struct CycleSettings {
    /// A cycle that has not reached ONLINE by then fails (C6).
    pub provision_deadline: Duration,
    /// How often a waiting cycle re-checks the registration and the
    /// instance, in case an event was missed.
    pub agent_poll: Duration,
    /// How often a running cycle renews its lease.
    pub lease_renewal: Duration,
    /// The URL agents use to reach this control plane.
    pub agent_service_url: String,
}

/// What every cycle shares.
#[derive(Clone)]
pub struct CycleDeps {
    /// Postgres.
    pub store: Store,
    /// The backends by kind.
    pub backends: Backends,
    /// Where registrations arrive.
    pub bus: EventBus,
    /// Wakes the scheduler when a follow-up waits for time.
    pub scheduler: SchedulerHandle,
    /// Tracks running cycles so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled when shutdown stops waiting: running cycles are handed
    /// to another replica instead of being finished here.
    pub hand_off: CancellationToken,
    /// The knobs.
    pub settings: CycleSettings,
}

/// Why a cycle failed, phrased for operators (never with secret values).
#[derive(Debug, thiserror::Error)]
enum CycleError {
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("the cycle lost the gate to a newer cycle")]
    Fenced,
    #[error("the instance ended before its agent registered: {0}")]
    InstanceDown(String),
}

/// Runs cycles for requests that hold the gate.
#[derive(Clone)]
pub struct CycleService {
    deps: Arc<CycleDeps>,
}

impl CycleService {
    /// A cycle service over `deps`.
    pub fn new(deps: Arc<CycleDeps>) -> Self {
        Self { deps }
    }
}

// === impl CycleService ===

impl Service<Gated<Intent, LeaseGuard>> for CycleService {
    type Response = Admission;
    type Error = EngineError;
    type Future = BoxFuture<'static, Result<Admission, EngineError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), EngineError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, gated: Gated<Intent, LeaseGuard>) -> Self::Future {
        let claim = *gated.guard.claim();
        // For log lines; the exported trace is built by `CycleTrace`.
        let span = tracing::info_span!(
            parent: &gated.request.span,
            "cycle_runner",
            workspace = %gated.guard.workspace(),
            cycle = %claim.cycle,
            generation = claim.generation.0,
            goal = claim.goal.as_str(),
        );
        let deps = self.deps.clone();
        self.deps
            .tasks
            .spawn(run(deps, gated.guard).instrument(span));
        Box::pin(async move {
            Ok(Admission::of(Verdict::Accepted {
                cycle: claim.cycle,
                generation: claim.generation,
                goal: claim.goal,
            }))
        })
    }
}

/// Runs the guard's cycle, then every follow-up that is due when it ends.
async fn run(deps: Arc<CycleDeps>, mut guard: LeaseGuard) {
    loop {
        let trace = CycleTrace::begin(&deps.store, &guard).await;
        let finish = tokio::select! {
            finish = execute_guarded(&deps, &guard, &trace) => finish,
            _ = deps.hand_off.cancelled() => {
                trace.handed_off();
                let workspace = guard.workspace();
                match guard.hand_off().await {
                    Ok(_) => tracing::info!(%workspace, "cycle handed off at shutdown"),
                    Err(err) => tracing::warn!(%workspace, %err, "could not hand the cycle off; its lease will expire"),
                }
                return;
            }
        };
        let workspace = guard.workspace();
        trace.end(&finish);
        let finished = finish_with_retry(guard, finish).await;
        match finished {
            Some(crate::store::Finished {
                next: Some(next), ..
            }) => guard = next,
            Some(finished) => {
                if let Some(due) = finished.next_due {
                    deps.scheduler.wake_at(due);
                }
                return;
            }
            None => {
                tracing::warn!(%workspace, "could not record the end of a cycle; its lease will expire and another runner will redo it");
                return;
            }
        }
    }
}

/// Records the end of a cycle, retrying briefly while Postgres is away.
async fn finish_with_retry(guard: LeaseGuard, finish: Finish) -> Option<crate::store::Finished> {
    let mut guard = guard;
    let mut delay = Duration::from_millis(100);
    for _ in 0..6 {
        match guard.finish(finish.clone()).await {
            Ok(finished) => return Some(finished),
            Err(EngineError::Unavailable(err)) => {
                tracing::warn!(%err, "recording a cycle's end failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(err) => {
                tracing::error!(%err, "recording a cycle's end failed");
                guard.disarm();
                return None;
            }
        }
    }
    guard.disarm();
    None
}

/// Runs one cycle under its deadline, its lease renewal and a panic guard.
async fn execute_guarded(deps: &CycleDeps, guard: &LeaseGuard, trace: &CycleTrace) -> Finish {
    let deadline = deps.settings.provision_deadline;
    let work = AssertUnwindSafe(execute(deps, guard, trace)).catch_unwind();
    tokio::select! {
        result = tokio::time::timeout(deadline, work) => match result {
            Ok(Ok(Ok(finish))) => finish,
            Ok(Ok(Err(err))) => Finish::Failed { reason: err.to_string() },
            Ok(Err(_panic)) => Finish::Failed { reason: "the cycle panicked".into() },
            Err(_) => Finish::Failed {
                reason: format!("the provision deadline of {} passed", humantime::format_duration(deadline)),
            },
        },
        lost = keep_lease(guard, deps.settings.lease_renewal) => Finish::Failed { reason: lost },
    }
}

/// Renews the lease until it is lost; returns why.
async fn keep_lease(guard: &LeaseGuard, every: Duration) -> String {
    let mut failures = 0;
    loop {
        tokio::time::sleep(every).await;
        match guard.renew().await {
            Ok(true) => failures = 0,
            Ok(false) => return CycleError::Fenced.to_string(),
            Err(err) => {
                failures += 1;
                tracing::warn!(%err, failures, "lease renewal failed");
                if failures >= 3 {
                    return format!("could not renew the gate's lease: {err}");
                }
            }
        }
    }
}

/// Fails the cycle unless it still holds the gate.
async fn ensure_held(guard: &LeaseGuard) -> Result<(), CycleError> {
    if guard.renew().await? {
        Ok(())
    } else {
        Err(CycleError::Fenced)
    }
}

async fn execute(
    deps: &CycleDeps,
    guard: &LeaseGuard,
    trace: &CycleTrace,
) -> Result<Finish, CycleError> {
    let claim = *guard.claim();
    let workspace = guard.workspace();
    let backend = deps.backends.get(guard.backend())?;

    ensure_held(guard).await?;
    guard.phase(Phase::Stopping).await?;
    backend
        .stop(workspace, claim.generation, Halt::Graceful)
        .instrument(trace.phase("stop"))
        .await?;
    match claim.goal {
        Goal::Stop => return Ok(Finish::Stopped),
        Goal::Delete => {
            ensure_held(guard).await?;
            backend
                .delete(workspace, claim.generation, Halt::Graceful)
                .instrument(trace.phase("delete"))
                .await?;
            return Ok(Finish::Deleted);
        }
        Goal::Provision => {}
    }

    let snapshot = guard
        .snapshot()
        .ok_or_else(|| EngineError::Internal("provisioning cycle without config".into()))?;
    let token = mint_token()?;
    // Listen before starting, so the registration cannot slip past.
    let registrations = deps.bus.subscribe(workspace);
    if !guard.record_generation(&token_hash(token.expose())).await? {
        return Err(CycleError::Fenced);
    }
    ensure_held(guard).await?;
    guard.phase(Phase::Provisioning).await?;
    let launch = Launch {
        workspace,
        generation: claim.generation,
        config_version: snapshot.config_version,
        spec: snapshot.spec.clone(),
        secrets: snapshot.secrets.clone(),
        files: snapshot.files.clone(),
        token,
        service_url: deps.settings.agent_service_url.clone(),
    };
    let started = backend
        .start(&launch)
        .instrument(trace.phase("provision"))
        .await;
    drop(launch);
    if let Err(err) = started {
        stop_after_failure(guard, backend.as_ref()).await;
        return Err(err.into());
    }
    guard.phase(Phase::WaitingForAgent).await?;
    match wait_for_agent(
        deps,
        guard,
        backend.as_ref(),
        registrations,
        claim.generation,
    )
    .instrument(trace.phase("wait_for_agent"))
    .await
    {
        Ok(registration) => Ok(Finish::Online {
            config_version: registration.config_version,
        }),
        Err(err) => {
            stop_after_failure(guard, backend.as_ref()).await;
            Err(err)
        }
    }
}

/// A failed provisioning leaves no instance behind, forced: it gets no
/// grace to linger in (if the cycle still holds the gate; and only up to
/// its own generation, never what a newer cycle started).
async fn stop_after_failure(guard: &LeaseGuard, backend: &dyn Backend) {
    if ensure_held(guard).await.is_ok() {
        let generation = guard.claim().generation;
        if let Err(err) = backend
            .stop(guard.workspace(), generation, Halt::Force)
            .await
        {
            tracing::warn!(%err, "could not stop the instance of a failed cycle");
        }
    }
}

/// Waits until the agent of `generation` registers (an event, or the
/// periodic check that also notices an instance that died first).
async fn wait_for_agent(
    deps: &CycleDeps,
    guard: &LeaseGuard,
    backend: &dyn Backend,
    mut registrations: super::events::Subscription,
    generation: Generation,
) -> Result<Registration, CycleError> {
    let workspace = guard.workspace();
    let mut poll = tokio::time::interval(deps.settings.agent_poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = registrations.recv() => match received {
                Received::Event(event) => {
                    if let EventKind::Agent { generation: g, config_version, .. } = &event.kind {
                        if *g == generation {
                            return Ok(Registration { registered_at: event.at, config_version: *config_version });
                        }
                    }
                    continue;
                }
                // Missed events: fall through to a check right away.
                Received::Lagged | Received::Closed => {}
            },
            _ = poll.tick() => {}
        }
        if let Some(registration) = deps.store.registration(workspace, generation).await? {
            return Ok(registration);
        }
        let state = backend.state(workspace).await?;
        if state.generation == Some(generation) && state.is_down() {
            return Err(CycleError::InstanceDown(format!("{:?}", state.phase)));
        }
    }
}

/// A fresh 256-bit agent token.
fn mint_token() -> Result<AgentToken, EngineError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| EngineError::Internal(format!("no randomness for a token: {e}")))?;
    Ok(AgentToken::new(format!("wla_{}", hex::encode(bytes))))
}

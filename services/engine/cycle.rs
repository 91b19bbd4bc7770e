//! The cycle service: what happens once a request holds the gate.
//! Contracts: C6, C10, C17, C18, C20.
//!
//! A cycle is: Stop the old instance → (for provisioning) Start the new
//! generation with the config read, and the agent token recorded, when the
//! gate was taken → wait until *that* generation's agent registers (C10)
//! → ONLINE. It ends FAILED on a backend error, the provision deadline, a
//! panic or a lost lease — and in every case it records its end and
//! releases the gate (C6). Release and the claim of a due follow-up are one
//! transaction, so the follow-up runs next in the same task with no window
//! for anyone to slip in between.
//!
//! Fault model (C17, C18, C20): every backend call is bounded by the time
//! the lease can still be trusted (the runner fences itself by its own last
//! successful renewal, before the lease can have expired in the database),
//! and each phase is announced by a fenced write (the first with the claim,
//! the others alongside the backend call they name, each before the next).
//! A graceful stop that outlasts its share of the deadline escalates to a
//! forced one. A failed cycle removes its own generation's instance by
//! force before it records the failure; a runner that may have lost its
//! lease touches nothing. The deadline counts from the cycle's first start
//! across takeovers, and a cycle taken over too often is given up and
//! cleaned up.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::Service;
use tracing::Instrument;
use workspace_backends::{Backend, Halt, Launch};

mod error;
mod faults;

use self::error::CycleError;
use self::faults::{bounded, enter, execute_guarded, stop_escalating};
use super::{
    backend_set::Backends,
    events::{EventBus, Received},
    gate::Gated,
    intent::{Admission, Intent, Verdict},
    lease::LeaseGuard,
    scheduler::SchedulerHandle,
};
use crate::{
    domain::{Error, EventKind, Finish, Generation, Goal, Phase},
    store::{AgentWait, Registration, Store},
    telemetry::cycle_trace::{CycleStart, CycleTrace},
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
    /// A cycle taken over more often than this (its runners keep dying) is
    /// failed and cleaned up instead of run again (C20).
    pub max_takeovers: u32,
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
    type Error = Error;
    type Future = BoxFuture<'static, Result<Admission, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
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

/// What the cycle's trace needs of it (its admission was read with the
/// claim).
fn cycle_start(guard: &LeaseGuard) -> CycleStart {
    let claim = *guard.claim();
    CycleStart {
        cycle: claim.cycle,
        workspace: guard.workspace(),
        goal: claim.goal,
        generation: claim.generation,
        takeovers: claim.takeovers,
        claimed_at: guard.started_at(),
        config_version: guard.snapshot().map(|s| s.config_version),
        admitted: guard.admitted().cloned(),
    }
}

/// Runs the guard's cycle, then every follow-up that is due when it ends.
async fn run(deps: Arc<CycleDeps>, mut guard: LeaseGuard) {
    loop {
        let trace = CycleTrace::begin(cycle_start(&guard));
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
        let Some(finish) = finish else {
            // The runner lost its lease (or could not renew it in time): the
            // cycle is not its to end. It lets go without writing; once the
            // lease has expired in the database, a runner that can hold it
            // takes the cycle over and redoes it as a new generation — so a
            // lapse during a Postgres outage delays the cycle, never fails
            // it (C13, C18).
            tracing::warn!(%workspace, "the cycle's lease lapsed; letting another runner take it over");
            trace.handed_off();
            guard.disarm();
            return;
        };
        trace.end(&finish);
        let finished = finish_with_retry(guard, finish).await;
        match finished {
            Some(super::lease::Finished {
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
async fn finish_with_retry(guard: LeaseGuard, finish: Finish) -> Option<super::lease::Finished> {
    let mut guard = guard;
    let mut delay = Duration::from_millis(100);
    for _ in 0..6 {
        match guard.finish(finish.clone()).await {
            Ok(finished) => return Some(finished),
            Err(Error::Unavailable(err)) => {
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

async fn execute(
    deps: &CycleDeps,
    guard: &LeaseGuard,
    trace: &CycleTrace,
    deadline: tokio::time::Instant,
) -> Result<Finish, CycleError> {
    let claim = *guard.claim();
    let workspace = guard.workspace();
    let backend = deps.backends.get(guard.backend())?;

    // The Stopping phase was announced with the claim.
    stop_escalating(guard, backend.as_ref(), claim.generation, deadline)
        .instrument(trace.phase("stop"))
        .await?;
    match claim.goal {
        Goal::Stop => return Ok(Finish::Stopped),
        Goal::Delete => {
            bounded(
                guard,
                backend.delete(workspace, claim.generation, Halt::Force),
            )
            .instrument(trace.phase("delete"))
            .await?;
            return Ok(Finish::Deleted);
        }
        Goal::Provision => {}
    }

    // Config that could not be read (read with the claim) fails this cycle.
    let snapshot = guard
        .config()
        .ok_or_else(|| Error::Internal("provisioning cycle without config".into()))?
        .map_err(Error::clone)?;
    // Its hash was recorded with the claim.
    let token = guard
        .token()
        .cloned()
        .ok_or_else(|| Error::Internal("provisioning cycle without a token".into()))?;
    // Listen before starting, so the registration cannot slip past.
    let registrations = deps.bus.subscribe(workspace);
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
    // The Provisioning phase is announced while the backend starts, and
    // before the next phase: both must succeed (a fenced write is a lost
    // lease). The start is never cut short by the write: a half-made
    // instance would be left behind.
    let (entered, started) = futures::join!(
        enter(guard, Phase::Provisioning),
        bounded(guard, backend.start(&launch)).instrument(trace.phase("provision")),
    );
    drop(launch);
    started?;
    entered?;
    // The phase is written while the agent boots, not before: the write
    // costs the cycle nothing then. Both must succeed (a fenced write is a
    // lost lease); `Online` is recorded only after both, so it still
    // follows the phase.
    let ((), registration) = futures::try_join!(
        enter(guard, Phase::WaitingForAgent),
        wait_for_agent(
            deps,
            guard,
            backend.as_ref(),
            registrations,
            claim.generation,
        )
        .instrument(trace.phase("wait_for_agent")),
    )?;
    Ok(Finish::Online {
        config_version: registration.config_version,
    })
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
    // Other events of the workspace (a delete admitted, say) bring the next
    // check forward, at most this often.
    let mut checked = tokio::time::Instant::now();
    loop {
        // An early check (another event of the workspace) reads only the
        // database; the backend is asked on the poll's own beat.
        let early = tokio::select! {
            received = registrations.recv() => match received {
                Received::Event(event) => {
                    if let EventKind::Agent { generation: g, config_version, .. } = &event.kind {
                        if *g == generation {
                            return Ok(Registration { registered_at: event.at, config_version: *config_version });
                        }
                    }
                    if checked.elapsed() < EARLY_CHECK {
                        continue;
                    }
                    true
                }
                // Missed events: fall through to a full check right away.
                Received::Lagged => false,
                // No more events (the bus is gone at shutdown): check on the
                // poll's beat alone, never in a spin.
                Received::Closed => {
                    poll.tick().await;
                    false
                }
            },
            _ = poll.tick() => false,
        };
        checked = tokio::time::Instant::now();
        match deps.store.agent_wait(workspace, generation).await? {
            AgentWait::Registered(registration) => return Ok(registration),
            AgentWait::DeleteRequested => return Err(CycleError::DeleteRequested),
            AgentWait::Waiting if early => continue,
            AgentWait::Waiting => {}
        }
        let state = bounded(guard, backend.state(workspace)).await?;
        if state.generation == Some(generation) && state.is_down() {
            return Err(CycleError::InstanceDown(format!("{:?}", state.phase)));
        }
    }
}

/// How soon after a check another event of the workspace may bring the
/// next one forward.
const EARLY_CHECK: Duration = Duration::from_millis(200);

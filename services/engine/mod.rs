//! The restart engine: every request for a cycle passes through one tower
//! stack keyed by workspace id —
//! Contracts: C1–C15, C17–C20 (each layer's file names its own).
//!
//! ```text
//! Intent ─▶ debounce ─▶ coalesce ─▶ gate ─▶ cycle service
//!           (C7/C9)     (C2, C13)   (C5,    (Stop → Start → wait
//!                                    C11)    for agent, C6/C10/C12)
//! ```
//!
//! Postgres is the truth (the ledger on each workspace row, fenced writes);
//! the in-process parts are per-key lanes and channels that vanish when
//! idle (C15). The engine knows nothing of gRPC.

mod admission;
pub mod backend_set;

pub mod coalesce;
mod collector;
pub mod cycle;
pub mod debounce;
pub mod detach;

pub mod drop_check;
pub mod events;
pub mod gate;
pub mod intent;
pub mod keyed;
pub mod lease;
pub mod ledger;
pub mod observe;
mod reconciler;
mod retention;
pub mod scheduler;
#[cfg(test)]
mod stack_tests;
#[cfg(test)]
pub(crate) mod test_support;

use std::{sync::Arc, time::Duration};

use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::{ServiceBuilder, ServiceExt, util::BoxCloneSyncService};

use self::{
    backend_set::Backends,
    coalesce::CoalesceLayer,
    cycle::{CycleDeps, CycleService, CycleSettings},
    debounce::DebounceLayer,
    drop_check::ProbeCheck,
    events::{EventBus, Subscription},
    gate::GateLayer,
    intent::{Admission, Intent, Verdict, Waiting},
    observe::ObserveLayer,
    scheduler::SchedulerHandle,
};
use crate::{
    domain::{Error, WorkspaceId, clock::SharedClock},
    store::Store,
};

/// The assembled stack, as every entry point calls it.
pub type Stack = BoxCloneSyncService<Intent, Admission, Error>;

/// How the engine behaves.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How cycles run.
    pub cycle: CycleSettings,
    /// How often the scheduler sweeps for due work regardless of hints.
    pub sweep_interval: Duration,
    /// How often the reconciler compares serving workspaces with their
    /// backends.
    pub reconcile_interval: Duration,
    /// Ended cycles, superseded generations and deleted workspaces older
    /// than this are pruned.
    pub history_retention: Duration,
}

/// The running engine.
pub struct Engine {
    stack: Stack,
    store: Store,
    bus: EventBus,
    backends: Backends,
    scheduler: SchedulerHandle,
    coalesce: CoalesceLayer<Store, Intent>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Tells running cycles to hand themselves off (see `shutdown`).
    hand_off: CancellationToken,
    /// Cancelled when the server starts shutting down, so that long-lived
    /// streams (watch, follow) end and the server can drain.
    streams: CancellationToken,
}

impl Engine {
    /// Starts the event listener and the scheduler and assembles the stack.
    pub async fn start(
        store: Store,
        backends: Backends,
        clock: SharedClock,
        config: EngineConfig,
    ) -> Result<Arc<Self>, Error> {
        let bus = EventBus::new();
        let shutdown = CancellationToken::new();
        store.set_limits({
            let backends = backends.clone();
            Arc::new(move |kind, footprint| match backends.get(kind) {
                Ok(backend) => backend.admits(footprint),
                // A backend that is not enabled refuses at its cycle.
                Err(_) => Ok(()),
            })
        });
        let tasks = TaskTracker::new();
        let hand_off = CancellationToken::new();

        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(crate::store::listener::run(
            store.clone(),
            bus.clone(),
            shutdown.child_token(),
            ready_tx,
        ));
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .map_err(|_| Error::Unavailable("event listener did not connect".into()))?
            .map_err(|_| Error::Unavailable("event listener stopped".into()))?;

        let scheduler = SchedulerHandle::default();
        let deps = Arc::new(CycleDeps {
            store: store.clone(),
            backends: backends.clone(),
            bus: bus.clone(),
            scheduler: scheduler.clone(),
            tasks: tasks.clone(),
            hand_off: hand_off.clone(),
            settings: config.cycle.clone(),
        });
        let shared = Arc::new(store.clone());
        let coalesce = CoalesceLayer::new(shared.clone(), clock.clone());
        let stack = ServiceBuilder::new()
            .layer(ObserveLayer::new(store.clone()))
            .layer(DebounceLayer::new(
                Arc::new(ProbeCheck::new(store.clone(), backends.clone())),
                clock.clone(),
            ))
            .layer(coalesce.clone())
            .layer(GateLayer::new(shared, clock.clone()))
            .service(CycleService::new(deps));
        let stack = BoxCloneSyncService::new(stack);

        tokio::spawn(reconciler::run(
            store.clone(),
            backends.clone(),
            stack.clone(),
            config.reconcile_interval,
            shutdown.child_token(),
        ));
        tokio::spawn(retention::run(
            store.clone(),
            clock.clone(),
            config.history_retention,
            shutdown.child_token(),
        ));
        tokio::spawn(scheduler::run(
            store.clone(),
            stack.clone(),
            clock,
            scheduler.clone(),
            config.sweep_interval,
            shutdown.child_token(),
        ));

        Ok(Arc::new(Self {
            stack,
            store,
            bus,
            backends,
            scheduler,
            coalesce,
            tasks,
            hand_off,
            shutdown,
            streams: CancellationToken::new(),
        }))
    }

    /// Sends one request through the stack. The answer comes once the
    /// request is durable.
    pub async fn submit(&self, intent: Intent) -> Result<Admission, Error> {
        let admission = self.stack.clone().oneshot(intent).await?;
        if let Verdict::Coalesced {
            not_before,
            waiting: Waiting::Deferred,
            ..
        } = admission.verdict
        {
            self.scheduler.wake_at(not_before);
        }
        Ok(admission)
    }

    /// The events of `workspace` from now on.
    pub fn subscribe(&self, workspace: WorkspaceId) -> Subscription {
        self.bus.subscribe(workspace)
    }

    /// Postgres.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The enabled backends.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// Per-key in-process state right now: admission lanes and event
    /// channels (C15: zero once idle).
    pub fn live_keys(&self) -> usize {
        self.coalesce.live_lanes() + self.bus.live_channels()
    }

    /// Cycle runners alive in this process (each runs a cycle and the
    /// follow-ups handed to it).
    pub fn running_cycles(&self) -> usize {
        self.tasks.len()
    }

    /// Resolves when the server starts shutting down: streams end then.
    pub fn closing(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.streams.cancelled()
    }

    /// Ends every open stream (the first step of a graceful shutdown).
    pub fn close_streams(&self) {
        self.streams.cancel();
    }

    /// Stops taking on new work and waits up to `grace` for running cycles.
    /// Cycles still running after that keep their leases until they expire
    /// and another replica takes them over.
    pub async fn shutdown(&self, grace: Duration) {
        self.streams.cancel();
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            // Hand what is still running to another replica now, rather
            // than leave it to wait out its lease.
            tracing::warn!(
                running = self.tasks.len(),
                "cycles still running at shutdown; handing them off"
            );
            self.hand_off.cancel();
            if tokio::time::timeout(Duration::from_secs(5), self.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!("some cycles could not be handed off; their leases will expire");
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

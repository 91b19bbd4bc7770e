//! The scheduler: starts what is due when nobody is there to start it.
//! Contracts: C13, C14 (a due follow-up runs on some replica).
//!
//! A follow-up normally starts the moment the cycle before it ends (the
//! runner hands the gate on). The scheduler covers the rest: follow-ups that
//! wait for the debounce window or a file-write burst, and cycles whose
//! runner vanished (its lease expired — a replica killed mid-cycle, C13).
//! It sleeps until the earliest such moment in Postgres (or a periodic
//! sweep, for what other replicas scheduled), then sends a resumption for
//! each due workspace through the same stack as every request; the gate
//! decides who runs it, so replicas may race here harmlessly.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{Stack, intent::Intent};
use crate::{
    domain::{Timestamp, clock::SharedClock},
    store::Store,
};

/// Tells the scheduler that something may be due sooner.
#[derive(Clone, Default)]
pub struct SchedulerHandle {
    poke: Arc<Notify>,
    plan: Arc<Mutex<Plan>>,
}

/// When the scheduler looks next, and what it was told meanwhile.
#[derive(Default)]
struct Plan {
    /// The earliest time it was told of since it last looked.
    earliest: Option<Timestamp>,
    /// When it will look next (`None` while it is looking).
    next_look: Option<Timestamp>,
}

impl SchedulerHandle {
    /// Something becomes due at `at`. Wakes the scheduler only if that is
    /// before it would look anyway: when it looks, it reads every due time
    /// from Postgres, so a burst of deferred requests costs no extra sweep.
    pub fn wake_at(&self, at: Timestamp) {
        let mut plan = self.plan.lock().expect("scheduler poisoned");
        if plan.next_look.is_some_and(|next| at >= next) {
            return;
        }
        if plan.earliest.is_none_or(|e| at < e) {
            plan.earliest = Some(at);
        }
        // While it is looking (`next_look` is `None`), it takes `earliest`
        // before it sleeps: no wake-up needed.
        if plan.next_look.take().is_some() {
            drop(plan);
            self.poke.notify_one();
        }
    }

    /// Takes what it was told and plans its next look: no later than that,
    /// no sooner than `floor`.
    fn plan_next_look(&self, until: Timestamp, floor: Timestamp) -> Timestamp {
        let mut plan = self.plan.lock().expect("scheduler poisoned");
        let next = plan
            .earliest
            .take()
            .map_or(until, |e| until.min(e))
            .max(floor);
        plan.next_look = Some(next);
        next
    }

    /// Marks the scheduler as looking.
    fn looking(&self) {
        self.plan.lock().expect("scheduler poisoned").next_look = None;
    }
}

/// Runs the scheduler loop until `shutdown`.
pub(super) async fn run(
    store: Store,
    stack: Stack,
    clock: SharedClock,
    handle: SchedulerHandle,
    sweep: Duration,
    shutdown: CancellationToken,
) {
    let sweep_ch = chrono::Duration::from_std(sweep).unwrap_or(chrono::Duration::seconds(1));
    loop {
        let now = clock.now();
        let mut until = now + sweep_ch;
        match store.due_workspaces(now, 256).await {
            Ok(due) => {
                for workspace in due {
                    let stack = stack.clone();
                    tokio::spawn(async move {
                        if let Err(err) = stack.oneshot(Intent::resume(workspace)).await {
                            tracing::warn!(%workspace, %err, "resuming a due cycle failed");
                        }
                    });
                }
                match store.next_due().await {
                    Ok(Some(next)) => until = until.min(next),
                    Ok(None) => {}
                    Err(err) => tracing::warn!(%err, "scheduler could not read the next due time"),
                }
            }
            Err(err) => tracing::warn!(%err, "scheduler sweep failed"),
        }
        // Never spin: whatever is "due" but not claimable (a live lease on
        // another replica) is looked at again shortly, not immediately.
        let until = handle.plan_next_look(until, now + chrono::Duration::milliseconds(20));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = clock.sleep_until(until) => {}
            _ = handle.poke.notified() => {}
        }
        handle.looking();
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn only_a_due_time_before_the_planned_look_wakes_the_scheduler() {
        let handle = SchedulerHandle::default();
        let t0 = chrono::Utc::now();
        let s = chrono::Duration::seconds;
        assert_eq!(handle.plan_next_look(t0 + s(10), t0), t0 + s(10));
        handle.wake_at(t0 + s(20));
        assert!(
            handle.poke.notified().now_or_never().is_none(),
            "due after the planned look: it will read it then"
        );
        handle.wake_at(t0 + s(5));
        assert!(
            handle.poke.notified().now_or_never().is_some(),
            "due before the planned look: woken"
        );
        // Told again before it looked: no second wake-up, the earliest kept.
        handle.wake_at(t0 + s(3));
        assert!(handle.poke.notified().now_or_never().is_none());
        assert_eq!(handle.plan_next_look(t0 + s(10), t0), t0 + s(3));
    }
}

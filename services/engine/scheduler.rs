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
    earliest: Arc<Mutex<Option<Timestamp>>>,
}

impl SchedulerHandle {
    /// Something becomes due at `at`.
    pub fn wake_at(&self, at: Timestamp) {
        let mut earliest = self.earliest.lock().expect("scheduler poisoned");
        if earliest.is_none_or(|e| at < e) {
            *earliest = Some(at);
        }
        drop(earliest);
        self.poke.notify_one();
    }

    fn take(&self) -> Option<Timestamp> {
        self.earliest.lock().expect("scheduler poisoned").take()
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
        if let Some(local) = handle.take() {
            until = until.min(local);
        }
        // Never spin: whatever is "due" but not claimable (a live lease on
        // another replica) is looked at again shortly, not immediately.
        until = until.max(now + chrono::Duration::milliseconds(20));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = clock.sleep_until(until) => {}
            _ = handle.poke.notified() => {}
        }
    }
}

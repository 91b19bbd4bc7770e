//! The retention loop: prunes history older than the configured age every
//! few minutes, batch by batch ([`Store::prune`]), on every replica (the
//! deletes are idempotent, so replicas need no coordination).
//! Contracts: C15 (history is bounded too); it never prunes what a contract reads.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{domain::clock::SharedClock, store::Store};

/// How often a pass runs.
const EVERY: Duration = Duration::from_secs(300);

/// Runs until `shutdown`, pruning what is older than `keep`.
pub(super) async fn run(
    store: Store,
    clock: SharedClock,
    keep: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let before =
            clock.now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        loop {
            match store.prune(before).await {
                Ok(pruned) => {
                    if pruned != Default::default() {
                        tracing::info!(?pruned, "pruned history");
                    }
                    if !pruned.full() || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "pruning history failed");
                    break;
                }
            }
        }
    }
}

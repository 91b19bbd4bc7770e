//! Time as the engine sees it. Debounce windows, burst deadlines and leases
//! are compared against timestamps that are also written to Postgres, so the
//! engine needs wall time, and tests need to move it by hand: the contract
//! suite runs against a real Postgres, where tokio's paused clock would fire
//! every timeout at once.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::domain::Timestamp;

/// A source of "now" that can also wait for a moment to come.
#[async_trait]
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// Resolves once `now() >= at`.
    async fn sleep_until(&self, at: Timestamp);
}

/// The shared handle every component holds.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock: what production uses, so replicas compare
/// leases and windows in one time base.
#[derive(Debug, Default, Clone, Copy)]
pub struct WallClock;

#[async_trait]
impl Clock for WallClock {
    fn now(&self) -> Timestamp {
        chrono::Utc::now()
    }

    async fn sleep_until(&self, at: Timestamp) {
        loop {
            let left = at - self.now();
            let Ok(left) = left.to_std() else { return };
            if left.is_zero() {
                return;
            }
            // Re-check after waking: the wall clock may have been stepped.
            tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        }
    }
}

/// A clock that moves only when a test advances it.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Timestamp>>,
    ticks: watch::Sender<Timestamp>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        let (ticks, _) = watch::channel(start);
        Self {
            now: Arc::new(Mutex::new(start)),
            ticks,
        }
    }

    /// Moves time forward and wakes every sleeper that is due.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().expect("clock poisoned");
        *now += chrono::Duration::from_std(by).expect("duration in range");
        self.ticks.send_replace(*now);
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().expect("clock poisoned")
    }

    async fn sleep_until(&self, at: Timestamp) {
        let mut ticks = self.ticks.subscribe();
        let _ = ticks.wait_for(|now| *now >= at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleepers_wake_only_when_advanced_past_their_time() {
        let clock = ManualClock::new(chrono::Utc::now());
        let due = clock.now() + chrono::Duration::seconds(60);
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(due).await }
        });
        clock.advance(Duration::from_secs(59));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("sleeper woke")
            .unwrap();
    }
}

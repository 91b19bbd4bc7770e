//! Time as the engine sees it. Debounce windows, burst deadlines and leases
//! are compared against timestamps that are also written to Postgres, so the
//! engine needs wall time, and tests need to move it by hand: the contract
//! suite runs against a real Postgres, where tokio's paused clock would fire
//! every timeout at once.
//! Contracts: C19.

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

/// The most a re-sync that moves the database clock back is held off by;
/// a larger step is taken as it comes.
const MAX_HOLD: chrono::Duration = chrono::Duration::seconds(1);

/// Postgres' clock, read from this process: an anchor (the database's
/// `now()` and this process's monotonic instant when it was read) advanced
/// by the monotonic clock (C19). Leases, windows and deadlines written by
/// one replica are compared by another, so they must share one time base:
/// the database's. A replica whose wall clock is minutes off, or is stepped
/// while it runs, still reads the database's time; the error is half a
/// round trip plus the drift between re-syncs. Once synced it never runs
/// backwards by a re-sync's correction (up to [`MAX_HOLD`]): a tighter
/// sample that moves the anchor back holds the time until it catches up,
/// so a due time written a moment ago is never in the future of the next
/// reading (a restart would look not yet due).
#[derive(Debug, Clone)]
pub struct DatabaseClock {
    anchor: Arc<Mutex<Anchor>>,
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    at: Timestamp,
    instant: tokio::time::Instant,
    /// The round trip of the sample: a tighter one replaces a looser one.
    rtt: Duration,
    /// The latest time read since the first sync: no reading goes below.
    floor: Option<Timestamp>,
}

impl Default for DatabaseClock {
    fn default() -> Self {
        Self::new()
    }
}

impl DatabaseClock {
    /// A clock anchored to the local wall clock until the first `sync`.
    pub fn new() -> Self {
        Self {
            anchor: Arc::new(Mutex::new(Anchor {
                at: chrono::Utc::now(),
                instant: tokio::time::Instant::now(),
                rtt: Duration::MAX,
                floor: None,
            })),
        }
    }

    /// Re-anchors to a reading of the database's time taken between `sent`
    /// and `received` (the reading is placed at the midpoint).
    pub fn sync(
        &self,
        db_now: Timestamp,
        sent: tokio::time::Instant,
        received: tokio::time::Instant,
    ) {
        let rtt = received.saturating_duration_since(sent);
        let instant = sent + rtt / 2;
        let mut anchor = self.anchor.lock().expect("clock poisoned");
        // Keep a tighter old sample unless it has aged (drift grows with age).
        let aged = instant.saturating_duration_since(anchor.instant) > Duration::from_secs(60);
        if rtt <= anchor.rtt || aged {
            // Before the first sync the time was the local wall clock's:
            // the database's replaces it, even backwards. So does a
            // database clock stepped back by more than `MAX_HOLD`: holding
            // the time that long would put this replica's leases and due
            // times ahead of every other replica's.
            let read = db_now
                + chrono::Duration::from_std(instant.elapsed()).unwrap_or(chrono::Duration::MAX);
            let floor = (anchor.rtt != Duration::MAX)
                .then_some(anchor.floor)
                .flatten()
                .filter(|floor| *floor - read <= MAX_HOLD);
            *anchor = Anchor {
                at: db_now,
                instant,
                rtt,
                floor,
            };
        }
    }
}

#[async_trait]
impl Clock for DatabaseClock {
    fn now(&self) -> Timestamp {
        let mut anchor = self.anchor.lock().expect("clock poisoned");
        let elapsed = anchor.instant.elapsed();
        let read = anchor.at + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX);
        let now = anchor.floor.map_or(read, |floor| floor.max(read));
        if anchor.rtt != Duration::MAX {
            anchor.floor = Some(now);
        }
        now
    }

    async fn sleep_until(&self, at: Timestamp) {
        loop {
            let Ok(left) = (at - self.now()).to_std() else {
                return;
            };
            if left.is_zero() {
                return;
            }
            // Re-check after waking: a re-sync may have moved the anchor.
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

    #[test]
    fn the_database_clock_follows_the_database_not_the_local_wall_clock() {
        let clock = DatabaseClock::new();
        let db_now = chrono::Utc::now() - chrono::Duration::minutes(5);
        let sent = tokio::time::Instant::now();
        clock.sync(db_now, sent, sent);
        let skew = (clock.now() - db_now).num_milliseconds();
        assert!((0..1000).contains(&skew), "read {skew} ms past the sample");
        // A looser sample does not replace a tighter, fresh one.
        let later = tokio::time::Instant::now();
        clock.sync(
            db_now + chrono::Duration::minutes(10),
            later,
            later + Duration::from_secs(2),
        );
        assert!(clock.now() < db_now + chrono::Duration::minutes(1));
    }

    #[test]
    fn the_database_clock_never_runs_backwards_once_synced() {
        let clock = DatabaseClock::new();
        let db_now = chrono::Utc::now();
        let sent = tokio::time::Instant::now();
        clock.sync(db_now, sent, sent + Duration::from_millis(40));
        let before = clock.now();
        // A tighter sample that places the database a second earlier.
        let again = tokio::time::Instant::now();
        clock.sync(db_now - chrono::Duration::seconds(1), again, again);
        let after = clock.now();
        assert!(after >= before, "ran back from {before} to {after}");
        assert!(after - before < chrono::Duration::milliseconds(500));
        // A database clock stepped back by minutes is followed, not held.
        let stepped = tokio::time::Instant::now();
        clock.sync(db_now - chrono::Duration::minutes(5), stepped, stepped);
        assert!(clock.now() < db_now - chrono::Duration::minutes(4));
    }

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

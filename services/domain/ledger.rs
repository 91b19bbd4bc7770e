//! The gate and follow-up state of one workspace, as the store keeps it on
//! the workspace row (C1, C2, C5, C7, C8): one cycle running at most, one
//! follow-up waiting at most. Only `engine::ledger` changes it.

use std::time::Duration;

use super::{CycleId, Desired, Generation, Goal, ReplicaId, Timestamp, Trigger};

/// The configured times the ledger works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// After a cycle starts, droppable triggers are dropped and config
    /// changes deferred for this long (C7).
    pub debounce_window: Duration,
    /// A file-write burst ends after this long without a write (C8).
    pub burst_quiet: Duration,
    /// A burst never holds its cycle back longer than this after its first
    /// write.
    pub burst_max_wait: Duration,
    /// How long a gate holder may stay silent before another replica may
    /// take its cycle over.
    pub lease_ttl: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            debounce_window: Duration::from_secs(60),
            burst_quiet: Duration::from_secs(5),
            burst_max_wait: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(15),
        }
    }
}

/// `t` plus `d`, saturating.
pub fn after(t: Timestamp, d: Duration) -> Timestamp {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// What a request asks of the workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Serve a (new) generation.
    Run,
    /// Be stopped.
    Stop,
    /// Be removed.
    Delete,
}

/// How the debounce treats a request (decided from its trigger).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Treatment {
    /// Runs as soon as the gate is free (MANUAL, CREATE, stop, delete).
    Urgent,
    /// Waits for the end of the debounce window (CONFIG_CHANGED).
    Deferred,
    /// Waits for the window and for a quiet moment in a burst (file writes).
    Burst,
    /// Dropped while a cycle runs or inside the window (HEALTH_PROBE,
    /// RECONCILER).
    DropIfBusy,
}

/// One request as the ledger sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmitRequest {
    /// What the request wants.
    pub ask: Ask,
    /// Who asked.
    pub trigger: Trigger,
    /// How the debounce treats it.
    pub treatment: Treatment,
}

/// Why a droppable request was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A cycle is in flight; its outcome will tell.
    CycleInFlight,
    /// Inside the debounce window after the last cycle start.
    Debounced,
    /// The workspace is stopped on purpose.
    NotRunning,
    /// The backend says the instance is still booting.
    InstanceBooting,
}

impl DropReason {
    /// Said to the caller and counted.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::CycleInFlight => "a cycle is in flight; its outcome will tell",
            Self::Debounced => "inside the debounce window after the last cycle start",
            Self::NotRunning => "the workspace is stopped",
            Self::InstanceBooting => "the instance is still booting",
        }
    }

    /// Its metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::CycleInFlight => "cycle_in_flight",
            Self::Debounced => "debounced",
            Self::NotRunning => "not_running",
            Self::InstanceBooting => "instance_booting",
        }
    }
}

/// What admitting a request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Opened the follow-up cycle `cycle`.
    Opened {
        /// The new cycle.
        cycle: CycleId,
        /// When it may start.
        due: Timestamp,
        /// The gate is free and it is due: try to claim it now.
        ready: bool,
    },
    /// Joined a cycle someone else asked for (the follow-up, or a running
    /// delete when this is a delete).
    Joined {
        /// The cycle that will serve this request.
        cycle: CycleId,
        /// When it may start.
        due: Timestamp,
        /// The gate is free and it is due: try to claim it now.
        ready: bool,
    },
    /// A config change on a stopped workspace: stored, no cycle.
    Stored,
    /// A delete of a workspace whose delete already completed: nothing to
    /// do, and nothing wrong with asking again (delete is idempotent, C17).
    AlreadyDeleted,
    /// Dropped; no cycle will run for this request.
    Dropped {
        /// Why.
        reason: DropReason,
        /// Until when requests like it will be dropped, when known.
        until: Option<Timestamp>,
    },
}

/// A request the ledger refuses outright.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The workspace is deleted (or being deleted).
    #[error("workspace is deleted")]
    Deleted,
}

impl From<Refusal> for super::Error {
    fn from(refusal: Refusal) -> Self {
        Self::FailedPrecondition(refusal.to_string())
    }
}

/// The cycle that holds the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    /// The cycle.
    pub cycle: CycleId,
    /// The replica holding the lease.
    pub owner: ReplicaId,
    /// The lease ends here unless renewed.
    pub lease_until: Timestamp,
    /// What the cycle does.
    pub goal: Goal,
    /// The generation it provisions (or the one it stops).
    pub generation: Generation,
    /// How many times a replica took it over.
    pub takeovers: u32,
}

/// A file-write burst collecting into the follow-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Burst {
    /// The first write.
    pub first_at: Timestamp,
    /// The latest write.
    pub last_at: Timestamp,
}

/// The follow-up cycle: admitted, not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The cycle (callers follow it by this id).
    pub cycle: CycleId,
    /// When the first request opened it.
    pub created_at: Timestamp,
    /// Some request in it must not wait for the window.
    pub urgent: bool,
    /// The file-write burst it collects, if any.
    pub burst: Option<Burst>,
}

/// A successful claim of the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The cycle that now holds the gate.
    pub cycle: CycleId,
    /// What it does.
    pub goal: Goal,
    /// The generation it provisions (or stops).
    pub generation: Generation,
    /// It was taken over from a replica whose lease expired.
    pub takeover: bool,
    /// How many times it was taken over so far.
    pub takeovers: u32,
}

/// The gate and follow-up state of one workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ledger {
    /// What the workspace should be.
    pub desired: Desired,
    /// The newest generation started.
    pub generation: Generation,
    /// The cycle holding the gate.
    pub running: Option<Running>,
    /// The follow-up cycle.
    pub pending: Option<Pending>,
    /// The debounce window opened by the last cycle start ends here.
    pub window_until: Option<Timestamp>,
    /// A delete cycle completed: nothing of the workspace is left (read
    /// from the row's status; the ledger never writes it).
    pub removed: bool,
}

impl Ledger {
    /// A workspace that has never run a cycle.
    pub fn new() -> Self {
        Self {
            desired: Desired::Running,
            generation: Generation(0),
            running: None,
            pending: None,
            window_until: None,
            removed: false,
        }
    }

    /// When the follow-up may start, if there is one.
    pub fn pending_due(&self, timing: &Timing) -> Option<Timestamp> {
        let pending = self.pending.as_ref()?;
        if pending.urgent {
            return Some(pending.created_at);
        }
        let mut due = pending.created_at;
        if let Some(burst) = pending.burst {
            let quiet = after(burst.last_at, timing.burst_quiet);
            let cap = after(burst.first_at, timing.burst_max_wait);
            due = due.max(quiet.min(cap));
        }
        if let Some(window) = self.window_until {
            due = due.max(window);
        }
        Some(due)
    }

    /// The gate holder's lease has run out: its cycle may be taken over.
    pub fn lease_expired(&self, now: Timestamp) -> bool {
        self.running.is_some_and(|r| r.lease_until <= now)
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

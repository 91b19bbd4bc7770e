//! What happens to workspaces, as events: the one vocabulary the store
//! publishes (through `NOTIFY`, in the transaction that made the change),
//! the engine's bus carries and the gRPC streams and metrics report (C13).

use serde::{Deserialize, Serialize};

use super::{
    ConfigVersion, CycleId, CycleState, Generation, Outcome, Phase, Timestamp, Trigger,
    WorkspaceId, WorkspaceStatus,
};

/// How a request was handled, as watchers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Handling {
    /// Started a cycle of its own.
    Accepted,
    /// Joined a follow-up.
    Coalesced,
    /// Waits for the window or a burst.
    Deferred,
    /// Dropped.
    Dropped,
}

impl Handling {
    /// How many ways a request can be handled (the counters' columns).
    pub const COUNT: usize = 4;

    /// Its column among the counters: accepted, coalesced, deferred,
    /// dropped.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One change to one workspace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// When.
    pub at: Timestamp,
    /// What.
    pub kind: EventKind,
}

impl Event {
    /// A cycle moved to `state` (no phase, no outcome yet).
    pub fn cycle(
        workspace: WorkspaceId,
        at: Timestamp,
        cycle: CycleId,
        generation: Generation,
        state: CycleState,
        config_version: ConfigVersion,
    ) -> Self {
        Self {
            workspace,
            at,
            kind: EventKind::Cycle {
                cycle,
                state,
                generation,
                phase: None,
                outcome: None,
                reason: String::new(),
                config_version,
            },
        }
    }

    /// The same cycle event, in `phase` (a running cycle's step).
    pub fn in_phase(mut self, phase: Phase) -> Self {
        if let EventKind::Cycle { phase: p, .. } = &mut self.kind {
            *p = Some(phase);
        }
        self
    }

    /// The same cycle event, ended with `outcome` (and why, for a failure).
    pub fn ended_with(mut self, outcome: Outcome, reason: &str) -> Self {
        if let EventKind::Cycle {
            outcome: o,
            reason: r,
            ..
        } = &mut self.kind
        {
            *o = Some(outcome);
            *r = reason.to_owned();
        }
        self
    }

    /// The workspace's status changed.
    pub fn status(
        workspace: WorkspaceId,
        at: Timestamp,
        status: WorkspaceStatus,
        reason: &str,
        generation: Generation,
    ) -> Self {
        Self {
            workspace,
            at,
            kind: EventKind::Status {
                status,
                reason: reason.to_owned(),
                generation,
            },
        }
    }
}

/// What changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// The status changed.
    Status {
        /// New status.
        status: WorkspaceStatus,
        /// Why (for FAILED).
        reason: String,
        /// The generation it concerns.
        generation: Generation,
    },
    /// A cycle was admitted, started, moved on, or ended.
    Cycle {
        /// The cycle.
        cycle: CycleId,
        /// Its state.
        state: CycleState,
        /// Its generation (once started).
        generation: Generation,
        /// Its phase, while running.
        phase: Option<Phase>,
        /// How it ended.
        outcome: Option<Outcome>,
        /// Why it ended so (for failures).
        reason: String,
        /// The config version it read.
        config_version: ConfigVersion,
    },
    /// A request was handled.
    Trigger {
        /// Who asked.
        trigger: Trigger,
        /// What happened to it.
        handling: Handling,
        /// The cycle that serves it, if any.
        cycle: Option<CycleId>,
        /// Why (for drops).
        reason: String,
        /// How many requests were handled alike in one admission.
        count: u32,
    },
    /// A generation's agent registered.
    Agent {
        /// Its generation.
        generation: Generation,
        /// The config version it booted with.
        config_version: ConfigVersion,
        /// Where it can be reached.
        endpoint: String,
    },
    /// The listener lost and regained its connection: events may have been
    /// missed, so subscribers should re-read state.
    Resync,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_json() {
        let e = Event {
            workspace: WorkspaceId::new(),
            at: chrono::Utc::now(),
            kind: EventKind::Cycle {
                cycle: CycleId::new(),
                state: CycleState::Ended,
                generation: Generation(3),
                phase: None,
                outcome: Some(Outcome::Failed),
                reason: "deadline".into(),
                config_version: ConfigVersion(9),
            },
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
    }
}

//! The vocabulary of a cycle's life: its state, its phase, how it ended.
//! Contracts: C6, C17 (every cycle ends in one of these ways).

use serde::{Deserialize, Serialize};

use super::{ConfigVersion, WorkspaceStatus};

/// Where a cycle is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CycleState {
    /// Admitted; waits for the gate, the window or a burst.
    Pending,
    /// Holds the gate.
    Running,
    /// Done; see the outcome.
    Ended,
}

/// The step a running cycle is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Stopping the old instance.
    Stopping,
    /// Starting the new generation.
    Provisioning,
    /// Waiting for the new generation's agent to register.
    WaitingForAgent,
}

/// How a cycle ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Its generation's agent registered: ONLINE.
    Succeeded,
    /// Backend error, deadline, panic, or lost gate.
    Failed,
    /// The workspace is stopped.
    Stopped,
    /// The workspace is deleted.
    Deleted,
}

named_enum!(CycleState { Pending => "PENDING", Running => "RUNNING", Ended => "ENDED" });
named_enum!(Phase { Stopping => "STOPPING", Provisioning => "PROVISIONING", WaitingForAgent => "WAITING_FOR_AGENT" });
named_enum!(Outcome { Succeeded => "SUCCEEDED", Failed => "FAILED", Stopped => "STOPPED", Deleted => "DELETED" });

/// How a cycle ends, as the guard records it.
#[derive(Clone, Debug)]
pub enum Finish {
    /// The generation's agent registered with `config_version`.
    Online {
        /// What the agent booted with.
        config_version: ConfigVersion,
    },
    /// The cycle failed.
    Failed {
        /// Why, safe to show.
        reason: String,
    },
    /// The workspace was stopped.
    Stopped,
    /// The workspace was deleted.
    Deleted,
}

impl Finish {
    /// The outcome recorded for this end.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Online { .. } => Outcome::Succeeded,
            Self::Failed { .. } => Outcome::Failed,
            Self::Stopped => Outcome::Stopped,
            Self::Deleted => Outcome::Deleted,
        }
    }

    /// The workspace status this end leaves.
    pub fn status(&self) -> WorkspaceStatus {
        match self {
            Self::Online { .. } => WorkspaceStatus::Online,
            Self::Failed { .. } => WorkspaceStatus::Failed,
            Self::Stopped => WorkspaceStatus::Stopped,
            Self::Deleted => WorkspaceStatus::Deleted,
        }
    }

    /// Why, for a failure; empty otherwise.
    pub fn reason(&self) -> &str {
        match self {
            Self::Failed { reason } => reason,
            _ => "",
        }
    }
}

//! The vocabulary of a cycle's life: its state, its phase, how it ended.

use serde::{Deserialize, Serialize};

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

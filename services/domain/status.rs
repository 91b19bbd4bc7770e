//! What a workspace should be (desired), what it is (status), and what a
//! cycle will do about the difference (goal).
//! Contracts: C6, C10.

/// What the last request asked the workspace to be. A cycle decides its goal
/// from this when it starts, so a stop that arrives while a restart waits
/// wins without a second cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Desired {
    /// Serve: provision a generation.
    Running,
    /// Stopped on purpose.
    Stopped,
    /// Gone for good; every later request is refused.
    Deleted,
}

/// What one cycle does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Goal {
    /// Stop the old instance, start a new generation, wait for its agent.
    Provision,
    /// Stop the instance.
    Stop,
    /// Stop the instance and remove the workspace.
    Delete,
}

/// The observed status of a workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WorkspaceStatus {
    /// A provisioning cycle is in flight.
    Provisioning,
    /// The current generation's agent registered.
    Online,
    /// A stop or delete cycle is in flight.
    Stopping,
    /// No instance runs, on purpose.
    Stopped,
    /// The last cycle failed; see the reason.
    Failed,
    /// Removed.
    Deleted,
}

named_enum!(Desired { Running => "running", Stopped => "stopped", Deleted => "deleted" });
named_enum!(Goal { Provision => "provision", Stop => "stop", Delete => "delete" });
named_enum!(WorkspaceStatus {
    Provisioning => "PROVISIONING",
    Online => "ONLINE",
    Stopping => "STOPPING",
    Stopped => "STOPPED",
    Failed => "FAILED",
    Deleted => "DELETED",
});

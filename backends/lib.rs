//! Where workspaces run.
//!
//! A backend turns "run generation *g* of workspace *w* with this config"
//! into a child process, a container or a VM, and reports what it sees. It
//! knows nothing of gates, debounce or cycles: the engine above it guarantees
//! that at most one `stop`/`start` runs per workspace at a time, and the
//! backend guarantees that `stop` leaves nothing of the workspace running and
//! that its [`InstanceState`] keeps *booting* apart from *dead*, so a health
//! probe never mistakes a slow boot for a crash.

pub mod docker;
pub mod ec2;
mod error;
mod ids;
mod launch;
pub mod process;
mod state;

use async_trait::async_trait;

pub use error::BackendError;
pub use ids::{BackendKind, ConfigVersion, Generation, WorkspaceId};
pub use launch::{AgentToken, Launch, Secret, WorkspaceSpec};
pub use state::{InstancePhase, InstanceState};

/// Runs workspace instances for one [`BackendKind`].
///
/// Every method is idempotent so a cycle that is retried after a crash, or
/// taken over by another replica, can call it again safely.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The kind of workspace this backend runs.
    fn kind(&self) -> BackendKind;

    /// Starts `launch.generation`. The instance must come up with exactly the
    /// config in `launch` and be labelled with the workspace and generation.
    async fn start(&self, launch: &Launch) -> Result<(), BackendError>;

    /// Stops every instance of the workspace, of any generation, and waits
    /// until none is left running. Succeeds when there is nothing to stop.
    async fn stop(&self, workspace: WorkspaceId) -> Result<(), BackendError>;

    /// Stops the workspace and removes everything the backend keeps for it.
    async fn delete(&self, workspace: WorkspaceId) -> Result<(), BackendError> {
        self.stop(workspace).await
    }

    /// What the backend sees for the workspace right now.
    async fn state(&self, workspace: WorkspaceId) -> Result<InstanceState, BackendError>;

    /// Removes instances of the workspace from generations older than
    /// `current` (leftovers of a crash between launching a generation and
    /// removing its predecessor); returns how many. Never touches `current`
    /// or newer: a newer one may belong to a cycle that is starting now.
    /// Backends that name their one instance per workspace (process,
    /// docker) cannot hold strays and keep this default.
    async fn remove_strays(
        &self,
        _workspace: WorkspaceId,
        _current: Generation,
    ) -> Result<usize, BackendError> {
        Ok(0)
    }
}

//! Where workspaces run: the [`Backend`] trait every backend implements,
//! addressing instances per generation (C18), listing all of them for the
//! collector (C17), and telling *booting* from *dead* (C9).
//!
//! A backend turns "run generation *g* of workspace *w* with this config"
//! into a child process, a container or a VM, and reports what it sees. It
//! knows nothing of gates, debounce or cycles. What it does guarantee is
//! that instances are addressed per generation (C18): a start removes only
//! strictly older generations and a stop only those up to the generation it
//! names, so a stale owner's late call can never touch a newer generation's
//! instance; that every instance it manages can be listed, so a garbage
//! collector can remove whatever is not serving (C17); and that its
//! [`InstanceState`] keeps *booting* apart from *dead*, so a health probe
//! never mistakes a slow boot for a crash.

pub mod docker;
pub mod ec2;
mod error;
mod footprint;
mod ids;
mod launch;
pub mod process;
mod state;

use async_trait::async_trait;

pub use error::{BackendError, LimitExceeded, SpecRejected};
pub use footprint::{ConfigFootprint, MAX_SERVICE_URL, MAX_TOKEN};
pub use ids::{BackendKind, ConfigVersion, Generation, WorkspaceId};
pub use launch::{AgentToken, Launch, Secret, WorkspaceSpec};
pub use state::{InstancePhase, InstanceRef, InstanceState};

/// How hard a stop is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Halt {
    /// SIGTERM, the configured grace, then SIGKILL (process); `docker stop`
    /// with the grace (docker); terminate (EC2).
    Graceful,
    /// SIGKILL at once (process); forced removal (docker); terminate (EC2).
    /// For an instance whose cycle failed: it gets no grace to linger in.
    Force,
}

impl Halt {
    /// `graceful` or `force`, as journals and logs spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Graceful => "graceful",
            Self::Force => "force",
        }
    }
}

/// Runs workspace instances for one [`BackendKind`].
///
/// Every method is idempotent so a cycle that is retried after a crash, or
/// taken over by another replica, can call it again safely.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The kind of workspace this backend runs.
    fn kind(&self) -> BackendKind;

    /// Refuses a config this backend could never boot, naming the limit
    /// (EC2: the user data would exceed 16 KiB). A tight upper bound
    /// computed from the footprint alone: when it says `Ok`, `start` never
    /// fails for size, so admission can refuse a change before it commits —
    /// save on Docker, whose image may carry more than the 8 KiB of its own
    /// environment counted here (its start then names the limit before
    /// creating anything).
    /// (Required, as `check_spec`, so a wrapper cannot forget to forward
    /// it.)
    fn admits(&self, footprint: &ConfigFootprint) -> Result<(), LimitExceeded>;

    /// Refuses a spec this backend could never run (an image reference or
    /// resources its engine refuses), naming the field: checked when the
    /// workspace is created, so a create that could only fail in its first
    /// cycle is refused and stores nothing.
    fn check_spec(&self, spec: &WorkspaceSpec) -> Result<(), SpecRejected>;

    /// Starts `launch.generation`: first stops and removes the instances of
    /// strictly older generations; never touches the same or a newer one. A
    /// start of a generation that already runs is a no-op (a retry); a
    /// start for which a newer generation exists is refused
    /// ([`BackendError::Superseded`]).
    async fn start(&self, launch: &Launch) -> Result<(), BackendError>;

    /// Stops and removes every instance of `workspace` whose generation is
    /// at most `through` (an instance without a generation label counts as
    /// older than everything). Newer generations are untouched. `Ok` when
    /// nothing is left to stop.
    async fn stop(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError>;

    /// [`Backend::stop`], then removes everything the backend keeps for the
    /// workspace. Idempotent: deleting twice, or what is gone, is `Ok`.
    /// By default only [`Backend::stop`]: for a backend whose instances are
    /// all it keeps of a workspace (Docker's containers, EC2's instances).
    async fn delete(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError> {
        self.stop(workspace, through, halt).await
    }

    /// What the backend sees of the workspace's newest instance.
    async fn state(&self, workspace: WorkspaceId) -> Result<InstanceState, BackendError>;

    /// Every instance this backend manages, of every workspace, for the
    /// garbage collector.
    async fn inventory(&self) -> Result<Vec<InstanceRef>, BackendError>;
}

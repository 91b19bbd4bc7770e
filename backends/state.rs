//! What a backend sees of a workspace's instance. The one rule that matters
//! (C9): an instance that is still booting is `Pending`, never `Stopped` or
//! `Missing`, so nobody restarts a workspace that is merely slow to start.

use crate::{Generation, WorkspaceId};

/// The lifecycle phase of an instance as the backend reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstancePhase {
    /// Nothing exists for the workspace.
    Missing,
    /// Created and booting (EC2 `pending`, a container being created).
    Pending,
    /// Up.
    Running,
    /// On its way down (EC2 `stopping`/`shutting-down`, container removing).
    Stopping,
    /// Down on purpose or after a clean exit.
    Stopped,
    /// Down after a crash or error.
    Failed(String),
}

/// An instance's phase and the generation it was labelled with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceState {
    /// The phase the backend reports.
    pub phase: InstancePhase,
    /// The generation label of the instance, when one exists.
    pub generation: Option<Generation>,
}

impl InstanceState {
    /// No instance at all.
    pub fn missing() -> Self {
        Self {
            phase: InstancePhase::Missing,
            generation: None,
        }
    }

    /// An instance of `generation` in `phase`.
    pub fn of(generation: Generation, phase: InstancePhase) -> Self {
        Self {
            phase,
            generation: Some(generation),
        }
    }

    /// Still coming up: a health probe must not treat it as dead.
    pub fn is_booting(&self) -> bool {
        matches!(self.phase, InstancePhase::Pending)
    }

    /// Gone or going: the workspace needs a new instance to serve.
    pub fn is_down(&self) -> bool {
        matches!(
            self.phase,
            InstancePhase::Missing | InstancePhase::Stopped | InstancePhase::Failed(_)
        )
    }
}

/// One instance a backend manages, as its inventory lists it (for the
/// garbage collector, which removes every instance that is not the serving
/// generation of a live workspace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRef {
    /// The workspace it belongs to.
    pub workspace: WorkspaceId,
    /// Its generation label (`None`: unlabelled, older than everything).
    pub generation: Option<Generation>,
    /// What the backend sees of it.
    pub phase: InstancePhase,
}

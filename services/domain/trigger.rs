//! What asked for a cycle. The trigger decides how the debounce treats a
//! request (SPEC C7), so it is an enum, never a free string.

use serde::{Deserialize, Serialize};

/// The source of a request for a cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Trigger {
    /// An operator. Never debounced.
    Manual,
    /// A secret, file or spec mutation. Deferred, never dropped.
    ConfigChanged,
    /// A caller reports the workspace unreachable. Droppable.
    HealthProbe,
    /// Drift the service found itself. Droppable.
    Reconciler,
    /// The first provisioning of a workspace.
    Create,
}

named_enum!(Trigger {
    Manual => "MANUAL",
    ConfigChanged => "CONFIG_CHANGED",
    HealthProbe => "HEALTH_PROBE",
    Reconciler => "RECONCILER",
    Create => "CREATE",
});

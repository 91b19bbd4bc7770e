//! A container as the engine lists it, read through its workspace and
//! generation labels, by which every call addresses it (C18).

use std::time::Duration;

use bollard::models::ContainerSummary;

use super::{LABEL_GENERATION, LABEL_WORKSPACE};
use crate::{Generation, WorkspaceId};

/// A managed container, as listed.
#[derive(Debug)]
pub(super) struct Found {
    pub(super) id: String,
    pub(super) workspace: Option<WorkspaceId>,
    pub(super) generation: Option<Generation>,
    /// `created`, `running`, `exited`, …
    pub(super) status: String,
    /// The listing's status text (`Exited (3) 5 seconds ago`).
    pub(super) status_text: String,
    /// Creation time, seconds since the epoch.
    pub(super) created: Option<i64>,
}

impl Found {
    pub(super) fn from_summary(c: ContainerSummary) -> Option<Self> {
        let label = |key| c.labels.as_ref().and_then(|l| l.get(key));
        Some(Self {
            workspace: label(LABEL_WORKSPACE).and_then(|w| w.parse().ok()),
            generation: label(LABEL_GENERATION)
                .and_then(|g| g.parse().ok())
                .map(Generation),
            status: c.state.map(|s| s.to_string()).unwrap_or_default(),
            status_text: c.status.unwrap_or_default(),
            created: c.created,
            id: c.id?,
        })
    }

    pub(super) fn running(&self) -> bool {
        matches!(self.status.as_str(), "running" | "restarting")
    }

    /// At most `through` (unlabelled: older than everything).
    pub(super) fn at_most(&self, through: Generation) -> bool {
        self.generation.is_none_or(|g| g <= through)
    }

    /// Strictly older than `generation` (unlabelled: older than everything).
    pub(super) fn older_than(&self, generation: Generation) -> bool {
        self.generation.is_none_or(|g| g < generation)
    }
}

/// Seconds since the epoch as the engine's clock reads them; the engine
/// runs on this machine.
pub(super) fn age_since(created_epoch_s: i64) -> Option<Duration> {
    let now = chrono::Utc::now().timestamp();
    u64::try_from(now - created_epoch_s)
        .ok()
        .map(Duration::from_secs)
}

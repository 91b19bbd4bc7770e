//! An instance as the backend reads it: its workspace and generation from
//! its tags, by which every call addresses it (C18), and its state as a
//! phase that keeps EC2's `pending` window apart from a dead instance (C9).

use aws_sdk_ec2::types::{Instance, InstanceStateName};

use super::TAG_GENERATION;
use crate::{Generation, InstancePhase};

/// The value of tag `key`, if the instance carries it.
pub(super) fn tag(instance: &Instance, key: &str) -> Option<String> {
    instance
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value().map(str::to_owned))
}

/// The generation an instance was launched for; `None` for one without the
/// tag, which counts as older than every generation.
pub(super) fn generation_of(instance: &Instance) -> Option<Generation> {
    tag(instance, TAG_GENERATION)
        .and_then(|g| g.parse().ok())
        .map(Generation)
}

/// EC2's instance state as an [`InstancePhase`]: `pending` is booting,
/// never dead, so a health probe cannot mistake it for a crash (C9).
pub(super) fn phase_of(instance: &Instance) -> InstancePhase {
    match instance.state().and_then(|s| s.name()) {
        Some(InstanceStateName::Pending) => InstancePhase::Pending,
        Some(InstanceStateName::Running) => InstancePhase::Running,
        Some(InstanceStateName::Stopping | InstanceStateName::ShuttingDown) => {
            InstancePhase::Stopping
        }
        Some(InstanceStateName::Stopped) => InstancePhase::Stopped,
        Some(InstanceStateName::Terminated) | None => InstancePhase::Missing,
        Some(other) => InstancePhase::Failed(format!("instance state {}", other.as_str())),
    }
}

//! A backend's limits, checked at admission (C17): a change that would make
//! the workspace's config larger than its backend can ever boot (EC2: the
//! user data's 16 KiB) is refused, naming the limit, before anything is
//! stored — instead of being acknowledged and failing every cycle after.

use std::sync::Arc;

use workspace_backends::{ConfigFootprint, LimitExceeded};

use super::Store;
use crate::domain::{BackendKind, Error, WorkspaceSpec, change::Change};

/// Asks the workspace's backend whether it could boot a config this size.
pub type LimitCheck =
    Arc<dyn Fn(BackendKind, &ConfigFootprint) -> Result<(), LimitExceeded> + Send + Sync>;

/// Sealing adds this many bytes (the AEAD tag) to every secret value.
pub(super) const SEAL_OVERHEAD: i32 = 16;

impl Store {
    /// Sets the check admission applies to config changes (once; the
    /// engine does it when it starts with its backends).
    pub fn set_limits(&self, check: LimitCheck) {
        let _ = self.limits.set(check);
    }

    /// Refuses a new workspace whose spec alone its backend could never
    /// boot (its environment past EC2's user data or an `execve`), before
    /// it is created.
    pub fn check_spec(&self, backend: BackendKind, spec: &WorkspaceSpec) -> Result<(), Error> {
        let Some(limits) = self.limits.get() else {
            return Ok(());
        };
        limits(backend, &spec_footprint(spec, &ConfigFootprint::default()))
            .map_err(|exceeded| Error::Exhausted(exceeded.to_string()))
    }
}

/// The footprint of `spec` with the files and secrets of `others`.
fn spec_footprint(spec: &WorkspaceSpec, others: &ConfigFootprint) -> ConfigFootprint {
    ConfigFootprint {
        env: spec.env.len(),
        env_name_bytes: spec.env.keys().map(String::len).sum(),
        env_value_bytes: spec.env.values().map(String::len).sum(),
        command_args: spec.command.len(),
        command_bytes: spec.command.iter().map(String::len).sum(),
        ..*others
    }
}

/// Refuses `change` if the workspace's config with it would exceed its
/// backend's limits. `others` is the stored config without the entry the
/// change replaces (sizes only, never values).
pub(super) fn check(
    store: &Store,
    backend: BackendKind,
    spec: &WorkspaceSpec,
    others: &ConfigFootprint,
    change: &Change,
) -> Result<(), Error> {
    let Some(limits) = store.limits.get() else {
        return Ok(());
    };
    let mut footprint = spec_footprint(spec, others);
    match change {
        Change::WriteFile { path, content } => {
            footprint.files += 1;
            footprint.file_bytes += content.len();
            footprint.path_bytes += path.len();
        }
        Change::SetSecret { name, value } => {
            footprint.secrets += 1;
            footprint.secret_name_bytes += name.len();
            footprint.secret_value_bytes += value.expose().len();
        }
        // Smaller never hurts.
        Change::DeleteSecret { .. } | Change::DeleteFile { .. } => return Ok(()),
    }
    limits(backend, &footprint).map_err(|exceeded| Error::Exhausted(exceeded.to_string()))
}

/// Whether a limit check needs the workspace's spec at all.
pub(super) fn enforced(store: &Store) -> bool {
    store.limits.get().is_some()
}

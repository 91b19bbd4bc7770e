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
/// backend's limits, unless the config was already past them and the change
/// adds nothing to what they count (a file on a backend whose limit is the
/// exec, a shorter secret): such a change makes nothing worse. `stored` is
/// the stored config, `others` the same without the entry the change
/// replaces (sizes only, never values).
pub(super) fn check(
    store: &Store,
    backend: BackendKind,
    spec: &WorkspaceSpec,
    stored: &ConfigFootprint,
    others: &ConfigFootprint,
    change: &Change,
) -> Result<(), Error> {
    let Some(limits) = store.limits.get() else {
        return Ok(());
    };
    judge(limits.as_ref(), backend, spec, stored, others, change)
}

/// [`check`] with the backend's limits given.
fn judge(
    limits: &(dyn Fn(BackendKind, &ConfigFootprint) -> Result<(), LimitExceeded> + Send + Sync),
    backend: BackendKind,
    spec: &WorkspaceSpec,
    stored: &ConfigFootprint,
    others: &ConfigFootprint,
    change: &Change,
) -> Result<(), Error> {
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
    let Err(exceeded) = limits(backend, &footprint) else {
        return Ok(());
    };
    match limits(backend, &spec_footprint(spec, stored)) {
        Err(before) if exceeded.needed <= before.needed => Ok(()),
        _ => Err(Error::Exhausted(exceeded.to_string())),
    }
}

/// Whether a limit check needs the workspace's spec at all.
pub(super) fn enforced(store: &Store) -> bool {
    store.limits.get().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Secret;

    /// A backend whose limit counts secret bytes only (as the exec does
    /// not count files), at most 100.
    fn limit(_: BackendKind, f: &ConfigFootprint) -> Result<(), LimitExceeded> {
        let needed = f.secret_name_bytes + f.secret_value_bytes;
        if needed > 100 {
            return Err(LimitExceeded {
                limit: "test.bytes",
                max: 100,
                needed: needed as u64,
            });
        }
        Ok(())
    }

    fn set(name: &str, len: usize) -> Change {
        Change::SetSecret {
            name: name.into(),
            value: Secret::new("x".repeat(len)),
        }
    }

    #[test]
    fn a_change_past_the_limit_is_refused_unless_the_config_was_past_it_and_it_adds_nothing() {
        let spec = WorkspaceSpec::default();
        let judge = |stored: ConfigFootprint, others: ConfigFootprint, change: &Change| {
            judge(
                &limit,
                BackendKind::Process,
                &spec,
                &stored,
                &others,
                change,
            )
        };
        let within = ConfigFootprint {
            secrets: 1,
            secret_name_bytes: 1,
            secret_value_bytes: 49,
            ..Default::default()
        };
        assert_eq!(judge(within, within, &set("B", 40)), Ok(()));
        assert!(matches!(
            judge(within, within, &set("B", 60)),
            Err(Error::Exhausted(m)) if m.contains("test.bytes")
        ));
        // Already past (say, from before an upgrade): what adds nothing the
        // limit counts goes through; what adds to it does not.
        let past = ConfigFootprint {
            secret_value_bytes: 149,
            ..within
        };
        let file = Change::WriteFile {
            path: "f".into(),
            content: vec![0; 10],
        };
        assert_eq!(judge(past, past, &file), Ok(()));
        let without_a = ConfigFootprint::default();
        assert_eq!(judge(past, without_a, &set("A", 120)), Ok(()), "shorter");
        assert!(judge(past, past, &set("B", 1)).is_err(), "longer");
    }
}

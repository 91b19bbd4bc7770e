//! A backend's limits, checked at admission (C17): a change that would make
//! the workspace's config larger than its backend can ever boot (EC2: the
//! user data's 16 KiB) is refused, naming the limit, before anything is
//! stored — instead of being acknowledged and failing every cycle after.

use std::sync::Arc;

use deadpool_postgres::GenericClient;
use workspace_backends::{ConfigFootprint, LimitExceeded};

use super::{Store, db, rows::parse};
use crate::domain::Error;
use crate::{
    domain::change::Change,
    domain::{BackendKind, WorkspaceId, WorkspaceSpec},
};

/// Asks the workspace's backend whether it could boot a config this size.
pub type LimitCheck =
    Arc<dyn Fn(BackendKind, &ConfigFootprint) -> Result<(), LimitExceeded> + Send + Sync>;

/// Sealing adds this many bytes (the AEAD tag) to every secret value.
const SEAL_OVERHEAD: i32 = 16;

impl Store {
    /// Sets the check admission applies to config changes (once; the
    /// engine does it when it starts with its backends).
    pub fn set_limits(&self, check: LimitCheck) {
        let _ = self.limits.set(check);
    }
}

/// Refuses `change` if the workspace's config with it would exceed its
/// backend's limits. Reads sizes only, never values.
pub(super) async fn check(
    tx: &impl GenericClient,
    store: &Store,
    workspace: WorkspaceId,
    change: &Change,
) -> Result<(), Error> {
    let Some(limits) = store.limits.get() else {
        return Ok(());
    };
    let (path, name) = match change {
        Change::WriteFile { path, .. } => (path.as_str(), ""),
        Change::SetSecret { name, .. } => ("", name.as_str()),
        // Smaller never hurts.
        Change::DeleteSecret { .. } | Change::DeleteFile { .. } => return Ok(()),
    };
    let statement = tx
        .prepare_cached(
            "SELECT w.backend, w.spec, f.n, f.bytes, f.path_bytes, s.n, s.name_bytes, s.value_bytes
             FROM workspaces w,
             LATERAL (SELECT count(*) AS n,
                             coalesce(sum(length(content)), 0)::bigint AS bytes,
                             coalesce(sum(octet_length(path)), 0)::bigint AS path_bytes
                      FROM files WHERE workspace_id = w.id AND path <> $2) f,
             LATERAL (SELECT count(*) AS n,
                             coalesce(sum(octet_length(name)), 0)::bigint AS name_bytes,
                             coalesce(sum(greatest(length(value) - $4, 0)), 0)::bigint AS value_bytes
                      FROM secrets WHERE workspace_id = w.id AND name <> $3) s
             WHERE w.id = $1",
        )
        .await
        .map_err(db)?;
    let row = tx
        .query_one(
            &statement,
            &[&workspace.as_uuid(), &path, &name, &SEAL_OVERHEAD],
        )
        .await
        .map_err(db)?;
    let backend: BackendKind = parse(row.get::<_, &str>(0))?;
    let spec: WorkspaceSpec = serde_json::from_value(row.get(1))
        .map_err(|e| Error::Internal(format!("stored spec: {e}")))?;
    let count = |i: usize| row.get::<_, i64>(i) as usize;
    let mut footprint = ConfigFootprint {
        files: count(2),
        file_bytes: count(3),
        path_bytes: count(4),
        secrets: count(5),
        secret_name_bytes: count(6),
        secret_value_bytes: count(7),
        env: spec.env.len(),
        env_name_bytes: spec.env.keys().map(String::len).sum(),
        env_value_bytes: spec.env.values().map(String::len).sum(),
        command_args: spec.command.len(),
        command_bytes: spec.command.iter().map(String::len).sum(),
    };
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
        Change::DeleteSecret { .. } | Change::DeleteFile { .. } => {}
    }
    limits(backend, &footprint).map_err(|exceeded| Error::Exhausted(exceeded.to_string()))
}

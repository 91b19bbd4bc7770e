//! One transaction admitting the batches of many workspaces at once — the
//! store's half of group commit (C2, C12, C13). New workspaces are inserted
//! in one statement; every row is locked in id order in one statement (two
//! groups locking overlapping sets never wait on each other in a cycle),
//! with the config of the workspaces that change it read right after, under
//! the lock, in the same round trip; at the end every write of the group
//! goes out pipelined and the group commits. A failed statement rolls the
//! whole group back: the engine then admits each workspace on its own.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{
    Connection, Locked, Store, admission,
    admission::WorkspaceWrites,
    config_state::ConfigState,
    db, limits,
    open_tx::{Guarded, OpenTx},
    rows,
    rows::RowVersion,
    rows::parse,
};
use crate::domain::{Error, Timestamp, WorkspaceId, WorkspaceSpec, change::Creation};

/// A workspace locked for admission.
pub struct Admitting<'a> {
    /// Its ledger and config version.
    pub locked: Locked,
    /// Its config's names and sizes (read when the batch changes it).
    pub config: Option<ConfigState<'a>>,
}

/// A transaction about a group of workspaces, open until `commit` (dropped:
/// rolled back, nothing written). Its `BEGIN` goes out with its first
/// statement (`open_tx.rs`).
pub struct GroupTx {
    tx: OpenTx,
    store: Store,
}

impl GroupTx {
    /// A transaction on `conn`, opened by its first statement.
    pub fn begin(conn: Connection, store: &Store) -> Self {
        Self {
            tx: OpenTx::new(conn),
            store: store.clone(),
        }
    }

    /// Inserts new workspaces, in one statement; for each, whether it was
    /// inserted (`false`: a live workspace already has its name).
    pub async fn insert_workspaces(
        &self,
        creations: &[(WorkspaceId, &Creation)],
        now: Timestamp,
    ) -> Result<Vec<bool>, Error> {
        if creations.is_empty() {
            return Ok(Vec::new());
        }
        let mut specs = Vec::with_capacity(creations.len());
        for (_, creation) in creations {
            specs.push(
                serde_json::to_value(&creation.spec)
                    .map_err(|e| Error::Internal(format!("spec: {e}")))?,
            );
        }
        let ids: Vec<Uuid> = creations.iter().map(|(id, _)| id.as_uuid()).collect();
        let names: Vec<&str> = creations.iter().map(|(_, c)| c.name.as_str()).collect();
        let backends: Vec<&str> = creations.iter().map(|(_, c)| c.backend.as_str()).collect();
        let params: [&(dyn ToSql + Sync); 5] = [&ids, &names, &backends, &specs, &now];
        let ((), inserted) = futures::try_join!(
            self.tx.opening(),
            super::query(
            self.tx.client(),
            "INSERT INTO workspaces (id, name, backend, spec, created_at, updated_at, status)
             SELECT id, name, backend, spec, $5, $5, 'PROVISIONING'
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[]) AS t (id, name, backend, spec)
             ON CONFLICT (name) WHERE desired <> 'deleted' DO NOTHING
             RETURNING id",
            &params,
        ))?;
        let inserted: std::collections::HashSet<Uuid> =
            inserted.iter().map(|row| row.get(0)).collect();
        Ok(ids.iter().map(|id| inserted.contains(id)).collect())
    }

    /// Locks the rows of `ids` and reads the config of those in `configs`
    /// (sizes only), in one round trip. A workspace that does not exist is
    /// missing from the answer; so is, if `wait` is false, one whose row
    /// another transaction holds right now (a group never waits on one
    /// workspace's lock: that workspace is admitted on its own instead).
    pub async fn lock<'a>(
        &self,
        ids: &[WorkspaceId],
        configs: &[WorkspaceId],
        wait: bool,
    ) -> Result<HashMap<WorkspaceId, Admitting<'a>>, Error> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let tx = self.tx.client();
        let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
        let configs: Vec<Uuid> = configs.iter().map(|id| id.as_uuid()).collect();
        let with_spec = limits::enforced(&self.store);
        // Prepared first, so the reads below go out in this order, the lock
        // first: Postgres runs them in order, the reads once it is held.
        // The secrets' and files' sizes in one statement (a secret is
        // `true` in the first column): one statement fewer per group.
        let (lock, specs, entries) =
            futures::try_join!(
            tx.prepare_cached(if wait { rows::LOCK_ALL } else { rows::LOCK_FREE }),
            tx.prepare_cached(
                "SELECT id, backend, CASE WHEN $2 THEN spec END FROM workspaces WHERE id = ANY($1)"
            ),
            tx.prepare_cached(
                "SELECT true, workspace_id, name, greatest(length(value) - $2, 0)
                 FROM secrets WHERE workspace_id = ANY($1)
                 UNION ALL
                 SELECT false, workspace_id, path, length(content)
                 FROM files WHERE workspace_id = ANY($1)"
            ),
        )
            .map_err(db)?;
        let overhead = limits::SEAL_OVERHEAD;
        let spec_params: [&(dyn ToSql + Sync); 2] = [&configs, &with_spec];
        let entry_params: [&(dyn ToSql + Sync); 2] = [&configs, &overhead];
        let read = async {
            if configs.is_empty() {
                return Ok((Vec::new(), Vec::new()));
            }
            futures::try_join!(
                tx.query(&specs, &spec_params),
                tx.query(&entries, &entry_params),
            )
            .map_err(db)
        };
        let ((), locked, (specs, entries)) =
            futures::try_join!(self.tx.opening(), rows::lock_all(tx, &lock, &ids), read)?;

        let mut versions = Vec::with_capacity(locked.len());
        let mut admitting: HashMap<WorkspaceId, Admitting<'a>> = locked
            .into_iter()
            .map(|(id, locked, version)| {
                versions.push((id, version));
                let admitting = Admitting {
                    locked,
                    config: None,
                };
                (id, admitting)
            })
            .collect();
        for row in &specs {
            let id = WorkspaceId::from(row.get::<_, Uuid>(0));
            let spec = match row.get::<_, Option<serde_json::Value>>(2) {
                Some(spec) => Some(
                    serde_json::from_value::<WorkspaceSpec>(spec)
                        .map_err(|e| Error::Internal(format!("stored spec: {e}")))?,
                ),
                None => None,
            };
            if let Some(entry) = admitting.get_mut(&id) {
                entry.config = Some(ConfigState::new(id, parse(row.get(1))?, spec));
            }
        }
        for row in &entries {
            let id = WorkspaceId::from(row.get::<_, Uuid>(1));
            if let Some(config) = admitting.get_mut(&id).and_then(|e| e.config.as_mut()) {
                let (name, size) = (row.get(2), row.get::<_, i32>(3) as usize);
                if row.get::<_, bool>(0) {
                    config.stored_secret(name, size);
                } else {
                    config.stored_file(name, size);
                }
            }
        }
        for (id, version) in versions {
            if let Some(entry) = admitting.get(&id) {
                let config = entry.config.as_ref().map(ConfigState::unwritten);
                (self.store.known).remember(id, version, entry.locked.clone(), config);
            }
        }
        Ok(admitting)
    }

    /// The rows of `ids` as this process last read or wrote them, with the
    /// config of those in `configs` — if it knows them all (`known_rows.rs`):
    /// then the group is decided without reading them, and committed with
    /// [`GroupTx::commit_unchanged`].
    pub fn recall(
        store: &Store,
        ids: &[WorkspaceId],
        configs: &[WorkspaceId],
    ) -> Option<(HashMap<WorkspaceId, Admitting<'static>>, Vec<RowVersion>)> {
        store.known.recall(ids, configs, limits::enforced(store))
    }

    /// Writes everything the group decided and commits, in one pipelined
    /// round trip.
    pub async fn commit(self, writes: &[WorkspaceWrites<'_>], now: Timestamp) -> Result<(), Error> {
        let statements = admission::write_group(&self.store, writes, now);
        let rows = self.tx.commit_with(&statements).await?;
        remember_saved(&self.store, writes, &rows);
        Ok(())
    }

    /// Like [`GroupTx::commit`], for a group decided on recalled rows: its
    /// writes go out behind a lock of `ids` that fails unless each row still
    /// has its version in `versions` — so the whole group, `BEGIN` to
    /// `COMMIT`, is one round trip. [`Unchanged::Moved`] if a row moved (or
    /// another transaction holds one): nothing was written, and for a
    /// second no row is recalled (`known_rows.rs`).
    pub async fn commit_unchanged(
        self,
        ids: &[WorkspaceId],
        versions: &[RowVersion],
        writes: &[WorkspaceWrites<'_>],
        now: Timestamp,
    ) -> Result<Unchanged, Error> {
        let guard = rows::lock_unchanged(ids, versions);
        let statements = admission::write_group(&self.store, writes, now);
        match self.tx.commit_behind(&guard, &statements).await? {
            Guarded::Committed(rows) => {
                remember_saved(&self.store, writes, &rows);
                Ok(Unchanged::Committed)
            }
            Guarded::Refused(conn) => {
                self.store.known.moved(ids);
                Ok(Unchanged::Moved(conn))
            }
        }
    }
}

/// How [`GroupTx::commit_unchanged`] ended.
pub enum Unchanged {
    /// The group is written.
    Committed,
    /// A row moved: nothing is written. The connection, free again, for
    /// admitting the group from rows read under the lock.
    Moved(Box<Connection>),
}

/// Remembers each row the group saved as Postgres holds it now, at the
/// version its save left it at, with the config as its batch left it. (A
/// row the group did not save kept its version, and what was remembered of
/// it holds.)
fn remember_saved(
    store: &Store,
    writes: &[WorkspaceWrites<'_>],
    rows: &[Vec<tokio_postgres::Row>],
) {
    // The rows' save goes first when there is one (`admission::write_group`).
    if !writes.iter().any(|w| w.save.is_some()) {
        return;
    }
    let saved = rows.first().map(|saved| rows::saved(saved));
    let Some(Ok(saved)) = saved else {
        // Not readable back: read under the lock next time.
        writes.iter().for_each(|w| store.known.forget(w.workspace));
        return;
    };
    for (id, locked, version) in saved {
        let after = writes.iter().find(|w| w.workspace == id);
        let config = after
            .and_then(|w| w.after.as_ref())
            .map(ConfigState::unwritten);
        store.known.remember(id, version, locked, config);
    }
}

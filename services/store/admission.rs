//! Admission's writes: new workspaces, config changes within their limits,
//! and what a batch did (cycles opened, triggers absorbed, counters, audit
//! rows, events), all in the batch's one transaction (C2, C13). The
//! decisions are the engine's (`engine::admission`).

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;

use super::{Locked, RowTx, audit, audit::AuditRow, db, execute};
use crate::{
    domain::{
        CycleId, CycleState, Error, Event, EventKind, Generation, Handling, Timestamp, Trigger,
        WorkspaceId,
        change::{Change, Creation},
        validate,
    },
    telemetry::cycle_trace::TraceOrigin,
};

/// What one admission batch did, counted: the counters, absorbed triggers,
/// opened cycles and handling events the store writes once per batch.
#[derive(Default)]
pub struct Tally {
    /// trigger → requests per handling (indexed by `Handling`).
    stats: BTreeMap<Trigger, [i64; Handling::COUNT]>,
    /// (cycle, trigger) → requests absorbed
    absorbed: BTreeMap<(CycleId, Trigger), i64>,
    /// (trigger, handling, cycle, reason) → requests
    handled: BTreeMap<(Trigger, Handling, Option<CycleId>, String), u32>,
    /// Cycles opened, with where their traces hang.
    opened: Vec<(CycleId, TraceOrigin)>,
}

impl Tally {
    /// Counts one request handled `how` (into `cycle`, for `reason`).
    pub fn count(&mut self, trigger: Trigger, how: Handling, cycle: Option<CycleId>, reason: &str) {
        self.stats.entry(trigger).or_default()[how.index()] += 1;
        if let Some(cycle) = cycle {
            if how != Handling::Dropped {
                *self.absorbed.entry((cycle, trigger)).or_default() += 1;
            }
        }
        *self
            .handled
            .entry((trigger, how, cycle, reason.to_owned()))
            .or_default() += 1;
    }

    /// Records a cycle opened in this batch and where its trace hangs.
    pub fn opened(&mut self, cycle: CycleId, origin: TraceOrigin) {
        self.opened.push((cycle, origin));
    }
}

impl RowTx<'_> {
    /// Inserts a new workspace (before `lock`); `AlreadyExists` if its name
    /// is taken by a live one.
    pub async fn insert_workspace(&self, creation: &Creation, now: Timestamp) -> Result<(), Error> {
        insert_workspace(&self.tx, self.workspace, creation, now).await
    }

    /// Applies a config mutation to the locked row's workspace, within the
    /// workspace's and the backend's limits.
    pub async fn apply_change(&self, change: &Change, now: Timestamp) -> Result<(), Error> {
        super::limits::check(&self.tx, &self.store, self.workspace, change).await?;
        apply_change(&self.tx, self.workspace, change, self.store.sealer(), now).await
    }

    /// Writes `tally`'s cycles, counters, events and `audit` rows, and
    /// `save` (if the batch changed the row), and commits — the writes in
    /// one pipelined round trip.
    pub async fn commit_tally(
        mut self,
        tally: &Tally,
        audit: &[AuditRow<'_>],
        save: Option<&Locked>,
        now: Timestamp,
    ) -> Result<(), Error> {
        let events = tally_events(self.workspace, tally, now);
        self.publish(events);
        let (tx, workspace) = (&self.tx, self.workspace);
        let writes = async {
            futures::try_join!(
                write_tally(tx, workspace, tally, now),
                audit::record(tx, workspace, audit, now),
            )
            .map(|_| ())
        };
        self.flush(save, now, writes).await?;
        self.tx.commit().await.map_err(db)
    }
}

async fn insert_workspace(
    tx: &impl GenericClient,
    workspace: WorkspaceId,
    creation: &Creation,
    now: Timestamp,
) -> Result<(), Error> {
    let spec =
        serde_json::to_value(&creation.spec).map_err(|e| Error::Internal(format!("spec: {e}")))?;
    let statement = tx
        .prepare_cached(
            "INSERT INTO workspaces (id, name, backend, spec, created_at, updated_at, status)
             VALUES ($1, $2, $3, $4, $5, $5, 'PROVISIONING')
             ON CONFLICT (name) WHERE desired <> 'deleted' DO NOTHING",
        )
        .await
        .map_err(db)?;
    let inserted = tx
        .execute(
            &statement,
            &[
                &workspace.as_uuid(),
                &creation.name,
                &creation.backend.as_str(),
                &spec,
                &now,
            ],
        )
        .await
        .map_err(db)?;
    if inserted == 0 {
        return Err(Error::AlreadyExists(format!(
            "a workspace named {:?} already exists",
            creation.name
        )));
    }
    Ok(())
}

/// Applies a config mutation to the locked workspace.
async fn apply_change(
    tx: &impl GenericClient,
    workspace: WorkspaceId,
    change: &Change,
    sealer: &super::Sealer,
    now: Timestamp,
) -> Result<(), Error> {
    let id = workspace.as_uuid();
    match change {
        Change::SetSecret { name, value } => {
            let count = tx
                .prepare_cached(
                    "SELECT count(*) FROM secrets WHERE workspace_id = $1 AND name <> $2",
                )
                .await
                .map_err(db)?;
            let others: i64 = tx.query_one(&count, &[&id, name]).await.map_err(db)?.get(0);
            if others >= validate::MAX_SECRETS {
                return Err(Error::Exhausted(format!(
                    "a workspace holds at most {} secrets",
                    validate::MAX_SECRETS
                )));
            }
            let upsert = tx
                .prepare_cached(
                    "INSERT INTO secrets (workspace_id, name, value, nonce, updated_at) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (workspace_id, name) DO UPDATE
                     SET value = EXCLUDED.value, nonce = EXCLUDED.nonce, updated_at = EXCLUDED.updated_at",
                )
                .await
                .map_err(db)?;
            let sealed = sealer.seal(workspace, name, value)?;
            tx.execute(
                &upsert,
                &[&id, name, &sealed.ciphertext, &sealed.nonce, &now],
            )
            .await
            .map_err(db)?;
        }
        Change::DeleteSecret { name } => {
            let delete = tx
                .prepare_cached("DELETE FROM secrets WHERE workspace_id = $1 AND name = $2")
                .await
                .map_err(db)?;
            if tx.execute(&delete, &[&id, name]).await.map_err(db)? == 0 {
                return Err(Error::NotFound(format!("secret {name:?}")));
            }
        }
        Change::DeleteFile { path } => {
            let delete = tx
                .prepare_cached("DELETE FROM files WHERE workspace_id = $1 AND path = $2")
                .await
                .map_err(db)?;
            if tx.execute(&delete, &[&id, path]).await.map_err(db)? == 0 {
                return Err(Error::NotFound(format!("file {path:?}")));
            }
        }
        Change::WriteFile { path, content } => {
            // A path is a file or a directory, never both: a file `a` and a
            // file `a/b` could never be written together.
            let clash = tx
                .prepare_cached(
                    "SELECT path FROM files WHERE workspace_id = $1
                       AND (path = ANY($2) OR starts_with(path, $3 || '/')) LIMIT 1",
                )
                .await
                .map_err(db)?;
            let parents: Vec<String> = path
                .match_indices('/')
                .map(|(at, _)| path[..at].to_owned())
                .collect();
            if let Some(row) = tx
                .query_opt(&clash, &[&id, &parents, path])
                .await
                .map_err(db)?
            {
                let other: String = row.get(0);
                return Err(Error::Invalid(format!(
                    "path {path:?} clashes with the file {other:?}: a path is a file or a directory, not both"
                )));
            }
            let usage = tx
                .prepare_cached(
                    "SELECT count(*), coalesce(sum(length(content)), 0)::bigint
                     FROM files WHERE workspace_id = $1 AND path <> $2",
                )
                .await
                .map_err(db)?;
            let row = tx.query_one(&usage, &[&id, path]).await.map_err(db)?;
            let (others, bytes): (i64, i64) = (row.get(0), row.get(1));
            if others >= validate::MAX_FILES {
                return Err(Error::Exhausted(format!(
                    "a workspace holds at most {} files",
                    validate::MAX_FILES
                )));
            }
            if bytes + content.len() as i64 > validate::MAX_TOTAL_FILE_BYTES {
                return Err(Error::Exhausted(format!(
                    "a workspace's files total at most {} bytes",
                    validate::MAX_TOTAL_FILE_BYTES
                )));
            }
            let upsert = tx
                .prepare_cached(
                    "INSERT INTO files (workspace_id, path, content, updated_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (workspace_id, path) DO UPDATE SET content = EXCLUDED.content, updated_at = EXCLUDED.updated_at",
                )
                .await
                .map_err(db)?;
            tx.execute(&upsert, &[&id, path, content, &now])
                .await
                .map_err(db)?;
        }
    }
    Ok(())
}

/// Writes new cycles, absorbed triggers and counters: three statements,
/// the counters pipelined with the other two.
async fn write_tally(
    tx: &impl GenericClient,
    workspace: WorkspaceId,
    tally: &Tally,
    now: Timestamp,
) -> Result<(), Error> {
    let id = workspace.as_uuid();
    let opened = async {
        if tally.opened.is_empty() {
            return Ok(0);
        }
        let ids: Vec<uuid::Uuid> = tally.opened.iter().map(|(c, _)| c.as_uuid()).collect();
        let traces: Vec<&str> = tally
            .opened
            .iter()
            .map(|(_, o)| o.trace_id.as_str())
            .collect();
        let parents: Vec<&str> = tally
            .opened
            .iter()
            .map(|(_, o)| o.parent_span_id.as_str())
            .collect();
        execute(
            tx,
            "INSERT INTO cycles (id, workspace_id, state, created_at, trace_id, parent_span_id)
             SELECT cycle, $2, 'PENDING', $3, trace, parent
             FROM unnest($1::uuid[], $4::text[], $5::text[]) AS t (cycle, trace, parent)",
            &[&ids, &id, &now, &traces, &parents],
        )
        .await
    };
    let absorbed = async {
        if tally.absorbed.is_empty() {
            return Ok(0);
        }
        let (mut cycles, mut triggers, mut counts) = (Vec::new(), Vec::new(), Vec::new());
        for ((cycle, trigger), count) in &tally.absorbed {
            cycles.push(cycle.as_uuid());
            triggers.push(trigger.as_str());
            counts.push(*count);
        }
        execute(
            tx,
            "INSERT INTO cycle_triggers (cycle_id, trigger, count)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[])
             ON CONFLICT (cycle_id, trigger) DO UPDATE SET count = cycle_triggers.count + EXCLUDED.count",
            &[&cycles, &triggers, &counts],
        )
        .await
    };
    let stats = async {
        if tally.stats.is_empty() {
            return Ok(());
        }
        record_stats(tx, workspace, &tally.stats).await
    };
    // Absorbed triggers reference the cycles opened: those two in order,
    // the counters alongside.
    let cycles = async {
        opened.await?;
        absorbed.await
    };
    futures::try_join!(cycles, stats).map(|_| ())
}

/// Adds to the per-trigger counters of a workspace.
pub(super) async fn record_stats(
    tx: &impl GenericClient,
    workspace: WorkspaceId,
    stats: &BTreeMap<Trigger, [i64; Handling::COUNT]>,
) -> Result<(), Error> {
    let mut triggers = Vec::new();
    let mut columns: [Vec<i64>; Handling::COUNT] = Default::default();
    for (trigger, counts) in stats {
        triggers.push(trigger.as_str());
        for (column, count) in columns.iter_mut().zip(counts) {
            column.push(*count);
        }
    }
    let upsert = tx
        .prepare_cached(
            "INSERT INTO trigger_stats (workspace_id, trigger, accepted, coalesced, deferred, dropped)
             SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
             ON CONFLICT (workspace_id, trigger) DO UPDATE SET
                accepted = trigger_stats.accepted + EXCLUDED.accepted,
                coalesced = trigger_stats.coalesced + EXCLUDED.coalesced,
                deferred = trigger_stats.deferred + EXCLUDED.deferred,
                dropped = trigger_stats.dropped + EXCLUDED.dropped",
        )
        .await
        .map_err(db)?;
    tx.execute(
        &upsert,
        &[
            &workspace.as_uuid(),
            &triggers,
            &columns[0],
            &columns[1],
            &columns[2],
            &columns[3],
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}

fn tally_events(workspace: WorkspaceId, tally: &Tally, now: Timestamp) -> Vec<Event> {
    let opened = tally.opened.iter().map(|(cycle, _)| {
        Event::cycle(
            workspace,
            now,
            *cycle,
            Generation(0),
            CycleState::Pending,
            Default::default(),
        )
    });
    let handled = tally
        .handled
        .iter()
        .map(|((trigger, how, cycle, reason), count)| Event {
            workspace,
            at: now,
            kind: EventKind::Trigger {
                trigger: *trigger,
                handling: *how,
                cycle: *cycle,
                reason: reason.clone(),
                count: *count,
            },
        });
    opened.chain(handled).collect()
}

//! Admission's writes: what a group of batches did — rows, config changes,
//! cycles opened, triggers absorbed, counters, audit rows, events — each
//! kind one statement for every workspace of the group, all pipelined in
//! one round trip before the group's commit (C2, C13). The decisions are
//! the engine's (`engine::admission`).

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{
    Locked, Store, audit, audit::AuditRow, config_state::ConfigWrites, execute, notify, rows,
};
use crate::{
    domain::{
        CycleId, CycleState, Error, Event, EventKind, Generation, Handling, Timestamp, Trigger,
        WorkspaceId,
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

/// What admission decided for one workspace of a group, written at the
/// group's commit.
pub struct WorkspaceWrites<'a> {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// Counters, cycles opened, triggers absorbed.
    pub tally: Tally,
    /// The admitted mutations callers made.
    pub audit: Vec<AuditRow<'a>>,
    /// The row, if the batch changed it (a batch that changed nothing
    /// leaves it as it was, `updated_at` included).
    pub save: Option<Locked>,
    /// The secrets and files the batch changed.
    pub config: ConfigWrites<'a>,
}

impl WorkspaceWrites<'_> {
    /// Only counters (requests dropped before admission).
    pub fn counted(workspace: WorkspaceId, tally: Tally) -> Self {
        Self {
            workspace,
            tally,
            audit: Vec::new(),
            save: None,
            config: ConfigWrites::default(),
        }
    }
}

/// Writes everything `writes` says, pipelined: one round trip.
pub(super) async fn write_group(
    tx: &impl GenericClient,
    store: &Store,
    writes: &[WorkspaceWrites<'_>],
    now: Timestamp,
) -> Result<(), Error> {
    let saves: Vec<rows::Save<'_>> = writes
        .iter()
        .filter_map(|w| {
            let locked = w.save.as_ref()?;
            Some(rows::Save::of(w.workspace, locked, store.timing()))
        })
        .collect();
    let events: Vec<Event> = writes
        .iter()
        .flat_map(|w| tally_events(w.workspace, &w.tally, now))
        .collect();
    let audit: Vec<(WorkspaceId, AuditRow<'_>)> = writes
        .iter()
        .flat_map(|w| w.audit.iter().map(|row| (w.workspace, *row)))
        .collect();
    futures::try_join!(
        rows::save(tx, &saves, now),
        notify::publish(tx, &events),
        write_secrets(tx, writes, now),
        write_files(tx, writes, now),
        write_cycles(tx, writes, now),
        write_stats(tx, writes),
        audit::record(tx, &audit, now),
    )
    .map(|_| ())
}

/// Runs `sql` unless it has no rows to write.
async fn unless_empty(
    tx: &impl GenericClient,
    rows: usize,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, Error> {
    if rows == 0 {
        return Ok(0);
    }
    execute(tx, sql, params).await
}

/// Secrets set and deleted, for every workspace: at most two statements.
async fn write_secrets(
    tx: &impl GenericClient,
    writes: &[WorkspaceWrites<'_>],
    now: Timestamp,
) -> Result<(), Error> {
    let (mut set, mut deleted) = ((vec![], vec![], vec![], vec![]), (vec![], vec![]));
    for w in writes {
        for (name, sealed) in &w.config.secrets {
            match sealed {
                Some(sealed) => {
                    set.0.push(w.workspace.as_uuid());
                    set.1.push(name.as_str());
                    set.2.push(sealed.ciphertext.as_slice());
                    set.3.push(sealed.nonce.as_slice());
                }
                None => {
                    deleted.0.push(w.workspace.as_uuid());
                    deleted.1.push(name.as_str());
                }
            }
        }
    }
    let set_params: [&(dyn ToSql + Sync); 5] = [&set.0, &set.1, &set.2, &set.3, &now];
    let deleted_params: [&(dyn ToSql + Sync); 2] = [&deleted.0, &deleted.1];
    futures::try_join!(
        unless_empty(
            tx,
            set.0.len(),
            "INSERT INTO secrets (workspace_id, name, value, nonce, updated_at)
             SELECT w, n, v, nonce, $5 FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[])
               AS t (w, n, v, nonce)
             ON CONFLICT (workspace_id, name) DO UPDATE
             SET value = EXCLUDED.value, nonce = EXCLUDED.nonce, updated_at = EXCLUDED.updated_at",
            &set_params,
        ),
        unless_empty(
            tx,
            deleted.0.len(),
            "DELETE FROM secrets s USING unnest($1::uuid[], $2::text[]) AS d (w, n)
             WHERE s.workspace_id = d.w AND s.name = d.n",
            &deleted_params,
        ),
    )
    .map(|_| ())
}

/// Files written and deleted, for every workspace: at most two statements.
async fn write_files(
    tx: &impl GenericClient,
    writes: &[WorkspaceWrites<'_>],
    now: Timestamp,
) -> Result<(), Error> {
    let (mut written, mut deleted) = ((vec![], vec![], vec![]), (vec![], vec![]));
    for w in writes {
        for (path, content) in &w.config.files {
            match content {
                Some(content) => {
                    written.0.push(w.workspace.as_uuid());
                    written.1.push(path.as_str());
                    written.2.push(*content);
                }
                None => {
                    deleted.0.push(w.workspace.as_uuid());
                    deleted.1.push(path.as_str());
                }
            }
        }
    }
    let written_params: [&(dyn ToSql + Sync); 4] = [&written.0, &written.1, &written.2, &now];
    let deleted_params: [&(dyn ToSql + Sync); 2] = [&deleted.0, &deleted.1];
    futures::try_join!(
        unless_empty(
            tx,
            written.0.len(),
            "INSERT INTO files (workspace_id, path, content, updated_at)
             SELECT w, p, c, $4 FROM unnest($1::uuid[], $2::text[], $3::bytea[]) AS t (w, p, c)
             ON CONFLICT (workspace_id, path) DO UPDATE
             SET content = EXCLUDED.content, updated_at = EXCLUDED.updated_at",
            &written_params,
        ),
        unless_empty(
            tx,
            deleted.0.len(),
            "DELETE FROM files f USING unnest($1::uuid[], $2::text[]) AS d (w, p)
             WHERE f.workspace_id = d.w AND f.path = d.p",
            &deleted_params,
        ),
    )
    .map(|_| ())
}

/// New cycles and the triggers they absorbed, for every workspace: one
/// statement (the triggers' foreign key is checked at its end, when the
/// cycles it inserted are there).
async fn write_cycles(
    tx: &impl GenericClient,
    writes: &[WorkspaceWrites<'_>],
    now: Timestamp,
) -> Result<(), Error> {
    let (mut ids, mut workspaces, mut traces, mut parents) = (vec![], vec![], vec![], vec![]);
    let (mut cycles, mut triggers, mut counts) = (vec![], vec![], vec![]);
    for w in writes {
        for (cycle, origin) in &w.tally.opened {
            ids.push(cycle.as_uuid());
            workspaces.push(w.workspace.as_uuid());
            traces.push(origin.trace_id.as_str());
            parents.push(origin.parent_span_id.as_str());
        }
        for ((cycle, trigger), count) in &w.tally.absorbed {
            cycles.push(cycle.as_uuid());
            triggers.push(trigger.as_str());
            counts.push(*count);
        }
    }
    if ids.is_empty() && cycles.is_empty() {
        return Ok(());
    }
    execute(
        tx,
        "WITH opened AS (
             INSERT INTO cycles (id, workspace_id, state, created_at, trace_id, parent_span_id)
             SELECT cycle, w, 'PENDING', $5, trace, parent
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[]) AS t (cycle, w, trace, parent)
         )
         INSERT INTO cycle_triggers (cycle_id, trigger, count)
         SELECT * FROM unnest($6::uuid[], $7::text[], $8::bigint[])
         ON CONFLICT (cycle_id, trigger) DO UPDATE SET count = cycle_triggers.count + EXCLUDED.count",
        &[&ids, &workspaces, &traces, &parents, &now, &cycles, &triggers, &counts],
    )
    .await
    .map(|_| ())
}

/// Adds to the per-trigger counters of every workspace: one statement.
async fn write_stats(tx: &impl GenericClient, writes: &[WorkspaceWrites<'_>]) -> Result<(), Error> {
    let mut workspaces: Vec<Uuid> = Vec::new();
    let mut triggers = Vec::new();
    let mut columns: [Vec<i64>; Handling::COUNT] = Default::default();
    for w in writes {
        for (trigger, counts) in &w.tally.stats {
            workspaces.push(w.workspace.as_uuid());
            triggers.push(trigger.as_str());
            for (column, count) in columns.iter_mut().zip(counts) {
                column.push(*count);
            }
        }
    }
    if workspaces.is_empty() {
        return Ok(());
    }
    execute(
        tx,
        "INSERT INTO trigger_stats (workspace_id, trigger, accepted, coalesced, deferred, dropped)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
         ON CONFLICT (workspace_id, trigger) DO UPDATE SET
            accepted = trigger_stats.accepted + EXCLUDED.accepted,
            coalesced = trigger_stats.coalesced + EXCLUDED.coalesced,
            deferred = trigger_stats.deferred + EXCLUDED.deferred,
            dropped = trigger_stats.dropped + EXCLUDED.dropped",
        &[
            &workspaces,
            &triggers,
            &columns[0],
            &columns[1],
            &columns[2],
            &columns[3],
        ],
    )
    .await
    .map(|_| ())
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

//! Admission's writes: what a group of batches did — rows, config changes,
//! cycles opened, triggers absorbed, counters, audit rows, events — each
//! kind one statement for every workspace of the group, all pipelined in
//! one round trip with the group's `COMMIT` (C2, C13). The decisions are
//! the engine's (`engine::admission`).

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{
    Locked, Store, audit, audit::AuditRow, config_state::ConfigState, config_state::ConfigWrites,
    notify, rows, statement::Statement,
};
use crate::{
    domain::{
        CycleId, CycleState, Event, EventKind, Generation, Handling, Timestamp, Trigger,
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
    /// The config as the batch left it, if it read it and saved the row:
    /// remembered with the row's new version (`known_rows.rs`).
    pub after: Option<ConfigState<'static>>,
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
            after: None,
        }
    }
}

/// Every statement `writes` needs — each kind one statement for the whole
/// group — sent with the group's `COMMIT` in one round trip. The rows'
/// save, when there is one, goes first: its `RETURNING` gives the versions
/// it left the rows at (`group_tx::remember_saved`).
pub(super) fn write_group<'a>(
    store: &Store,
    writes: &'a [WorkspaceWrites<'a>],
    now: Timestamp,
) -> Vec<Statement<'a>> {
    let saves: Vec<rows::Save<'a>> = writes
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
    let audit: Vec<(WorkspaceId, AuditRow<'a>)> = writes
        .iter()
        .flat_map(|w| w.audit.iter().map(|row| (w.workspace, *row)))
        .collect();
    [
        rows::save(&saves, now),
        notify::publish(&events),
        set_secrets(writes, now),
        delete_secrets(writes),
        write_files(writes, now),
        delete_files(writes),
        write_cycles(writes, now),
        write_stats(writes),
        audit::record(&audit, now),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The secrets set, for every workspace.
fn set_secrets<'a>(writes: &'a [WorkspaceWrites<'a>], now: Timestamp) -> Option<Statement<'a>> {
    let (mut workspaces, mut names, mut values, mut nonces) = (vec![], vec![], vec![], vec![]);
    for w in writes {
        for (name, sealed) in &w.config.secrets {
            if let Some(sealed) = sealed {
                workspaces.push(w.workspace.as_uuid());
                names.push(name.as_str());
                values.push(sealed.ciphertext.as_slice());
                nonces.push(sealed.nonce.as_slice());
            }
        }
    }
    (!workspaces.is_empty()).then(|| {
        Statement::new(
            "INSERT INTO secrets (workspace_id, name, value, nonce, updated_at)
             SELECT w, n, v, nonce, $5 FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[])
               AS t (w, n, v, nonce)
             ON CONFLICT (workspace_id, name) DO UPDATE
             SET value = EXCLUDED.value, nonce = EXCLUDED.nonce, updated_at = EXCLUDED.updated_at",
            vec![
                Box::new(workspaces),
                Box::new(names),
                Box::new(values),
                Box::new(nonces),
                Box::new(now),
            ],
        )
    })
}

/// The secrets deleted, for every workspace.
fn delete_secrets<'a>(writes: &'a [WorkspaceWrites<'a>]) -> Option<Statement<'a>> {
    let (workspaces, names) = deleted(writes, |config| &config.secrets);
    (!workspaces.is_empty()).then(|| {
        Statement::new(
            "DELETE FROM secrets s USING unnest($1::uuid[], $2::text[]) AS d (w, n)
             WHERE s.workspace_id = d.w AND s.name = d.n",
            vec![Box::new(workspaces), Box::new(names)],
        )
    })
}

/// The files written, for every workspace.
fn write_files<'a>(writes: &'a [WorkspaceWrites<'a>], now: Timestamp) -> Option<Statement<'a>> {
    let (mut workspaces, mut paths, mut contents) = (vec![], vec![], vec![]);
    for w in writes {
        for (path, content) in &w.config.files {
            if let Some(content) = content {
                workspaces.push(w.workspace.as_uuid());
                paths.push(path.as_str());
                contents.push(*content);
            }
        }
    }
    (!workspaces.is_empty()).then(|| {
        Statement::new(
            "INSERT INTO files (workspace_id, path, content, updated_at)
             SELECT w, p, c, $4 FROM unnest($1::uuid[], $2::text[], $3::bytea[]) AS t (w, p, c)
             ON CONFLICT (workspace_id, path) DO UPDATE
             SET content = EXCLUDED.content, updated_at = EXCLUDED.updated_at",
            vec![
                Box::new(workspaces),
                Box::new(paths),
                Box::new(contents),
                Box::new(now),
            ],
        )
    })
}

/// The files deleted, for every workspace.
fn delete_files<'a>(writes: &'a [WorkspaceWrites<'a>]) -> Option<Statement<'a>> {
    let (workspaces, paths) = deleted(writes, |config| &config.files);
    (!workspaces.is_empty()).then(|| {
        Statement::new(
            "DELETE FROM files f USING unnest($1::uuid[], $2::text[]) AS d (w, p)
             WHERE f.workspace_id = d.w AND f.path = d.p",
            vec![Box::new(workspaces), Box::new(paths)],
        )
    })
}

/// The (workspace, name) pairs a config map marks deleted (`None`).
fn deleted<'a, V: 'a>(
    writes: &'a [WorkspaceWrites<'a>],
    entries: impl Fn(&'a ConfigWrites<'a>) -> &'a BTreeMap<String, Option<V>>,
) -> (Vec<Uuid>, Vec<&'a str>) {
    let (mut workspaces, mut names) = (vec![], vec![]);
    for w in writes {
        for (name, value) in entries(&w.config) {
            if value.is_none() {
                workspaces.push(w.workspace.as_uuid());
                names.push(name.as_str());
            }
        }
    }
    (workspaces, names)
}

/// New cycles and the triggers they absorbed, for every workspace: one
/// statement (the triggers' foreign key is checked at its end, when the
/// cycles it inserted are there).
fn write_cycles<'a>(writes: &'a [WorkspaceWrites<'a>], now: Timestamp) -> Option<Statement<'a>> {
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
        return None;
    }
    Some(Statement::new(
        "WITH opened AS (
             INSERT INTO cycles (id, workspace_id, state, created_at, trace_id, parent_span_id)
             SELECT cycle, w, 'PENDING', $5, trace, parent
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[]) AS t (cycle, w, trace, parent)
         )
         INSERT INTO cycle_triggers (cycle_id, trigger, count)
         SELECT * FROM unnest($6::uuid[], $7::text[], $8::bigint[])
         ON CONFLICT (cycle_id, trigger) DO UPDATE SET count = cycle_triggers.count + EXCLUDED.count",
        vec![
            Box::new(ids),
            Box::new(workspaces),
            Box::new(traces),
            Box::new(parents),
            Box::new(now),
            Box::new(cycles),
            Box::new(triggers),
            Box::new(counts),
        ],
    ))
}

/// Adds to the per-trigger counters of every workspace: one statement, its
/// rows in key order. A workspace whose requests were all dropped is
/// counted without its row lock (`engine::admission`), so two transactions
/// may update the same counters: in one order, they never wait on each
/// other in a cycle.
fn write_stats<'a>(writes: &'a [WorkspaceWrites<'a>]) -> Option<Statement<'a>> {
    let mut counters: Vec<(Uuid, &'static str, &[i64; Handling::COUNT])> = writes
        .iter()
        .flat_map(|w| {
            (w.tally.stats.iter())
                .map(|(trigger, counts)| (w.workspace.as_uuid(), trigger.as_str(), counts))
        })
        .collect();
    if counters.is_empty() {
        return None;
    }
    counters.sort_unstable_by_key(|(workspace, trigger, _)| (*workspace, *trigger));
    let mut workspaces: Vec<Uuid> = Vec::with_capacity(counters.len());
    let mut triggers = Vec::with_capacity(counters.len());
    let mut columns: [Vec<i64>; Handling::COUNT] = Default::default();
    for (workspace, trigger, counts) in counters {
        workspaces.push(workspace);
        triggers.push(trigger);
        for (column, count) in columns.iter_mut().zip(counts) {
            column.push(*count);
        }
    }
    let [accepted, coalesced, deferred, dropped] = columns;
    Some(Statement::new(
        "INSERT INTO trigger_stats (workspace_id, trigger, accepted, coalesced, deferred, dropped)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
         ON CONFLICT (workspace_id, trigger) DO UPDATE SET
            accepted = trigger_stats.accepted + EXCLUDED.accepted,
            coalesced = trigger_stats.coalesced + EXCLUDED.coalesced,
            deferred = trigger_stats.deferred + EXCLUDED.deferred,
            dropped = trigger_stats.dropped + EXCLUDED.dropped",
        vec![
            Box::new(workspaces),
            Box::new(triggers),
            Box::new(accepted),
            Box::new(coalesced),
            Box::new(deferred),
            Box::new(dropped),
        ],
    ))
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

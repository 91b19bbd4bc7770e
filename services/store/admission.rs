//! Admission: requests become durable here. One transaction per batch of
//! requests for one workspace: lock the row, apply each request's config
//! change (if any) and its ledger transition in arrival order, record new
//! cycles, absorbed triggers and counters, publish the events, commit. A
//! caller is answered only after this commit.

use std::collections::BTreeMap;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::{Store, audit, db, notify, rows};
use crate::{
    domain::{CycleId, CycleState, Generation, Timestamp, Trigger, WorkspaceId, validate},
    engine::{
        EngineError,
        coalesce::{Admit, Ticket},
        events::{Event, EventKind, Handling},
        intent::{Admission, Change, Creation, Intent, Stage, Verdict, Waiting},
        ledger::{AdmitRequest, Admitted, Refusal},
    },
    telemetry::cycle_trace::TraceOrigin,
};

/// Counters and events gathered while a batch is admitted, written once.
#[derive(Default)]
struct Tally {
    /// trigger → [accepted, coalesced, deferred, dropped]
    stats: BTreeMap<Trigger, [i64; 4]>,
    /// (cycle, trigger) → requests absorbed
    absorbed: BTreeMap<(CycleId, Trigger), i64>,
    /// (trigger, handling, cycle, reason) → requests
    handled: BTreeMap<(Trigger, HandlingKey, Option<CycleId>, String), u32>,
    /// Cycles opened, with where their traces hang.
    opened: Vec<(CycleId, TraceOrigin)>,
}

/// `Handling` as a map key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HandlingKey {
    Accepted,
    Coalesced,
    Deferred,
    Dropped,
}

impl HandlingKey {
    fn handling(self) -> Handling {
        match self {
            Self::Accepted => Handling::Accepted,
            Self::Coalesced => Handling::Coalesced,
            Self::Deferred => Handling::Deferred,
            Self::Dropped => Handling::Dropped,
        }
    }

    fn column(self) -> usize {
        self as usize
    }
}

impl Tally {
    fn count(&mut self, trigger: Trigger, how: HandlingKey, cycle: Option<CycleId>, reason: &str) {
        self.stats.entry(trigger).or_default()[how.column()] += 1;
        if let Some(cycle) = cycle {
            if how != HandlingKey::Dropped {
                *self.absorbed.entry((cycle, trigger)).or_default() += 1;
            }
        }
        *self
            .handled
            .entry((trigger, how, cycle, reason.to_owned()))
            .or_default() += 1;
    }
}

#[async_trait]
impl Admit<Intent> for Store {
    async fn admit(
        &self,
        workspace: &WorkspaceId,
        batch: &[Intent],
        now: Timestamp,
    ) -> Result<Vec<Result<Ticket, EngineError>>, EngineError> {
        let workspace = *workspace;
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;

        let mut creation_failed = None;
        for creation in batch.iter().filter_map(|i| i.creation.as_ref()) {
            if let Err(err) = insert_workspace(&tx, workspace, creation, now).await {
                creation_failed = Some(err);
            }
        }
        if let Some(err) = creation_failed {
            return Ok(vec![Err(err); batch.len()]);
        }

        let mut locked = rows::lock(&tx, workspace).await?;
        let before = (locked.ledger.clone(), locked.config_version);
        let mut tally = Tally::default();
        let mut results = Vec::with_capacity(batch.len());
        for intent in batch {
            let result =
                admit_one(&tx, workspace, intent, &mut locked, &mut tally, self, now).await;
            results.push(result);
        }

        write_tally(&tx, workspace, &tally, now).await?;
        audit::record(&tx, workspace, batch, &results, now).await?;
        // A batch that changed nothing (refusals, drops) leaves the row as
        // it was, `updated_at` included: bad input changes nothing.
        if (&locked.ledger, locked.config_version) != (&before.0, before.1) {
            rows::save(&tx, workspace, &locked, self.timing(), now).await?;
        }
        let events = tally_events(workspace, &tally, now);
        notify::publish(&tx, &events).await?;
        tx.commit().await.map_err(db)?;
        Ok(results)
    }
}

/// Applies one request to the locked row.
async fn admit_one(
    tx: &impl GenericClient,
    workspace: WorkspaceId,
    intent: &Intent,
    locked: &mut rows::Locked,
    tally: &mut Tally,
    store: &Store,
    now: Timestamp,
) -> Result<Ticket, EngineError> {
    let Stage::Treated(treatment) = intent.stage else {
        return Err(EngineError::Internal(format!(
            "admission of an untreated request ({:?})",
            intent.stage
        )));
    };
    if locked.ledger.desired == crate::domain::Desired::Deleted
        && intent.ask != crate::engine::ledger::Ask::Delete
    {
        return Err(refused(Refusal::Deleted));
    }
    if let Some(change) = &intent.change {
        super::limits::check(tx, store, workspace, change).await?;
        apply_change(tx, workspace, change, store.sealer(), now).await?;
        locked.config_version.0 += 1;
    }
    let config_version = Some(locked.config_version);
    let request = AdmitRequest {
        ask: intent.ask,
        trigger: intent.trigger,
        treatment,
    };
    let admitted = locked
        .ledger
        .admit(request, now, CycleId::new(), store.timing())
        .map_err(refused)?;
    let waiting = if locked.ledger.running.is_some() {
        Waiting::Coalesced
    } else {
        Waiting::Deferred
    };
    let (cycle, due, ready, opened) = match admitted {
        Admitted::Opened { cycle, due, ready } => (cycle, due, ready, true),
        Admitted::Joined { cycle, due, ready } => (cycle, due, ready, false),
        Admitted::Stored => {
            return Ok(Ticket::Done(Admission {
                verdict: Verdict::Stored,
                config_version,
            }));
        }
        Admitted::AlreadyDeleted => {
            return Ok(Ticket::Done(Admission {
                verdict: Verdict::AlreadyDeleted,
                config_version,
            }));
        }
        Admitted::Dropped { reason, until } => {
            tally.count(
                intent.trigger,
                HandlingKey::Dropped,
                None,
                reason.describe(),
            );
            return Ok(Ticket::Done(Admission {
                verdict: Verdict::Dropped { reason, until },
                config_version,
            }));
        }
    };
    if opened {
        tally
            .opened
            .push((cycle, TraceOrigin::of(cycle, intent.caller.as_ref())));
    }
    let how = match (ready, opened, waiting) {
        (true, true, _) => HandlingKey::Accepted,
        (true, false, _) | (false, _, Waiting::Coalesced) => HandlingKey::Coalesced,
        (false, _, Waiting::Deferred) => HandlingKey::Deferred,
    };
    tally.count(intent.trigger, how, Some(cycle), "");
    Ok(if ready {
        Ticket::Ready {
            cycle,
            opened,
            config_version,
        }
    } else {
        Ticket::Done(Admission {
            verdict: Verdict::Coalesced {
                cycle,
                not_before: due,
                waiting,
            },
            config_version,
        })
    })
}

fn refused(refusal: Refusal) -> EngineError {
    match refusal {
        Refusal::Deleted => EngineError::FailedPrecondition("workspace is deleted".into()),
    }
}

async fn insert_workspace(
    tx: &impl GenericClient,
    workspace: WorkspaceId,
    creation: &Creation,
    now: Timestamp,
) -> Result<(), EngineError> {
    let spec = serde_json::to_value(&creation.spec)
        .map_err(|e| EngineError::Internal(format!("spec: {e}")))?;
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
        return Err(EngineError::AlreadyExists(format!(
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
) -> Result<(), EngineError> {
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
                return Err(EngineError::Exhausted(format!(
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
                return Err(EngineError::NotFound(format!("secret {name:?}")));
            }
        }
        Change::DeleteFile { path } => {
            let delete = tx
                .prepare_cached("DELETE FROM files WHERE workspace_id = $1 AND path = $2")
                .await
                .map_err(db)?;
            if tx.execute(&delete, &[&id, path]).await.map_err(db)? == 0 {
                return Err(EngineError::NotFound(format!("file {path:?}")));
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
                return Err(EngineError::Invalid(format!(
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
                return Err(EngineError::Exhausted(format!(
                    "a workspace holds at most {} files",
                    validate::MAX_FILES
                )));
            }
            if bytes + content.len() as i64 > validate::MAX_TOTAL_FILE_BYTES {
                return Err(EngineError::Exhausted(format!(
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

/// Writes new cycles, absorbed triggers and counters in three statements.
async fn write_tally(
    tx: &impl GenericClient,
    workspace: WorkspaceId,
    tally: &Tally,
    now: Timestamp,
) -> Result<(), EngineError> {
    let id = workspace.as_uuid();
    if !tally.opened.is_empty() {
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
        let insert = tx
            .prepare_cached(
                "INSERT INTO cycles (id, workspace_id, state, created_at, trace_id, parent_span_id)
                 SELECT cycle, $2, 'PENDING', $3, trace, parent
                 FROM unnest($1::uuid[], $4::text[], $5::text[]) AS t (cycle, trace, parent)",
            )
            .await
            .map_err(db)?;
        tx.execute(&insert, &[&ids, &id, &now, &traces, &parents])
            .await
            .map_err(db)?;
    }
    if !tally.absorbed.is_empty() {
        let (mut cycles, mut triggers, mut counts) = (Vec::new(), Vec::new(), Vec::new());
        for ((cycle, trigger), count) in &tally.absorbed {
            cycles.push(cycle.as_uuid());
            triggers.push(trigger.as_str());
            counts.push(*count);
        }
        let upsert = tx
            .prepare_cached(
                "INSERT INTO cycle_triggers (cycle_id, trigger, count)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[])
                 ON CONFLICT (cycle_id, trigger) DO UPDATE SET count = cycle_triggers.count + EXCLUDED.count",
            )
            .await
            .map_err(db)?;
        tx.execute(&upsert, &[&cycles, &triggers, &counts])
            .await
            .map_err(db)?;
    }
    if !tally.stats.is_empty() {
        record_stats(tx, workspace, &tally.stats).await?;
    }
    Ok(())
}

/// Adds to the per-trigger counters of a workspace.
pub(super) async fn record_stats(
    tx: &impl GenericClient,
    workspace: WorkspaceId,
    stats: &BTreeMap<Trigger, [i64; 4]>,
) -> Result<(), EngineError> {
    let mut triggers = Vec::new();
    let mut columns: [Vec<i64>; 4] = Default::default();
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
    let opened = tally.opened.iter().map(|(cycle, _)| Event {
        workspace,
        at: now,
        kind: EventKind::Cycle {
            cycle: *cycle,
            state: CycleState::Pending,
            generation: Generation(0),
            phase: None,
            outcome: None,
            reason: String::new(),
            config_version: Default::default(),
        },
    });
    let handled = tally
        .handled
        .iter()
        .map(|((trigger, how, cycle, reason), count)| Event {
            workspace,
            at: now,
            kind: EventKind::Trigger {
                trigger: *trigger,
                handling: how.handling(),
                cycle: *cycle,
                reason: reason.clone(),
                count: *count,
            },
        });
    opened.chain(handled).collect()
}

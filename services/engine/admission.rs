//! Admission's decisions (C2, C7, C8, C13): the batches of a group — each
//! one workspace's requests in arrival order — are admitted in one
//! transaction. Every row of the group is locked; each request goes through
//! the ledger's `admit`, and its config change is checked and applied in
//! memory; the store writes the outcome of the whole group at its commit.
//! A caller is answered only after that commit. A group never waits for a
//! row: a workspace whose row is busy is left out and admitted alone by its
//! lane. Requests the debounce dropped (C9) are only counted here, with the
//! group: a batch of nothing else takes no row lock. If a statement fails,
//! the group rolled back as a whole and each workspace is admitted on its
//! own, so one workspace's failure stays its own.

use async_trait::async_trait;

use self::dropped::{dropped_batch, record_drop};
use super::{
    coalesce::{Admit, Batch, BatchAnswers, GroupAnswer, Ticket},
    intent::{Admission, Intent, Stage, Verdict, Waiting},
};
use crate::{
    domain::{
        CycleId, Error, Handling, Timestamp, WorkspaceId,
        change::Creation,
        ledger::{AdmitRequest, Admitted},
    },
    store::{
        Admitting, AuditRow, ConfigState, Connection, GroupTx, Locked, Store, Tally, Unchanged,
        WorkspaceWrites,
    },
    telemetry::cycle_trace::TraceOrigin,
};

mod dropped;

#[async_trait]
impl Admit<Intent> for Store {
    /// Alone, waiting for the row if another transaction holds it.
    async fn admit(
        &self,
        workspace: &WorkspaceId,
        batch: &[Intent],
        now: Timestamp,
    ) -> BatchAnswers {
        let batch = Batch {
            key: workspace,
            requests: batch,
        };
        admit_alone(self, &batch, now).await
    }

    /// Together, never waiting for a row: a workspace whose row is busy is
    /// left out (`None`) and its lane admits it alone, outside the slot.
    async fn admit_group(&self, group: &[Batch<'_, Intent>], now: Timestamp) -> Vec<GroupAnswer> {
        match admit_together(self, group, now, false).await {
            Ok(answers) => answers,
            // A statement failed and the group rolled back: each lane admits
            // its workspace alone, so the failure stays with the one that
            // caused it. (A lost database fails them all alike: no point
            // asking again.)
            Err(err) if !matches!(err, Error::Unavailable(_)) => {
                group.iter().map(|_| None).collect()
            }
            Err(err) => group.iter().map(|_| Some(Err(err.clone()))).collect(),
        }
    }
}

/// Admits one workspace's batch in a transaction of its own, waiting for
/// its row.
async fn admit_alone(store: &Store, batch: &Batch<'_, Intent>, now: Timestamp) -> BatchAnswers {
    match admit_together(store, std::slice::from_ref(batch), now, true).await {
        Ok(mut answers) => answers
            .pop()
            .flatten()
            .unwrap_or_else(|| Err(Error::Internal("admission lost a batch".into()))),
        Err(err) => Err(err),
    }
}

/// Admits `group` in one transaction; `Err` if it rolled back. Unless
/// `wait`, a workspace whose row another transaction holds is left out
/// (`None`): nothing of it was written.
async fn admit_together(
    store: &Store,
    group: &[Batch<'_, Intent>],
    now: Timestamp,
    wait: bool,
) -> Result<Vec<Option<BatchAnswers>>, Error> {
    let mut conn = None;
    if !wait {
        match admit_recalled(store, group, now).await? {
            Recalled::Admitted(answers) => return Ok(answers),
            Recalled::Moved(free) => conn = Some(*free),
            Recalled::Unknown => {}
        }
    }
    let conn = match conn {
        Some(conn) => conn,
        None => store.conn().await?,
    };
    let tx = GroupTx::begin(conn, store);
    let mut answers: Vec<Option<BatchAnswers>> = group.iter().map(|_| None).collect();

    // New workspaces first: a name taken by a live workspace fails that
    // batch and nothing else.
    let creations: Vec<(usize, WorkspaceId, &Creation)> = group
        .iter()
        .enumerate()
        .filter_map(|(i, batch)| {
            let creation = batch.requests.iter().find_map(|r| r.creation.as_deref())?;
            Some((i, *batch.key, creation))
        })
        .collect();
    let inserted = tx
        .insert_workspaces(
            &creations
                .iter()
                .map(|(_, w, c)| (*w, *c))
                .collect::<Vec<_>>(),
            now,
        )
        .await?;
    for ((i, _, creation), inserted) in creations.iter().zip(inserted) {
        if !inserted {
            let err = Error::AlreadyExists(format!(
                "a workspace named {:?} already exists",
                creation.name
            ));
            answers[*i] = Some(Ok(vec![Err(err); group[*i].requests.len()]));
        }
    }

    // Batches the debounce dropped whole are recorded without their rows.
    let mut writes = Vec::with_capacity(group.len());
    for (batch, answer) in group.iter().zip(answers.iter_mut()) {
        if answer.is_none()
            && let Some((results, write)) = dropped_batch(*batch.key, batch.requests)
        {
            *answer = Some(Ok(results));
            writes.push(write);
        }
    }

    let alive = || group.iter().zip(&answers).filter(|(_, a)| a.is_none());
    let ids: Vec<WorkspaceId> = alive().map(|(b, _)| *b.key).collect();
    let configs: Vec<WorkspaceId> = alive()
        .filter(|(b, _)| b.requests.iter().any(|r| r.change.is_some()))
        .map(|(b, _)| *b.key)
        .collect();
    let mut locked = tx.lock(&ids, &configs, wait).await?;

    for (batch, answer) in group.iter().zip(answers.iter_mut()) {
        if answer.is_some() {
            continue;
        }
        let Some(admitting) = locked.remove(batch.key) else {
            if wait {
                *answer = Some(Err(Error::NotFound(format!("workspace {}", batch.key))));
            }
            continue;
        };
        let (results, write) = admit_batch(store, *batch.key, batch.requests, admitting, now);
        *answer = Some(Ok(results));
        writes.push(write);
    }
    tx.commit(&writes, now).await?;
    Ok(answers)
}

/// Admits `group` on its rows as this process last read or wrote them, in
/// one round trip: the writes go out behind a lock that holds only if no
/// row moved since. Nothing is written unless it is [`Recalled::Admitted`].
async fn admit_recalled(
    store: &Store,
    group: &[Batch<'_, Intent>],
    now: Timestamp,
) -> Result<Recalled, Error> {
    let creates = |batch: &Batch<'_, Intent>| batch.requests.iter().any(|r| r.creation.is_some());
    if group.iter().any(creates) {
        return Ok(Recalled::Unknown);
    }
    // Batches the debounce dropped whole need no row.
    let dropped: Vec<_> = group
        .iter()
        .map(|batch| dropped_batch(*batch.key, batch.requests))
        .collect();
    let on_rows = || {
        group
            .iter()
            .zip(&dropped)
            .filter(|(_, dropped)| dropped.is_none())
            .map(|(batch, _)| batch)
    };
    let ids: Vec<WorkspaceId> = on_rows().map(|batch| *batch.key).collect();
    let configs: Vec<WorkspaceId> = on_rows()
        .filter(|batch| batch.requests.iter().any(|r| r.change.is_some()))
        .map(|batch| *batch.key)
        .collect();
    let Some((mut known, versions)) = GroupTx::recall(store, &ids, &configs) else {
        return Ok(Recalled::Unknown);
    };
    let mut answers = Vec::with_capacity(group.len());
    let mut writes = Vec::with_capacity(group.len());
    for (batch, dropped) in group.iter().zip(dropped) {
        let (results, write) = match dropped {
            Some(dropped) => dropped,
            None => {
                let Some(admitting) = known.remove(batch.key) else {
                    return Ok(Recalled::Unknown);
                };
                admit_batch(store, *batch.key, batch.requests, admitting, now)
            }
        };
        answers.push(Some(Ok(results)));
        writes.push(write);
    }
    let tx = GroupTx::begin(store.conn().await?, store);
    if ids.is_empty() {
        tx.commit(&writes, now).await?;
        return Ok(Recalled::Admitted(answers));
    }
    Ok(
        match tx.commit_unchanged(&ids, &versions, &writes, now).await? {
            Unchanged::Committed => Recalled::Admitted(answers),
            Unchanged::Moved(conn) => Recalled::Moved(conn),
        },
    )
}

/// How admitting a group on its remembered rows went.
enum Recalled {
    /// Committed: each batch's answers.
    Admitted(Vec<Option<BatchAnswers>>),
    /// Not every row is remembered (or the group creates a workspace):
    /// nothing was sent.
    Unknown,
    /// A row moved: nothing was written. The connection, free for reading
    /// the rows under the lock.
    Moved(Box<Connection>),
}

/// Admits one workspace's batch against its locked row, in arrival order.
fn admit_batch<'a>(
    store: &Store,
    workspace: WorkspaceId,
    batch: &'a [Intent],
    mut admitting: Admitting<'a>,
    now: Timestamp,
) -> (Vec<Result<Ticket, Error>>, WorkspaceWrites<'a>) {
    let locked = &mut admitting.locked;
    let before = (locked.ledger.clone(), locked.config_version);
    let mut tally = Tally::default();
    let mut starting = None;
    let results: Vec<Result<Ticket, Error>> = batch
        .iter()
        .map(|intent| {
            admit_one(
                intent,
                locked,
                admitting.config.as_mut(),
                &mut tally,
                &mut starting,
                store,
                now,
            )
        })
        .collect();
    let audit: Vec<AuditRow<'a>> = batch
        .iter()
        .zip(&results)
        .filter(|(_, result)| result.is_ok())
        .filter_map(|(intent, _)| intent.audit_row())
        .collect();
    // A batch that changed nothing (refusals, drops) leaves the row as it
    // was, `updated_at` included: bad input changes nothing.
    let changed = (&locked.ledger, locked.config_version) != (&before.0, before.1);
    let after = admitting
        .config
        .as_ref()
        .filter(|_| changed)
        .map(ConfigState::unwritten);
    let write = WorkspaceWrites {
        workspace,
        tally,
        audit,
        save: changed.then(|| admitting.locked.clone()),
        config: admitting
            .config
            .map(|config| config.into_writes())
            .unwrap_or_default(),
        after,
    };
    (results, write)
}

/// Applies one request to the locked row.
fn admit_one<'a>(
    intent: &'a Intent,
    locked: &mut Locked,
    config: Option<&mut ConfigState<'a>>,
    tally: &mut Tally,
    starting: &mut Option<CycleId>,
    store: &Store,
    now: Timestamp,
) -> Result<Ticket, Error> {
    if let Some(dropped) = record_drop(intent, tally) {
        return dropped;
    }
    let Stage::Treated(treatment) = intent.stage else {
        return Err(Error::Internal(format!(
            "admission of an untreated request ({:?})",
            intent.stage
        )));
    };
    // Before the config change: a refused request changes nothing.
    if let Some(refusal) = locked.ledger.refusal(intent.ask) {
        return Err(refusal.into());
    }
    if let Some(change) = &intent.change {
        let config = config.ok_or_else(|| {
            Error::Internal("a config change without its workspace's config".into())
        })?;
        config.apply(change, store)?;
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
        .admit(request, now, CycleId::new(), store.timing())?;
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
            tally.count(intent.trigger, Handling::Dropped, None, reason.describe());
            return Ok(Ticket::Done(Admission {
                verdict: Verdict::Dropped { reason, until },
                config_version,
            }));
        }
    };
    if opened {
        tally.opened(cycle, TraceOrigin::of(cycle, intent.caller.as_deref()));
    }
    // The first request of the batch that makes its cycle ready starts it
    // (it goes on to the gate and is answered `accepted`); every other
    // request in that cycle joined it. Counters, events and answers all
    // read this one decision.
    let starts = ready && starting.is_none_or(|c| c != cycle);
    if starts {
        *starting = Some(cycle);
    }
    let how = match (starts, ready, waiting) {
        (true, _, _) => Handling::Accepted,
        (false, true, _) | (false, false, Waiting::Coalesced) => Handling::Coalesced,
        (false, false, Waiting::Deferred) => Handling::Deferred,
    };
    let waiting = if ready { Waiting::Coalesced } else { waiting };
    tally.count(intent.trigger, how, Some(cycle), "");
    Ok(if starts {
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

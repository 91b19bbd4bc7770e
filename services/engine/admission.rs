//! Admission's decisions (C2, C7, C8, C13): each request of a batch for
//! one workspace goes through the ledger's `admit` in arrival order, under
//! the row lock, and the store writes the outcome in the same transaction.
//! A caller is answered only after that commit.

use async_trait::async_trait;

use super::{
    coalesce::{Admit, Ticket},
    intent::{Admission, Intent, Stage, Verdict, Waiting},
};
use crate::{
    domain::{
        CycleId, Error, Handling, Timestamp, WorkspaceId,
        ledger::{AdmitRequest, Admitted},
    },
    store::{AuditRow, Locked, RowTx, Store, Tally},
    telemetry::cycle_trace::TraceOrigin,
};

#[async_trait]
impl Admit<Intent> for Store {
    async fn admit(
        &self,
        workspace: &WorkspaceId,
        batch: &[Intent],
        now: Timestamp,
    ) -> Result<Vec<Result<Ticket, Error>>, Error> {
        let workspace = *workspace;
        let mut conn = self.conn().await?;
        let tx = RowTx::begin(&mut conn, self, workspace).await?;

        let mut creation_failed = None;
        for creation in batch.iter().filter_map(|i| i.creation.as_ref()) {
            if let Err(err) = tx.insert_workspace(creation, now).await {
                creation_failed = Some(err);
            }
        }
        if let Some(err) = creation_failed {
            return Ok(vec![Err(err); batch.len()]);
        }

        let mut locked = tx.lock().await?;
        let before = (locked.ledger.clone(), locked.config_version);
        let mut tally = Tally::default();
        let mut results = Vec::with_capacity(batch.len());
        let mut starting = None;
        for intent in batch {
            let result = admit_one(
                &tx,
                intent,
                &mut locked,
                &mut tally,
                &mut starting,
                self,
                now,
            )
            .await;
            results.push(result);
        }

        let audit: Vec<AuditRow<'_>> = batch
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
            .filter_map(|(intent, _)| intent.audit_row())
            .collect();
        // A batch that changed nothing (refusals, drops) leaves the row as
        // it was, `updated_at` included: bad input changes nothing.
        let changed = (&locked.ledger, locked.config_version) != (&before.0, before.1);
        tx.commit_tally(&tally, &audit, changed.then_some(&locked), now)
            .await?;
        Ok(results)
    }
}

/// Applies one request to the locked row.
async fn admit_one(
    tx: &RowTx<'_>,
    intent: &Intent,
    locked: &mut Locked,
    tally: &mut Tally,
    starting: &mut Option<CycleId>,
    store: &Store,
    now: Timestamp,
) -> Result<Ticket, Error> {
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
        tx.apply_change(change, now).await?;
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
        tally.opened(cycle, TraceOrigin::of(cycle, intent.caller.as_ref()));
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

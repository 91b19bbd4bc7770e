//! The ledger's columns on the workspace row: loading it under the row lock
//! and writing it back.
//! Contracts: C5, C12 (the row lock serialises every transition).

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{db, row_tx::Locked, statement::Statement};
use crate::domain::Error;
use crate::{
    domain::ledger::{Burst, Ledger, Pending, Running, Timing},
    domain::{
        ConfigVersion, CycleId, Desired, Generation, Goal, ReplicaId, Timestamp, WorkspaceId,
    },
};

/// Parses a stored enum name.
pub(super) fn parse<T: std::str::FromStr<Err = String>>(value: &str) -> Result<T, Error> {
    value
        .parse()
        .map_err(|e: String| Error::Internal(format!("corrupt row: {e}")))
}

fn ledger_from_row(row: &Row) -> Result<Ledger, Error> {
    let running = match row.get::<_, Option<Uuid>>("running_cycle") {
        Some(cycle) => Some(Running {
            cycle: CycleId::from(cycle),
            owner: ReplicaId::from(row.get::<_, Uuid>("running_owner")),
            lease_until: row.get("running_lease_until"),
            goal: parse::<Goal>(row.get::<_, &str>("running_goal"))?,
            generation: Generation(row.get::<_, i64>("running_generation") as u64),
            takeovers: row.get::<_, i32>("running_takeovers") as u32,
        }),
        None => None,
    };
    let pending = row
        .get::<_, Option<Uuid>>("pending_cycle")
        .map(|cycle| Pending {
            cycle: CycleId::from(cycle),
            created_at: row.get("pending_created_at"),
            urgent: row.get("pending_urgent"),
            burst: match (
                row.get::<_, Option<Timestamp>>("pending_burst_first"),
                row.get::<_, Option<Timestamp>>("pending_burst_last"),
            ) {
                (Some(first_at), Some(last_at)) => Some(Burst { first_at, last_at }),
                _ => None,
            },
        });
    Ok(Ledger {
        desired: parse::<Desired>(row.get::<_, &str>("desired"))?,
        generation: Generation(row.get::<_, i64>("generation") as u64),
        running,
        pending,
        window_until: row.get("window_until"),
        removed: row.get::<_, &str>("status") == "DELETED",
    })
}

/// The columns a [`Locked`] is read from.
macro_rules! locked_columns {
    () => {
        "desired, generation, running_cycle, running_owner, running_lease_until,
         running_goal, running_generation, running_takeovers, pending_cycle,
         pending_created_at, pending_urgent, pending_burst_first, pending_burst_last,
         window_until, config_version, status, row_version"
    };
}

fn locked_from_row(row: &Row) -> Result<Locked, Error> {
    Ok(Locked {
        ledger: ledger_from_row(row)?,
        config_version: ConfigVersion(row.get::<_, i64>("config_version") as u64),
    })
}

/// Locks the workspace row for the rest of the transaction and loads its
/// ledger, with the row's version. `NotFound` if there is no such
/// workspace.
pub(crate) async fn lock(
    client: &impl GenericClient,
    workspace: WorkspaceId,
) -> Result<(Locked, RowVersion), Error> {
    let row = super::row_by_id(
        client,
        concat!(
            "SELECT ",
            locked_columns!(),
            " FROM workspaces WHERE id = $1 FOR NO KEY UPDATE"
        ),
        workspace.as_uuid(),
        || format!("workspace {workspace}"),
    )
    .await?;
    Ok((locked_from_row(&row)?, RowVersion(row.get("row_version"))))
}

/// Locks several workspace rows in id order — so two transactions locking
/// overlapping sets never wait on each other in a cycle — and loads their
/// ledgers, each with its row's version (V8); a workspace that does not
/// exist is missing from the answer.
pub(crate) async fn lock_all(
    client: &impl GenericClient,
    statement: &tokio_postgres::Statement,
    ids: &[Uuid],
) -> Result<Vec<(WorkspaceId, Locked, RowVersion)>, Error> {
    let rows = client.query(statement, &[&ids]).await.map_err(db)?;
    versioned(&rows)
}

/// Each row's id, ledger and version.
fn versioned(rows: &[Row]) -> Result<Vec<(WorkspaceId, Locked, RowVersion)>, Error> {
    rows.iter()
        .map(|row| {
            Ok((
                WorkspaceId::from(row.get::<_, Uuid>("id")),
                locked_from_row(row)?,
                RowVersion(row.get("row_version")),
            ))
        })
        .collect()
}

/// A workspace row's version: moved by every write of the row (V8), so a
/// row known at one version is the row in Postgres while it still has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowVersion(pub(crate) i64);

/// The statement that locks the rows of `ids` (`NOWAIT`) only if each still
/// has its version in `versions`, and otherwise fails the transaction it
/// opens (`wl_lock_unchanged`, V8): sent first, ahead of writes decided on
/// remembered rows.
pub(crate) fn lock_unchanged(ids: &[WorkspaceId], versions: &[RowVersion]) -> Statement<'static> {
    let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
    let versions: Vec<i64> = versions.iter().map(|v| v.0).collect();
    Statement::new(
        "SELECT wl_lock_unchanged($1::uuid[], $2::bigint[])",
        vec![Box::new(ids), Box::new(versions)],
    )
}

/// The rows [`save`] wrote, as Postgres holds them now (its `RETURNING`:
/// timestamps at Postgres' precision, not the engine's), with the versions
/// it left them at.
pub(crate) fn saved(rows: &[Row]) -> Result<Vec<(WorkspaceId, Locked, RowVersion)>, Error> {
    versioned(rows)
}

/// The statement [`lock_all`] runs to wait for every row.
pub(crate) const LOCK_ALL: &str = concat!(
    "SELECT id, ",
    locked_columns!(),
    " FROM workspaces WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE"
);

/// The statement [`lock_all`] runs to lock the rows nobody else holds now
/// and skip the rest.
pub(crate) const LOCK_FREE: &str = concat!(
    "SELECT id, ",
    locked_columns!(),
    " FROM workspaces WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE SKIP LOCKED"
);

/// One locked row to write back, with when its follow-up is due.
pub(crate) struct Save<'l> {
    workspace: WorkspaceId,
    locked: &'l Locked,
    due: Option<Timestamp>,
}

impl<'l> Save<'l> {
    /// `locked` to write back to `workspace`'s row, its follow-up's due
    /// time derived by the ledger's rule.
    pub(crate) fn of(workspace: WorkspaceId, locked: &'l Locked, timing: &Timing) -> Self {
        Self {
            workspace,
            locked,
            due: locked.ledger.pending_due(timing),
        }
    }
}

/// The statement that writes the ledgers (and config versions) back to
/// their locked rows, all of them at once; `None` when there are none.
pub(crate) fn save<'a>(rows: &[Save<'a>], now: Timestamp) -> Option<Statement<'a>> {
    if rows.is_empty() {
        return None;
    }
    let ledgers = || rows.iter().map(|r| &r.locked.ledger);
    let running = || ledgers().map(|l| l.running.as_ref());
    let pending = || ledgers().map(|l| l.pending.as_ref());
    let ids: Vec<Uuid> = rows.iter().map(|r| r.workspace.as_uuid()).collect();
    let desired: Vec<&str> = ledgers().map(|l| l.desired.as_str()).collect();
    let generation: Vec<i64> = ledgers().map(|l| l.generation.0 as i64).collect();
    let running_cycle: Vec<Option<Uuid>> =
        running().map(|r| r.map(|r| r.cycle.as_uuid())).collect();
    let running_owner: Vec<Option<Uuid>> =
        running().map(|r| r.map(|r| r.owner.as_uuid())).collect();
    let lease_until: Vec<Option<Timestamp>> = running().map(|r| r.map(|r| r.lease_until)).collect();
    let goal: Vec<Option<&str>> = running().map(|r| r.map(|r| r.goal.as_str())).collect();
    let running_generation: Vec<Option<i64>> = running()
        .map(|r| r.map(|r| r.generation.0 as i64))
        .collect();
    let takeovers: Vec<Option<i32>> = running().map(|r| r.map(|r| r.takeovers as i32)).collect();
    let pending_cycle: Vec<Option<Uuid>> =
        pending().map(|p| p.map(|p| p.cycle.as_uuid())).collect();
    let pending_created: Vec<Option<Timestamp>> =
        pending().map(|p| p.map(|p| p.created_at)).collect();
    let urgent: Vec<Option<bool>> = pending().map(|p| p.map(|p| p.urgent)).collect();
    let burst_first: Vec<Option<Timestamp>> = pending()
        .map(|p| p.and_then(|p| p.burst.map(|b| b.first_at)))
        .collect();
    let burst_last: Vec<Option<Timestamp>> = pending()
        .map(|p| p.and_then(|p| p.burst.map(|b| b.last_at)))
        .collect();
    let window_until: Vec<Option<Timestamp>> = ledgers().map(|l| l.window_until).collect();
    let due: Vec<Option<Timestamp>> = rows.iter().map(|r| r.due).collect();
    let config_version: Vec<i64> = rows
        .iter()
        .map(|r| r.locked.config_version.0 as i64)
        .collect();
    Some(Statement::new(
        "UPDATE workspaces w SET
            desired = v.desired, generation = v.generation,
            running_cycle = v.running_cycle, running_owner = v.running_owner,
            running_lease_until = v.running_lease_until, running_goal = v.running_goal,
            running_generation = v.running_generation, running_takeovers = v.running_takeovers,
            pending_cycle = v.pending_cycle, pending_created_at = v.pending_created_at,
            pending_urgent = v.pending_urgent, pending_burst_first = v.pending_burst_first,
            pending_burst_last = v.pending_burst_last, window_until = v.window_until,
            pending_due_at = v.pending_due_at, config_version = v.config_version,
            updated_at = $18, row_version = wl_new_row_version()
         FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::uuid[], $5::uuid[],
                     $6::timestamptz[], $7::text[], $8::bigint[], $9::integer[], $10::uuid[],
                     $11::timestamptz[], $12::boolean[], $13::timestamptz[], $14::timestamptz[],
                     $15::timestamptz[], $16::timestamptz[], $17::bigint[])
           AS v (id, desired, generation, running_cycle, running_owner, running_lease_until,
                 running_goal, running_generation, running_takeovers, pending_cycle,
                 pending_created_at, pending_urgent, pending_burst_first, pending_burst_last,
                 window_until, pending_due_at, config_version)
         WHERE w.id = v.id
         RETURNING w.id, w.desired, w.generation, w.running_cycle, w.running_owner,
            w.running_lease_until, w.running_goal, w.running_generation, w.running_takeovers,
            w.pending_cycle, w.pending_created_at, w.pending_urgent, w.pending_burst_first,
            w.pending_burst_last, w.window_until, w.config_version, w.status, w.row_version",
        vec![
            Box::new(ids),
            Box::new(desired),
            Box::new(generation),
            Box::new(running_cycle),
            Box::new(running_owner),
            Box::new(lease_until),
            Box::new(goal),
            Box::new(running_generation),
            Box::new(takeovers),
            Box::new(pending_cycle),
            Box::new(pending_created),
            Box::new(urgent),
            Box::new(burst_first),
            Box::new(burst_last),
            Box::new(window_until),
            Box::new(due),
            Box::new(config_version),
            Box::new(now),
        ],
    ))
}

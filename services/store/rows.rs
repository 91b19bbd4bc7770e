//! The ledger's columns on the workspace row: loading it under the row lock
//! and writing it back.
//! Contracts: C5, C12 (the row lock serialises every transition).

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{db, row_tx::Locked};
use crate::domain::Error;
use crate::{
    domain::ledger::{Burst, Ledger, Pending, Running},
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

/// Locks the workspace row for the rest of the transaction and loads its
/// ledger. `NotFound` if there is no such workspace.
pub(crate) async fn lock(
    client: &impl GenericClient,
    workspace: WorkspaceId,
) -> Result<Locked, Error> {
    let row = super::row_by_id(
        client,
        "SELECT desired, generation, running_cycle, running_owner, running_lease_until,
                running_goal, running_generation, running_takeovers, pending_cycle,
                pending_created_at, pending_urgent, pending_burst_first, pending_burst_last,
                window_until, config_version, status
         FROM workspaces WHERE id = $1 FOR UPDATE",
        workspace.as_uuid(),
        || format!("workspace {workspace}"),
    )
    .await?;
    Ok(Locked {
        ledger: ledger_from_row(&row)?,
        config_version: ConfigVersion(row.get::<_, i64>("config_version") as u64),
    })
}

/// Writes the ledger (and the config version) back to the locked row.
pub(crate) async fn save(
    client: &impl GenericClient,
    workspace: WorkspaceId,
    locked: &Locked,
    pending_due: &Option<Timestamp>,
    now: Timestamp,
) -> Result<(), Error> {
    let ledger = &locked.ledger;
    let running = ledger.running.as_ref();
    let pending = ledger.pending.as_ref();
    let statement = client
        .prepare_cached(
            "UPDATE workspaces SET
                desired = $2, generation = $3,
                running_cycle = $4, running_owner = $5, running_lease_until = $6,
                running_goal = $7, running_generation = $8, running_takeovers = $9,
                pending_cycle = $10, pending_created_at = $11, pending_urgent = $12,
                pending_burst_first = $13, pending_burst_last = $14,
                window_until = $15, pending_due_at = $16, config_version = $17,
                updated_at = $18
             WHERE id = $1",
        )
        .await
        .map_err(db)?;
    client
        .execute(
            &statement,
            &[
                &workspace.as_uuid(),
                &ledger.desired.as_str(),
                &(ledger.generation.0 as i64),
                &running.map(|r| r.cycle.as_uuid()),
                &running.map(|r| r.owner.as_uuid()),
                &running.map(|r| r.lease_until),
                &running.map(|r| r.goal.as_str()),
                &running.map(|r| r.generation.0 as i64),
                &running.map(|r| r.takeovers as i32),
                &pending.map(|p| p.cycle.as_uuid()),
                &pending.map(|p| p.created_at),
                &pending.map(|p| p.urgent),
                &pending.and_then(|p| p.burst.map(|b| b.first_at)),
                &pending.and_then(|p| p.burst.map(|b| b.last_at)),
                &ledger.window_until,
                pending_due,
                &(locked.config_version.0 as i64),
                &now,
            ],
        )
        .await
        .map_err(db)?;
    Ok(())
}

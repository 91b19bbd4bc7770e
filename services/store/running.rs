//! The running cycle's rows: its fenced writes while it holds the gate
//! (C12, C18) and its end (C17); its start is `claimed.rs`. Every write a
//! runner makes goes through one SQL condition, [`held!`].

use deadpool_postgres::GenericClient;

use tokio_postgres::types::ToSql;

use super::{RowTx, Store, db, execute};
use crate::domain::{
    ConfigVersion, CycleId, CycleState, Error, Event, Finish, Generation, ReplicaId, Timestamp,
    WorkspaceId, ledger::Claim,
};

/// The one fencing condition (C12, C18): the row's running cycle is this
/// guard's cycle, in this replica's name, at this takeover count. `$1`
/// workspace, `$2` cycle, `$3` owner, `$4` epoch ([`Fence`]).
/// Every write a runner makes while it holds the gate goes through it.
macro_rules! held {
    () => {
        "id = $1 AND running_cycle = $2 AND running_owner = $3 AND running_takeovers = $4"
    };
}

/// Who must still hold the gate for a runner's write to apply: the values
/// of [`held!`]'s `$1`–`$4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// The cycle holding the gate.
    pub cycle: CycleId,
    /// The replica holding it.
    pub owner: ReplicaId,
    /// How many takeovers the cycle had when this runner took it.
    pub epoch: u32,
}

impl Fence {
    fn key(&self) -> (uuid::Uuid, uuid::Uuid, uuid::Uuid, i32) {
        (
            self.workspace.as_uuid(),
            self.cycle.as_uuid(),
            self.owner.as_uuid(),
            self.epoch as i32,
        )
    }
}

impl Store {
    /// Extends the lease to `lease_until`; false if `fence` no longer holds.
    pub async fn renew_lease(&self, fence: &Fence, lease_until: Timestamp) -> Result<bool, Error> {
        let (w, c, o, t) = fence.key();
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(concat!(
                "UPDATE workspaces SET running_lease_until = $5 WHERE ",
                held!()
            ))
            .await
            .map_err(db)?;
        Ok(conn
            .execute(&statement, &[&w, &c, &o, &t, &lease_until])
            .await
            .map_err(db)?
            == 1)
    }

    /// Publishes `event` only if `fence` still holds; false otherwise.
    pub async fn publish_fenced(&self, fence: &Fence, event: &Event) -> Result<bool, Error> {
        let payload =
            serde_json::to_string(event).map_err(|e| Error::Internal(format!("event: {e}")))?;
        let (w, c, o, t) = fence.key();
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(concat!(
                "SELECT pg_notify($5, $6) FROM workspaces WHERE ",
                held!()
            ))
            .await
            .map_err(db)?;
        let held = conn
            .execute(
                &statement,
                &[&w, &c, &o, &t, &super::notify::CHANNEL, &payload],
            )
            .await
            .map_err(db)?;
        Ok(held == 1)
    }

    /// Records `generation`'s token hash and publishes `event` (the phase it
    /// enters), in one statement, only if `fence` still holds.
    pub async fn record_generation(
        &self,
        fence: &Fence,
        generation: Generation,
        token_hash: &[u8],
        event: &Event,
    ) -> Result<bool, Error> {
        let now = self.clock().now();
        let payload =
            serde_json::to_string(event).map_err(|e| Error::Internal(format!("event: {e}")))?;
        let (w, c, o, t) = fence.key();
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(concat!(
                "WITH recorded AS (
                    INSERT INTO generations (workspace_id, generation, cycle_id, token_hash, created_at)
                    SELECT $1, $5, $2, $6, $7 FROM workspaces WHERE ",
                held!(),
                " ON CONFLICT (workspace_id, generation) DO UPDATE SET
                        cycle_id = EXCLUDED.cycle_id, token_hash = EXCLUDED.token_hash,
                        created_at = EXCLUDED.created_at, registered_at = NULL, revoked_at = NULL
                    RETURNING 1
                 )
                 SELECT pg_notify($8, $9) FROM recorded"
            ))
            .await
            .map_err(db)?;
        let recorded = conn
            .execute(
                &statement,
                &[
                    &w,
                    &c,
                    &o,
                    &t,
                    &(generation.0 as i64),
                    &token_hash,
                    &now,
                    &super::notify::CHANNEL,
                    &payload,
                ],
            )
            .await
            .map_err(db)?;
        Ok(recorded == 1)
    }
}

impl RowTx {
    /// Writes the end of a cycle: status, cycle row, tokens, config removal.
    pub async fn record_end(
        &mut self,
        claim: &Claim,
        finish: &Finish,
        served: ConfigVersion,
        now: Timestamp,
    ) -> Result<(), Error> {
        let tx = self.tx.client();
        let id = self.workspace.as_uuid();
        let status = finish.status();
        let (outcome, reason) = (finish.outcome(), finish.reason());
        let stopped = matches!(finish, Finish::Stopped | Finish::Deleted);
        let deleted = matches!(finish, Finish::Deleted);
        let (status_name, cycle, outcome) =
            (status.as_str(), claim.cycle.as_uuid(), outcome.as_str());
        let workspace_row: [&(dyn ToSql + Sync); 4] = [&id, &status_name, &reason, &now];
        let cycle_row: [&(dyn ToSql + Sync); 4] = [&cycle, &outcome, &reason, &now];
        let revoke: [&(dyn ToSql + Sync); 2] = [&id, &now];
        let by_workspace: [&(dyn ToSql + Sync); 1] = [&id];
        // Independent writes, pipelined: one round trip.
        futures::try_join!(
            execute(
                tx,
                "UPDATE workspaces SET status = $2, status_reason = $3, updated_at = $4 WHERE id = $1",
                &workspace_row,
            ),
            execute(
                tx,
                "UPDATE cycles SET state = 'ENDED', outcome = $2, reason = $3, ended_at = $4 WHERE id = $1",
                &cycle_row,
            ),
            async {
                if !stopped {
                    return Ok(0);
                }
                execute(
                    tx,
                    "UPDATE generations SET revoked_at = $2 WHERE workspace_id = $1 AND revoked_at IS NULL",
                    &revoke,
                )
                .await
            },
            async {
                if !deleted {
                    return Ok(0);
                }
                futures::try_join!(
                    execute(
                        tx,
                        "DELETE FROM secrets WHERE workspace_id = $1",
                        &by_workspace
                    ),
                    execute(
                        tx,
                        "DELETE FROM files WHERE workspace_id = $1",
                        &by_workspace
                    ),
                )
                .map(|(a, b)| a + b)
            },
        )?;
        let config_version = match finish {
            Finish::Online { config_version } => *config_version,
            _ => served,
        };
        self.events.extend([
            Event::cycle(
                self.workspace,
                now,
                claim.cycle,
                claim.generation,
                CycleState::Ended,
                config_version,
            )
            .ended_with(finish.outcome(), finish.reason()),
            Event::status(
                self.workspace,
                now,
                status,
                finish.reason(),
                claim.generation,
            ),
        ]);
        Ok(())
    }
}

//! The running cycle's rows: its fenced writes while it holds the gate
//! (C12, C18) and its end (C17); its start is `claimed.rs`. Every write a
//! runner makes goes through one SQL condition, [`held!`].

use deadpool_postgres::GenericClient;

use super::{RowTx, Store, db, statement::Statement};
use crate::domain::{
    ConfigVersion, CycleId, CycleState, Error, Event, Finish, ReplicaId, Timestamp, WorkspaceId,
    ledger::Claim,
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
        let renewed = conn
            .execute(&statement, &[&w, &c, &o, &t, &lease_until])
            .await
            .map_err(db)?;
        // Admission would find the row moved: it reads it again instead.
        self.known.forget(fence.workspace);
        Ok(renewed == 1)
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
}

impl RowTx {
    /// Queues the end of a cycle — status, cycle row, tokens, config
    /// removal — to go out with the transaction's `COMMIT` (or ahead of its
    /// next statement, a follow-up's claim).
    pub fn record_end(
        &mut self,
        claim: &Claim,
        finish: &Finish,
        served: ConfigVersion,
        now: Timestamp,
    ) {
        let id = self.workspace.as_uuid();
        let status = finish.status();
        let (outcome, reason) = (finish.outcome(), finish.reason());
        let stopped = matches!(finish, Finish::Stopped | Finish::Deleted);
        let deleted = matches!(finish, Finish::Deleted);
        self.queue(Statement::new(
            "UPDATE workspaces SET status = $2, status_reason = $3, updated_at = $4 WHERE id = $1",
            vec![
                Box::new(id),
                Box::new(status.as_str()),
                Box::new(reason.to_owned()),
                Box::new(now),
            ],
        ));
        self.queue(Statement::new(
            "UPDATE cycles SET state = 'ENDED', outcome = $2, reason = $3, ended_at = $4 WHERE id = $1",
            vec![
                Box::new(claim.cycle.as_uuid()),
                Box::new(outcome.as_str()),
                Box::new(reason.to_owned()),
                Box::new(now),
            ],
        ));
        if stopped {
            self.queue(Statement::new(
                "UPDATE generations SET revoked_at = $2 WHERE workspace_id = $1 AND revoked_at IS NULL",
                vec![Box::new(id), Box::new(now)],
            ));
        }
        if deleted {
            self.queue(Statement::new(
                "DELETE FROM secrets WHERE workspace_id = $1",
                vec![Box::new(id)],
            ));
            self.queue(Statement::new(
                "DELETE FROM files WHERE workspace_id = $1",
                vec![Box::new(id)],
            ));
        }
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
    }
}

//! The debounce's unlocked look at a workspace and its count of the
//! requests it drops before admission (C7, C9): counted and published like
//! any admission's tally, without taking the row lock.

use super::{GroupTx, Store, Tally, WorkspaceWrites, rows::parse};
use crate::domain::{
    BackendKind, Desired, Error, Handling, Timestamp, Trigger, WorkspaceId, ledger::DropReason,
};

/// What the debounce needs to drop a request without locking anything.
#[derive(Clone, Copy, Debug)]
pub struct Peek {
    /// Desired state.
    pub desired: Desired,
    /// Where it runs.
    pub backend: BackendKind,
    /// A cycle holds the gate.
    pub cycle_in_flight: bool,
    /// End of the debounce window.
    pub window_until: Option<Timestamp>,
}

impl Store {
    /// The debounce's unlocked look at a workspace.
    pub async fn peek(&self, id: WorkspaceId) -> Result<Peek, Error> {
        let conn = self.conn().await?;
        let row = super::row_by_id(
            &conn,
            "SELECT desired, backend, running_cycle IS NOT NULL, window_until
             FROM workspaces WHERE id = $1",
            id.as_uuid(),
            || format!("workspace {id}"),
        )
        .await?;
        Ok(Peek {
            desired: parse(row.get::<_, &str>(0))?,
            backend: parse(row.get::<_, &str>(1))?,
            cycle_in_flight: row.get(2),
            window_until: row.get(3),
        })
    }

    /// Counts a request dropped before admission and tells watchers.
    pub async fn record_drop(
        &self,
        id: WorkspaceId,
        trigger: Trigger,
        reason: DropReason,
    ) -> Result<(), Error> {
        let now = self.clock().now();
        let mut tally = Tally::default();
        tally.count(trigger, Handling::Dropped, None, reason.describe());
        let tx = GroupTx::begin(self.conn().await?, self);
        tx.commit(&[WorkspaceWrites::counted(id, tally)], now).await
    }
}

//! The debounce's unlocked look at a workspace (C7, C9): what it needs to
//! drop a request before admission, read without taking the row lock
//! (admission counts the drop with its group).

use std::collections::HashMap;

use tokio_postgres::Row;
use uuid::Uuid;

use super::{Store, db, rows::parse};
use crate::domain::{BackendKind, Desired, Error, Timestamp, WorkspaceId};

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
    /// The debounce's unlocked look at a workspace; `NotFound` if there is
    /// none.
    pub async fn peek(&self, id: WorkspaceId) -> Result<Peek, Error> {
        self.peek_many(&[id])
            .await?
            .remove(&id)
            .ok_or_else(|| Error::NotFound(format!("workspace {id}")))
    }

    /// The same look at many workspaces, in one read: the workspaces found.
    pub async fn peek_many(
        &self,
        ids: &[WorkspaceId],
    ) -> Result<HashMap<WorkspaceId, Peek>, Error> {
        let conn = self.conn().await?;
        let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
        let statement = conn
            .prepare_cached(
                "SELECT desired, backend, running_cycle IS NOT NULL, window_until, id
                 FROM workspaces WHERE id = ANY($1)",
            )
            .await
            .map_err(db)?;
        let rows = conn.query(&statement, &[&ids]).await.map_err(db)?;
        rows.iter()
            .map(|row| Ok((WorkspaceId::from(row.get::<_, Uuid>(4)), peek_of(row)?)))
            .collect()
    }
}

/// A [`Peek`] from its first four columns.
fn peek_of(row: &Row) -> Result<Peek, Error> {
    Ok(Peek {
        desired: parse(row.get::<_, &str>(0))?,
        backend: parse(row.get::<_, &str>(1))?,
        cycle_in_flight: row.get(2),
        window_until: row.get(3),
    })
}

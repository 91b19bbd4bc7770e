//! The debounce's unlocked look at a workspace (C7, C9): what it needs to
//! drop a request before admission, read without taking the row lock
//! (admission counts the drop with its group).

use super::{Store, rows::parse};
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
}

//! What the scheduler and the reconciler find to do (C14, C17): due
//! follow-ups and expired leases, the earliest instant something falls
//! due, and the workspaces that should be serving.

use uuid::Uuid;

use super::{Store, db, rows::parse};
use crate::domain::{BackendKind, Error, Generation, Timestamp, WorkspaceId};

/// A workspace the reconciler checks: it should be serving `generation`.
#[derive(Clone, Copy, Debug)]
pub struct Serving {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// Where it runs.
    pub backend: BackendKind,
    /// The generation its newest cycle provisioned.
    pub generation: Generation,
}

impl Store {
    /// Workspaces with something to run now: a due follow-up with the gate
    /// free, or a cycle whose holder's lease expired.
    pub async fn due_workspaces(
        &self,
        now: Timestamp,
        limit: i64,
    ) -> Result<Vec<WorkspaceId>, Error> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(
                "(SELECT id FROM workspaces
                  WHERE pending_cycle IS NOT NULL AND pending_due_at <= $1
                    AND (running_cycle IS NULL OR running_lease_until <= $1)
                  LIMIT $2)
                 UNION
                 (SELECT id FROM workspaces
                  WHERE running_cycle IS NOT NULL AND running_lease_until <= $1
                  LIMIT $2)",
            )
            .await
            .map_err(db)?;
        let rows = conn.query(&statement, &[&now, &limit]).await.map_err(db)?;
        Ok(rows
            .iter()
            .map(|row| WorkspaceId::from(row.get::<_, Uuid>(0)))
            .collect())
    }

    /// A page of workspaces that should be serving right now (ONLINE, no
    /// cycle running or waiting), in id order after `after`.
    pub async fn serving_workspaces(
        &self,
        after: Option<WorkspaceId>,
        limit: usize,
    ) -> Result<Vec<Serving>, Error> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(
                "SELECT id, backend, generation FROM workspaces
                 WHERE status = 'ONLINE' AND desired = 'running'
                   AND running_cycle IS NULL AND pending_cycle IS NULL
                   AND ($1::uuid IS NULL OR id > $1)
                 ORDER BY id LIMIT $2",
            )
            .await
            .map_err(db)?;
        let rows = conn
            .query(&statement, &[&after.map(|w| w.as_uuid()), &(limit as i64)])
            .await
            .map_err(db)?;
        rows.iter()
            .map(|row| {
                Ok(Serving {
                    workspace: WorkspaceId::from(row.get::<_, Uuid>(0)),
                    backend: parse(row.get::<_, &str>(1))?,
                    generation: Generation(row.get::<_, i64>(2) as u64),
                })
            })
            .collect()
    }

    /// When the earliest follow-up that waits for time becomes due.
    pub async fn next_due(&self) -> Result<Option<Timestamp>, Error> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(
                "SELECT least(
                    (SELECT min(pending_due_at) FROM workspaces WHERE pending_cycle IS NOT NULL AND running_cycle IS NULL),
                    (SELECT min(running_lease_until) FROM workspaces WHERE running_cycle IS NOT NULL))",
            )
            .await
            .map_err(db)?;
        let row = conn.query_one(&statement, &[]).await.map_err(db)?;
        Ok(row.get(0))
    }
}

//! What the garbage collector and the delete retrier need to know about
//! workspaces (C17): which generation, if any, each one may keep running,
//! and which deletes failed and must be asked again.

use std::collections::HashMap;

use uuid::Uuid;

use super::{Store, db, rows::parse};
use crate::{
    domain::Error,
    domain::{BackendKind, Desired, Generation, WorkspaceId, WorkspaceStatus},
};

/// Where a workspace stands, as far as its instances are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// A cycle runs: it owns the backend for this workspace; the
    /// collector leaves it alone.
    Busy,
    /// Serving `Generation`: that instance stays, every other goes.
    Serving(Generation),
    /// Nothing of it should run (stopped, failed, deleted).
    Idle {
        /// Its delete completed: whatever is left goes entirely.
        deleted: bool,
    },
}

impl Store {
    /// Runs `work` only if no other replica runs work under `key` right now
    /// (a transaction-scoped advisory lock, held while `work` runs and
    /// released however it ends); `None` if another replica holds it. The
    /// collector uses it so two replicas never remove the same leftover at
    /// once (their calls would overlap on the backend).
    pub async fn exclusive<T>(
        &self,
        key: i64,
        work: impl std::future::Future<Output = T>,
    ) -> Result<Option<T>, Error> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let locked: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&key])
            .await
            .map_err(db)?
            .get(0);
        if !locked {
            return Ok(None);
        }
        let done = work.await;
        tx.commit().await.map_err(db)?;
        Ok(Some(done))
    }

    /// The standing of each of `workspaces` that exists (one query).
    pub async fn standings(
        &self,
        workspaces: &[WorkspaceId],
    ) -> Result<HashMap<WorkspaceId, Standing>, Error> {
        let ids: Vec<Uuid> = workspaces.iter().map(|w| w.as_uuid()).collect();
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(
                "SELECT id, desired, status, generation,
                        running_cycle IS NOT NULL AS busy
                 FROM workspaces WHERE id = ANY($1)",
            )
            .await
            .map_err(db)?;
        let rows = conn.query(&statement, &[&ids]).await.map_err(db)?;
        rows.iter()
            .map(|row| {
                let workspace = WorkspaceId::from(row.get::<_, Uuid>("id"));
                let desired: Desired = parse(row.get::<_, &str>("desired"))?;
                let status: WorkspaceStatus = parse(row.get::<_, &str>("status"))?;
                let standing = if row.get::<_, bool>("busy") {
                    Standing::Busy
                } else if desired == Desired::Running && status == WorkspaceStatus::Online {
                    Standing::Serving(Generation(row.get::<_, i64>("generation") as u64))
                } else {
                    Standing::Idle {
                        deleted: status == WorkspaceStatus::Deleted,
                    }
                };
                Ok((workspace, standing))
            })
            .collect()
    }

    /// Workspaces whose delete was asked for but did not complete (its
    /// cycle failed), with nothing running or waiting: they get a new
    /// delete cycle, so a delete always ends DELETED (C17).
    pub async fn unfinished_deletes(
        &self,
        limit: usize,
    ) -> Result<Vec<(WorkspaceId, BackendKind)>, Error> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(
                "SELECT id, backend FROM workspaces
                 WHERE desired = 'deleted' AND status <> 'DELETED'
                   AND running_cycle IS NULL AND pending_cycle IS NULL
                 ORDER BY updated_at LIMIT $1",
            )
            .await
            .map_err(db)?;
        let rows = conn
            .query(&statement, &[&(limit as i64)])
            .await
            .map_err(db)?;
        rows.iter()
            .map(|row| {
                Ok((
                    WorkspaceId::from(row.get::<_, Uuid>(0)),
                    parse(row.get::<_, &str>(1))?,
                ))
            })
            .collect()
    }
}

//! What the garbage collector and the delete retrier need to know about
//! workspaces (C17): which generation, if any, each one may keep running,
//! and which deletes failed and must be asked again.

use std::{collections::HashMap, time::Duration};

use tokio_postgres::{Row, error::SqlState};
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

/// The columns [`standing_of`] reads.
macro_rules! standing_columns {
    () => {
        "id, desired, status, generation, running_cycle IS NOT NULL AS busy,
         pending_cycle IS NOT NULL AS pending"
    };
}

/// A workspace's standing from a row of [`standing_columns`].
fn standing_of(row: &Row) -> Result<(WorkspaceId, Standing), Error> {
    let workspace = WorkspaceId::from(row.get::<_, Uuid>("id"));
    let standing = standing(
        parse(row.get::<_, &str>("desired"))?,
        parse(row.get::<_, &str>("status"))?,
        Generation(row.get::<_, i64>("generation") as u64),
        row.get::<_, bool>("busy"),
        row.get::<_, bool>("pending"),
    );
    Ok((workspace, standing))
}

/// A workspace's standing. An ONLINE workspace whose stop or delete is
/// admitted but not yet started (its caller went away before claiming it,
/// say) still serves: its own cycle stops that instance, gracefully — the
/// collector's forced stop would take the grace away.
fn standing(
    desired: Desired,
    status: WorkspaceStatus,
    generation: Generation,
    busy: bool,
    pending: bool,
) -> Standing {
    if busy {
        Standing::Busy
    } else if status == WorkspaceStatus::Online && (desired == Desired::Running || pending) {
        Standing::Serving(generation)
    } else {
        Standing::Idle {
            deleted: status == WorkspaceStatus::Deleted,
        }
    }
}

/// A duration as Postgres reads a millisecond setting.
fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

impl Store {
    /// Runs `work` only if no other replica runs work under `key` right now
    /// (a transaction-scoped advisory lock, held while `work` runs and
    /// released however it ends); `None` if another replica holds it. The
    /// collector uses it so two replicas never list and remove the same
    /// leftovers at once. The lock's session is kept busy while `work`
    /// runs, so only a holder that goes quiet for `quiet` (paused,
    /// partitioned) loses it: Postgres ends its idle session, and a
    /// stopped replica cannot keep every other one from collecting (C17).
    pub async fn exclusive<T>(
        &self,
        key: i64,
        quiet: Duration,
        work: impl std::future::Future<Output = T>,
    ) -> Result<Option<T>, Error> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let locked: bool = tx
            .query_one(
                "SELECT set_config('idle_in_transaction_session_timeout', $2, true) IS NOT NULL
                        AND pg_try_advisory_xact_lock($1)",
                &[&key, &millis(quiet)],
            )
            .await
            .map_err(db)?
            .get(0);
        if !locked {
            return Ok(None);
        }
        let mut work = std::pin::pin!(work);
        let done = loop {
            tokio::select! {
                done = &mut work => break done,
                _ = tokio::time::sleep(quiet / 3) => {
                    // A lost session lost the lock; the work goes on safely
                    // (each removal holds its own row).
                    let _ = tx.execute("SELECT 1", &[]).await;
                }
            }
        };
        // Only the lock is released here: a failed commit loses nothing.
        let _ = tx.commit().await;
        Ok(Some(done))
    }

    /// Runs `act` while holding `workspace`'s row, if its standing is still
    /// `expected` and no one else holds the row: a cycle's claim (and any
    /// admission) waits until `act` ends, so the collector's removal never
    /// overlaps a cycle's backend calls (C5). `act` is given what is left
    /// of `hold`; it must end by then. A holder paused past `hold` loses
    /// the row (Postgres ends its idle session), and if that happened
    /// before `act` began, `act` is not run (C18). `None` when nothing ran.
    pub async fn holding<T, F>(
        &self,
        workspace: WorkspaceId,
        expected: Standing,
        hold: Duration,
        act: impl FnOnce(Duration) -> F,
    ) -> Result<Option<T>, Error>
    where
        F: std::future::Future<Output = T>,
    {
        let sent = tokio::time::Instant::now();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let statement = tx
            .prepare_cached(concat!(
                "SELECT set_config('idle_in_transaction_session_timeout', $2, true), ",
                standing_columns!(),
                " FROM workspaces WHERE id = $1 FOR NO KEY UPDATE NOWAIT"
            ))
            .await
            .map_err(db)?;
        let row = match tx
            .query_opt(&statement, &[&workspace.as_uuid(), &millis(hold)])
            .await
        {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(None),
            Err(err) if err.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => return Ok(None),
            Err(err) => return Err(db(err)),
        };
        if standing_of(&row)?.1 != expected {
            return Ok(None);
        }
        let Some(left) = hold.checked_sub(sent.elapsed()) else {
            return Ok(None);
        };
        let done = act(left).await;
        // Nothing was written; the session may already have been ended.
        let _ = tx.rollback().await;
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
            .prepare_cached(concat!(
                "SELECT ",
                standing_columns!(),
                " FROM workspaces WHERE id = ANY($1)"
            ))
            .await
            .map_err(db)?;
        let rows = conn.query(&statement, &[&ids]).await.map_err(db)?;
        rows.iter().map(standing_of).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_online_workspace_whose_removal_waits_to_start_still_serves() {
        let g = Generation(4);
        let online = WorkspaceStatus::Online;
        assert_eq!(
            standing(Desired::Running, online, g, false, false),
            Standing::Serving(g)
        );
        // A delete (or stop) admitted, its cycle not started yet: the
        // serving instance is left for that cycle's graceful stop.
        assert_eq!(
            standing(Desired::Deleted, online, g, false, true),
            Standing::Serving(g)
        );
        assert_eq!(
            standing(Desired::Stopped, online, g, false, true),
            Standing::Serving(g)
        );
        // Nothing pending: nothing of it should run.
        assert_eq!(
            standing(Desired::Stopped, online, g, false, false),
            Standing::Idle { deleted: false }
        );
        assert_eq!(
            standing(Desired::Deleted, WorkspaceStatus::Deleted, g, false, false),
            Standing::Idle { deleted: true }
        );
        assert_eq!(
            standing(Desired::Deleted, online, g, true, true),
            Standing::Busy
        );
    }
}

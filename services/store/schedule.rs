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

/// How long a follow-up that was due when admitted is left to the replica
/// that admitted it before any replica's sweep takes it: that replica
/// claims it in its next transaction, milliseconds later; only if it died
/// in between does the sweep start the cycle, this much later.
pub const ADMITTER_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn grace() -> chrono::Duration {
    chrono::Duration::from_std(ADMITTER_GRACE).expect("a second fits")
}

impl Store {
    /// Workspaces with something to run now: a due follow-up with the gate
    /// free, or a cycle whose holder's lease expired. A follow-up that was
    /// due the moment it was admitted is its admitter's to claim, in the
    /// transaction right after: it counts as due here only
    /// [`ADMITTER_GRACE`] later (its admitter died in between), so another
    /// replica's sweep never races the admitter for it (C19: a replica
    /// beside, whatever its clock, takes nothing a healthy one is running).
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
                    AND (pending_due_at > pending_created_at OR pending_created_at <= $3)
                    AND (running_cycle IS NULL OR running_lease_until <= $1)
                  LIMIT $2)
                 UNION
                 (SELECT id FROM workspaces
                  WHERE running_cycle IS NOT NULL AND running_lease_until <= $1
                  LIMIT $2)",
            )
            .await
            .map_err(db)?;
        let admitted_before = now - grace();
        let rows = conn
            .query(&statement, &[&now, &limit, &admitted_before])
            .await
            .map_err(db)?;
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

    /// When the earliest follow-up that waits for time becomes due, to the
    /// sweep (a follow-up due when admitted: when its grace ends).
    pub async fn next_due(&self) -> Result<Option<Timestamp>, Error> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(
                "SELECT least(
                    (SELECT min(CASE WHEN pending_due_at <= pending_created_at
                                     THEN pending_created_at + $1::bigint * interval '1 microsecond'
                                     ELSE pending_due_at END)
                       FROM workspaces WHERE pending_cycle IS NOT NULL AND running_cycle IS NULL),
                    (SELECT min(running_lease_until) FROM workspaces WHERE running_cycle IS NOT NULL))",
            )
            .await
            .map_err(db)?;
        // The grace goes as microseconds: `interval` has no Rust type here.
        let row = conn
            .query_one(&statement, &[&grace().num_microseconds()])
            .await
            .map_err(db)?;
        Ok(row.get(0))
    }
}

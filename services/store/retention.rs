//! Retention (C17's bookkeeping side): ended cycles, superseded generations
//! and deleted workspaces older than the configured age are deleted in
//! small batches, so the database levels off instead of growing with every
//! cycle. What readers need stays: each workspace's newest cycle and its
//! current generation (its agent's token). Audit rows are never touched
//! (append-only; their retention is the operator's, see the README).

use super::{Store, db};
use crate::domain::Error;
use crate::domain::Timestamp;

/// Rows deleted per statement: short transactions, no long locks.
const BATCH: i64 = 1000;

/// What one pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Ended cycles (with their absorbed triggers).
    pub cycles: u64,
    /// Generations older than their workspace's current one.
    pub generations: u64,
    /// Workspaces deleted before the cut-off (with everything of theirs).
    pub workspaces: u64,
}

impl Store {
    /// Deletes one batch of each kind of history older than `before`.
    pub async fn prune(&self, before: Timestamp) -> Result<Pruned, Error> {
        let conn = self.conn().await?;
        let cycles = conn
            .prepare_cached(
                "DELETE FROM cycles WHERE id IN (
                    SELECT c.id FROM cycles c
                    WHERE c.state = 'ENDED' AND c.ended_at < $1
                      AND c.seq < (SELECT max(n.seq) FROM cycles n WHERE n.workspace_id = c.workspace_id)
                    LIMIT $2)",
            )
            .await
            .map_err(db)?;
        let generations = conn
            .prepare_cached(
                "DELETE FROM generations WHERE (workspace_id, generation) IN (
                    SELECT g.workspace_id, g.generation FROM generations g
                    JOIN workspaces w ON w.id = g.workspace_id
                    WHERE g.created_at < $1 AND g.generation < w.generation
                    LIMIT $2)",
            )
            .await
            .map_err(db)?;
        let workspaces = conn
            .prepare_cached(
                "DELETE FROM workspaces WHERE id IN (
                    SELECT id FROM workspaces
                    WHERE deleted_at < $1 AND running_cycle IS NULL
                      AND pending_cycle IS NULL
                    LIMIT $2)",
            )
            .await
            .map_err(db)?;
        Ok(Pruned {
            cycles: conn
                .execute(&cycles, &[&before, &BATCH])
                .await
                .map_err(db)?,
            generations: conn
                .execute(&generations, &[&before, &BATCH])
                .await
                .map_err(db)?,
            workspaces: conn
                .execute(&workspaces, &[&before, &BATCH])
                .await
                .map_err(db)?,
        })
    }
}

impl Pruned {
    /// True if a batch came back full: there is more to do right away.
    pub fn full(&self) -> bool {
        [self.cycles, self.generations, self.workspaces]
            .iter()
            .any(|n| *n >= BATCH as u64)
    }
}

//! Reading cycle history.
//! Contracts: C16 (a cycle's trace id is read here).

use std::collections::{BTreeMap, HashMap};

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Store, db, rows::parse};
use crate::{
    domain::Error,
    domain::{
        ConfigVersion, CycleId, CycleState, Generation, Goal, Outcome, Timestamp, Trigger,
        WorkspaceId,
    },
};

/// One cycle as ListCycles shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CycleRecord {
    /// Id.
    pub id: CycleId,
    /// The workspace.
    pub workspace: WorkspaceId,
    /// Where it is in its life.
    pub state: CycleState,
    /// What it did (once started).
    pub goal: Option<Goal>,
    /// The generation it provisioned (or stopped).
    pub generation: Generation,
    /// The config version it read.
    pub config_version: ConfigVersion,
    /// How it ended.
    pub outcome: Option<Outcome>,
    /// Why (for failures).
    pub reason: String,
    /// The triggers it absorbed, with counts.
    pub triggers: BTreeMap<Trigger, u64>,
    /// Admitted.
    pub created_at: Timestamp,
    /// Took the gate.
    pub started_at: Option<Timestamp>,
    /// Ended.
    pub ended_at: Option<Timestamp>,
    /// Takeovers after a runner vanished.
    pub takeovers: u32,
    /// The W3C trace id of its trace.
    pub trace_id: String,
    /// The span its trace hangs under (the opening caller's), if any.
    pub parent_span_id: String,
    /// Paging position.
    pub seq: i64,
}

const COLUMNS: &str = "id, seq, workspace_id, state, goal, generation, config_version, outcome,
    reason, created_at, started_at, ended_at, takeovers, trace_id, parent_span_id";

fn record(row: &Row) -> Result<CycleRecord, Error> {
    Ok(CycleRecord {
        id: CycleId::from(row.get::<_, Uuid>("id")),
        seq: row.get("seq"),
        workspace: WorkspaceId::from(row.get::<_, Uuid>("workspace_id")),
        state: parse(row.get::<_, &str>("state"))?,
        goal: row.get::<_, Option<&str>>("goal").map(parse).transpose()?,
        generation: Generation(row.get::<_, Option<i64>>("generation").unwrap_or(0) as u64),
        config_version: ConfigVersion(
            row.get::<_, Option<i64>>("config_version").unwrap_or(0) as u64
        ),
        outcome: row
            .get::<_, Option<&str>>("outcome")
            .map(parse)
            .transpose()?,
        reason: row.get("reason"),
        triggers: BTreeMap::new(),
        created_at: row.get("created_at"),
        started_at: row.get("started_at"),
        ended_at: row.get("ended_at"),
        takeovers: row.get::<_, i32>("takeovers") as u32,
        trace_id: row.get("trace_id"),
        parent_span_id: row.get("parent_span_id"),
    })
}

impl Store {
    /// A page of a workspace's cycles, newest first, before position
    /// `before` (0: from the newest).
    pub async fn cycles(
        &self,
        workspace: WorkspaceId,
        before: i64,
        limit: usize,
    ) -> Result<(Vec<CycleRecord>, Option<i64>), Error> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM cycles
                 WHERE workspace_id = $1 AND ($2::bigint = 0 OR seq < $2)
                 ORDER BY seq DESC LIMIT $3"
            ))
            .await
            .map_err(db)?;
        let rows = conn
            .query(
                &statement,
                &[&workspace.as_uuid(), &before, &(limit as i64 + 1)],
            )
            .await
            .map_err(db)?;
        let mut records = rows
            .iter()
            .take(limit)
            .map(record)
            .collect::<Result<Vec<_>, _>>()?;
        let next = (rows.len() > limit)
            .then(|| records.last().map(|r| r.seq))
            .flatten();
        with_triggers(&conn, &mut records).await?;
        Ok((records, next))
    }

    /// One cycle, with the triggers it absorbed.
    pub async fn cycle(&self, id: CycleId) -> Result<CycleRecord, Error> {
        let conn = self.conn().await?;
        let row = super::row_by_id(
            &conn,
            &format!("SELECT {COLUMNS} FROM cycles WHERE id = $1"),
            id.as_uuid(),
            || format!("cycle {id}"),
        )
        .await?;
        let mut records = vec![record(&row)?];
        with_triggers(&conn, &mut records).await?;
        Ok(records.remove(0))
    }

    /// The trace id of `cycle`, if it exists.
    pub async fn cycle_trace_id(&self, cycle: CycleId) -> Result<Option<String>, Error> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached("SELECT trace_id FROM cycles WHERE id = $1")
            .await
            .map_err(db)?;
        let row = conn
            .query_opt(&statement, &[&cycle.as_uuid()])
            .await
            .map_err(db)?;
        Ok(row.map(|row| row.get(0)))
    }

    /// The cycle that answers for `workspace` now — the running one, else
    /// the newest — and its trace id.
    pub async fn latest_cycle_trace_id(
        &self,
        workspace: WorkspaceId,
    ) -> Result<Option<(CycleId, String)>, Error> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(
                "(SELECT id, trace_id FROM cycles WHERE workspace_id = $1 AND state = 'RUNNING' LIMIT 1)
                 UNION ALL
                 (SELECT id, trace_id FROM cycles WHERE workspace_id = $1 ORDER BY seq DESC LIMIT 1)
                 LIMIT 1",
            )
            .await
            .map_err(db)?;
        let row = conn
            .query_opt(&statement, &[&workspace.as_uuid()])
            .await
            .map_err(db)?;
        Ok(row.map(|row| (CycleId::from(row.get::<_, Uuid>(0)), row.get(1))))
    }
}

/// Fills in the triggers each of `records` absorbed.
async fn with_triggers(
    conn: &impl GenericClient,
    records: &mut [CycleRecord],
) -> Result<(), Error> {
    let ids: Vec<Uuid> = records.iter().map(|r| r.id.as_uuid()).collect();
    let index: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let triggers = conn
        .prepare_cached(
            "SELECT cycle_id, trigger, count FROM cycle_triggers WHERE cycle_id = ANY($1)",
        )
        .await
        .map_err(db)?;
    for row in conn.query(&triggers, &[&ids]).await.map_err(db)? {
        let trigger: Trigger = parse(row.get::<_, &str>(1))?;
        records[index[&row.get::<_, Uuid>(0)]]
            .triggers
            .insert(trigger, row.get::<_, i64>(2) as u64);
    }
    Ok(())
}

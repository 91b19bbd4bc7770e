//! Reading workspaces: what GetWorkspace and ListWorkspaces show, one page
//! at a time with one query per kind of detail (flat as history grows).
//! Secret values are never selected here.
//! Contracts: C15 (reads stay flat as history grows).

use std::collections::{BTreeMap, HashMap};

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Store, db, rows::parse};
use crate::domain::{
    BackendKind, ConfigVersion, CycleId, Desired, Error, Generation, Timestamp, Trigger,
    WorkspaceId, WorkspaceSpec, WorkspaceStatus,
};

/// How many requests of one trigger were accepted, coalesced, deferred and
/// dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TriggerCounts {
    /// Started a cycle of their own.
    pub accepted: u64,
    /// Joined a follow-up.
    pub coalesced: u64,
    /// Waited for the window or a burst.
    pub deferred: u64,
    /// Dropped.
    pub dropped: u64,
}

/// The newest registered agent of a workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRecord {
    /// Its generation.
    pub generation: Generation,
    /// What it booted with.
    pub config_version: ConfigVersion,
    /// Where it can be reached.
    pub endpoint: String,
    /// When it registered.
    pub registered_at: Timestamp,
    /// Its last heartbeat.
    pub last_heartbeat_at: Option<Timestamp>,
    /// Secret names it saw.
    pub secret_names: Vec<String>,
    /// File paths it saw.
    pub file_paths: Vec<String>,
    /// How its report disagrees with what it was handed (empty: it agrees).
    pub report_mismatch: String,
}

/// A workspace as callers see it.
#[derive(Clone, Debug)]
pub struct WorkspaceRecord {
    /// Id.
    pub id: WorkspaceId,
    /// Name.
    pub name: String,
    /// Backend.
    pub backend: BackendKind,
    /// Spec.
    pub spec: WorkspaceSpec,
    /// Observed status.
    pub status: WorkspaceStatus,
    /// Why FAILED.
    pub status_reason: String,
    /// Desired state.
    pub desired: Desired,
    /// Newest generation started.
    pub generation: Generation,
    /// Current config version.
    pub config_version: ConfigVersion,
    /// Secret names.
    pub secret_names: Vec<String>,
    /// File paths.
    pub file_paths: Vec<String>,
    /// The newest registered agent.
    pub agent: Option<AgentRecord>,
    /// The cycle holding the gate.
    pub running_cycle: Option<CycleId>,
    /// The follow-up.
    pub pending_cycle: Option<CycleId>,
    /// When the follow-up may start.
    pub pending_due: Option<Timestamp>,
    /// End of the debounce window.
    pub window_until: Option<Timestamp>,
    /// Per-trigger counters.
    pub trigger_stats: BTreeMap<Trigger, TriggerCounts>,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
    /// Paging position.
    pub seq: i64,
}

const COLUMNS: &str = "id, seq, name, backend, spec, status, status_reason, desired, generation,
    config_version, running_cycle, pending_cycle, pending_due_at, window_until, created_at, updated_at";

fn record_from_row(row: &Row) -> Result<WorkspaceRecord, Error> {
    Ok(WorkspaceRecord {
        id: WorkspaceId::from(row.get::<_, Uuid>("id")),
        seq: row.get("seq"),
        name: row.get("name"),
        backend: parse(row.get::<_, &str>("backend"))?,
        spec: serde_json::from_value(row.get("spec"))
            .map_err(|e| Error::Internal(format!("stored spec: {e}")))?,
        status: parse(row.get::<_, &str>("status"))?,
        status_reason: row.get("status_reason"),
        desired: parse(row.get::<_, &str>("desired"))?,
        generation: Generation(row.get::<_, i64>("generation") as u64),
        config_version: ConfigVersion(row.get::<_, i64>("config_version") as u64),
        secret_names: Vec::new(),
        file_paths: Vec::new(),
        agent: None,
        running_cycle: row
            .get::<_, Option<Uuid>>("running_cycle")
            .map(CycleId::from),
        pending_cycle: row
            .get::<_, Option<Uuid>>("pending_cycle")
            .map(CycleId::from),
        pending_due: row.get("pending_due_at"),
        window_until: row.get("window_until"),
        trigger_stats: BTreeMap::new(),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

impl Store {
    /// One workspace with its names, agent and counters.
    pub async fn workspace(&self, id: WorkspaceId) -> Result<WorkspaceRecord, Error> {
        let conn = self.conn().await?;
        let row = super::row_by_id(
            &conn,
            &format!("SELECT {COLUMNS} FROM workspaces WHERE id = $1"),
            id.as_uuid(),
            || format!("workspace {id}"),
        )
        .await?;
        let mut records = vec![record_from_row(&row)?];
        fill_details(&conn, &mut records).await?;
        Ok(records.pop().expect("one record"))
    }

    /// A page of workspaces in creation order, after position `after`.
    /// Returns the page and the position to continue from, if any.
    pub async fn workspaces(
        &self,
        after: i64,
        limit: usize,
        include_deleted: bool,
    ) -> Result<(Vec<WorkspaceRecord>, Option<i64>), Error> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM workspaces
                 WHERE seq > $1 AND ($2 OR status <> 'DELETED')
                 ORDER BY seq LIMIT $3"
            ))
            .await
            .map_err(db)?;
        let rows = conn
            .query(&statement, &[&after, &include_deleted, &(limit as i64 + 1)])
            .await
            .map_err(db)?;
        let mut records = rows
            .iter()
            .take(limit)
            .map(record_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = (rows.len() > limit)
            .then(|| records.last().map(|r| r.seq))
            .flatten();
        fill_details(&conn, &mut records).await?;
        Ok((records, next))
    }
}

/// Adds secret names, file paths, the newest agent and counters to each
/// record, with one query per kind for the whole page.
async fn fill_details(
    client: &impl GenericClient,
    records: &mut [WorkspaceRecord],
) -> Result<(), Error> {
    if records.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = records.iter().map(|r| r.id.as_uuid()).collect();
    let index: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let at = |row: &Row| index[&row.get::<_, Uuid>(0)];

    let names = client
        .prepare_cached(
            "SELECT workspace_id, name FROM secrets WHERE workspace_id = ANY($1) ORDER BY name",
        )
        .await
        .map_err(db)?;
    for row in client.query(&names, &[&ids]).await.map_err(db)? {
        records[at(&row)].secret_names.push(row.get(1));
    }
    let paths = client
        .prepare_cached(
            "SELECT workspace_id, path FROM files WHERE workspace_id = ANY($1) ORDER BY path",
        )
        .await
        .map_err(db)?;
    for row in client.query(&paths, &[&ids]).await.map_err(db)? {
        records[at(&row)].file_paths.push(row.get(1));
    }
    let agents = client
        .prepare_cached(
            // One index probe per listed workspace, however long its history.
            "SELECT g.workspace_id, g.generation, g.reported_config_version, g.endpoint,
                    g.registered_at, g.last_heartbeat_at, g.secret_names, g.file_paths,
                    g.report_mismatch
             FROM unnest($1::uuid[]) AS w (id),
             LATERAL (SELECT * FROM generations
                      WHERE workspace_id = w.id AND registered_at IS NOT NULL
                      ORDER BY generation DESC LIMIT 1) g",
        )
        .await
        .map_err(db)?;
    for row in client.query(&agents, &[&ids]).await.map_err(db)? {
        records[at(&row)].agent = Some(AgentRecord {
            generation: Generation(row.get::<_, i64>(1) as u64),
            config_version: ConfigVersion(row.get::<_, Option<i64>>(2).unwrap_or(0) as u64),
            endpoint: row.get::<_, Option<String>>(3).unwrap_or_default(),
            registered_at: row.get(4),
            last_heartbeat_at: row.get(5),
            secret_names: row.get::<_, Option<Vec<String>>>(6).unwrap_or_default(),
            file_paths: row.get::<_, Option<Vec<String>>>(7).unwrap_or_default(),
            report_mismatch: row.get(8),
        });
    }
    let stats = client
        .prepare_cached(
            "SELECT workspace_id, trigger, accepted, coalesced, deferred, dropped
             FROM trigger_stats WHERE workspace_id = ANY($1)",
        )
        .await
        .map_err(db)?;
    for row in client.query(&stats, &[&ids]).await.map_err(db)? {
        let trigger: Trigger = parse(row.get::<_, &str>(1))?;
        records[at(&row)].trigger_stats.insert(
            trigger,
            TriggerCounts {
                accepted: row.get::<_, i64>(2) as u64,
                coalesced: row.get::<_, i64>(3) as u64,
                deferred: row.get::<_, i64>(4) as u64,
                dropped: row.get::<_, i64>(5) as u64,
            },
        );
    }
    Ok(())
}

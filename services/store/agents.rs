//! Agents: per-generation tokens, registration and heartbeats. A token is
//! stored only as its SHA-256, and it is accepted only while its generation
//! is the workspace's current one and it was not revoked (C12), and only
//! for the workspace it was issued for.

use deadpool_postgres::GenericClient as _;
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;

use super::{Store, db, notify, open_tx::OpenTx};
use crate::domain::Error;
use crate::domain::Event;
use crate::{
    domain::EventKind,
    domain::{ConfigVersion, Generation, Timestamp, WorkspaceId},
};

/// The hash under which a token is stored and looked up.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A registration as the waiting cycle reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// When the agent registered.
    pub registered_at: Timestamp,
    /// What it booted with.
    pub config_version: ConfigVersion,
}

/// Where a cycle's wait for its agent stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentWait {
    /// The agent registered (before any delete was requested).
    Registered(Registration),
    /// Not yet.
    Waiting,
    /// A delete was requested: the agent can no longer register.
    DeleteRequested,
}

/// What a registering agent reports.
#[derive(Clone, Debug)]
pub struct AgentReport {
    /// The config version it booted with.
    pub config_version: ConfigVersion,
    /// Where it can be reached.
    pub endpoint: String,
    /// Secret names it sees in its environment.
    pub secret_names: Vec<String>,
    /// File paths it sees.
    pub file_paths: Vec<String>,
}

impl Store {
    /// Records a registration. `UNAUTHENTICATED` unless the token belongs to
    /// the current, unrevoked generation of a live workspace.
    pub async fn register_agent(
        &self,
        workspace: WorkspaceId,
        token: &str,
        report: &AgentReport,
    ) -> Result<(WorkspaceId, Generation), Error> {
        let now = self.clock().now();
        // Two round trips: `BEGIN` with the update, the event with the
        // `COMMIT` (`open_tx.rs`).
        let tx = OpenTx::new(self.conn().await?);
        let statement = tx
            .client()
            .prepare_cached(
                "UPDATE generations g SET registered_at = $2, reported_config_version = $3,
                        endpoint = $4, secret_names = $5, file_paths = $6, last_heartbeat_at = $2,
                        -- Checked against what this generation was handed.
                        report_mismatch = coalesce((
                            SELECT format('reported config version %s, was handed %s',
                                          $3::bigint, c.config_version)
                            FROM cycles c
                            WHERE c.id = g.cycle_id AND c.config_version IS DISTINCT FROM $3::bigint
                        ), '')
                 FROM workspaces w
                 WHERE g.token_hash = $1 AND g.revoked_at IS NULL AND w.id = g.workspace_id
                   AND w.generation = g.generation AND w.desired <> 'deleted'
                   AND g.workspace_id = $7
                 RETURNING g.workspace_id, g.generation",
            )
            .await
            .map_err(db)?;
        let hash = token_hash(token);
        let version = report.config_version.0 as i64;
        let id = workspace.as_uuid();
        let params: [&(dyn ToSql + Sync); 7] = [
            &hash,
            &now,
            &version,
            &report.endpoint,
            &report.secret_names,
            &report.file_paths,
            &id,
        ];
        let ((), row) = futures::try_join!(tx.opening(), async {
            tx.client().query_opt(&statement, &params).await.map_err(db)
        })?;
        // Refused: the transaction is dropped and rolls back.
        let row = row.ok_or_else(refused)?;
        let workspace = WorkspaceId::from(row.get::<_, uuid::Uuid>(0));
        let generation = Generation(row.get::<_, i64>(1) as u64);
        let registered = notify::publish(&[Event {
            workspace,
            at: now,
            kind: EventKind::Agent {
                generation,
                config_version: report.config_version,
                endpoint: report.endpoint.clone(),
            },
        }]);
        tx.commit_with(registered.as_slice()).await?;
        Ok((workspace, generation))
    }

    /// Records a heartbeat, under the same rule as registration.
    pub async fn heartbeat(
        &self,
        workspace: WorkspaceId,
        token: &str,
    ) -> Result<(WorkspaceId, Generation), Error> {
        let now = self.clock().now();
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(
                "UPDATE generations g SET last_heartbeat_at = $2
                 FROM workspaces w
                 WHERE g.token_hash = $1 AND g.revoked_at IS NULL AND w.id = g.workspace_id
                   AND w.generation = g.generation AND w.desired <> 'deleted'
                   AND g.workspace_id = $3
                 RETURNING g.workspace_id, g.generation",
            )
            .await
            .map_err(db)?;
        let row = conn
            .query_opt(
                &statement,
                &[&token_hash(token), &now, &workspace.as_uuid()],
            )
            .await
            .map_err(db)?
            .ok_or_else(refused)?;
        Ok((
            WorkspaceId::from(row.get::<_, uuid::Uuid>(0)),
            Generation(row.get::<_, i64>(1) as u64),
        ))
    }

    /// Where a cycle's wait for `generation`'s agent stands: registered,
    /// still waiting, or cut short by a delete (once one is requested no
    /// agent of the workspace can register, so nothing is left to wait for).
    pub async fn agent_wait(
        &self,
        workspace: WorkspaceId,
        generation: Generation,
    ) -> Result<AgentWait, Error> {
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(
                "SELECT g.registered_at, g.reported_config_version, w.desired = 'deleted'
                 FROM workspaces w
                 LEFT JOIN generations g ON g.workspace_id = w.id AND g.generation = $2
                                        AND g.registered_at IS NOT NULL
                 WHERE w.id = $1",
            )
            .await
            .map_err(db)?;
        let row = conn
            .query_opt(&statement, &[&workspace.as_uuid(), &(generation.0 as i64)])
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Ok(AgentWait::DeleteRequested);
        };
        Ok(match row.get::<_, Option<Timestamp>>(0) {
            Some(registered_at) => AgentWait::Registered(Registration {
                registered_at,
                config_version: ConfigVersion(row.get::<_, Option<i64>>(1).unwrap_or(0) as u64),
            }),
            None if row.get::<_, bool>(2) => AgentWait::DeleteRequested,
            None => AgentWait::Waiting,
        })
    }
}

fn refused() -> Error {
    Error::Unauthenticated("agent token is not valid for the current generation".into())
}

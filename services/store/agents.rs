//! Agents: per-generation tokens, registration and heartbeats. A token is
//! stored only as its SHA-256, and it is accepted only while its generation
//! is the workspace's current one and it was not revoked (C12), and only
//! for the workspace it was issued for.

use deadpool_postgres::GenericClient as _;
use sha2::{Digest, Sha256};

use super::{Store, db, notify};
use crate::domain::Error;
use crate::domain::Event;
use crate::{
    domain::EventKind,
    domain::{ConfigVersion, Generation, Timestamp, WorkspaceId},
};

/// Where an agent event's generation sits in its payload (a Postgres
/// `jsonb` path), for registration to fill in.
macro_rules! agent_generation_path {
    () => {
        "{kind,Agent,generation}"
    };
}

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
        // The event, its generation filled in by Postgres from the row the
        // token names: one statement, committed on its own, one round trip.
        let template = notify::payload(&Event {
            workspace,
            at: now,
            kind: EventKind::Agent {
                generation: Generation(0),
                config_version: report.config_version,
                endpoint: report.endpoint.clone(),
            },
        })
        .ok_or_else(|| Error::Internal("an agent event that cannot be sent".into()))?;
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(concat!(
                "WITH registered AS (
                    UPDATE generations g SET registered_at = $2, reported_config_version = $3,
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
                    RETURNING g.generation
                 )
                 SELECT generation,
                        pg_notify($8, jsonb_set($9::text::jsonb, '",
                agent_generation_path!(),
                "', to_jsonb(generation))::text)
                 FROM registered"
            ))
            .await
            .map_err(db)?;
        let row = conn
            .query_opt(
                &statement,
                &[
                    &token_hash(token),
                    &now,
                    &(report.config_version.0 as i64),
                    &report.endpoint,
                    &report.secret_names,
                    &report.file_paths,
                    &workspace.as_uuid(),
                    &notify::CHANNEL,
                    &template,
                ],
            )
            .await
            .map_err(db)?
            .ok_or_else(refused)?;
        Ok((workspace, Generation(row.get::<_, i64>(0) as u64)))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The path registration writes the generation to is where an agent
    /// event's generation is: red if the event's shape moves it.
    #[test]
    fn the_agent_events_generation_sits_where_registration_fills_it_in() {
        let event = Event {
            workspace: WorkspaceId::new(),
            at: chrono::Utc::now(),
            kind: EventKind::Agent {
                generation: Generation(7),
                config_version: ConfigVersion(3),
                endpoint: "http://10.0.0.1:7000".into(),
            },
        };
        let payload: serde_json::Value =
            serde_json::from_str(&notify::payload(&event).unwrap()).unwrap();
        let pointer: String = agent_generation_path!()
            .trim_matches(|c| c == '{' || c == '}')
            .split(',')
            .map(|key| format!("/{key}"))
            .collect();
        assert_eq!(payload.pointer(&pointer), Some(&serde_json::json!(7)));
    }
}

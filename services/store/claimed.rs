//! A claimed cycle's start, in the claiming transaction (C2, C16, C20):
//! the workspace's status, the cycle's row marked running, the config it
//! will deliver (read under the row lock, so C2 is exact), the new
//! generation's agent token (its hash), how it was admitted (for its
//! trace), and its first phase announced — one pipelined
//! round trip after the row lock.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::{RowTx, execute, query, rows::parse};
use crate::{
    domain::{
        BackendKind, ConfigVersion, CycleState, Error, Event, Goal, Phase, Secret, Timestamp,
        Trigger, WorkspaceId, WorkspaceSpec, WorkspaceStatus, ledger::Claim,
    },
    telemetry::cycle_trace::AdmittedCycle,
};

/// The config a provisioning cycle delivers, read right after it took the
/// gate.
#[derive(Clone, Debug)]
pub struct ConfigSnapshot {
    /// Where the workspace runs.
    pub backend: BackendKind,
    /// What it runs.
    pub spec: WorkspaceSpec,
    /// Secret values (redacted in `Debug`).
    pub secrets: BTreeMap<String, Secret>,
    /// Files.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The version of all of the above.
    pub config_version: ConfigVersion,
}

/// What starting a claimed cycle read.
#[derive(Debug)]
pub struct Started {
    /// The workspace's backend.
    pub backend: BackendKind,
    /// The config to deliver (provisioning cycles only).
    pub snapshot: Option<ConfigSnapshot>,
    /// When the cycle first started, whoever ran it (C20).
    pub first_started_at: Timestamp,
    /// How it was admitted, for its trace (read in the claim's round trip).
    pub admitted: AdmittedCycle,
}

impl RowTx {
    /// Marks a freshly claimed cycle running, sets the workspace's status and
    /// (for provisioning) reads the config it will deliver.
    /// A provisioning cycle records its generation's agent token (its
    /// hash) here, so nothing stands between its stop and its start.
    pub async fn start_claimed(
        &mut self,
        claim: &Claim,
        token_hash: Option<&[u8]>,
        now: Timestamp,
    ) -> Result<Started, Error> {
        // The ending cycle's writes, when this claims its follow-up: the
        // new status must land after the old one.
        self.flush().await?;
        let tx = self.tx.client();
        let workspace = self.workspace;
        let id = workspace.as_uuid();
        let status = match claim.goal {
            Goal::Provision => WorkspaceStatus::Provisioning,
            Goal::Stop | Goal::Delete => WorkspaceStatus::Stopping,
        };
        let provisions = claim.goal == Goal::Provision;
        let (cycle, goal, generation, takeovers) = (
            claim.cycle.as_uuid(),
            claim.goal.as_str(),
            claim.generation.0 as i64,
            claim.takeovers as i32,
        );
        let status_row: [&(dyn ToSql + Sync); 4] = [&id, &status.as_str(), &now, &provisions];
        let mark_row: [&(dyn ToSql + Sync); 6] =
            [&cycle, &goal, &generation, &provisions, &now, &takeovers];
        let cycle_row: [&(dyn ToSql + Sync); 1] = [&cycle];
        let generation_row: [&(dyn ToSql + Sync); 5] =
            [&id, &generation, &cycle, &token_hash, &now];
        // Every statement names what it needs of the row in SQL (the row is
        // locked), so none waits for another's answer: one pipelined round
        // trip. Secrets and files are read only by a provisioning cycle.
        let (row, marked, absorbed, config, _) = futures::try_join!(
            query(
                tx,
                "UPDATE workspaces SET status = $2, status_reason = '', updated_at = $3,
                    served_config_version = CASE WHEN $4 THEN config_version
                                                 ELSE served_config_version END
                 WHERE id = $1 RETURNING backend, spec, config_version",
                &status_row,
            ),
            query(
                tx,
                "UPDATE cycles SET state = 'RUNNING', goal = $2, generation = $3,
                    config_version = CASE WHEN $4 THEN
                        (SELECT config_version FROM workspaces w WHERE w.id = cycles.workspace_id)
                    END,
                    started_at = coalesce(started_at, $5), takeovers = $6
                 WHERE id = $1
                 RETURNING started_at, created_at, trace_id, parent_span_id",
                &mark_row,
            ),
            query(
                tx,
                "SELECT trigger, count FROM cycle_triggers WHERE cycle_id = $1",
                &cycle_row,
            ),
            async {
                if !provisions {
                    return Ok(None);
                }
                read_config(tx, workspace).await.map(Some)
            },
            async {
                if token_hash.is_none() {
                    return Ok(0);
                }
                // A generation redone (a takeover) starts afresh.
                execute(
                    tx,
                    "INSERT INTO generations (workspace_id, generation, cycle_id, token_hash, created_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (workspace_id, generation) DO UPDATE SET
                        cycle_id = EXCLUDED.cycle_id, token_hash = EXCLUDED.token_hash,
                        created_at = EXCLUDED.created_at, registered_at = NULL, revoked_at = NULL",
                    &generation_row,
                )
                .await
            },
        )?;
        let (Some(row), Some(marked)) = (row.first(), marked.first()) else {
            return Err(Error::Internal(format!(
                "claimed cycle {} of workspace {workspace} has no row",
                claim.cycle
            )));
        };
        let backend: BackendKind = row
            .get::<_, &str>("backend")
            .parse()
            .map_err(|e: String| Error::Internal(e))?;
        let config_version =
            provisions.then(|| ConfigVersion(row.get::<_, i64>("config_version") as u64));
        let snapshot = match (config, config_version) {
            (Some(config), Some(config_version)) => {
                let spec: WorkspaceSpec = serde_json::from_value(row.get("spec"))
                    .map_err(|e| Error::Internal(format!("stored spec: {e}")))?;
                Some(open_config(
                    self.store.sealer(),
                    workspace,
                    backend,
                    spec,
                    config_version,
                    config,
                )?)
            }
            _ => None,
        };
        let first_started_at: Timestamp = marked.get(0);
        let mut triggers = BTreeMap::new();
        for row in &absorbed {
            let trigger: Trigger = parse(row.get::<_, &str>(0))?;
            triggers.insert(trigger, row.get::<_, i64>(1) as u64);
        }
        let admitted = AdmittedCycle {
            created_at: marked.get(1),
            trace_id: marked.get(2),
            parent_span_id: marked.get(3),
            triggers,
        };
        let running = Event::cycle(
            workspace,
            now,
            claim.cycle,
            claim.generation,
            CycleState::Running,
            config_version.unwrap_or_default(),
        );
        self.events.extend([
            running.clone(),
            Event::status(workspace, now, status, "", claim.generation),
            // Every cycle begins by stopping what runs: announced with the
            // claim, in its transaction, instead of a write of its own.
            running.in_phase(Phase::Stopping),
        ]);
        Ok(Started {
            backend,
            snapshot,
            first_started_at,
            admitted,
        })
    }
}

/// A provisioning cycle's secrets (still sealed) and files, read in the
/// claim's round trip.
struct StoredConfig {
    secrets: Vec<tokio_postgres::Row>,
    files: Vec<tokio_postgres::Row>,
}

async fn read_config(
    tx: &impl GenericClient,
    workspace: WorkspaceId,
) -> Result<StoredConfig, Error> {
    let id = workspace.as_uuid();
    let by_workspace: [&(dyn ToSql + Sync); 1] = [&id];
    let (secrets, files) = futures::try_join!(
        query(
            tx,
            "SELECT name, value, nonce FROM secrets WHERE workspace_id = $1",
            &by_workspace,
        ),
        query(
            tx,
            "SELECT path, content FROM files WHERE workspace_id = $1",
            &by_workspace,
        ),
    )?;
    Ok(StoredConfig { secrets, files })
}

fn open_config(
    sealer: &super::Sealer,
    workspace: WorkspaceId,
    backend: BackendKind,
    spec: WorkspaceSpec,
    config_version: ConfigVersion,
    stored: StoredConfig,
) -> Result<ConfigSnapshot, Error> {
    // The one place secret values are opened: the cycle hands them to the
    // backend that starts the instance.
    let secrets = stored
        .secrets
        .into_iter()
        .map(|row| {
            let name: String = row.get(0);
            let nonce: Option<&[u8]> = row.get(2);
            let value = sealer.open(workspace, &name, nonce.unwrap_or_default(), row.get(1))?;
            Ok((name, value))
        })
        .collect::<Result<_, Error>>()?;
    let files = stored
        .files
        .into_iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, Vec<u8>>(1)))
        .collect();
    Ok(ConfigSnapshot {
        backend,
        spec,
        secrets,
        files,
        config_version,
    })
}

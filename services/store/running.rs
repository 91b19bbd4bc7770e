//! The running cycle's rows: its start (status, cycle row, the config it
//! delivers, read in the claiming transaction so C2 is exact), its fenced
//! writes while it holds the gate (C12, C18) and its end (C17). Every
//! write a runner makes goes through one SQL condition, [`held!`].

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;

use tokio_postgres::types::ToSql;

use super::{RowTx, Store, db, execute, query};
use crate::domain::{
    BackendKind, ConfigVersion, CycleId, CycleState, Error, Event, Finish, Generation, Goal,
    ReplicaId, Secret, Timestamp, WorkspaceId, WorkspaceSpec, WorkspaceStatus, ledger::Claim,
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

/// The one fencing condition (C12, C18): the row's running cycle is this
/// guard's cycle, in this replica's name, at this takeover count. `$1`
/// workspace, `$2` cycle, `$3` owner, `$4` epoch ([`Fence`]).
/// Every write a runner makes while it holds the gate goes through it.
macro_rules! held {
    () => {
        "id = $1 AND running_cycle = $2 AND running_owner = $3 AND running_takeovers = $4"
    };
}

/// Who must still hold the gate for a runner's write to apply: the values
/// of [`held!`]'s `$1`–`$4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// The cycle holding the gate.
    pub cycle: CycleId,
    /// The replica holding it.
    pub owner: ReplicaId,
    /// How many takeovers the cycle had when this runner took it.
    pub epoch: u32,
}

impl Fence {
    fn key(&self) -> (uuid::Uuid, uuid::Uuid, uuid::Uuid, i32) {
        (
            self.workspace.as_uuid(),
            self.cycle.as_uuid(),
            self.owner.as_uuid(),
            self.epoch as i32,
        )
    }
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
}

impl Store {
    /// Extends the lease to `lease_until`; false if `fence` no longer holds.
    pub async fn renew_lease(&self, fence: &Fence, lease_until: Timestamp) -> Result<bool, Error> {
        let (w, c, o, t) = fence.key();
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(concat!(
                "UPDATE workspaces SET running_lease_until = $5 WHERE ",
                held!()
            ))
            .await
            .map_err(db)?;
        Ok(conn
            .execute(&statement, &[&w, &c, &o, &t, &lease_until])
            .await
            .map_err(db)?
            == 1)
    }

    /// Publishes `event` only if `fence` still holds; false otherwise.
    pub async fn publish_fenced(&self, fence: &Fence, event: &Event) -> Result<bool, Error> {
        let payload =
            serde_json::to_string(event).map_err(|e| Error::Internal(format!("event: {e}")))?;
        let (w, c, o, t) = fence.key();
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(concat!(
                "SELECT pg_notify($5, $6) FROM workspaces WHERE ",
                held!()
            ))
            .await
            .map_err(db)?;
        let held = conn
            .execute(
                &statement,
                &[&w, &c, &o, &t, &super::notify::CHANNEL, &payload],
            )
            .await
            .map_err(db)?;
        Ok(held == 1)
    }

    /// Records `generation`'s token hash, only if `fence` still holds.
    pub async fn record_generation(
        &self,
        fence: &Fence,
        generation: Generation,
        token_hash: &[u8],
    ) -> Result<bool, Error> {
        let now = self.clock().now();
        let (w, c, o, t) = fence.key();
        let conn = self.conn().await?;
        let statement = conn
            .prepare_cached(concat!(
                "INSERT INTO generations (workspace_id, generation, cycle_id, token_hash, created_at)
                 SELECT $1, $5, $2, $6, $7 FROM workspaces WHERE ",
                held!(),
                " ON CONFLICT (workspace_id, generation) DO UPDATE SET
                    cycle_id = EXCLUDED.cycle_id, token_hash = EXCLUDED.token_hash,
                    created_at = EXCLUDED.created_at, registered_at = NULL, revoked_at = NULL"
            ))
            .await
            .map_err(db)?;
        let inserted = conn
            .execute(
                &statement,
                &[&w, &c, &o, &t, &(generation.0 as i64), &token_hash, &now],
            )
            .await
            .map_err(db)?;
        Ok(inserted == 1)
    }
}

impl RowTx<'_> {
    /// Marks a freshly claimed cycle running, sets the workspace's status and
    /// (for provisioning) reads the config it will deliver.
    pub async fn start_claimed(&mut self, claim: &Claim, now: Timestamp) -> Result<Started, Error> {
        let tx = &self.tx;
        let workspace = self.workspace;
        let id = workspace.as_uuid();
        let status = match claim.goal {
            Goal::Provision => WorkspaceStatus::Provisioning,
            Goal::Stop | Goal::Delete => WorkspaceStatus::Stopping,
        };
        let row = tx
            .query_one(
                &tx.prepare_cached(
                    "UPDATE workspaces SET status = $2, status_reason = '', updated_at = $3
                     WHERE id = $1 RETURNING backend, spec, config_version",
                )
                .await
                .map_err(db)?,
                &[&id, &status.as_str(), &now],
            )
            .await
            .map_err(db)?;
        let backend: BackendKind = row
            .get::<_, &str>("backend")
            .parse()
            .map_err(|e: String| Error::Internal(e))?;
        let provisions = claim.goal == Goal::Provision;
        let config_version =
            provisions.then(|| ConfigVersion(row.get::<_, i64>("config_version") as u64));
        let (cycle, goal, generation, version, takeovers) = (
            claim.cycle.as_uuid(),
            claim.goal.as_str(),
            claim.generation.0 as i64,
            config_version.map(|v| v.0 as i64),
            claim.takeovers as i32,
        );
        let mark_row: [&(dyn ToSql + Sync); 6] =
            [&cycle, &goal, &generation, &version, &now, &takeovers];
        let served_row: [&(dyn ToSql + Sync); 2] = [&id, &version];
        // The config read and the cycle's marks are independent: one
        // pipelined round trip.
        let (snapshot, _, marked) = futures::try_join!(
            async {
                let Some(config_version) = config_version else {
                    return Ok(None);
                };
                let spec: WorkspaceSpec = serde_json::from_value(row.get("spec"))
                    .map_err(|e| Error::Internal(format!("stored spec: {e}")))?;
                let sealer = self.store.sealer();
                read_config(tx, sealer, workspace, backend, spec, config_version)
                    .await
                    .map(Some)
            },
            async {
                if version.is_none() {
                    return Ok(0);
                }
                execute(
                    tx,
                    "UPDATE workspaces SET served_config_version = $2 WHERE id = $1",
                    &served_row,
                )
                .await
            },
            async {
                let statement = tx
                    .prepare_cached(
                        "UPDATE cycles SET state = 'RUNNING', goal = $2, generation = $3,
                            config_version = $4, started_at = coalesce(started_at, $5),
                            takeovers = $6
                         WHERE id = $1 RETURNING started_at",
                    )
                    .await
                    .map_err(db)?;
                tx.query_one(&statement, &mark_row).await.map_err(db)
            },
        )?;
        let first_started_at: Timestamp = marked.get(0);
        self.events.extend([
            Event::cycle(
                workspace,
                now,
                claim.cycle,
                claim.generation,
                CycleState::Running,
                config_version.unwrap_or_default(),
            ),
            Event::status(workspace, now, status, "", claim.generation),
        ]);
        Ok(Started {
            backend,
            snapshot,
            first_started_at,
        })
    }

    /// Writes the end of a cycle: status, cycle row, tokens, config removal.
    pub async fn record_end(
        &mut self,
        claim: &Claim,
        finish: &Finish,
        served: ConfigVersion,
        now: Timestamp,
    ) -> Result<(), Error> {
        let tx = &self.tx;
        let id = self.workspace.as_uuid();
        let status = finish.status();
        let (outcome, reason) = (finish.outcome(), finish.reason());
        let stopped = matches!(finish, Finish::Stopped | Finish::Deleted);
        let deleted = matches!(finish, Finish::Deleted);
        let (status_name, cycle, outcome) =
            (status.as_str(), claim.cycle.as_uuid(), outcome.as_str());
        let workspace_row: [&(dyn ToSql + Sync); 4] = [&id, &status_name, &reason, &now];
        let cycle_row: [&(dyn ToSql + Sync); 4] = [&cycle, &outcome, &reason, &now];
        let revoke: [&(dyn ToSql + Sync); 2] = [&id, &now];
        let by_workspace: [&(dyn ToSql + Sync); 1] = [&id];
        // Independent writes, pipelined: one round trip.
        futures::try_join!(
            execute(
                tx,
                "UPDATE workspaces SET status = $2, status_reason = $3, updated_at = $4 WHERE id = $1",
                &workspace_row,
            ),
            execute(
                tx,
                "UPDATE cycles SET state = 'ENDED', outcome = $2, reason = $3, ended_at = $4 WHERE id = $1",
                &cycle_row,
            ),
            async {
                if !stopped {
                    return Ok(0);
                }
                execute(
                    tx,
                    "UPDATE generations SET revoked_at = $2 WHERE workspace_id = $1 AND revoked_at IS NULL",
                    &revoke,
                )
                .await
            },
            async {
                if !deleted {
                    return Ok(0);
                }
                futures::try_join!(
                    execute(
                        tx,
                        "DELETE FROM secrets WHERE workspace_id = $1",
                        &by_workspace
                    ),
                    execute(
                        tx,
                        "DELETE FROM files WHERE workspace_id = $1",
                        &by_workspace
                    ),
                )
                .map(|(a, b)| a + b)
            },
        )?;
        let config_version = match finish {
            Finish::Online { config_version } => *config_version,
            _ => served,
        };
        self.events.extend([
            Event::cycle(
                self.workspace,
                now,
                claim.cycle,
                claim.generation,
                CycleState::Ended,
                config_version,
            )
            .ended_with(finish.outcome(), finish.reason()),
            Event::status(
                self.workspace,
                now,
                status,
                finish.reason(),
                claim.generation,
            ),
        ]);
        Ok(())
    }
}

async fn read_config(
    tx: &impl GenericClient,
    sealer: &super::Sealer,
    workspace: WorkspaceId,
    backend: BackendKind,
    spec: WorkspaceSpec,
    config_version: ConfigVersion,
) -> Result<ConfigSnapshot, Error> {
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
    // The one place secret values are opened: the cycle hands them to the
    // backend that starts the instance.
    let secrets = secrets
        .into_iter()
        .map(|row| {
            let name: String = row.get(0);
            let nonce: Option<&[u8]> = row.get(2);
            let value = sealer.open(workspace, &name, nonce.unwrap_or_default(), row.get(1))?;
            Ok((name, value))
        })
        .collect::<Result<_, Error>>()?;
    let files = files
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

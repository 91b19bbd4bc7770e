//! A claimed cycle's start, in the claiming transaction (C2, C16, C20):
//! the workspace's status, the cycle's row marked running, the config it
//! will deliver (read under the row lock, so C2 is exact), the new
//! generation's agent token (its hash), how it was admitted (for its
//! trace), and its first phase announced — all of it sent with the claim's
//! `COMMIT`, one round trip after the row lock.

use std::collections::BTreeMap;

use tokio_postgres::Row;

use super::{
    Locked, RowTx, Sealer,
    row_tx::{Committed, Queued},
    rows::parse,
    statement::Statement,
};
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
    /// The config to deliver (provisioning cycles only), or why it could
    /// not be read (the cycle fails with it).
    pub snapshot: Option<Result<ConfigSnapshot, Error>>,
    /// When the cycle first started, whoever ran it (C20).
    pub first_started_at: Timestamp,
    /// How it was admitted, for its trace (read in the claim's round trip).
    pub admitted: AdmittedCycle,
}

/// A claimed cycle's start, queued in the claiming transaction: read back
/// once it committed ([`PendingStart::started`]).
#[derive(Debug)]
pub struct PendingStart {
    workspace: WorkspaceId,
    config_version: Option<ConfigVersion>,
    row: Queued,
    marked: Queued,
    absorbed: Queued,
    /// The secrets' and files' reads (provisioning cycles only).
    config: Option<(Queued, Queued)>,
}

impl RowTx {
    /// Marks a freshly claimed cycle running, sets the workspace's status,
    /// (for provisioning) reads the config it will deliver and records its
    /// generation's agent token (its hash), so nothing stands between its
    /// stop and its start — every statement queued to go out with the
    /// claim's `COMMIT`, in one round trip after the row lock. The config
    /// version is the one `locked` read under the row lock.
    pub fn start_claimed(
        &mut self,
        claim: &Claim,
        locked: &Locked,
        token_hash: Option<Vec<u8>>,
        now: Timestamp,
    ) -> PendingStart {
        let workspace = self.workspace;
        let id = workspace.as_uuid();
        let status = match claim.goal {
            Goal::Provision => WorkspaceStatus::Provisioning,
            Goal::Stop | Goal::Delete => WorkspaceStatus::Stopping,
        };
        let config_version = (claim.goal == Goal::Provision).then_some(locked.config_version);
        let version = config_version.map(|v| v.0 as i64);
        let cycle = claim.cycle.as_uuid();
        let row = self.queue(Statement::new(
            "UPDATE workspaces SET status = $2, status_reason = '', updated_at = $3,
                served_config_version = coalesce($4, served_config_version)
             WHERE id = $1 RETURNING backend, spec",
            vec![
                Box::new(id),
                Box::new(status.as_str()),
                Box::new(now),
                Box::new(version),
            ],
        ));
        let marked = self.queue(Statement::new(
            "UPDATE cycles SET state = 'RUNNING', goal = $2, generation = $3,
                config_version = $4, started_at = coalesce(started_at, $5), takeovers = $6
             WHERE id = $1
             RETURNING started_at, created_at, trace_id, parent_span_id",
            vec![
                Box::new(cycle),
                Box::new(claim.goal.as_str()),
                Box::new(claim.generation.0 as i64),
                Box::new(version),
                Box::new(now),
                Box::new(claim.takeovers as i32),
            ],
        ));
        let absorbed = self.queue(Statement::new(
            "SELECT trigger, count FROM cycle_triggers WHERE cycle_id = $1",
            vec![Box::new(cycle)],
        ));
        let config = config_version.map(|_| {
            (
                self.queue(Statement::new(
                    "SELECT name, value, nonce FROM secrets WHERE workspace_id = $1",
                    vec![Box::new(id)],
                )),
                self.queue(Statement::new(
                    "SELECT path, content FROM files WHERE workspace_id = $1",
                    vec![Box::new(id)],
                )),
            )
        });
        if let Some(hash) = token_hash {
            // A generation redone (a takeover) starts afresh.
            self.queue(Statement::new(
                "INSERT INTO generations (workspace_id, generation, cycle_id, token_hash, created_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (workspace_id, generation) DO UPDATE SET
                    cycle_id = EXCLUDED.cycle_id, token_hash = EXCLUDED.token_hash,
                    created_at = EXCLUDED.created_at, registered_at = NULL, revoked_at = NULL",
                vec![
                    Box::new(id),
                    Box::new(claim.generation.0 as i64),
                    Box::new(cycle),
                    Box::new(hash),
                    Box::new(now),
                ],
            ));
        }
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
        PendingStart {
            workspace,
            config_version,
            row,
            marked,
            absorbed,
            config,
        }
    }
}

impl PendingStart {
    /// What the committed claim read. Config that cannot be read (a stored
    /// spec or secret that does not parse or open) fails only the cycle
    /// that was to deliver it, not the claim: it is `snapshot`'s error.
    pub fn started(self, committed: &Committed, sealer: &Sealer) -> Result<Started, Error> {
        let workspace = self.workspace;
        let missing = || Error::Internal(format!("claimed workspace {workspace} has no row"));
        let row = committed.rows(self.row).first().ok_or_else(missing)?;
        let marked = committed.rows(self.marked).first().ok_or_else(missing)?;
        let backend: BackendKind = row
            .get::<_, &str>("backend")
            .parse()
            .map_err(|e: String| Error::Internal(e))?;
        let snapshot = match (self.config_version, self.config) {
            (Some(config_version), Some((secrets, files))) => Some(open_config(
                sealer,
                workspace,
                backend,
                row.get("spec"),
                config_version,
                committed.rows(secrets),
                committed.rows(files),
            )),
            _ => None,
        };
        let mut triggers = BTreeMap::new();
        for row in committed.rows(self.absorbed) {
            let trigger: Trigger = parse(row.get::<_, &str>(0))?;
            triggers.insert(trigger, row.get::<_, i64>(1) as u64);
        }
        Ok(Started {
            backend,
            snapshot,
            first_started_at: marked.get(0),
            admitted: AdmittedCycle {
                created_at: marked.get(1),
                trace_id: marked.get(2),
                parent_span_id: marked.get(3),
                triggers,
            },
        })
    }
}

fn open_config(
    sealer: &Sealer,
    workspace: WorkspaceId,
    backend: BackendKind,
    spec: serde_json::Value,
    config_version: ConfigVersion,
    secrets: &[Row],
    files: &[Row],
) -> Result<ConfigSnapshot, Error> {
    let spec: WorkspaceSpec =
        serde_json::from_value(spec).map_err(|e| Error::Internal(format!("stored spec: {e}")))?;
    // The one place secret values are opened: the cycle hands them to the
    // backend that starts the instance.
    let secrets = secrets
        .iter()
        .map(|row| {
            let name: String = row.get(0);
            let nonce: Option<&[u8]> = row.get(2);
            let value = sealer.open(workspace, &name, nonce.unwrap_or_default(), row.get(1))?;
            Ok((name, value))
        })
        .collect::<Result<_, Error>>()?;
    let files = files
        .iter()
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

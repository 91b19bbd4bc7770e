//! The gate as a lease on the workspace row.
//!
//! `claim` runs the ledger's claim under the row lock and, in the same
//! transaction, marks the cycle running and reads the config the cycle will
//! deliver. Reading config in the claiming transaction is what makes C2
//! exact: a mutation committed before the claim is in this cycle's config;
//! one committed after it found no follow-up and opened a new one.
//!
//! The [`LeaseGuard`] is the cycle's proof of holding the gate. Every write
//! it makes is fenced — applied only if the cycle still holds the gate in
//! this replica's name — and `finish` releases the gate and claims the next
//! due follow-up in one transaction, handing the gate on without a gap.

use std::collections::BTreeMap;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::{Store, db, notify, rows};
use crate::engine::ledger::Timing;
use crate::{
    domain::{
        BackendKind, ConfigVersion, CycleId, CycleState, Goal, Outcome, Phase, Secret, Timestamp,
        WorkspaceId, WorkspaceSpec, WorkspaceStatus,
    },
    engine::{
        EngineError,
        events::{Event, EventKind},
        gate::{GateGuard, GateKeeper},
        ledger::Claim,
    },
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
/// workspace, `$2` cycle, `$3` owner, `$4` epoch ([`LeaseGuard::fence_key`]).
/// Every write a runner makes while it holds the gate goes through it.
macro_rules! held {
    () => {
        "id = $1 AND running_cycle = $2 AND running_owner = $3 AND running_takeovers = $4"
    };
}

/// Proof that a cycle holds a workspace's gate.
#[derive(Debug)]
pub struct LeaseGuard {
    workspace: WorkspaceId,
    claim: Claim,
    backend: BackendKind,
    snapshot: Option<ConfigSnapshot>,
    started_at: Timestamp,
    /// When the cycle first started, whoever ran it: its provision deadline
    /// counts from here, across takeovers (C20).
    first_started_at: Timestamp,
    /// After this local instant the runner may have lost its lease without
    /// knowing: it must not call the backend any more (C18). Set from the
    /// moment the last successful claim or renewal was *sent*, less a margin.
    fence: std::sync::Mutex<tokio::time::Instant>,
    store: Store,
    /// Until `finish` runs, dropping the guard (a panic, an aborted task)
    /// still ends the cycle as failed and releases the gate.
    armed: bool,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // The lease expires and another replica takes over.
        };
        let mut orphan = LeaseGuard {
            workspace: self.workspace,
            claim: self.claim,
            backend: self.backend,
            snapshot: None,
            started_at: self.started_at,
            first_started_at: self.first_started_at,
            fence: std::sync::Mutex::new(tokio::time::Instant::now()),
            store: self.store.clone(),
            armed: false,
        };
        runtime.spawn(async move {
            let finish = Finish::Failed {
                reason: "the cycle was abandoned by its runner".into(),
            };
            // The follow-up stays pending for the scheduler: nobody here
            // would run it, and dropping a claimed one would fail changes
            // that were acknowledged but never delivered.
            if let Err(err) = orphan.end(finish, FollowUp::Leave).await {
                tracing::warn!(%err, "could not release an abandoned cycle; its lease will expire");
            }
        });
    }
}

/// How a cycle ends, as the guard records it.
#[derive(Clone, Debug)]
pub enum Finish {
    /// The generation's agent registered with `config_version`.
    Online {
        /// What the agent booted with.
        config_version: ConfigVersion,
    },
    /// The cycle failed.
    Failed {
        /// Why, safe to show.
        reason: String,
    },
    /// The workspace was stopped.
    Stopped,
    /// The workspace was deleted.
    Deleted,
}

impl Finish {
    /// The outcome recorded for this end.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Online { .. } => Outcome::Succeeded,
            Self::Failed { .. } => Outcome::Failed,
            Self::Stopped => Outcome::Stopped,
            Self::Deleted => Outcome::Deleted,
        }
    }

    fn status(&self) -> WorkspaceStatus {
        match self {
            Self::Online { .. } => WorkspaceStatus::Online,
            Self::Failed { .. } => WorkspaceStatus::Failed,
            Self::Stopped => WorkspaceStatus::Stopped,
            Self::Deleted => WorkspaceStatus::Deleted,
        }
    }

    fn reason(&self) -> &str {
        match self {
            Self::Failed { reason } => reason,
            _ => "",
        }
    }
}

/// What `finish` did.
#[derive(Debug)]
pub struct Finished {
    /// False if the cycle had lost the gate: nothing was written.
    pub recorded: bool,
    /// The next cycle, if one was due: the gate passed straight to it.
    pub next: Option<LeaseGuard>,
    /// When the follow-up (if one waits) becomes due.
    pub next_due: Option<Timestamp>,
}

impl GateGuard for LeaseGuard {
    fn cycle(&self) -> CycleId {
        self.claim.cycle
    }
}

impl LeaseGuard {
    /// The workspace.
    pub fn workspace(&self) -> WorkspaceId {
        self.workspace
    }

    /// What was claimed (cycle, goal, generation, takeover).
    pub fn claim(&self) -> &Claim {
        &self.claim
    }

    /// The workspace's backend.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The config to deliver (provisioning cycles only).
    pub fn snapshot(&self) -> Option<&ConfigSnapshot> {
        self.snapshot.as_ref()
    }

    /// Gives up on ending the cycle here: the lease will expire and another
    /// runner will redo the cycle.
    pub fn disarm(&mut self) {
        self.armed = false;
    }

    /// When the cycle took the gate.
    pub fn started_at(&self) -> Timestamp {
        self.started_at
    }

    /// When the cycle first started (its deadline counts from here, C20).
    pub fn first_started_at(&self) -> Timestamp {
        self.first_started_at
    }

    /// How long this runner may still call the backend (zero: fenced).
    pub fn fence_left(&self) -> std::time::Duration {
        let fence = *self.fence.lock().expect("fence poisoned");
        fence.saturating_duration_since(tokio::time::Instant::now())
    }

    /// Resolves once the runner may no longer call the backend: its last
    /// successful renewal is too old for the lease to be trusted (C18).
    pub async fn fenced(&self) {
        loop {
            let left = self.fence_left();
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    }

    fn extend_fence(&self, sent: tokio::time::Instant) {
        let fence = fence_after(sent, self.store.timing());
        let mut current = self.fence.lock().expect("fence poisoned");
        *current = (*current).max(fence);
    }

    /// Extends the lease; false if the cycle lost the gate (then it must
    /// stop acting).
    pub async fn renew(&self) -> Result<bool, EngineError> {
        let store = &self.store;
        let sent = tokio::time::Instant::now();
        let lease_until = store.clock().now()
            + chrono::Duration::from_std(store.timing().lease_ttl).unwrap_or(chrono::Duration::MAX);
        let (w, c, o, t) = self.fence_key();
        let conn = store.conn().await?;
        let statement = conn
            .prepare_cached(concat!(
                "UPDATE workspaces SET running_lease_until = $5 WHERE ",
                held!()
            ))
            .await
            .map_err(db)?;
        let renewed = conn
            .execute(&statement, &[&w, &c, &o, &t, &lease_until])
            .await
            .map_err(db)?
            == 1;
        if renewed {
            self.extend_fence(sent);
        } else {
            // Lost: no backend call from here on.
            *self.fence.lock().expect("fence poisoned") = tokio::time::Instant::now();
        }
        Ok(renewed)
    }

    /// The values of [`held!`]'s `$1`–`$4`: workspace, cycle, owner, epoch.
    fn fence_key(&self) -> (uuid::Uuid, uuid::Uuid, uuid::Uuid, i32) {
        (
            self.workspace.as_uuid(),
            self.claim.cycle.as_uuid(),
            self.store.replica().as_uuid(),
            self.claim.takeovers as i32,
        )
    }

    /// Hands the cycle to another replica: its lease expires now and this
    /// guard lets go without ending the cycle. For graceful shutdown.
    pub async fn hand_off(mut self) -> Result<bool, EngineError> {
        self.armed = false;
        *self.fence.lock().expect("fence poisoned") = tokio::time::Instant::now();
        let store = &self.store;
        let now = store.clock().now();
        let mut conn = store.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let mut locked = rows::lock(&tx, self.workspace).await?;
        let handed =
            locked
                .ledger
                .hand_off(self.claim.cycle, store.replica(), self.claim.takeovers, now);
        if handed {
            rows::save(&tx, self.workspace, &locked, store.timing(), now).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(handed)
    }

    /// Announces a phase (only while the cycle holds the gate).
    pub async fn phase(&self, phase: Phase) -> Result<bool, EngineError> {
        let now = self.store.clock().now();
        let event = Event {
            workspace: self.workspace,
            at: now,
            kind: EventKind::Cycle {
                cycle: self.claim.cycle,
                state: CycleState::Running,
                generation: self.claim.generation,
                phase: Some(phase),
                outcome: None,
                reason: String::new(),
                config_version: self.config_version(),
            },
        };
        let payload = serde_json::to_string(&event)
            .map_err(|e| EngineError::Internal(format!("event: {e}")))?;
        let (w, c, o, t) = self.fence_key();
        let conn = self.store.conn().await?;
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

    fn config_version(&self) -> ConfigVersion {
        self.snapshot
            .as_ref()
            .map(|s| s.config_version)
            .unwrap_or_default()
    }

    /// Records the new generation's token hash (fenced). False if the cycle
    /// lost the gate.
    pub async fn record_generation(&self, token_hash: &[u8]) -> Result<bool, EngineError> {
        let now = self.store.clock().now();
        let (w, c, o, t) = self.fence_key();
        let conn = self.store.conn().await?;
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
        let generation = self.claim.generation.0 as i64;
        let inserted = conn
            .execute(
                &statement,
                &[&w, &c, &o, &t, &generation, &token_hash, &now],
            )
            .await
            .map_err(db)?;
        Ok(inserted == 1)
    }

    /// Records how the cycle ended, releases the gate and, if a follow-up is
    /// due, claims it — one transaction. Writes nothing if the cycle had
    /// lost the gate (C12).
    pub async fn finish(&mut self, finish: Finish) -> Result<Finished, EngineError> {
        self.end(finish, FollowUp::Claim).await
    }

    async fn end(&mut self, finish: Finish, follow_up: FollowUp) -> Result<Finished, EngineError> {
        let store = self.store.clone();
        let sent = tokio::time::Instant::now();
        let now = store.clock().now();
        let mut conn = store.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let mut locked = rows::lock(&tx, self.workspace).await?;
        if !locked
            .ledger
            .holds(self.claim.cycle, store.replica(), self.claim.takeovers)
        {
            tx.commit().await.map_err(db)?;
            self.armed = false;
            return Ok(Finished {
                recorded: false,
                next: None,
                next_due: locked.ledger.pending_due(store.timing()),
            });
        }
        let mut events = Vec::new();
        record_end(&tx, self, &finish, now, &mut events).await?;
        locked
            .ledger
            .release(self.claim.cycle, store.replica(), self.claim.takeovers);
        let claimed = match follow_up {
            FollowUp::Claim => locked.ledger.claim(store.replica(), now, store.timing()),
            FollowUp::Leave => None,
        };
        let next = match claimed {
            Some(claim) => Some(
                start_claimed(&tx, &store, self.workspace, claim, now, sent, &mut events).await?,
            ),
            None => None,
        };
        rows::save(&tx, self.workspace, &locked, store.timing(), now).await?;
        notify::publish(&tx, &events).await?;
        tx.commit().await.map_err(db)?;
        self.armed = false;
        Ok(Finished {
            recorded: true,
            next,
            next_due: locked.ledger.pending_due(store.timing()),
        })
    }
}

/// Whether ending a cycle also claims its due follow-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FollowUp {
    /// Claim it and hand it to the caller, who runs it.
    Claim,
    /// Leave it pending for the scheduler (nobody here would run it).
    Leave,
}

/// The local fence of a lease whose claim or renewal was sent at `sent`:
/// a quarter of the lease short of its end in the database, which covers
/// the clock sync's error and a backend call already under way.
fn fence_after(sent: tokio::time::Instant, timing: &Timing) -> tokio::time::Instant {
    sent + timing.lease_ttl - timing.lease_ttl / 4
}

/// Writes the end of a cycle: status, cycle row, tokens, config removal.
async fn record_end(
    tx: &impl GenericClient,
    guard: &LeaseGuard,
    finish: &Finish,
    now: Timestamp,
    events: &mut Vec<Event>,
) -> Result<(), EngineError> {
    let id = guard.workspace.as_uuid();
    let status = finish.status();
    let update = tx
        .prepare_cached(
            "UPDATE workspaces SET status = $2, status_reason = $3, updated_at = $4 WHERE id = $1",
        )
        .await
        .map_err(db)?;
    tx.execute(&update, &[&id, &status.as_str(), &finish.reason(), &now])
        .await
        .map_err(db)?;
    let end = tx
        .prepare_cached(
            "UPDATE cycles SET state = 'ENDED', outcome = $2, reason = $3, ended_at = $4 WHERE id = $1",
        )
        .await
        .map_err(db)?;
    tx.execute(
        &end,
        &[
            &guard.claim.cycle.as_uuid(),
            &finish.outcome().as_str(),
            &finish.reason(),
            &now,
        ],
    )
    .await
    .map_err(db)?;
    if matches!(finish, Finish::Stopped | Finish::Deleted) {
        let revoke = tx
            .prepare_cached(
                "UPDATE generations SET revoked_at = $2 WHERE workspace_id = $1 AND revoked_at IS NULL",
            )
            .await
            .map_err(db)?;
        tx.execute(&revoke, &[&id, &now]).await.map_err(db)?;
    }
    if matches!(finish, Finish::Deleted) {
        for sql in [
            "DELETE FROM secrets WHERE workspace_id = $1",
            "DELETE FROM files WHERE workspace_id = $1",
        ] {
            let statement = tx.prepare_cached(sql).await.map_err(db)?;
            tx.execute(&statement, &[&id]).await.map_err(db)?;
        }
    }
    let config_version = match finish {
        Finish::Online { config_version } => *config_version,
        _ => guard.config_version(),
    };
    events.push(Event {
        workspace: guard.workspace,
        at: now,
        kind: EventKind::Cycle {
            cycle: guard.claim.cycle,
            state: CycleState::Ended,
            generation: guard.claim.generation,
            phase: None,
            outcome: Some(finish.outcome()),
            reason: finish.reason().to_owned(),
            config_version,
        },
    });
    events.push(Event {
        workspace: guard.workspace,
        at: now,
        kind: EventKind::Status {
            status,
            reason: finish.reason().to_owned(),
            generation: guard.claim.generation,
        },
    });
    Ok(())
}

/// Marks a freshly claimed cycle running, sets the workspace's status and
/// (for provisioning) reads the config it will deliver.
async fn start_claimed(
    tx: &impl GenericClient,
    store: &Store,
    workspace: WorkspaceId,
    claim: Claim,
    now: Timestamp,
    sent: tokio::time::Instant,
    events: &mut Vec<Event>,
) -> Result<LeaseGuard, EngineError> {
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
        .map_err(|e: String| EngineError::Internal(e))?;
    let snapshot = if claim.goal == Goal::Provision {
        let spec: WorkspaceSpec = serde_json::from_value(row.get("spec"))
            .map_err(|e| EngineError::Internal(format!("stored spec: {e}")))?;
        let config_version = ConfigVersion(row.get::<_, i64>("config_version") as u64);
        Some(read_config(tx, store.sealer(), workspace, backend, spec, config_version).await?)
    } else {
        None
    };
    let config_version = snapshot.as_ref().map(|s| s.config_version);
    if let Some(version) = config_version {
        let served = tx
            .prepare_cached("UPDATE workspaces SET served_config_version = $2 WHERE id = $1")
            .await
            .map_err(db)?;
        tx.execute(&served, &[&id, &(version.0 as i64)])
            .await
            .map_err(db)?;
    }
    let mark = tx
        .prepare_cached(
            "UPDATE cycles SET state = 'RUNNING', goal = $2, generation = $3, config_version = $4,
                               started_at = coalesce(started_at, $5), takeovers = $6
             WHERE id = $1 RETURNING started_at",
        )
        .await
        .map_err(db)?;
    let marked = tx
        .query_one(
            &mark,
            &[
                &claim.cycle.as_uuid(),
                &claim.goal.as_str(),
                &(claim.generation.0 as i64),
                &config_version.map(|v| v.0 as i64),
                &now,
                &(claim.takeovers as i32),
            ],
        )
        .await
        .map_err(db)?;
    let first_started_at: Timestamp = marked.get(0);
    events.push(Event {
        workspace,
        at: now,
        kind: EventKind::Cycle {
            cycle: claim.cycle,
            state: CycleState::Running,
            generation: claim.generation,
            phase: None,
            outcome: None,
            reason: String::new(),
            config_version: config_version.unwrap_or_default(),
        },
    });
    events.push(Event {
        workspace,
        at: now,
        kind: EventKind::Status {
            status,
            reason: String::new(),
            generation: claim.generation,
        },
    });
    Ok(LeaseGuard {
        workspace,
        claim,
        backend,
        snapshot,
        started_at: now,
        first_started_at,
        fence: std::sync::Mutex::new(fence_after(sent, store.timing())),
        store: store.clone(),
        armed: true,
    })
}

async fn read_config(
    tx: &impl GenericClient,
    sealer: &super::Sealer,
    workspace: WorkspaceId,
    backend: BackendKind,
    spec: WorkspaceSpec,
    config_version: ConfigVersion,
) -> Result<ConfigSnapshot, EngineError> {
    let id = workspace.as_uuid();
    let secrets = tx
        .prepare_cached("SELECT name, value, nonce FROM secrets WHERE workspace_id = $1")
        .await
        .map_err(db)?;
    // The one place secret values are opened: the cycle hands them to the
    // backend that starts the instance.
    let secrets = tx
        .query(&secrets, &[&id])
        .await
        .map_err(db)?
        .into_iter()
        .map(|row| {
            let name: String = row.get(0);
            let nonce: Option<&[u8]> = row.get(2);
            let value = sealer.open(workspace, &name, nonce.unwrap_or_default(), row.get(1))?;
            Ok((name, value))
        })
        .collect::<Result<_, EngineError>>()?;
    let files = tx
        .prepare_cached("SELECT path, content FROM files WHERE workspace_id = $1")
        .await
        .map_err(db)?;
    let files = tx
        .query(&files, &[&id])
        .await
        .map_err(db)?
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

#[async_trait]
impl GateKeeper<WorkspaceId> for Store {
    type Guard = LeaseGuard;

    async fn claim(
        &self,
        workspace: &WorkspaceId,
        now: Timestamp,
    ) -> Result<Option<LeaseGuard>, EngineError> {
        let sent = tokio::time::Instant::now();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(db)?;
        let mut locked = match rows::lock(&tx, *workspace).await {
            Ok(locked) => locked,
            // Deleted from under a resumption: nothing to claim.
            Err(EngineError::NotFound(_)) => return Ok(None),
            Err(err) => return Err(err),
        };
        let Some(claim) = locked.ledger.claim(self.replica(), now, self.timing()) else {
            return Ok(None);
        };
        let mut events = Vec::new();
        let guard = start_claimed(&tx, self, *workspace, claim, now, sent, &mut events).await?;
        rows::save(&tx, *workspace, &locked, self.timing(), now).await?;
        notify::publish(&tx, &events).await?;
        tx.commit().await.map_err(db)?;
        Ok(Some(guard))
    }
}

//! The cycle's proof of holding its workspace's gate (C5, C12, C18): a
//! lease in the workspace row, renewed while the cycle runs, and a local
//! fence after which the runner makes no backend call. Every write it makes
//! is fenced; `finish` records the end, releases the gate and hands it to
//! the due follow-up in one transaction (claimed by `gate`).

use workspace_backends::AgentToken;

use super::gate::{self, GateGuard};
use crate::{
    domain::{
        BackendKind, ConfigVersion, CycleId, CycleState, Error, Event, Finish, Phase, Timestamp,
        WorkspaceId,
        ledger::{Claim, Timing, after},
    },
    store::{ConfigSnapshot, Fence, OnRow, Started, Store},
    telemetry::cycle_trace::AdmittedCycle,
};

/// Proof that a cycle holds a workspace's gate.
#[derive(Debug)]
pub struct LeaseGuard {
    workspace: WorkspaceId,
    claim: Claim,
    backend: BackendKind,
    snapshot: Option<Result<ConfigSnapshot, Error>>,
    /// The new generation's agent token (provisioning cycles only): its
    /// hash was recorded by the claim's transaction.
    token: Option<AgentToken>,
    /// How the cycle was admitted, for its trace (read with the claim).
    admitted: Option<AdmittedCycle>,
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
            token: None,
            admitted: None,
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
        self.snapshot.as_ref()?.as_ref().ok()
    }

    /// The config to deliver, or why it could not be read (a provisioning
    /// cycle fails with it); `None` for a cycle that delivers none.
    pub fn config(&self) -> Option<Result<&ConfigSnapshot, &Error>> {
        self.snapshot.as_ref().map(Result::as_ref)
    }

    /// The token the new generation's agent registers with (provisioning
    /// cycles only).
    pub fn token(&self) -> Option<&AgentToken> {
        self.token.as_ref()
    }

    /// How the cycle was admitted (read with its claim), for its trace.
    pub fn admitted(&self) -> Option<&AdmittedCycle> {
        self.admitted.as_ref()
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

    /// The fencing condition of this runner's writes.
    fn fence_key(&self) -> Fence {
        Fence {
            workspace: self.workspace,
            cycle: self.claim.cycle,
            owner: self.store.replica(),
            epoch: self.claim.takeovers,
        }
    }

    fn extend_fence(&self, sent: tokio::time::Instant) {
        let fence = fence_after(sent, self.store.timing());
        let mut current = self.fence.lock().expect("fence poisoned");
        *current = (*current).max(fence);
    }

    /// Extends the lease; false if the cycle lost the gate (then it must
    /// stop acting).
    pub async fn renew(&self) -> Result<bool, Error> {
        let sent = tokio::time::Instant::now();
        let lease_until = after(self.store.clock().now(), self.store.timing().lease_ttl);
        let renewed = self
            .store
            .renew_lease(&self.fence_key(), lease_until)
            .await?;
        if renewed {
            self.extend_fence(sent);
        } else {
            // Lost: no backend call from here on.
            *self.fence.lock().expect("fence poisoned") = tokio::time::Instant::now();
        }
        Ok(renewed)
    }

    /// Hands the cycle to another replica: its lease expires now and this
    /// guard lets go without ending the cycle. For graceful shutdown.
    pub async fn hand_off(mut self) -> Result<bool, Error> {
        self.armed = false;
        *self.fence.lock().expect("fence poisoned") = tokio::time::Instant::now();
        let store = self.store.clone();
        let now = store.clock().now();
        let (cycle, takeovers) = (self.claim.cycle, self.claim.takeovers);
        let handed = store
            .on_row(self.workspace, now, |_, locked| {
                let handed = locked
                    .ledger
                    .hand_off(cycle, store.replica(), takeovers, now);
                Ok((handed, handed))
            })
            .await?;
        Ok(handed.value)
    }

    /// Announces a phase (only while the cycle holds the gate).
    pub async fn phase(&self, phase: Phase) -> Result<bool, Error> {
        let event = self.phase_event(phase);
        self.store.publish_fenced(&self.fence_key(), &event).await
    }

    fn phase_event(&self, phase: Phase) -> Event {
        Event::cycle(
            self.workspace,
            self.store.clock().now(),
            self.claim.cycle,
            self.claim.generation,
            CycleState::Running,
            self.config_version(),
        )
        .in_phase(phase)
    }

    fn config_version(&self) -> ConfigVersion {
        self.snapshot()
            .map(|s| s.config_version)
            .unwrap_or_default()
    }

    /// Records how the cycle ended, releases the gate and, if a follow-up is
    /// due, claims it — one transaction. Writes nothing if the cycle had
    /// lost the gate (C12).
    pub async fn finish(&mut self, finish: Finish) -> Result<Finished, Error> {
        self.end(finish, FollowUp::Claim).await
    }

    async fn end(&mut self, finish: Finish, follow_up: FollowUp) -> Result<Finished, Error> {
        let store = self.store.clone();
        let sent = tokio::time::Instant::now();
        let now = store.clock().now();
        let (claim, served) = (&self.claim, self.config_version());
        let OnRow {
            value: recorded,
            committed,
            locked,
        } = store
            .on_row(self.workspace, now, |tx, locked| {
                if !locked
                    .ledger
                    .holds(claim.cycle, store.replica(), claim.takeovers)
                {
                    return Ok((false, None));
                }
                tx.record_end(claim, &finish, served, now);
                locked
                    .ledger
                    .release(claim.cycle, store.replica(), claim.takeovers);
                let next = match follow_up {
                    FollowUp::Claim => gate::claim_locked(tx, locked, &store, now)?,
                    FollowUp::Leave => None,
                };
                Ok((true, Some(next)))
            })
            .await?;
        self.armed = false;
        let Some(next) = recorded else {
            return Ok(Finished {
                recorded: false,
                next: None,
                next_due: locked.ledger.pending_due(store.timing()),
            });
        };
        let next = next
            .map(|claimed| claimed.started(&store, &committed, now, sent))
            .transpose()?;
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

impl LeaseGuard {
    /// The guard of a cycle just claimed and started: its lease was sent at
    /// `sent`.
    pub(super) fn started(
        store: &Store,
        workspace: WorkspaceId,
        claim: Claim,
        started: Started,
        token: Option<AgentToken>,
        now: Timestamp,
        sent: tokio::time::Instant,
    ) -> Self {
        Self {
            workspace,
            claim,
            backend: started.backend,
            snapshot: started.snapshot,
            token,
            admitted: Some(started.admitted),
            started_at: now,
            first_started_at: started.first_started_at,
            fence: std::sync::Mutex::new(fence_after(sent, store.timing())),
            store: store.clone(),
            armed: true,
        }
    }
}

//! The gate layer: at most one cycle per workspace, across every entry point
//! and every replica (C5).
//!
//! The gate is a lease in Postgres (see the ledger's `claim`): taking it is a
//! conditional write that either succeeds or finds the gate held, and never
//! waits, so no flow can block on a gate it already holds (C11). Taking it
//! yields a guard — the only proof that a flow holds the gate — which the
//! request carries down to the cycle service as [`Gated`]. The guard cannot
//! be cloned and is obtained only here: whoever needs the gate takes the
//! guard as a parameter instead of acquiring it again.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use async_trait::async_trait;
use tower::{Layer, Service};

use super::{
    detach::Detachable,
    intent::{Admission, StackRequest, Stage, Verdict, Waiting},
    lease::LeaseGuard,
};
use crate::{
    domain::{CycleId, Error, Generation, Goal, Timestamp, WorkspaceId, clock::SharedClock},
    store::{Committed, Locked, OnRow, PendingStart, RowTx, Store, token_hash},
};
use workspace_backends::AgentToken;

/// Proof that a flow holds a workspace's gate.
pub trait GateGuard: Send + 'static {
    /// The cycle holding the gate.
    fn cycle(&self) -> CycleId;
}

/// The cycle holding a gate someone else took: a request admitted to start
/// that very cycle (the scheduler's sweep claimed it a moment before the
/// request's own claim) is still the one that started it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The cycle.
    pub cycle: CycleId,
    /// The generation it provisions (the current one for stop/delete).
    pub generation: Generation,
    /// What it does.
    pub goal: Goal,
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim<G> {
    /// The gate is this flow's.
    Won(G),
    /// The gate is held (by `Some` holder), or nothing is due (`None`).
    Lost(Option<Holder>),
}

impl<G> Claim<G> {
    /// The guard, if the gate was taken.
    pub fn won(self) -> Option<G> {
        match self {
            Self::Won(guard) => Some(guard),
            Self::Lost(_) => None,
        }
    }
}

/// Where gates are kept.
#[async_trait]
pub trait GateKeeper<K>: Send + Sync + 'static {
    /// The guard a successful claim yields.
    type Guard: GateGuard;

    /// Takes `key`'s gate for whatever may run now (a due follow-up, or a
    /// cycle whose holder's lease expired); otherwise says who holds it.
    /// Never waits for the gate.
    async fn claim(&self, key: &K, now: Timestamp) -> Result<Claim<Self::Guard>, Error>;
}

/// A request together with the gate it holds.
#[derive(Debug)]
pub struct Gated<R, G> {
    /// The request that won the gate.
    pub request: R,
    /// The gate.
    pub guard: G,
}

/// Adds the gate in front of the cycle service.
pub struct GateLayer<G> {
    keeper: Arc<G>,
    clock: SharedClock,
}

impl<G> GateLayer<G> {
    /// A gate kept by `keeper`.
    pub fn new(keeper: Arc<G>, clock: SharedClock) -> Self {
        Self { keeper, clock }
    }
}

impl<S, G> Layer<S> for GateLayer<G> {
    type Service = Gate<S, G>;

    fn layer(&self, inner: S) -> Self::Service {
        Gate {
            inner,
            keeper: self.keeper.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// The gate service.
pub struct Gate<S, G> {
    inner: S,
    keeper: Arc<G>,
    clock: SharedClock,
}

impl<S: Clone, G> Clone for Gate<S, G> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            keeper: self.keeper.clone(),
            clock: self.clock.clone(),
        }
    }
}

// === impl Gate ===

impl<S, G, R> Service<R> for Gate<S, G>
where
    R: StackRequest,
    G: GateKeeper<R::Key>,
    S: Service<Gated<R, G::Guard>, Response = Admission, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Admission;
    type Error = Error;
    type Future = Detachable<Result<Admission, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let admitted = match request.stage() {
            Stage::Admitted { cycle, .. } => Some(cycle),
            Stage::Resume => None,
            stage => {
                return Detachable::new(async move {
                    Err(Error::Internal(format!(
                        "request reached the gate unadmitted ({stage:?})"
                    )))
                });
            }
        };
        let fresh = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, fresh);
        let keeper = self.keeper.clone();
        let now = self.clock.now();
        // Claim and start on the caller's task, going on as a task of their
        // own if the caller goes away mid-claim: a dropped future must not
        // roll the claim back and leave its admitted cycle to the
        // scheduler's next sweep (C20).
        let claim_and_start = async move {
            let key = request.key();
            let claimed = match (keeper.claim(&key, now).await, admitted) {
                (Ok(claimed), _) => claimed,
                // The admission committed: the request stays acknowledged
                // whatever happens to the claim (C20). Its cycle is durable
                // and the scheduler's sweep claims it.
                (Err(err), Some(cycle)) => {
                    tracing::warn!(%err, %cycle, "claim after admission failed; the scheduler will run the cycle");
                    return Ok(Admission::of(Verdict::Coalesced {
                        cycle,
                        not_before: now,
                        waiting: Waiting::Deferred,
                    }));
                }
                (Err(err), None) => return Err(err),
            };
            let guard = match claimed {
                Claim::Won(guard) => guard,
                // The sweep claimed this request's cycle between its
                // admission and this claim. Only the request admission chose
                // to start a cycle comes this far (the rest were answered
                // `coalesced` there), so it still started it, whoever runs it.
                Claim::Lost(Some(holder)) if admitted == Some(holder.cycle) => {
                    return Ok(Admission::of(Verdict::Accepted {
                        cycle: holder.cycle,
                        generation: holder.generation,
                        goal: holder.goal,
                    }));
                }
                // Someone else holds the gate: the cycle is durable and its
                // runner's release starts it.
                Claim::Lost(_) => {
                    return Ok(Admission::of(match admitted {
                        Some(cycle) => Verdict::Coalesced {
                            cycle,
                            not_before: now,
                            waiting: Waiting::Coalesced,
                        },
                        None => Verdict::Idle,
                    }));
                }
            };
            let won = guard.cycle();
            let admission = ready.call(Gated { request, guard }).await?;
            // The claim may have picked up a different cycle (one whose
            // runner vanished); it runs, but this caller follows its own.
            Ok(match admitted {
                Some(cycle) if cycle != won => Admission::of(Verdict::Coalesced {
                    cycle,
                    not_before: now,
                    waiting: Waiting::Coalesced,
                }),
                _ => admission,
            })
        };
        Detachable::new(claim_and_start)
    }
}

/// The one place a cycle takes the gate (C5, C11): a fresh claim, a
/// takeover of an expired lease, or — inside `finish` — the follow-up the
/// ending cycle hands the gate to. Applies the ledger's `claim` to the
/// locked row and queues the claimed cycle's start in the same transaction:
/// it goes out with the transaction's `COMMIT`, and [`Claimed::started`]
/// makes the guard once that committed.
pub(super) fn claim_locked(
    tx: &mut RowTx,
    locked: &mut Locked,
    store: &Store,
    now: Timestamp,
) -> Result<Option<Claimed>, Error> {
    let Some(claim) = locked.ledger.claim(store.replica(), now, store.timing()) else {
        return Ok(None);
    };
    // A provisioning cycle's agent token, its hash recorded with the claim:
    // nothing stands between the stop and the start.
    let token = match claim.goal {
        Goal::Provision => Some(mint_token()?),
        Goal::Stop | Goal::Delete => None,
    };
    let hash = token.as_ref().map(|token| token_hash(token.expose()));
    let start = tx.start_claimed(&claim, locked, hash, now);
    Ok(Some(Claimed {
        workspace: tx.workspace(),
        claim,
        start,
        token,
    }))
}

/// A cycle claimed in a transaction that has not committed yet.
pub(super) struct Claimed {
    workspace: WorkspaceId,
    claim: crate::domain::ledger::Claim,
    start: PendingStart,
    token: Option<AgentToken>,
}

impl Claimed {
    /// The guard of the claimed cycle, once its transaction `committed`;
    /// its lease was sent at `sent`.
    pub(super) fn started(
        self,
        store: &Store,
        committed: &Committed,
        now: Timestamp,
        sent: tokio::time::Instant,
    ) -> Result<LeaseGuard, Error> {
        let started = self.start.started(committed, store.sealer())?;
        Ok(LeaseGuard::started(
            store,
            self.workspace,
            self.claim,
            started,
            self.token,
            now,
            sent,
        ))
    }
}

/// A fresh 256-bit agent token.
fn mint_token() -> Result<AgentToken, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Internal(format!("no randomness for a token: {e}")))?;
    Ok(AgentToken::new(format!("wla_{}", hex::encode(bytes))))
}

#[async_trait]
impl GateKeeper<WorkspaceId> for Store {
    type Guard = LeaseGuard;

    async fn claim(
        &self,
        workspace: &WorkspaceId,
        now: Timestamp,
    ) -> Result<Claim<LeaseGuard>, Error> {
        let sent = tokio::time::Instant::now();
        let decided = self
            .on_row(*workspace, now, |tx, locked| {
                let claimed = claim_locked(tx, locked, self, now)?;
                Ok((claimed.is_some(), claimed))
            })
            .await;
        let OnRow {
            value,
            committed,
            locked,
        } = match decided {
            Ok(decided) => decided,
            // Deleted from under a resumption: nothing to claim.
            Err(Error::NotFound(_)) => return Ok(Claim::Lost(None)),
            Err(err) => return Err(err),
        };
        let Some(claimed) = value else {
            return Ok(Claim::Lost(locked.ledger.running.map(|r| Holder {
                cycle: r.cycle,
                generation: r.generation,
                goal: r.goal,
            })));
        };
        Ok(Claim::Won(claimed.started(self, &committed, now, sent)?))
    }
}

#[cfg(test)]
mod tests;

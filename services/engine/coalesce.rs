//! The coalesce layer: admits requests durably, many at a time per
//! workspace, and lets through to the gate only a request whose cycle may
//! start now.
//! Contracts: C2, C4, C13, C15.
//!
//! Concurrent requests for one workspace queue in a per-key lane; one task
//! drains the lane and admits everything queued in a single durable step
//! (one transaction), so a storm on one workspace costs one round trip per
//! batch instead of one per request, while every caller is still answered
//! only after its own request committed (C13). Across workspaces the
//! lanes' batches meet in the group committer (`group.rs`): when they
//! arrive faster than they commit, many workspaces' batches share one
//! transaction. What the admission decides —
//! open a follow-up, join it, defer it, drop it — is the ledger's rule
//! (C2/C7); this layer only batches and routes:
//!
//! - `Ready` (the gate is free and the cycle is due): on to the gate;
//! - anything else is the final answer (coalesced, deferred, dropped).
//!
//! Lanes live only while requests are queued (C15). The first caller of an
//! idle lane drives its drain on its own task (no spawn, no cross-thread
//! hop in the common case); once that caller has its answer, or if it goes
//! away, the rest of the drain continues as a task of its own, so a caller
//! that leaves mid-admission cannot cancel a transaction others depend on.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt};

use super::{
    detach::Detachable,
    intent::{Admission, StackRequest, Stage},
    keyed::{KeyedSlots, SlotRef},
};
use crate::domain::{ConfigVersion, CycleId, Error, Timestamp, clock::SharedClock};
use group::Committer;

mod group;
mod starts;

/// The outcome of admitting one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ticket {
    /// Admitted into `cycle`, which may start now: go on to the gate.
    Ready {
        /// The cycle.
        cycle: CycleId,
        /// This request opened it.
        opened: bool,
        /// The config version after this request.
        config_version: Option<ConfigVersion>,
    },
    /// The final answer.
    Done(Admission),
}

/// One key's requests, in arrival order, as handed to [`Admit`].
pub struct Batch<'a, R: StackRequest> {
    /// The key every request is for.
    pub key: &'a R::Key,
    /// The requests.
    pub requests: &'a [R],
}

/// The answers to one [`Batch`]: one per request, or an `Err` for the
/// whole batch (nothing of it was admitted).
pub type BatchAnswers = Result<Vec<Result<Ticket, Error>>, Error>;

/// A group's answer to one of its batches, or `None` when the batch was
/// left out because admitting it would have to wait (its row is busy): its
/// lane then admits it alone through [`Admit::admit`], outside the group's
/// slot, so a lock wait never holds back the other keys (C4).
pub type GroupAnswer = Option<BatchAnswers>;

/// Durable admission of batches of requests.
#[async_trait]
pub trait Admit<R: StackRequest>: Send + Sync + 'static {
    /// Admits `batch` (all for `key`, in arrival order) in one durable step,
    /// returning one result per request. An `Err` for the whole call means
    /// nothing was admitted.
    async fn admit(&self, key: &R::Key, batch: &[R], now: Timestamp) -> BatchAnswers;

    /// Admits several keys' batches (no key twice) together — one durable
    /// step for all where the implementation can (group commit) — with one
    /// answer per batch, in order. One after the other unless overridden.
    async fn admit_group(&self, group: &[Batch<'_, R>], now: Timestamp) -> Vec<GroupAnswer> {
        let mut answers = Vec::with_capacity(group.len());
        for batch in group {
            answers.push(Some(self.admit(batch.key, batch.requests, now).await));
        }
        answers
    }
}

/// A request given back to its caller with its ticket. Boxed when sent:
/// the channel reserves room for what it carries from the moment it is
/// made, and a request parked in admission already sits in its batch, so
/// an unboxed answer would hold every parked request twice.
type Answer<R> = Box<(R, Result<Ticket, Error>)>;

type Reply<R> = oneshot::Sender<Answer<R>>;

/// Sends a ready request on to the gate on its own (its caller went away).
type Orphans<R> = std::sync::OnceLock<Box<dyn Fn(R) + Send + Sync>>;

/// One workspace's queue of requests waiting for admission.
struct Lane<R> {
    state: Mutex<LaneState<R>>,
}

struct LaneState<R> {
    queue: Vec<(R, Reply<R>)>,
    /// A drain task is running for this lane.
    draining: bool,
}

impl<R> Lane<R> {
    fn new() -> Self {
        Self {
            state: Mutex::new(LaneState {
                queue: Vec::new(),
                draining: false,
            }),
        }
    }

    /// Takes what is queued, as a batch; `None` when nothing is, and then,
    /// if `or_stop`, the lane's drain ends (under the same lock, so a
    /// request queued meanwhile starts a new one).
    fn take(&self, or_stop: bool) -> Option<(Vec<R>, Vec<Reply<R>>)> {
        let batch = {
            let mut state = self.state.lock().expect("lane poisoned");
            if state.queue.is_empty() {
                if or_stop {
                    state.draining = false;
                }
                return None;
            }
            std::mem::take(&mut state.queue)
        };
        // Exactly sized: `unzip` grows from a capacity of four, and a
        // request parked in admission is mostly a batch of one.
        let mut requests = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (request, reply) in batch {
            requests.push(request);
            replies.push(reply);
        }
        Some((requests, replies))
    }
}

/// A request queued in its lane, as its caller waits for the answer.
struct Queued<R: StackRequest> {
    /// Keeps the lane, and so the key's slot, while the request waits (C15).
    lane: SlotRef<R::Key, Lane<R>>,
    answer: oneshot::Receiver<Answer<R>>,
    /// The lane's drain, when this caller drives it.
    drain: Option<Detachable<()>>,
}

impl<R: StackRequest> Queued<R> {
    /// Waits for the request's admission (driving the lane's drain meanwhile,
    /// if this caller holds it) and gives the request back with its ticket.
    async fn admitted(self) -> Result<(R, Ticket), Error> {
        let Queued {
            lane,
            mut answer,
            mut drain,
        } = self;
        let answered = std::future::poll_fn(|cx| {
            if let Poll::Ready(answered) = Pin::new(&mut answer).poll(cx) {
                return Poll::Ready(answered);
            }
            let Some(drain) = drain.as_mut() else {
                return Poll::Pending;
            };
            // The drain finishing without our answer still lets `answer`
            // resolve (its sender dropped): poll it again next time.
            let _ = drain.poll_unpin(cx);
            Pin::new(&mut answer).poll(cx)
        })
        .await;
        if let Some(drain) = drain {
            drain.finish_or_detach();
        }
        let (request, ticket) = *answered
            .map_err(|_| Error::Internal("admission task ended without an answer".into()))?;
        drop(lane);
        ticket.map(|ticket| (request, ticket))
    }
}

/// Adds the coalescing admission in front of a service.
pub struct CoalesceLayer<A, R: StackRequest> {
    committer: Arc<Committer<A, R>>,
    lanes: KeyedSlots<R::Key, Lane<R>>,
}

impl<A: Admit<R>, R: StackRequest> CoalesceLayer<A, R> {
    /// A layer admitting through `admit`, one group at a time.
    pub fn new(admit: Arc<A>, clock: SharedClock) -> Self {
        Self::with_slots(admit, clock, group::MAX_IN_FLIGHT)
    }

    /// A layer admitting through `admit`, up to `slots` groups at a time.
    pub fn with_slots(admit: Arc<A>, clock: SharedClock, slots: usize) -> Self {
        Self {
            committer: Arc::new(Committer::new(admit, clock, slots)),
            lanes: KeyedSlots::new(),
        }
    }
}

impl<A, R: StackRequest> CoalesceLayer<A, R> {
    /// How many workspaces have requests queued right now (C15 checks).
    pub fn live_lanes(&self) -> usize {
        self.lanes.len()
    }
}

impl<A, R: StackRequest> Clone for CoalesceLayer<A, R> {
    fn clone(&self) -> Self {
        Self {
            committer: self.committer.clone(),
            lanes: self.lanes.clone(),
        }
    }
}

impl<S, A, R> Layer<S> for CoalesceLayer<A, R>
where
    R: StackRequest,
    S: Service<R, Response = Admission, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Service = Coalesce<S, A, R>;

    fn layer(&self, inner: S) -> Self::Service {
        // A ready request whose caller went away is sent on in a task of
        // its own, so its cycle starts at once and a cancelled caller
        // never stalls it until the scheduler's sweep (C20).
        let go_on = Mutex::new(inner.clone());
        let _ = self.committer.orphans.set(Box::new(move |request: R| {
            let svc = go_on.lock().expect("coalesce inner poisoned").clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(err) = svc.oneshot(request).await {
                        tracing::warn!(%err, "starting a cycle whose caller went away failed; the scheduler will");
                    }
                });
            }
        }));
        Coalesce {
            inner,
            committer: self.committer.clone(),
            lanes: self.lanes.clone(),
        }
    }
}

/// The coalescing admission service.
pub struct Coalesce<S, A, R: StackRequest> {
    inner: S,
    committer: Arc<Committer<A, R>>,
    lanes: KeyedSlots<R::Key, Lane<R>>,
}

impl<S: Clone, A, R: StackRequest> Clone for Coalesce<S, A, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            committer: self.committer.clone(),
            lanes: self.lanes.clone(),
        }
    }
}

// === impl Coalesce ===

/// The admission lanes, shared by every clone of the layer's service.
struct Lanes;

impl Lanes {
    /// Queues `request` in its lane and, if no drain runs, makes this caller
    /// the lane's drain. Not async: the request moves straight into its
    /// lane, so the caller's future never holds it while it waits (a
    /// request parked in admission is held once).
    fn enqueue<A: Admit<R>, R: StackRequest>(
        lanes: &KeyedSlots<R::Key, Lane<R>>,
        committer: &Arc<Committer<A, R>>,
        request: R,
    ) -> Queued<R> {
        let key = request.key();
        let lane = lanes.acquire(&key, Lane::new);
        let (reply, answer) = oneshot::channel();
        let start_drain = {
            let mut state = lane.state.lock().expect("lane poisoned");
            state.queue.push((request, reply));
            !std::mem::replace(&mut state.draining, true)
        };
        // This caller drives the lane on its own task — no spawn, no
        // cross-thread wake-up — until its own answer is in. Whatever the
        // drain still has to do then (batches others queued meanwhile), or
        // all of it if this caller goes away first, moves to a task of its
        // own: a caller that leaves never cancels a batch others joined.
        let drain = start_drain.then(|| {
            Detachable::new(Self::drain::<A, R>(
                lanes.acquire(&key, Lane::new),
                key,
                committer.clone(),
            ))
        });
        Queued {
            lane,
            answer,
            drain,
        }
    }

    /// Admits whatever is queued, batch after batch, until the lane is
    /// empty: each batch goes to the group committer, alone or with other
    /// lanes' batches.
    async fn drain<A: Admit<R>, R: StackRequest>(
        lane: SlotRef<R::Key, Lane<R>>,
        key: R::Key,
        committer: Arc<Committer<A, R>>,
    ) {
        loop {
            let Some(answered) = Self::hand_in(&lane, &key, &committer) else {
                return;
            };
            answered.await;
        }
    }

    /// Hands what the lane has queued to the committer, returning the wait
    /// for its answers; `None` (and the lane no longer draining) when
    /// nothing is queued. Not async: the batch goes straight to the
    /// committer, and the drain's future holds only the wait.
    fn hand_in<'c, A: Admit<R>, R: StackRequest>(
        lane: &SlotRef<R::Key, Lane<R>>,
        key: &R::Key,
        committer: &'c Arc<Committer<A, R>>,
    ) -> Option<impl Future<Output = ()> + Send + 'c> {
        let batch = lane.take(true)?;
        Some(committer.submit(lane.shared(), key.clone(), batch))
    }
}

impl<S, A, R> Service<R> for Coalesce<S, A, R>
where
    R: StackRequest,
    S: Service<R, Response = Admission, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
    A: Admit<R>,
{
    type Response = Admission;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Admission, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        if !matches!(request.stage(), Stage::Treated(_) | Stage::Dropped { .. }) {
            return Box::pin(self.inner.call(request));
        }
        let fresh = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, fresh);
        let queued = Lanes::enqueue(&self.lanes, &self.committer, request);
        Box::pin(async move {
            let (mut request, ticket) = queued.admitted().await?;
            match ticket {
                Ticket::Done(admission) => Ok(admission),
                Ticket::Ready {
                    cycle,
                    opened,
                    config_version,
                } => {
                    request.set_stage(Stage::Admitted { cycle, opened });
                    let mut admission = ready.call(request).await?;
                    admission.config_version = admission.config_version.or(config_version);
                    Ok(admission)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;

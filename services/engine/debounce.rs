//! The debounce layer: decides how each request is treated by its trigger
//! (SPEC C7, C8) and drops droppable ones early (C9).
//!
//! - `MANUAL`, `CREATE`, stop and delete are urgent: never debounced.
//! - `CONFIG_CHANGED` is deferred to the end of the window, never dropped;
//!   file writes additionally wait for a quiet moment in their burst.
//! - `HEALTH_PROBE` and `RECONCILER` are dropped while a cycle is in flight,
//!   inside the window, or while the backend says the instance is booting;
//!   each drop is recorded. A probe that passes here is re-checked
//!   atomically by the ledger, so a cycle that starts in between still
//!   drops it.
//!
//! The time arithmetic itself (window end, burst deadline) lives in the
//! ledger, where it is applied under the workspace's row lock.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use async_trait::async_trait;
use futures::future::{BoxFuture, Either};
use tower::{Layer, Service};

use super::intent::{Admission, StackRequest, Stage};
use crate::domain::{
    Error, Timestamp, Trigger,
    clock::SharedClock,
    ledger::{DropReason, Treatment},
};

/// How the debounce treats a trigger.
pub fn treatment(trigger: Trigger, file_write: bool) -> Treatment {
    match trigger {
        Trigger::Manual | Trigger::Create => Treatment::Urgent,
        Trigger::ConfigChanged if file_write => Treatment::Burst,
        Trigger::ConfigChanged => Treatment::Deferred,
        Trigger::HealthProbe | Trigger::Reconciler => Treatment::DropIfBusy,
    }
}

/// A drop decided before admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EarlyDrop {
    /// Why.
    pub reason: DropReason,
    /// Until when such requests are dropped, when known.
    pub until: Option<Timestamp>,
}

/// What the debounce asks of the system about a droppable request.
#[async_trait]
pub trait DropCheck<K>: Send + Sync + 'static {
    /// If a droppable `trigger` for `key` must be dropped now (cycle in
    /// flight, window open, instance booting), says why (admission records
    /// it); `None` lets the request through to admission to be decided
    /// under the row lock.
    async fn check(
        &self,
        key: &K,
        trigger: Trigger,
        now: Timestamp,
    ) -> Result<Option<EarlyDrop>, Error>;
}

/// Adds the debounce in front of a service.
pub struct DebounceLayer<P> {
    check: Arc<P>,
    clock: SharedClock,
}

impl<P> DebounceLayer<P> {
    /// A debounce that consults `check` for droppable requests.
    pub fn new(check: Arc<P>, clock: SharedClock) -> Self {
        Self { check, clock }
    }
}

impl<S, P> Layer<S> for DebounceLayer<P> {
    type Service = Debounce<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Debounce {
            inner,
            check: self.check.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// The debounce service.
pub struct Debounce<S, P> {
    inner: S,
    check: Arc<P>,
    clock: SharedClock,
}

impl<S: Clone, P> Clone for Debounce<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            check: self.check.clone(),
            clock: self.clock.clone(),
        }
    }
}

// === impl Debounce ===

impl<S, P, R> Service<R> for Debounce<S, P>
where
    R: StackRequest,
    S: Service<R, Response = Admission, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
    P: DropCheck<R::Key>,
{
    type Response = Admission;
    type Error = Error;
    /// The inner service's own future when nothing is checked (no box of
    /// a box per request); a boxed check-then-call otherwise.
    type Future = Either<S::Future, BoxFuture<'static, Result<Admission, Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: R) -> Self::Future {
        if request.stage() != Stage::New {
            return Either::Left(self.inner.call(request));
        }
        // A stop or delete is never debounced, whoever asks (the
        // reconciler retries failed deletes, C17).
        let treatment = if request.is_removal() {
            Treatment::Urgent
        } else {
            treatment(request.trigger(), request.is_file_write())
        };
        request.set_stage(Stage::Treated(treatment));
        if treatment != Treatment::DropIfBusy {
            return Either::Left(self.inner.call(request));
        }
        // The inner service was made ready for this call; keep that one and
        // leave a fresh clone in its place.
        let fresh = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, fresh);
        let check = self.check.clone();
        let now = self.clock.now();
        Either::Right(Box::pin(async move {
            let key = request.key();
            // A drop is recorded by admission, in a group with whatever
            // else is admitted then (one commit for a storm's drops, not
            // one each), and answered once that committed.
            if let Some(drop) = check.check(&key, request.trigger(), now).await? {
                request.set_stage(Stage::Dropped {
                    reason: drop.reason,
                    until: drop.until,
                });
            }
            ready.call(request).await
        }))
    }
}

#[cfg(test)]
mod tests;

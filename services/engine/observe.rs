//! The outermost layer: every fresh request, from any entry point, is
//! counted by trigger and handling, and — when traces are exported — put
//! into the trace of the cycle that answers it. Resumptions by the
//! scheduler are the engine's own work and are not requests.
//! Contracts: C16.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use opentelemetry::trace::SpanContext;
use tower::{Layer, Service};

use super::intent::{Admission, Intent, Stage};
use crate::{
    domain::{Error, Trigger, WorkspaceId},
    store::Store,
    telemetry::{
        self, cycle_trace,
        metrics::{self, Answered},
    },
};

/// See the module docs.
#[derive(Clone)]
pub struct ObserveLayer {
    store: Store,
}

impl ObserveLayer {
    /// Observes requests; `store` finds a cycle's trace.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            store: self.store.clone(),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    store: Store,
}

impl<S> Service<Intent> for Observe<S>
where
    S: Service<Intent, Response = Admission, Error = Error>,
    S::Future: Send + 'static,
{
    type Response = Admission;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Admission, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, intent: Intent) -> Self::Future {
        if intent.stage != Stage::New {
            return Box::pin(self.inner.call(intent));
        }
        let (workspace, trigger, caller) = (
            intent.workspace,
            intent.trigger,
            intent.caller.as_deref().cloned(),
        );
        let store = self.store.clone();
        let answered = self.inner.call(intent);
        Box::pin(async move {
            let admission = answered.await?;
            let answered = admission.verdict.answered();
            metrics::get().request(trigger, &answered);
            if telemetry::traces_enabled() {
                tokio::spawn(record_request(store, workspace, trigger, caller, answered));
            }
            Ok(admission)
        })
    }
}

/// Records how a request was handled as a span in the trace of the cycle
/// that answers it — the cycle it opened or joined, or for a dropped
/// request the latest one. Off the request's path: the caller never waits.
async fn record_request(
    store: Store,
    workspace: WorkspaceId,
    trigger: Trigger,
    caller: Option<SpanContext>,
    answered: Answered,
) {
    let found = match answered.cycle {
        Some(cycle) => store
            .cycle_trace_id(cycle)
            .await
            .map(|t| t.map(|t| (cycle, t))),
        None => store.latest_cycle_trace_id(workspace).await,
    };
    match found {
        Ok(Some((cycle, trace_id))) => {
            cycle_trace::record_request(cycle, &trace_id, workspace, trigger, caller, &answered)
        }
        Ok(None) => {}
        Err(err) => tracing::debug!(%err, "no trace for a request"),
    }
}

//! The outermost layer: every fresh request, from any entry point, is
//! counted by trigger and handling, and — when traces are exported — put
//! into the trace of the cycle that answers it. Resumptions by the
//! scheduler are the engine's own work and are not requests.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::{
    EngineError,
    intent::{Admission, Intent, Stage},
};
use crate::{
    store::Store,
    telemetry::{self, cycle_trace, metrics},
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
    S: Service<Intent, Response = Admission, Error = EngineError>,
    S::Future: Send + 'static,
{
    type Response = Admission;
    type Error = EngineError;
    type Future = BoxFuture<'static, Result<Admission, EngineError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), EngineError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, intent: Intent) -> Self::Future {
        if intent.stage != Stage::New {
            return Box::pin(self.inner.call(intent));
        }
        let (workspace, trigger, caller) =
            (intent.workspace, intent.trigger, intent.caller.clone());
        let store = self.store.clone();
        let answered = self.inner.call(intent);
        Box::pin(async move {
            let admission = answered.await?;
            metrics::get().request(trigger, &admission.verdict);
            if telemetry::traces_enabled() {
                tokio::spawn(cycle_trace::record_request(
                    store,
                    workspace,
                    trigger,
                    caller,
                    admission.verdict.clone(),
                ));
            }
            Ok(admission)
        })
    }
}

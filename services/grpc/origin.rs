//! Who a request comes from, read from what the outer layers put on it —
//! the caller's name (the auth layer) and its W3C trace context (the
//! telemetry layer) — and handed to every `Intent` a handler builds as
//! explicit inputs: the audit log names the actor, the cycle's trace
//! hangs under the caller's span (C16).

use opentelemetry::trace::SpanContext;
use tonic::Request;

use crate::telemetry::caller::CallerTrace;

/// The authenticated caller's name (its token's name, never the token),
/// put in the request's extensions by the auth layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(pub String);

/// Where a request comes from.
#[derive(Clone, Debug)]
pub struct Origin {
    /// Who: the caller's name, or "unknown" for a request that did not pass
    /// the auth layer (a unit test of a handler).
    pub actor: String,
    /// The caller's trace context, if it sent one.
    pub trace: Option<SpanContext>,
}

impl Origin {
    /// The origin `request` carries.
    pub fn of<T>(request: &Request<T>) -> Self {
        let extensions = request.extensions();
        Self {
            actor: extensions
                .get::<Actor>()
                .map(|a| a.0.clone())
                .unwrap_or_else(|| "unknown".into()),
            trace: extensions.get::<CallerTrace>().map(|t| t.0.clone()),
        }
    }

    /// Actor and trace, as `Intent::by` takes them.
    pub fn parts(self) -> (String, Option<SpanContext>) {
        (self.actor, self.trace)
    }
}

//! The caller's W3C trace context, from the request's `traceparent`
//! metadata to every [`Intent`](crate::engine::intent::Intent) the request
//! makes — by one server layer, so no handler can forget it.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::{SpanContext, TraceContextExt},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower::{Layer, Service};

tokio::task_local! {
    static CALLER: SpanContext;
}

/// The trace context of the request being served, if it carried one.
pub fn current() -> Option<SpanContext> {
    CALLER.try_with(Clone::clone).ok()
}

/// Parses `traceparent` (and `tracestate`) from request headers.
pub fn from_headers(headers: &http::HeaderMap) -> Option<SpanContext> {
    struct Headers<'a>(&'a http::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// Serves each request inside its caller's trace context.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallerContextLayer;

impl<S> Layer<S> for CallerContextLayer {
    type Service = CallerContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallerContext { inner }
    }
}

/// See [`CallerContextLayer`].
#[derive(Clone, Debug)]
pub struct CallerContext<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for CallerContext<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let caller = from_headers(request.headers());
        let served = self.inner.call(request);
        match caller {
            Some(caller) => Box::pin(CALLER.scope(caller, served)),
            None => Box::pin(served),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_read_and_a_bad_one_ignored() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let caller = from_headers(&headers).expect("valid");
        assert_eq!(
            caller.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(caller.span_id().to_string(), "b7ad6b7169203331");
        assert!(caller.is_remote());

        headers.insert("traceparent", "00-zz-b7ad6b7169203331-01".parse().unwrap());
        assert!(from_headers(&headers).is_none());
    }

    #[tokio::test]
    async fn the_context_is_visible_inside_the_request_only() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let caller = from_headers(&headers).unwrap();
        let seen = CALLER.scope(caller.clone(), async { current() }).await;
        assert_eq!(seen, Some(caller));
        assert_eq!(current(), None);
    }
}

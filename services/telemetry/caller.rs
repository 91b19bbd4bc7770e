//! The caller's W3C trace context (C16), read from the request's
//! `traceparent` metadata by one server layer and put in the request's
//! extensions, where the handler reads it (`grpc::origin`) as an explicit
//! input of every request for a cycle it builds.

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

/// The trace context a request carried, put in its extensions by
/// [`CallerContextLayer`] for the handler to read.
#[derive(Clone, Debug)]
pub struct CallerTrace(pub SpanContext);

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

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(caller) = from_headers(request.headers()) {
            request.extensions_mut().insert(CallerTrace(caller));
        }
        Box::pin(self.inner.call(request))
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
    async fn the_layer_puts_the_callers_context_on_the_request() {
        use tower::ServiceExt as _;
        let seen = |request: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(request.extensions().get::<CallerTrace>().cloned())
        };
        let service = CallerContextLayer.layer(tower::service_fn(seen));
        let mut request = http::Request::new(());
        request.headers_mut().insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let with = service.clone().oneshot(request).await.unwrap();
        assert_eq!(
            with.map(|t| t.0.span_id().to_string()).as_deref(),
            Some("b7ad6b7169203331")
        );
        let without = service.oneshot(http::Request::new(())).await.unwrap();
        assert!(without.is_none());
    }
}

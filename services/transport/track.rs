//! Tells each connection when a call opens and ends, so its idle clock
//! ([`super::conn`]) runs only while it has none. A call ends when its
//! response body ends or is dropped (a server stream counts until it
//! ends).
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::{body::Body, codegen::http};
use tower::{Layer, Service};

use super::{conn::ConnInfo, holding::Holding};

/// Counts every call on its connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackCallsLayer;

impl<S> Layer<S> for TrackCallsLayer {
    type Service = TrackCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackCalls { inner }
    }
}

/// The service [`TrackCallsLayer`] wraps.
#[derive(Clone, Debug)]
pub struct TrackCalls<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for TrackCalls<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| info.activity.begin());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match guard {
                Some(guard) => response.map(|inner| Body::new(Holding::new(inner, guard))),
                None => response,
            })
        })
    }
}

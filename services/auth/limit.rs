//! Per-caller concurrency: each authenticated caller may have at most
//! `limit` calls in flight (a server stream counts until it ends); one more
//! is answered `RESOURCE_EXHAUSTED` at once instead of queueing, so one
//! noisy client cannot take every connection and task from the others.
//! Callers are the names of the token table, a bounded set, so the map of
//! semaphores needs no eviction.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Status, body::Body, codegen::http};
use tower::{Layer, Service};

use super::Caller;

/// Limits the calls each [`Caller`] has in flight. Calls without a caller
/// (public and agent calls) pass untouched.
#[derive(Clone, Debug)]
pub struct CallerLimitLayer {
    limit: usize,
    callers: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl CallerLimitLayer {
    /// At most `limit` calls in flight per caller.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            callers: Arc::default(),
        }
    }

    fn permit(&self, caller: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = self
            .callers
            .lock()
            .expect("caller map lock")
            .entry(caller.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
            .clone();
        semaphore.try_acquire_owned().ok()
    }
}

impl<S> Layer<S> for CallerLimitLayer {
    type Service = CallerLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallerLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`CallerLimitLayer`] wraps.
#[derive(Clone, Debug)]
pub struct CallerLimit<S> {
    inner: S,
    layer: CallerLimitLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for CallerLimit<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some(caller) = request.extensions().get::<Caller>().cloned() else {
            return Box::pin(self.inner.call(request));
        };
        let Some(permit) = self.layer.permit(&caller.name) else {
            let status = Status::resource_exhausted(format!(
                "{:?} already has {} calls in flight; retry later",
                caller.name, self.layer.limit
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                Body::new(Permitted {
                    inner: body,
                    _permit: permit,
                })
            }))
        })
    }
}

/// A response body that holds its caller's permit until it ends or is
/// dropped.
struct Permitted {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Permitted {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use tokio_test::{assert_pending, assert_ready};
    use tower::ServiceExt as _;
    use tower_test::mock;

    fn request(caller: Option<&str>) -> http::Request<Body> {
        let mut request = http::Request::new(Body::empty());
        if let Some(name) = caller {
            request.extensions_mut().insert(Caller {
                name: name.into(),
                role: Role::Admin,
            });
        }
        request
    }

    fn code(response: &http::Response<Body>) -> Option<String> {
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn one_caller_over_its_limit_is_refused_others_are_not() {
        let (service, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
            CallerLimitLayer::new(2),
        );
        let mut service = service.into_inner();
        handle.allow(100);

        // Two calls of "a" in flight.
        let first = service.ready().await.unwrap().call(request(Some("a")));
        let second = service.ready().await.unwrap().call(request(Some("a")));
        // The third is refused at once with RESOURCE_EXHAUSTED (8).
        let refused = service
            .ready()
            .await
            .unwrap()
            .call(request(Some("a")))
            .await
            .unwrap();
        assert_eq!(code(&refused).as_deref(), Some("8"));
        // Another caller and an anonymous (agent) call still pass.
        let other = service.ready().await.unwrap().call(request(Some("b")));
        let anonymous = service.ready().await.unwrap().call(request(None));

        let mut first = tokio_test::task::spawn(first);
        assert_pending!(first.poll());
        for _ in 0..4 {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(http::Response::new(Body::new(http_body_util::Full::new(
                tonic::codegen::Bytes::from_static(b"x"),
            ))));
        }
        let first = assert_ready!(first.poll()).unwrap();
        assert_eq!(code(&first), None);
        let second = second.await.unwrap();
        assert_eq!(code(&other.await.unwrap()), None);
        assert_eq!(code(&anonymous.await.unwrap()), None);

        // Still two open bodies of "a": refused; drop one: accepted again.
        let refused = service
            .ready()
            .await
            .unwrap()
            .call(request(Some("a")))
            .await
            .unwrap();
        assert_eq!(code(&refused).as_deref(), Some("8"));
        drop(first);
        let again = service.ready().await.unwrap().call(request(Some("a")));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(http::Response::new(Body::empty()));
        assert_eq!(code(&again.await.unwrap()), None);
        drop(second);
    }
}

//! In-flight limits, so that no one can take every connection, task and
//! database connection from the others:
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").
//!
//! - each authenticated caller may have at most `per_caller` calls in
//!   flight (a server stream counts until it ends); callers are the names
//!   of the token table, a bounded set, so the map needs no eviction;
//! - calls without a caller share two pools: public calls (health,
//!   reflection) one, agent calls (whose credential is only checked by the
//!   store, so anyone can make them) the other — a flood of either cannot
//!   take the database from authenticated callers, and held health streams
//!   cannot keep agents from registering. An agent call is unary and quick,
//!   so it also gets [`AGENT_CALL_DEADLINE`]: a caller trickling a request
//!   body holds its place no longer than that.
//!
//! One more call than a limit allows is answered `RESOURCE_EXHAUSTED` at
//! once instead of queueing.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Status, body::Body, codegen::http};
use tower::{Layer, Service};

use super::{Access, Caller, access};
use crate::transport::holding::Holding;

/// Longest an agent call (Register, Heartbeat) may take, body included.
pub const AGENT_CALL_DEADLINE: Duration = Duration::from_secs(10);

/// Limits the calls each [`Caller`] has in flight, and the calls without
/// one (public and agent calls) in two shared pools.
#[derive(Clone, Debug)]
pub struct CallerLimitLayer {
    limit: usize,
    callers: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    public: Option<Arc<Semaphore>>,
    agent: Option<Arc<Semaphore>>,
}

impl CallerLimitLayer {
    /// At most `limit` calls in flight per caller; calls without a caller
    /// are not limited until [`Self::anonymous`] says how.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            callers: Arc::default(),
            public: None,
            agent: None,
        }
    }

    /// At most `public` public calls and `agent` agent calls in flight,
    /// whoever makes them.
    pub fn anonymous(mut self, public: usize, agent: usize) -> Self {
        self.public = Some(Arc::new(Semaphore::new(public)));
        self.agent = Some(Arc::new(Semaphore::new(agent)));
        self
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
        let refuse = |message: String| -> Self::Future {
            Box::pin(std::future::ready(Ok(crate::grpc::status::too_many_calls(
                message,
            )
            .into_http())))
        };
        let (permit, deadline) = match request.extensions().get::<Caller>() {
            Some(caller) => match self.layer.permit(&caller.name) {
                Some(permit) => (permit, None),
                None => {
                    return refuse(format!(
                        "{:?} already has {} calls in flight; retry later",
                        caller.name, self.layer.limit
                    ));
                }
            },
            None => {
                let (pool, deadline, what) = match access(request.uri().path()) {
                    Access::Agent => (&self.layer.agent, Some(AGENT_CALL_DEADLINE), "agent"),
                    _ => (&self.layer.public, None, "public"),
                };
                let Some(pool) = pool else {
                    return Box::pin(self.inner.call(request));
                };
                match pool.clone().try_acquire_owned() {
                    Ok(permit) => (permit, deadline),
                    Err(_) => {
                        return refuse(format!("too many {what} calls in flight; retry later"));
                    }
                }
            }
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match deadline {
                None => response.await?,
                Some(deadline) => match tokio::time::timeout(deadline, response).await {
                    Ok(response) => response?,
                    Err(_) => {
                        return Ok(Status::deadline_exceeded(format!(
                            "agent calls must complete within {deadline:?}"
                        ))
                        .into_http());
                    }
                },
            };
            Ok(response.map(|body| Body::new(Holding::new(body, permit))))
        })
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

    /// A response whose body is still open (an empty one ends at once, and
    /// its permit with it).
    fn reply() -> http::Response<Body> {
        http::Response::new(Body::new(http_body_util::Full::new(
            tonic::codegen::Bytes::from_static(b"x"),
        )))
    }

    fn anonymous(path: &str) -> http::Request<Body> {
        let mut request = http::Request::new(Body::empty());
        *request.uri_mut() = path.parse().unwrap();
        request
    }

    #[tokio::test(start_paused = true)]
    async fn anonymous_calls_share_two_pools_and_agent_calls_have_a_deadline() {
        let (service, mut handle) = mock::spawn_layer::<http::Request<Body>, http::Response<Body>, _>(
            CallerLimitLayer::new(10).anonymous(1, 1),
        );
        let mut service = service.into_inner();
        handle.allow(100);
        let health = "/grpc.health.v1.Health/Watch";
        let register = "/workspace.lifecycle.v1.WorkspaceAgent/Register";

        // One public call in flight: the next public call is refused, an
        // agent call and an authenticated call are not.
        let held = service.ready().await.unwrap().call(anonymous(health));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(reply());
        let held = held.await.unwrap();
        let refused = service.ready().await.unwrap().call(anonymous(health));
        assert_eq!(code(&refused.await.unwrap()).as_deref(), Some("8"));
        let agent = tokio::spawn(service.ready().await.unwrap().call(anonymous(register)));
        let (_, agent_reply) = handle.next_request().await.unwrap();
        let refused = service.ready().await.unwrap().call(anonymous(register));
        assert_eq!(code(&refused.await.unwrap()).as_deref(), Some("8"));
        let authenticated = service.ready().await.unwrap().call(request(Some("a")));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(reply());
        assert_eq!(code(&authenticated.await.unwrap()), None);

        // The agent call that never completes is cut at its deadline
        // (DEADLINE_EXCEEDED, 4) and frees its place.
        let start = tokio::time::Instant::now();
        let timed_out = agent.await.unwrap().unwrap();
        assert_eq!(start.elapsed(), AGENT_CALL_DEADLINE);
        assert_eq!(code(&timed_out).as_deref(), Some("4"));
        drop(agent_reply);
        let again = service.ready().await.unwrap().call(anonymous(register));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(reply());
        assert_eq!(code(&again.await.unwrap()), None);
        drop(held);
    }
}

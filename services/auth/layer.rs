//! The authentication layer: one place every gRPC call passes through, in
//! front of every service, so no handler can forget to check. Every call it
//! refuses is counted for the audit log ([`super::refusals`]).
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use tonic::{Status, body::Body, codegen::http};
use tower::{Layer, Service};

use super::{
    Access, Caller, LiveTokens, Tokens, access,
    refusals::{Refusals, Who},
};
use crate::transport::ConnInfo;

/// Checks the bearer token of every call against [`access`] and puts the
/// [`Caller`] in the request's extensions.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    tokens: Arc<LiveTokens>,
    refusals: Option<Arc<Refusals>>,
}

impl AuthLayer {
    /// Accepts `tokens`, for good.
    pub fn new(tokens: Arc<Tokens>) -> Self {
        Self::live(Arc::new(LiveTokens::new(Arc::unwrap_or_clone(tokens))))
    }

    /// Accepts whatever set `tokens` holds at each call (reloadable).
    pub fn live(tokens: Arc<LiveTokens>) -> Self {
        Self {
            tokens,
            refusals: None,
        }
    }

    /// Counts every refused call in `refusals`.
    pub fn recording(mut self, refusals: Arc<Refusals>) -> Self {
        self.refusals = Some(refusals);
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            tokens: self.tokens.clone(),
            refusals: self.refusals.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the server's routes.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    tokens: Arc<LiveTokens>,
    refusals: Option<Arc<Refusals>>,
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer<B>(request: &http::Request<B>) -> Result<&str, Status> {
    let missing = || {
        crate::grpc::status::unauthenticated("a bearer token is required (authorization: Bearer …)")
    };
    let value = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing());
    }
    Ok(token.trim())
}

/// A refused call: the status, and the caller if its token was valid.
type Refused = (Status, Option<String>);

/// Who may make `request`: `Ok(None)` for public and agent calls.
fn authorize<B>(tokens: &Tokens, request: &http::Request<B>) -> Result<Option<Caller>, Refused> {
    let path = request.uri().path();
    let required = match access(path) {
        Access::Public | Access::Agent => return Ok(None),
        Access::Role(role) => role,
    };
    let token = bearer(request).map_err(|status| (status, None))?;
    let caller = tokens.verify(token).ok_or_else(|| {
        (
            crate::grpc::status::unauthenticated("the bearer token is not valid"),
            None,
        )
    })?;
    if caller.role < required {
        let status = crate::grpc::status::permission_denied(format!(
            "{path} requires the {required} role; {:?} has {}",
            caller.name, caller.role
        ));
        return Err((status, Some(caller.name)));
    }
    Ok(Some(caller))
}

impl<S> Service<http::Request<Body>> for AuthService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<http::Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        match authorize(&self.tokens.current(), &request) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    let actor = crate::grpc::origin::Actor(caller.name.clone());
                    request.extensions_mut().insert(actor);
                    request.extensions_mut().insert(caller);
                }
                Either::Left(self.inner.call(request))
            }
            Err((status, caller)) => {
                let path = request.uri().path();
                tracing::debug!(path, code = ?status.code(), "call refused");
                if let Some(refusals) = &self.refusals {
                    let who = match caller {
                        Some(name) => Who::Caller(name),
                        None => Who::Peer(
                            request
                                .extensions()
                                .get::<ConnInfo>()
                                .map(|info| info.peer.ip()),
                        ),
                    };
                    refusals.record(path, status.code(), who);
                }
                Either::Right(ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn request(path: &str, auth: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(path);
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn table_of_callers() {
        let tokens = Tokens::default()
            .with_token("ro", Role::Reader, "t-reader")
            .with_token("ops", Role::Operator, "t-operator")
            .with_token("root", Role::Admin, "t-admin");
        let get = "/workspace.lifecycle.v1.WorkspaceLifecycle/GetWorkspace";
        let restart = "/workspace.lifecycle.v1.WorkspaceLifecycle/RestartWorkspace";
        let create = "/workspace.lifecycle.v1.WorkspaceLifecycle/CreateWorkspace";
        let health = "/grpc.health.v1.Health/Check";
        use tonic::Code::{PermissionDenied, Unauthenticated};
        type Expected = Result<Option<&'static str>, tonic::Code>;
        let cases: [(&str, Option<&str>, Expected); 14] = [
            (get, None, Err(Unauthenticated)),
            (get, Some("Bearer"), Err(Unauthenticated)),
            (get, Some("Basic t-admin"), Err(Unauthenticated)),
            (get, Some("Bearer wrong"), Err(Unauthenticated)),
            (get, Some("Bearer t-reader"), Ok(Some("ro"))),
            (get, Some("bearer t-admin"), Ok(Some("root"))),
            (restart, Some("Bearer t-reader"), Err(PermissionDenied)),
            (restart, Some("Bearer t-operator"), Ok(Some("ops"))),
            (create, Some("Bearer t-operator"), Err(PermissionDenied)),
            (create, Some("Bearer t-admin"), Ok(Some("root"))),
            (create, None, Err(Unauthenticated)),
            (health, None, Ok(None)),
            (
                "/workspace.lifecycle.v1.WorkspaceAgent/Register",
                None,
                Ok(None),
            ),
            (
                "/unknown.Service/Call",
                Some("Bearer t-operator"),
                Err(PermissionDenied),
            ),
        ];
        for (path, auth, expected) in cases {
            let got = authorize(&tokens, &request(path, auth))
                .map(|c| c.map(|c| c.name))
                .map_err(|(s, _)| s.code());
            let expected = expected.map(|c| c.map(str::to_owned));
            assert_eq!(got, expected, "{path} with {auth:?}");
        }
    }

    #[test]
    fn refusals_never_echo_the_token() {
        let tokens = Tokens::default().with_token("ro", Role::Reader, "t-reader");
        let path = "/workspace.lifecycle.v1.WorkspaceLifecycle/SetSecret";
        for auth in ["Bearer sk-very-secret", "Bearer t-reader"] {
            let (status, _) = authorize(&tokens, &request(path, Some(auth))).unwrap_err();
            let token = auth.split_once(' ').unwrap().1;
            assert!(!status.message().contains(token), "{}", status.message());
        }
    }
}

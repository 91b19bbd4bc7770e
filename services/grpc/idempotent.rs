//! Idempotent mutations (AIP-155) at the gRPC edge: a mutation that carries
//! a `request_id` runs at most once per id within the retention period;
//! a repeat gets the first answer (an acknowledged request stays
//! acknowledged, C20), and the id on a different request is
//! `INVALID_ARGUMENT`. Clients can then retry any mutation after
//! `UNAVAILABLE` without a second effect.
//!
//! What counts as "the same request" is the method and a canonical
//! encoding of the request without its id (maps sorted, so field order on
//! the wire does not matter), digested under a key derived from the secrets
//! key — a `SetSecret` digest says nothing about its value.
//!
//! Only successful answers are recorded: a request that failed (bad input,
//! a database outage) left no effect, so a retry with the same id runs it
//! again. The one window left is between the mutation's commit and the
//! answer's: if Postgres is lost exactly there, the caller still gets the
//! answer, but a later repeat runs again.

use std::{future::Future, str::FromStr, sync::Arc, time::Duration};

use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use uuid::Uuid;

use super::status;
use crate::{
    engine::Engine,
    proto as pb,
    store::{Claim, RequestClaim},
};

/// A mutation request that may carry a `request_id`.
pub(super) trait Idempotent: Message + Clone {
    /// The RPC's name, part of what makes two requests the same.
    const METHOD: &'static str;
    /// The id the caller sent ("" for none).
    fn request_id(&self) -> &str;
    /// The request without its id, as bytes that are equal exactly when
    /// the requests mean the same.
    fn canonical(&self) -> Vec<u8>;
}

macro_rules! plain_idempotent {
    ($($ty:ident => $method:literal),* $(,)?) => {$(
        impl Idempotent for pb::$ty {
            const METHOD: &'static str = $method;
            fn request_id(&self) -> &str {
                &self.request_id
            }
            fn canonical(&self) -> Vec<u8> {
                // No map fields: prost's encoding is deterministic.
                pb::$ty {
                    request_id: String::new(),
                    ..self.clone()
                }
                .encode_to_vec()
            }
        }
    )*};
}

plain_idempotent! {
    RestartWorkspaceRequest => "RestartWorkspace",
    StopWorkspaceRequest => "StopWorkspace",
    DeleteWorkspaceRequest => "DeleteWorkspace",
    SetSecretRequest => "SetSecret",
    DeleteSecretRequest => "DeleteSecret",
    WriteFileRequest => "WriteFile",
    DeleteFileRequest => "DeleteFile",
}

impl Idempotent for pb::CreateWorkspaceRequest {
    const METHOD: &'static str = "CreateWorkspace";
    fn request_id(&self) -> &str {
        &self.request_id
    }
    fn canonical(&self) -> Vec<u8> {
        // `spec.env` is a map, which prost encodes in hash order: encode it
        // sorted, after the rest.
        let mut request = pb::CreateWorkspaceRequest {
            request_id: String::new(),
            ..self.clone()
        };
        let env = request
            .spec
            .as_mut()
            .map(|spec| std::mem::take(&mut spec.env))
            .unwrap_or_default();
        let mut out = request.encode_to_vec();
        let mut env: Vec<_> = env.into_iter().collect();
        env.sort();
        for (name, value) in env {
            for part in [name.as_bytes(), value.as_bytes()] {
                out.extend_from_slice(&(part.len() as u64).to_be_bytes());
                out.extend_from_slice(part);
            }
        }
        out
    }
}

/// What to do with a request: run it unrecorded, run it and record the
/// answer, or answer from the record.
pub(super) enum Plan {
    /// No `request_id`: an ordinary call.
    Unkeyed,
    /// A new id: run, then [`settle`].
    Run(Claimed),
    /// A repeat: the encoded first answer.
    Replay(Vec<u8>),
}

/// A claimed id, and the right to hold one of the pool's connections for
/// it while the mutation runs on another.
pub(super) struct Claimed {
    claim: Box<RequestClaim>,
    _permit: OwnedSemaphorePermit,
}

/// Request ids over the engine's store.
#[derive(Clone)]
pub(super) struct RequestIds {
    engine: Arc<Engine>,
    retention: Duration,
    /// A claim holds a connection while its mutation takes another: at
    /// most half the pool may be claims, so mutations always find one.
    claims: Arc<Semaphore>,
}

impl RequestIds {
    /// Remembers answers for `retention`.
    pub(super) fn new(engine: Arc<Engine>, retention: Duration) -> Self {
        let claims = (engine.store().pool_max_size() / 2).max(1);
        Self {
            engine,
            retention,
            claims: Arc::new(Semaphore::new(claims)),
        }
    }

    /// Looks `request`'s id up, claiming it if new. Waits while another
    /// request with the same id (on any replica) is being answered.
    pub(super) async fn plan<R: Idempotent>(&self, request: &R) -> Result<Plan, Status> {
        let raw = request.request_id();
        if raw.is_empty() {
            return Ok(Plan::Unkeyed);
        }
        let id = Uuid::from_str(raw).map_err(|_| {
            status::invalid_field(
                "request_id",
                format!("request_id {} is not a UUID", status::quoted(raw)),
            )
        })?;
        let store = self.engine.store();
        let mut keyed = R::METHOD.as_bytes().to_vec();
        keyed.push(0);
        keyed.extend_from_slice(&request.canonical());
        let digest = store.sealer().digest(&keyed).to_vec();
        let permit = self
            .claims
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        match store
            .claim_request(id, R::METHOD, digest, self.retention)
            .await?
        {
            Claim::Fresh(claim) => Ok(Plan::Run(Claimed {
                claim,
                _permit: permit,
            })),
            Claim::Replay(answer) => Ok(Plan::Replay(answer)),
            Claim::Reused => Err(status::request_id_reused(R::METHOD)),
        }
    }

    /// Runs a unary mutation at most once per id.
    pub(super) async fn unary<R, A>(
        &self,
        request: &R,
        run: impl Future<Output = Result<A, Status>>,
    ) -> Result<A, Status>
    where
        R: Idempotent,
        A: Message + Default,
    {
        match self.plan(request).await? {
            Plan::Unkeyed => run.await,
            Plan::Replay(answer) => decode(&answer),
            Plan::Run(claim) => {
                let answer = run.await;
                settle(claim, answer.as_ref().ok()).await;
                answer
            }
        }
    }
}

/// Records `answer` (or abandons the claim when there is none). A failure
/// to record is logged, not returned: the mutation happened, and the
/// caller must hear so.
pub(super) async fn settle<A: Message>(claimed: Claimed, answer: Option<&A>) {
    let claim = claimed.claim;
    match answer {
        Some(answer) => {
            if let Err(err) = claim.record(&answer.encode_to_vec()).await {
                tracing::warn!(%err, "could not record a request id's answer; a repeat will run again");
            }
        }
        None => claim.abandon().await,
    }
}

/// A recorded answer.
pub(super) fn decode<A: Message + Default>(answer: &[u8]) -> Result<A, Status> {
    A::decode(answer).map_err(|_| {
        status::to_status(crate::domain::Error::Internal(
            "a recorded answer could not be decoded".into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_not_part_of_the_request() {
        let a = pb::SetSecretRequest {
            workspace_id: "w".into(),
            name: "K".into(),
            value: "v".into(),
            request_id: "a".into(),
        };
        let b = pb::SetSecretRequest {
            request_id: "b".into(),
            ..a.clone()
        };
        assert_eq!(a.canonical(), b.canonical());
        let c = pb::SetSecretRequest {
            value: "w".into(),
            ..a.clone()
        };
        assert_ne!(a.canonical(), c.canonical());
    }

    #[test]
    fn env_order_does_not_matter_but_content_does() {
        let with = |pairs: &[(&str, &str)]| pb::CreateWorkspaceRequest {
            name: "n".into(),
            spec: Some(pb::WorkspaceSpec {
                env: pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let many: Vec<(String, String)> = (0..50)
            .map(|i| (format!("K{i}"), format!("v{i}")))
            .collect();
        let forward: Vec<(&str, &str)> =
            many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let backward: Vec<(&str, &str)> = forward.iter().rev().copied().collect();
        assert_eq!(with(&forward).canonical(), with(&backward).canonical());
        assert_ne!(
            with(&[("A", "1")]).canonical(),
            with(&[("A", "2")]).canonical()
        );
        // A pair boundary cannot be moved without changing the bytes.
        assert_ne!(
            with(&[("AB", "C")]).canonical(),
            with(&[("A", "BC")]).canonical()
        );
    }
}

//! The client side of bearer authentication, for Rust callers of the
//! service (the tests and benchmarks use it too).
//! No lifecycle contract (C1–C20): it is part of the security boundary (README, "Who may call what").

use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, errors::InvalidMetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use crate::proto::workspace_lifecycle_client::WorkspaceLifecycleClient;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(AsciiMetadataValue);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

impl Bearer {
    /// Sends `token`.
    pub fn new(token: &str) -> Result<Self, InvalidMetadataValue> {
        let mut value: AsciiMetadataValue = format!("Bearer {token}").parse()?;
        value.set_sensitive(true);
        Ok(Self(value))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A lifecycle client that authenticates every call.
pub type LifecycleClient = WorkspaceLifecycleClient<InterceptedService<Channel, Bearer>>;

/// A lifecycle client on `channel` sending `token`.
pub fn lifecycle_client(
    channel: Channel,
    token: &str,
) -> Result<LifecycleClient, InvalidMetadataValue> {
    Ok(WorkspaceLifecycleClient::with_interceptor(
        channel,
        Bearer::new(token)?,
    ))
}

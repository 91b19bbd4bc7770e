//! Every RPC of `WorkspaceLifecycle`, typed, with the retry policy applied
//! where a retry is safe: reads, and mutations, which always carry a fresh
//! `request_id` so the server answers a repeat with its first answer.
//! `ReportUnreachable` has no request id and is never retried.
//! No server contract (C1–C20): the caller's side; it relies on C13 and C20.

use std::future::Future;

use tonic::{codegen::InterceptedService, transport::Channel};

use crate::{
    CycleStream, Error, RetryPolicy,
    connect::{Bearer, Builder},
    proto::{self as pb, workspace_lifecycle_client::WorkspaceLifecycleClient},
};

/// The generated client under the bearer token.
pub type Raw = WorkspaceLifecycleClient<InterceptedService<Channel, Bearer>>;

/// A connection to the control plane; cheap to clone (one shared channel).
#[derive(Clone, Debug)]
pub struct Client {
    raw: Raw,
    retry: RetryPolicy,
}

/// A fresh AIP-155 request id.
fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Client {
    /// Starts configuring a connection to `endpoint` (`http://host:port`
    /// or `https://…`).
    pub fn builder(endpoint: impl Into<String>) -> Builder {
        Builder::new(endpoint)
    }

    /// Connects to `endpoint` over plain HTTP/2 with `token`.
    pub async fn connect(endpoint: impl Into<String>, token: &str) -> Result<Self, Error> {
        Builder::new(endpoint).token(token).connect().await
    }

    pub(crate) fn new(channel: Channel, bearer: Bearer, retry: RetryPolicy) -> Self {
        Self {
            raw: WorkspaceLifecycleClient::with_interceptor(channel, bearer),
            retry,
        }
    }

    /// The generated client, for what this one does not wrap.
    pub fn raw(&self) -> Raw {
        self.raw.clone()
    }

    /// This client's retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Runs `call` until it succeeds or the policy gives up. Only for calls
    /// that are safe to repeat.
    pub(crate) async fn retried<Req, Resp, Fut>(
        &self,
        request: Req,
        call: impl Fn(Raw, Req) -> Fut,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut attempt = 1;
        loop {
            match call(self.raw.clone(), request.clone()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => match self.retry.delay(attempt, &status) {
                    Some(wait) => {
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    None => return Err(status.into()),
                },
            }
        }
    }

    /// Creates a workspace (it provisions generation 1; PROVISIONING until
    /// its agent registers).
    pub async fn create_workspace(
        &self,
        name: &str,
        backend: pb::BackendKind,
        spec: Option<pb::WorkspaceSpec>,
    ) -> Result<pb::Workspace, Error> {
        let request = pb::CreateWorkspaceRequest {
            name: name.into(),
            backend: backend as i32,
            spec,
            request_id: request_id(),
        };
        self.retried(
            request,
            |mut c, r| async move { c.create_workspace(r).await },
        )
        .await
    }

    /// One workspace.
    pub async fn get_workspace(&self, id: &str) -> Result<pb::Workspace, Error> {
        let request = pb::GetWorkspaceRequest {
            workspace_id: id.into(),
        };
        self.retried(request, |mut c, r| async move { c.get_workspace(r).await })
            .await
    }

    /// One page of workspaces (`page_token` "" for the first).
    pub async fn list_workspaces(
        &self,
        page_size: u32,
        page_token: &str,
        include_deleted: bool,
    ) -> Result<pb::ListWorkspacesResponse, Error> {
        let request = pb::ListWorkspacesRequest {
            page_size,
            page_token: page_token.into(),
            include_deleted,
        };
        self.retried(
            request,
            |mut c, r| async move { c.list_workspaces(r).await },
        )
        .await
    }

    /// Every workspace, all pages.
    pub async fn all_workspaces(&self, include_deleted: bool) -> Result<Vec<pb::Workspace>, Error> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.list_workspaces(1000, &token, include_deleted).await?;
            all.extend(page.workspaces);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            token = page.next_page_token;
        }
    }

    /// Asks for a restart cycle; the stream says how it was admitted and
    /// follows the cycle (see [`CycleStream::wait_online`]).
    pub async fn restart(
        &self,
        id: &str,
        trigger: pb::Trigger,
        reason: &str,
    ) -> Result<CycleStream, Error> {
        let request = pb::RestartWorkspaceRequest {
            workspace_id: id.into(),
            trigger: trigger as i32,
            reason: reason.into(),
            request_id: request_id(),
        };
        CycleStream::open(self.clone(), request, |mut c, r| async move {
            c.restart_workspace(r).await
        })
        .await
    }

    /// Stops the workspace (one stop cycle, followed).
    pub async fn stop(&self, id: &str, reason: &str) -> Result<CycleStream, Error> {
        let request = pb::StopWorkspaceRequest {
            workspace_id: id.into(),
            reason: reason.into(),
            request_id: request_id(),
        };
        CycleStream::open(self.clone(), request, |mut c, r| async move {
            c.stop_workspace(r).await
        })
        .await
    }

    /// Deletes the workspace (one delete cycle, followed).
    pub async fn delete(&self, id: &str, reason: &str) -> Result<CycleStream, Error> {
        let request = pb::DeleteWorkspaceRequest {
            workspace_id: id.into(),
            reason: reason.into(),
            request_id: request_id(),
        };
        CycleStream::open(self.clone(), request, |mut c, r| async move {
            c.delete_workspace(r).await
        })
        .await
    }

    /// Sets a secret (write-only); a CONFIG_CHANGED trigger.
    pub async fn set_secret(
        &self,
        id: &str,
        name: &str,
        value: &str,
    ) -> Result<pb::ConfigChangeResponse, Error> {
        self.set_secret_with_id(id, name, value, &request_id())
            .await
    }

    /// [`Client::set_secret`] with the caller's own request id: a repeat
    /// with the same id, even from another process, changes nothing.
    pub async fn set_secret_with_id(
        &self,
        id: &str,
        name: &str,
        value: &str,
        request_id: &str,
    ) -> Result<pb::ConfigChangeResponse, Error> {
        let request = pb::SetSecretRequest {
            workspace_id: id.into(),
            name: name.into(),
            value: value.into(),
            request_id: request_id.into(),
        };
        self.retried(request, |mut c, r| async move { c.set_secret(r).await })
            .await
    }

    /// Removes a secret; a CONFIG_CHANGED trigger.
    pub async fn delete_secret(
        &self,
        id: &str,
        name: &str,
    ) -> Result<pb::ConfigChangeResponse, Error> {
        let request = pb::DeleteSecretRequest {
            workspace_id: id.into(),
            name: name.into(),
            request_id: request_id(),
        };
        self.retried(request, |mut c, r| async move { c.delete_secret(r).await })
            .await
    }

    /// Writes a file; a CONFIG_CHANGED trigger under the burst debounce.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        content: Vec<u8>,
    ) -> Result<pb::ConfigChangeResponse, Error> {
        let request = pb::WriteFileRequest {
            workspace_id: id.into(),
            path: path.into(),
            content,
            request_id: request_id(),
        };
        self.retried(request, |mut c, r| async move { c.write_file(r).await })
            .await
    }

    /// Reports the workspace unreachable (a HEALTH_PROBE trigger). Never
    /// retried: it carries no request id.
    pub async fn report_unreachable(
        &self,
        id: &str,
        detail: &str,
    ) -> Result<pb::ReportUnreachableResponse, Error> {
        let request = pb::ReportUnreachableRequest {
            workspace_id: id.into(),
            detail: detail.into(),
        };
        Ok(self
            .raw
            .clone()
            .report_unreachable(request)
            .await?
            .into_inner())
    }

    /// Every status and cycle change of the workspace from now on.
    pub async fn watch(&self, id: &str) -> Result<tonic::Streaming<pb::WorkspaceEvent>, Error> {
        let request = pb::WatchWorkspaceRequest {
            workspace_id: id.into(),
        };
        self.retried(
            request,
            |mut c, r| async move { c.watch_workspace(r).await },
        )
        .await
    }

    /// One page of the workspace's cycles, newest first.
    pub async fn list_cycles(
        &self,
        id: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListCyclesResponse, Error> {
        let request = pb::ListCyclesRequest {
            workspace_id: id.into(),
            page_size,
            page_token: page_token.into(),
        };
        self.retried(request, |mut c, r| async move { c.list_cycles(r).await })
            .await
    }
}

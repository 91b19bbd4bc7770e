//! `WorkspaceAgent`: the agent of each generation registers (what makes a
//! cycle ONLINE, C10) and heartbeats with its token. Only the current
//! generation's token is accepted (C12).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    domain::{ConfigVersion, WorkspaceId},
    engine::Engine,
    proto::{self as pb, workspace_agent_server::WorkspaceAgent},
    store::AgentReport,
};

/// Longest token the service looks at.
const MAX_TOKEN_LEN: usize = 256;
/// Most names an agent may report.
const MAX_REPORTED: usize = 2000;

/// The agent service over an engine.
#[derive(Clone)]
pub struct AgentService {
    engine: Arc<Engine>,
    heartbeat_interval_seconds: u32,
}

impl AgentService {
    /// Serves `engine`; agents are told to heartbeat every `heartbeat`.
    pub fn new(engine: Arc<Engine>, heartbeat: std::time::Duration) -> Self {
        Self {
            engine,
            heartbeat_interval_seconds: heartbeat.as_secs().clamp(1, u32::MAX as u64) as u32,
        }
    }
}

/// The workspace an agent call names, once its token looks like one. Every
/// refusal is `UNAUTHENTICATED`: an agent learns nothing about other
/// workspaces from the answer.
fn check_token(token: &str, workspace: &str) -> Result<WorkspaceId, Status> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(super::status::unauthenticated("an agent token is required"));
    }
    workspace.parse().map_err(|_| {
        super::status::unauthenticated("the agent token is not valid for this workspace")
    })
}

#[tonic::async_trait]
impl WorkspaceAgent for AgentService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let request = request.into_inner();
        let workspace = check_token(&request.token, &request.workspace_id)?;
        let oversized = if request.endpoint.len() > 1024 {
            Some("endpoint")
        } else if request.secret_names.len() > MAX_REPORTED {
            Some("secret_names")
        } else if request.file_paths.len() > MAX_REPORTED {
            Some("file_paths")
        } else {
            None
        };
        if let Some(field) = oversized {
            return Err(super::status::invalid_field(
                field,
                "registration report too large",
            ));
        }
        let report = AgentReport {
            config_version: ConfigVersion(request.config_version),
            endpoint: request.endpoint,
            secret_names: request.secret_names,
            file_paths: request.file_paths,
        };
        let (workspace, generation) = self
            .engine
            .store()
            .register_agent(workspace, &request.token, &report)
            .await?;
        tracing::info!(%workspace, generation = generation.0, "agent registered");
        Ok(Response::new(pb::RegisterResponse {
            workspace_id: workspace.to_string(),
            generation: generation.0,
            heartbeat_interval_seconds: self.heartbeat_interval_seconds,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let workspace = check_token(&request.token, &request.workspace_id)?;
        self.engine
            .store()
            .heartbeat(workspace, &request.token)
            .await?;
        Ok(Response::new(pb::HeartbeatResponse {}))
    }
}

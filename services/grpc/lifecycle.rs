//! `WorkspaceLifecycle`: validate, convert, call the engine, convert back.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    convert::{self, ts},
    follow::{self, RestartStream, WatchStream},
    idempotent::{self, Idempotent, Plan, RequestIds},
    status,
};
use crate::{
    domain::{
        Secret, Trigger, WorkspaceId,
        change::{Actor, Change, Creation},
        ledger::{Ask, DropReason},
        validate,
    },
    engine::{
        Engine,
        intent::{Admission, Intent, Verdict, Waiting},
    },
    proto::{self as pb, workspace_lifecycle_server::WorkspaceLifecycle},
};

/// The lifecycle service over an engine.
#[derive(Clone)]
pub struct LifecycleService {
    engine: Arc<Engine>,
    request_ids: RequestIds,
}

impl LifecycleService {
    /// Serves `engine`, remembering mutations' request ids for
    /// `request_id_retention`.
    pub fn new(engine: Arc<Engine>, request_id_retention: std::time::Duration) -> Self {
        Self {
            request_ids: RequestIds::new(engine.clone(), request_id_retention),
            engine,
        }
    }

    /// Submits a request that asks for a cycle and streams what follows.
    /// With a request id, the first event is the recorded answer: a repeat
    /// gets it and follows the same cycle, and submits nothing.
    async fn cycle_request<R: Idempotent>(
        &self,
        request: &R,
        intent: Intent,
    ) -> Result<Response<RestartStream>, Status> {
        let events = self.engine.subscribe(intent.workspace);
        let engine = self.engine.clone();
        let stream = match self.request_ids.plan(request).await? {
            Plan::Unkeyed => {
                let admission = self.engine.submit(intent).await?;
                follow::cycle_stream(engine, admission, events)
            }
            Plan::Replay(answer) => {
                follow::stream_from(engine, idempotent::decode(&answer)?, events, true)
            }
            Plan::Run(claim) => {
                let admitted = self.engine.submit(intent).await;
                let now = self.engine.store().clock().now();
                let first = admitted
                    .as_ref()
                    .ok()
                    .map(|admission| follow::first_event(admission.clone(), now));
                idempotent::settle(claim, first.as_ref().and_then(Option::as_ref)).await;
                admitted?;
                match first.flatten() {
                    Some(first) => follow::stream_from(engine, first, events, false),
                    None => follow::cycle_stream(engine, Admission::of(Verdict::Idle), events),
                }
            }
        };
        Ok(Response::new(stream))
    }

    /// Submits a config mutation and says how it will be delivered.
    async fn change<R: Idempotent>(
        &self,
        request: &R,
        workspace: WorkspaceId,
        change: Change,
        by: (String, &'static str),
    ) -> Result<Response<pb::ConfigChangeResponse>, Status> {
        let answer = self
            .request_ids
            .unary(request, async {
                let admission = self
                    .engine
                    .submit(Intent::change(workspace, change).by(by.0, by.1))
                    .await?;
                Ok(config_change_response(admission))
            })
            .await?;
        Ok(Response::new(answer))
    }
}

fn config_change_response(admission: Admission) -> pb::ConfigChangeResponse {
    use pb::config_change_response::Delivery;
    let (delivery, cycle, not_before) = match admission.verdict {
        Verdict::Accepted { cycle, .. } => (Delivery::Started, Some(cycle), None),
        Verdict::Coalesced {
            cycle,
            not_before,
            waiting: Waiting::Coalesced,
        } => (Delivery::Coalesced, Some(cycle), Some(not_before)),
        Verdict::Coalesced {
            cycle,
            not_before,
            waiting: Waiting::Deferred,
        } => (Delivery::Deferred, Some(cycle), Some(not_before)),
        Verdict::Stored | Verdict::Dropped { .. } | Verdict::Idle | Verdict::AlreadyDeleted => {
            (Delivery::Stored, None, None)
        }
    };
    pb::ConfigChangeResponse {
        config_version: admission.config_version.map(|v| v.0).unwrap_or_default(),
        delivery: delivery as i32,
        cycle_id: cycle.map(|c| c.to_string()).unwrap_or_default(),
        not_before: not_before.map(ts),
    }
}

#[tonic::async_trait]
impl WorkspaceLifecycle for LifecycleService {
    async fn create_workspace(
        &self,
        request: Request<pb::CreateWorkspaceRequest>,
    ) -> Result<Response<pb::Workspace>, Status> {
        let caller = Actor::of(&request);
        let request = request.into_inner();
        validate::workspace_name(&request.name)?;
        let backend = convert::backend_kind(request.backend)?;
        let spec = convert::spec_from(request.spec.clone());
        validate::spec(&spec)?;
        if !self.engine.backends().enabled(backend) {
            return Err(status::failed_precondition(
                status::reason::BACKEND_NOT_ENABLED,
                "CONFIGURATION",
                "backend",
                format!("backend {backend} is not enabled on this server"),
            ));
        }
        let answer = self
            .request_ids
            .unary(&request, async {
                let workspace = WorkspaceId::new();
                let creation = Creation {
                    name: request.name.clone(),
                    backend,
                    spec,
                };
                self.engine
                    .submit(Intent::create(workspace, creation).by(caller, "CreateWorkspace"))
                    .await?;
                let record = self.engine.store().workspace(workspace).await?;
                Ok(convert::workspace(&record))
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn get_workspace(
        &self,
        request: Request<pb::GetWorkspaceRequest>,
    ) -> Result<Response<pb::Workspace>, Status> {
        let workspace = convert::workspace_id(&request.get_ref().workspace_id)?;
        let record = self.engine.store().workspace(workspace).await?;
        Ok(Response::new(convert::workspace(&record)))
    }

    async fn list_workspaces(
        &self,
        request: Request<pb::ListWorkspacesRequest>,
    ) -> Result<Response<pb::ListWorkspacesResponse>, Status> {
        let request = request.into_inner();
        let limit = convert::page_size(request.page_size)?;
        let after = convert::page_token(&request.page_token)?;
        let (records, next) = self
            .engine
            .store()
            .workspaces(after, limit, request.include_deleted)
            .await?;
        Ok(Response::new(pb::ListWorkspacesResponse {
            workspaces: records.iter().map(convert::workspace).collect(),
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    type RestartWorkspaceStream = RestartStream;

    async fn restart_workspace(
        &self,
        request: Request<pb::RestartWorkspaceRequest>,
    ) -> Result<Response<RestartStream>, Status> {
        let caller = Actor::of(&request);
        let request = request.into_inner();
        let workspace = convert::workspace_id(&request.workspace_id)?;
        let trigger = convert::restart_trigger(request.trigger)?;
        validate::reason("reason", &request.reason)?;
        let intent = Intent::restart(workspace, trigger, request.reason.clone())
            .by(caller, "RestartWorkspace");
        self.cycle_request(&request, intent).await
    }

    type StopWorkspaceStream = RestartStream;

    async fn stop_workspace(
        &self,
        request: Request<pb::StopWorkspaceRequest>,
    ) -> Result<Response<RestartStream>, Status> {
        let caller = Actor::of(&request);
        let request = request.into_inner();
        let workspace = convert::workspace_id(&request.workspace_id)?;
        validate::reason("reason", &request.reason)?;
        let intent = Intent::new(
            workspace,
            Ask::Stop,
            Trigger::Manual,
            request.reason.clone(),
        )
        .by(caller, "StopWorkspace");
        self.cycle_request(&request, intent).await
    }

    type DeleteWorkspaceStream = RestartStream;

    async fn delete_workspace(
        &self,
        request: Request<pb::DeleteWorkspaceRequest>,
    ) -> Result<Response<RestartStream>, Status> {
        let caller = Actor::of(&request);
        let request = request.into_inner();
        let workspace = convert::workspace_id(&request.workspace_id)?;
        validate::reason("reason", &request.reason)?;
        let intent = Intent::new(
            workspace,
            Ask::Delete,
            Trigger::Manual,
            request.reason.clone(),
        )
        .by(caller, "DeleteWorkspace");
        self.cycle_request(&request, intent).await
    }

    async fn set_secret(
        &self,
        request: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::ConfigChangeResponse>, Status> {
        let caller = Actor::of(&request);
        let request = request.into_inner();
        let workspace = convert::workspace_id(&request.workspace_id)?;
        validate::env_name("name", &request.name)?;
        validate::secret_value(&request.value)?;
        self.change(
            &request,
            workspace,
            Change::SetSecret {
                name: request.name.clone(),
                value: Secret::new(request.value.clone()),
            },
            (caller, "SetSecret"),
        )
        .await
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::ConfigChangeResponse>, Status> {
        let caller = Actor::of(&request);
        let request = request.into_inner();
        let workspace = convert::workspace_id(&request.workspace_id)?;
        validate::secret_name_to_delete(&request.name)?;
        self.change(
            &request,
            workspace,
            Change::DeleteSecret {
                name: request.name.clone(),
            },
            (caller, "DeleteSecret"),
        )
        .await
    }

    async fn write_file(
        &self,
        request: Request<pb::WriteFileRequest>,
    ) -> Result<Response<pb::ConfigChangeResponse>, Status> {
        let caller = Actor::of(&request);
        let request = request.into_inner();
        let workspace = convert::workspace_id(&request.workspace_id)?;
        validate::file_path(&request.path)?;
        validate::file_content(&request.content)?;
        self.change(
            &request,
            workspace,
            Change::WriteFile {
                path: request.path.clone(),
                content: request.content.clone(),
            },
            (caller, "WriteFile"),
        )
        .await
    }

    async fn delete_file(
        &self,
        request: Request<pb::DeleteFileRequest>,
    ) -> Result<Response<pb::ConfigChangeResponse>, Status> {
        let caller = Actor::of(&request);
        let request = request.into_inner();
        let workspace = convert::workspace_id(&request.workspace_id)?;
        validate::file_path(&request.path)?;
        self.change(
            &request,
            workspace,
            Change::DeleteFile {
                path: request.path.clone(),
            },
            (caller, "DeleteFile"),
        )
        .await
    }

    async fn report_unreachable(
        &self,
        request: Request<pb::ReportUnreachableRequest>,
    ) -> Result<Response<pb::ReportUnreachableResponse>, Status> {
        use pb::report_unreachable_response::Outcome;
        let caller = Actor::of(&request);
        let request = request.into_inner();
        let workspace = convert::workspace_id(&request.workspace_id)?;
        validate::reason("detail", &request.detail)?;
        let admission = self
            .engine
            .submit(
                Intent::restart(workspace, Trigger::HealthProbe, request.detail)
                    .by(caller, "ReportUnreachable"),
            )
            .await?;
        let response = match admission.verdict {
            Verdict::Accepted { cycle, .. } => pb::ReportUnreachableResponse {
                acted: true,
                outcome: Outcome::Acted as i32,
                reason: "a restart cycle started".into(),
                cycle_id: cycle.to_string(),
                until: None,
            },
            Verdict::Coalesced {
                cycle, not_before, ..
            } => pb::ReportUnreachableResponse {
                acted: true,
                outcome: Outcome::Acted as i32,
                reason: "joined the restart cycle that is about to run".into(),
                cycle_id: cycle.to_string(),
                until: Some(ts(not_before)),
            },
            Verdict::Dropped { reason, until } => pb::ReportUnreachableResponse {
                acted: false,
                outcome: match reason {
                    DropReason::CycleInFlight => Outcome::DroppedCycleInFlight,
                    DropReason::Debounced => Outcome::DroppedDebounced,
                    DropReason::NotRunning => Outcome::DroppedNotRunning,
                    DropReason::InstanceBooting => Outcome::DroppedInstanceBooting,
                } as i32,
                reason: reason.describe().into(),
                cycle_id: String::new(),
                until: until.map(ts),
            },
            Verdict::Stored | Verdict::Idle | Verdict::AlreadyDeleted => {
                pb::ReportUnreachableResponse {
                    acted: false,
                    outcome: Outcome::DroppedNotRunning as i32,
                    reason: DropReason::NotRunning.describe().into(),
                    cycle_id: String::new(),
                    until: None,
                }
            }
        };
        Ok(Response::new(response))
    }

    type WatchWorkspaceStream = WatchStream;

    async fn watch_workspace(
        &self,
        request: Request<pb::WatchWorkspaceRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let workspace = convert::workspace_id(&request.get_ref().workspace_id)?;
        let events = self.engine.subscribe(workspace);
        // Refuse unknown ids up front rather than in the stream.
        self.engine.store().peek(workspace).await?;
        Ok(Response::new(follow::watch_stream(
            self.engine.clone(),
            workspace,
            events,
        )))
    }

    async fn list_cycles(
        &self,
        request: Request<pb::ListCyclesRequest>,
    ) -> Result<Response<pb::ListCyclesResponse>, Status> {
        let request = request.into_inner();
        let workspace = convert::workspace_id(&request.workspace_id)?;
        let limit = convert::page_size(request.page_size)?;
        let before = convert::page_token(&request.page_token)?;
        self.engine.store().peek(workspace).await?;
        let (records, next) = self.engine.store().cycles(workspace, before, limit).await?;
        Ok(Response::new(pb::ListCyclesResponse {
            cycles: records.iter().map(convert::cycle).collect(),
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }
}

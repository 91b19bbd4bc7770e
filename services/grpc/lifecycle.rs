//! `WorkspaceLifecycle`, the public API: each handler validates its
//! request, turns it into one engine intent, and converts the answer — the
//! shared shapes (a cycle RPC, a config mutation) written once here.
//! Contracts: C13, C20.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    answers,
    convert::{self},
    follow::{self, RestartStream, WatchStream},
    idempotent::{self, Idempotent, Plan, RequestIds},
    origin::Origin,
    page_token::Listing,
    status,
};
use crate::{
    domain::{
        Secret, Trigger, WorkspaceId,
        change::{Change, Creation},
        ledger::Ask,
        validate,
    },
    engine::{
        Engine,
        intent::{Admission, Intent, Verdict},
    },
    proto::{self as pb, workspace_lifecycle_server::WorkspaceLifecycle},
};

/// The lifecycle service over an engine.
#[derive(Clone)]
pub struct LifecycleService {
    engine: Arc<Engine>,
    request_ids: RequestIds,
}

/// A mutation that names one existing workspace, so the shared handler
/// shapes below can read its id whatever the request type.
trait ForWorkspace {
    /// The `workspace_id` field, as sent.
    fn workspace_id(&self) -> &str;
}

macro_rules! for_workspace {
    ($($ty:ident),* $(,)?) => {$(
        impl ForWorkspace for pb::$ty {
            fn workspace_id(&self) -> &str {
                &self.workspace_id
            }
        }
    )*};
}

for_workspace! {
    RestartWorkspaceRequest,
    StopWorkspaceRequest,
    DeleteWorkspaceRequest,
    SetSecretRequest,
    DeleteSecretRequest,
    WriteFileRequest,
    DeleteFileRequest,
}

/// A stop or delete: always an operator's (`MANUAL`) ask, with a reason.
fn manual(workspace: WorkspaceId, ask: Ask, reason: &str) -> Result<Intent, Status> {
    validate::reason("reason", reason)?;
    Ok(Intent::new(
        workspace,
        ask,
        Trigger::Manual,
        reason.to_owned(),
    ))
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

    /// The shape of every RPC that asks for a cycle (restart, stop,
    /// delete): the caller and workspace read the same way, the intent
    /// built by `intent` and audited under the RPC's name, then streamed.
    async fn cycle_rpc<R: Idempotent + ForWorkspace>(
        &self,
        request: Request<R>,
        intent: impl FnOnce(WorkspaceId, &R) -> Result<Intent, Status>,
    ) -> Result<Response<RestartStream>, Status> {
        let caller = Origin::of(&request);
        let request = request.into_inner();
        let workspace = convert::workspace_id(request.workspace_id())?;
        let intent = intent(workspace, &request)?.by(caller.parts(), R::METHOD);
        self.cycle_request(&request, intent).await
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
        // The first event is stamped with the request's arrival: taken once
        // it is answered, it could be later than the phases of the cycle it
        // started, which the gate begins on the way back.
        let arrived = self.engine.store().clock().now();
        let stream = match self.request_ids.plan(request).await? {
            Plan::Unkeyed => {
                let admission = self.engine.submit(intent).await?;
                follow::cycle_stream(engine, admission, events, arrived)
            }
            Plan::Replay(answer) => {
                follow::stream_from(engine, idempotent::decode(&answer)?, events, true)
            }
            Plan::Run(claim) => {
                let admitted = self.engine.submit(intent).await;
                let first = admitted
                    .as_ref()
                    .ok()
                    .map(|admission| follow::first_event(admission.clone(), arrived));
                idempotent::settle(claim, first.as_ref().and_then(Option::as_ref)).await;
                admitted?;
                match first.flatten() {
                    Some(first) => follow::stream_from(engine, first, events, false),
                    None => {
                        follow::cycle_stream(engine, Admission::of(Verdict::Idle), events, arrived)
                    }
                }
            }
        };
        Ok(Response::new(stream))
    }

    /// The shape of every config mutation (secrets, files): the caller and
    /// workspace read the same way, the change validated and built by
    /// `change`, submitted once per request id and audited under the RPC's
    /// name; the answer says how it will be delivered.
    async fn change_rpc<R: Idempotent + ForWorkspace>(
        &self,
        request: Request<R>,
        change: impl FnOnce(&R) -> Result<Change, Status>,
    ) -> Result<Response<pb::ConfigChangeResponse>, Status> {
        let caller = Origin::of(&request);
        let request = request.into_inner();
        let workspace = convert::workspace_id(request.workspace_id())?;
        let change = change(&request)?;
        let answer = self
            .request_ids
            .unary(&request, async {
                let admission = self
                    .engine
                    .submit(Intent::change(workspace, change).by(caller.parts(), R::METHOD))
                    .await?;
                Ok(answers::config_change_response(admission))
            })
            .await?;
        Ok(Response::new(answer))
    }
}

#[tonic::async_trait]
impl WorkspaceLifecycle for LifecycleService {
    async fn create_workspace(
        &self,
        request: Request<pb::CreateWorkspaceRequest>,
    ) -> Result<Response<pb::Workspace>, Status> {
        let caller = Origin::of(&request);
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
        if let Ok(runs) = self.engine.backends().get(backend) {
            runs.check_spec(&spec)
                .map_err(|rejected| validate::Invalid {
                    field: rejected.field.to_owned(),
                    message: rejected.message,
                })?;
        }
        self.engine.store().check_spec(backend, &spec)?;
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
                    .submit(
                        Intent::create(workspace, creation).by(caller.parts(), "CreateWorkspace"),
                    )
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
        let listing = Listing::Workspaces {
            include_deleted: request.include_deleted,
        };
        let after = listing.position(&request.page_token)?;
        let (records, next) = self
            .engine
            .store()
            .workspaces(after, limit, request.include_deleted)
            .await?;
        Ok(Response::new(pb::ListWorkspacesResponse {
            workspaces: records.iter().map(convert::workspace).collect(),
            next_page_token: listing.token(next),
        }))
    }

    type RestartWorkspaceStream = RestartStream;

    async fn restart_workspace(
        &self,
        request: Request<pb::RestartWorkspaceRequest>,
    ) -> Result<Response<RestartStream>, Status> {
        self.cycle_rpc(request, |workspace, request| {
            let trigger = convert::restart_trigger(request.trigger)?;
            validate::reason("reason", &request.reason)?;
            Ok(Intent::restart(workspace, trigger, request.reason.clone()))
        })
        .await
    }

    type StopWorkspaceStream = RestartStream;

    async fn stop_workspace(
        &self,
        request: Request<pb::StopWorkspaceRequest>,
    ) -> Result<Response<RestartStream>, Status> {
        self.cycle_rpc(request, |workspace, request| {
            manual(workspace, Ask::Stop, &request.reason)
        })
        .await
    }

    type DeleteWorkspaceStream = RestartStream;

    async fn delete_workspace(
        &self,
        request: Request<pb::DeleteWorkspaceRequest>,
    ) -> Result<Response<RestartStream>, Status> {
        self.cycle_rpc(request, |workspace, request| {
            manual(workspace, Ask::Delete, &request.reason)
        })
        .await
    }

    async fn set_secret(
        &self,
        request: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::ConfigChangeResponse>, Status> {
        self.change_rpc(request, |request| {
            validate::env_name("name", &request.name)?;
            validate::secret_value(&request.value)?;
            Ok(Change::SetSecret {
                name: request.name.clone(),
                value: Secret::new(request.value.clone()),
            })
        })
        .await
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::ConfigChangeResponse>, Status> {
        self.change_rpc(request, |request| {
            validate::secret_name_to_delete(&request.name)?;
            Ok(Change::DeleteSecret {
                name: request.name.clone(),
            })
        })
        .await
    }

    async fn write_file(
        &self,
        request: Request<pb::WriteFileRequest>,
    ) -> Result<Response<pb::ConfigChangeResponse>, Status> {
        self.change_rpc(request, |request| {
            validate::file_path(&request.path)?;
            validate::file_content(&request.content)?;
            Ok(Change::WriteFile {
                path: request.path.clone(),
                content: request.content.clone(),
            })
        })
        .await
    }

    async fn delete_file(
        &self,
        request: Request<pb::DeleteFileRequest>,
    ) -> Result<Response<pb::ConfigChangeResponse>, Status> {
        self.change_rpc(request, |request| {
            validate::file_path(&request.path)?;
            Ok(Change::DeleteFile {
                path: request.path.clone(),
            })
        })
        .await
    }

    async fn report_unreachable(
        &self,
        request: Request<pb::ReportUnreachableRequest>,
    ) -> Result<Response<pb::ReportUnreachableResponse>, Status> {
        let caller = Origin::of(&request);
        let request = request.into_inner();
        let workspace = convert::workspace_id(&request.workspace_id)?;
        validate::reason("detail", &request.detail)?;
        let admission = self
            .engine
            .submit(
                Intent::restart(workspace, Trigger::HealthProbe, request.detail)
                    .by(caller.parts(), "ReportUnreachable"),
            )
            .await?;
        Ok(Response::new(answers::report_unreachable_response(
            admission,
        )))
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
        let listing = Listing::Cycles(workspace);
        let before = listing.position(&request.page_token)?;
        self.engine.store().peek(workspace).await?;
        let (records, next) = self.engine.store().cycles(workspace, before, limit).await?;
        Ok(Response::new(pb::ListCyclesResponse {
            cycles: records.iter().map(convert::cycle).collect(),
            next_page_token: listing.token(next),
        }))
    }
}

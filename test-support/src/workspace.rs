//! A workspace through the public gRPC API, for callers that hold only a
//! client (server processes, benchmarks): create one, read it, wait
//! (bounded, by polling) until it is in a state, and the states tests wait
//! for.
//! No contract of its own: the tests and benches check C1–C20 with it.

use std::time::Duration;

use workspace_lifecycle::{auth::client::LifecycleClient, proto as pb};

use crate::{WAIT, bounded_by};

/// How often the waits here read the workspace again.
const POLL: Duration = Duration::from_millis(50);

/// A CreateWorkspace request for `name` on `backend`, default spec.
pub fn create_request(name: &str, backend: pb::BackendKind) -> pb::CreateWorkspaceRequest {
    pb::CreateWorkspaceRequest {
        name: name.into(),
        backend: backend as i32,
        spec: None,
        request_id: String::new(),
    }
}

/// Creates a workspace (returns at once, PROVISIONING); returns its id.
pub async fn create(c: &LifecycleClient, request: pb::CreateWorkspaceRequest) -> String {
    c.clone()
        .create_workspace(request)
        .await
        .expect("CreateWorkspace")
        .into_inner()
        .id
}

/// GetWorkspace.
pub async fn get(c: &LifecycleClient, id: &str) -> pb::Workspace {
    c.clone()
        .get_workspace(pb::GetWorkspaceRequest {
            workspace_id: id.into(),
        })
        .await
        .expect("GetWorkspace")
        .into_inner()
}

/// Every cycle of the workspace (ListCycles, one page).
pub async fn cycles(c: &LifecycleClient, id: &str) -> Vec<pb::Cycle> {
    c.clone()
        .list_cycles(pb::ListCyclesRequest {
            workspace_id: id.into(),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect("ListCycles")
        .into_inner()
        .cycles
}

/// Reads the workspace until `ready` says yes, for at most `limit`.
pub async fn wait_until(
    c: &LifecycleClient,
    id: &str,
    limit: Duration,
    ready: impl Fn(&pb::Workspace) -> bool,
) -> pb::Workspace {
    bounded_by(limit, &format!("workspace {id} settling"), async {
        loop {
            let w = get(c, id).await;
            if ready(&w) {
                return w;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
}

/// [`wait_until`] with the tests' bound ([`WAIT`]).
pub async fn settled(
    c: &LifecycleClient,
    id: &str,
    ready: impl Fn(&pb::Workspace) -> bool,
) -> pb::Workspace {
    wait_until(c, id, WAIT, ready).await
}

/// Waits until every workspace is ONLINE, all within `limit`.
pub async fn wait_online(c: &LifecycleClient, ids: &[String], limit: Duration) {
    bounded_by(limit, "every workspace ONLINE", async {
        for id in ids {
            wait_until(c, id, limit, is_online).await;
        }
    })
    .await;
}

/// Each workspace's config version now.
pub async fn versions(c: &LifecycleClient, ids: &[String]) -> Vec<u64> {
    let mut out = Vec::new();
    for id in ids {
        out.push(get(c, id).await.config_version);
    }
    out
}

/// The workspace is ONLINE.
pub fn is_online(w: &pb::Workspace) -> bool {
    w.status == pb::WorkspaceStatus::Online as i32
}

/// The workspace is ONLINE with the agent of `generation` registered.
pub fn online_at(generation: u64) -> impl Fn(&pb::Workspace) -> bool {
    move |w| is_online(w) && w.agent.as_ref().is_some_and(|a| a.generation == generation)
}

/// The workspace is in `status` with no cycle running or pending.
pub fn idle_in(status: pb::WorkspaceStatus) -> impl Fn(&pb::Workspace) -> bool {
    move |w| {
        w.status == status as i32 && w.running_cycle_id.is_empty() && w.pending_cycle_id.is_empty()
    }
}

/// ONLINE, no cycle running or pending, and the agent serves the current
/// config version.
pub fn serving_current_config(w: &pb::Workspace) -> bool {
    idle_in(pb::WorkspaceStatus::Online)(w)
        && w.agent
            .as_ref()
            .is_some_and(|a| a.config_version == w.config_version)
}

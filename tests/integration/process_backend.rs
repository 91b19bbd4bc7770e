//! End to end on the process backend: the real agent binary as a child
//! process, real Postgres, the real gRPC API.

use std::time::Duration;

use workspace_lifecycle::{domain::WorkspaceId, proto as pb, proto::restart_event::Event};

use crate::support::{BackendChoice, Options, TestServer, collect, kinds, last};

fn process_options() -> Options {
    Options {
        backend: BackendChoice::Process,
        wall_clock: true,
        ..Options::default()
    }
}

/// The pid the agent reported (its endpoint is "pid:N").
fn agent_pid(w: &pb::Workspace) -> i32 {
    let agent = w.agent.as_ref().expect("an agent registered");
    agent
        .endpoint
        .strip_prefix("pid:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected endpoint {:?}", agent.endpoint))
}

fn alive(pid: i32) -> bool {
    // A zombie is not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

async fn online(s: &TestServer, ws: WorkspaceId, generation: u64) -> pb::Workspace {
    s.wait_for(ws, |w| {
        w.status == pb::WorkspaceStatus::Online as i32
            && w.agent.as_ref().is_some_and(|a| a.generation == generation)
    })
    .await
}

#[tokio::test]
async fn create_restart_with_a_secret_stop_and_delete_leave_no_agent_behind() {
    let s = TestServer::start(process_options()).await;
    let ws = s.create("proc").await;
    let first = online(&s, ws, 1).await;
    let pid1 = agent_pid(&first);
    assert!(alive(pid1), "generation 1 agent runs");

    // Set a secret, then restart: generation 2's agent sees it.
    let set = s
        .client()
        .set_secret(pb::SetSecretRequest {
            workspace_id: ws.to_string(),
            name: "API_KEY".into(),
            value: "sk-live-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert_eq!(kinds(&events)[0], "accepted");
    assert!(kinds(&events).contains(&"phase"));
    let Event::Online(online_event) = last(&events) else {
        panic!("{events:?}")
    };
    assert_eq!(online_event.generation, 2);
    assert_eq!(online_event.config_version, set.config_version);
    let second = online(&s, ws, 2).await;
    let agent = second.agent.as_ref().unwrap();
    assert_eq!(agent.config_version, set.config_version);
    assert_eq!(
        agent.secret_names,
        ["API_KEY"],
        "the agent booted with the secret"
    );
    let pid2 = agent_pid(&second);
    assert!(alive(pid2));
    assert!(!alive(pid1), "generation 1 agent was stopped");

    // Stop: the agent process is gone.
    let stop = s
        .client()
        .stop_workspace(pb::StopWorkspaceRequest {
            workspace_id: ws.to_string(),
            reason: "done".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(last(&collect(stop).await), Event::Stopped(_)));
    assert!(!alive(pid2), "stop left the agent {pid2} running");
    assert_eq!(s.get(ws).await.status, pb::WorkspaceStatus::Stopped as i32);

    // Start again, then delete: gone, and no process left.
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(matches!(last(&events), Event::Online(o) if o.generation == 3));
    let pid3 = agent_pid(&online(&s, ws, 3).await);
    let delete = s
        .client()
        .delete_workspace(pb::DeleteWorkspaceRequest {
            workspace_id: ws.to_string(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(last(&collect(delete).await), Event::Deleted(_)));
    assert!(!alive(pid3), "delete left the agent {pid3} running");
    let w = s.get(ws).await;
    assert_eq!(w.status, pb::WorkspaceStatus::Deleted as i32);
    assert!(
        w.secret_names.is_empty(),
        "secrets removed with the workspace"
    );
    assert!(
        !s.data_dir
            .path()
            .join("process")
            .join(ws.to_string())
            .exists()
    );
    s.shutdown().await;
}

#[tokio::test]
async fn shutting_the_server_down_leaves_no_agent_behind() {
    let s = TestServer::start(process_options()).await;
    let ws = s.create("orphan-check").await;
    let pid = agent_pid(&online(&s, ws, 1).await);
    s.shutdown().await;
    assert!(!alive(pid), "agent {pid} outlived the server");
}

#[tokio::test]
async fn the_lost_secret_race_ends_on_a_generation_that_has_both_secrets() {
    let window = Duration::from_secs(3);
    let s = TestServer::start(Options {
        window,
        ..process_options()
    })
    .await;
    let ws = s.create("race").await;
    let created = online(&s, ws, 1).await;
    // Let the window opened by the create cycle pass (a computed wait, not
    // a hopeful one: the server told us when it ends).
    let until = created.debounce_until.unwrap();
    let until = chrono::DateTime::from_timestamp(until.seconds, until.nanos as u32).unwrap();
    if let Ok(left) = (until - chrono::Utc::now()).to_std() {
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }

    let set = |name: &'static str| {
        let mut client = s.client();
        let id = ws.to_string();
        async move {
            client
                .set_secret(pb::SetSecretRequest {
                    workspace_id: id,
                    name: name.into(),
                    value: format!("{name}-value"),
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    // A starts a cycle at once; that cycle read its config when it took
    // the gate, before this call returned.
    let a = set("SECRET_A").await;
    assert_eq!(
        a.delivery,
        pb::config_change_response::Delivery::Started as i32,
        "{a:?}"
    );
    // B commits after that read: the old system lost exactly this write.
    let b = set("SECRET_B").await;
    let b_committed = tokio::time::Instant::now();
    assert_ne!(b.cycle_id, a.cycle_id, "B rides a follow-up cycle");

    let w = s
        .wait_for(ws, |w| {
            w.status == pb::WorkspaceStatus::Online as i32
                && w.agent
                    .as_ref()
                    .is_some_and(|a| a.config_version >= b.config_version)
        })
        .await;
    let elapsed = b_committed.elapsed();
    let agent = w.agent.unwrap();
    assert_eq!(agent.secret_names, ["SECRET_A", "SECRET_B"]);
    assert!(
        elapsed <= window + Duration::from_secs(5),
        "B reached a running agent only after {elapsed:?}"
    );
    s.shutdown().await;
}

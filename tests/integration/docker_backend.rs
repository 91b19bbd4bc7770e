//! The Docker backend against the real Docker Engine of this machine, with
//! the project's agent image (`scripts/build-agent-image`) on host
//! networking. These tests fail — never skip — when no engine answers.

use std::time::Duration;

use futures::future::join_all;
use workspace_lifecycle::{domain::WorkspaceId, proto as pb, proto::restart_event::Event};

use crate::support::{AGENT_IMAGE, BackendChoice, Options, TestServer, bounded, collect, last};

fn docker_options() -> Options {
    Options {
        backend: BackendChoice::Docker,
        wall_clock: true,
        window: Duration::from_secs(2),
        deadline: Duration::from_secs(60),
        ..Options::default()
    }
}

async fn docker(args: &[&str]) -> String {
    let output = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .expect("the docker CLI runs");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// (generation label, state) of every container of the workspace.
async fn containers(ws: WorkspaceId) -> Vec<(String, String)> {
    let listed = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=wl.workspace={ws}"),
        "--format",
        "{{.Label \"wl.generation\"}} {{.State}}",
    ])
    .await;
    listed
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (g, s) = l.split_once(' ').unwrap();
            (g.to_owned(), s.to_owned())
        })
        .collect()
}

/// Removes whatever the test left on the engine.
async fn clean_up(ws: WorkspaceId) {
    let ids = docker(&["ps", "-aq", "--filter", &format!("label=wl.workspace={ws}")]).await;
    for id in ids.lines().filter(|l| !l.is_empty()) {
        docker(&["rm", "-f", id]).await;
    }
}

async fn server() -> TestServer {
    let images = docker(&["images", "-q", AGENT_IMAGE]).await;
    assert!(
        !images.is_empty(),
        "the agent image {AGENT_IMAGE} is missing: run scripts/build-agent-image"
    );
    TestServer::start(docker_options()).await
}

async fn online(s: &TestServer, ws: WorkspaceId, generation: u64) -> pb::Workspace {
    s.wait_for(ws, |w| {
        w.status == pb::WorkspaceStatus::Online as i32
            && w.agent.as_ref().is_some_and(|a| a.generation == generation)
    })
    .await
}

#[tokio::test]
async fn create_restart_config_stop_and_delete_on_real_containers() {
    let s = server().await;
    let ws = s.create("docker-life").await;
    online(&s, ws, 1).await;
    assert_eq!(
        containers(ws).await,
        [("1".to_owned(), "running".to_owned())]
    );

    // A file and a secret, then restart: generation 2 alone, with both.
    s.client()
        .write_file(pb::WriteFileRequest {
            workspace_id: ws.to_string(),
            path: "conf/app.toml".into(),
            content: b"x = 1".to_vec(),
        })
        .await
        .unwrap();
    let set = s
        .client()
        .set_secret(pb::SetSecretRequest {
            workspace_id: ws.to_string(),
            name: "API_KEY".into(),
            value: "sk-docker".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(
        matches!(last(&events), Event::Online(o) if o.generation == 2),
        "{events:?}"
    );
    let w = online(&s, ws, 2).await;
    let agent = w.agent.unwrap();
    assert_eq!(agent.config_version, set.config_version);
    assert_eq!(agent.secret_names, ["API_KEY"]);
    assert_eq!(
        agent.file_paths,
        ["conf/app.toml"],
        "files were placed before start"
    );
    assert_eq!(
        containers(ws).await,
        [("2".to_owned(), "running".to_owned())]
    );

    let stop = s
        .client()
        .stop_workspace(pb::StopWorkspaceRequest {
            workspace_id: ws.to_string(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(last(&collect(stop).await), Event::Stopped(_)));
    assert!(containers(ws).await.is_empty(), "stop left a container");

    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(matches!(last(&events), Event::Online(_)));
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
    assert!(containers(ws).await.is_empty(), "delete left a container");
    s.shutdown().await;
}

#[tokio::test]
async fn twenty_concurrent_mixed_restarts_never_conflict_and_run_at_most_two_cycles() {
    let s = server().await;
    let ws = s.create("docker-storm").await;
    online(&s, ws, 1).await;
    let triggers = [
        pb::Trigger::Manual,
        pb::Trigger::ConfigChanged,
        pb::Trigger::HealthProbe,
        pb::Trigger::Reconciler,
    ];
    let streams = join_all((0..20).map(|i| s.restart_stream(ws, triggers[i % 4]))).await;
    let all = bounded(
        "storm",
        join_all(streams.into_iter().map(|st| collect(st.expect("answered")))),
    )
    .await;
    assert_eq!(all.len(), 20);
    let docker = s.docker.as_ref().unwrap();
    let cycles = docker.starts(ws).len() - 1;
    assert!((1..=2).contains(&cycles), "{cycles} cycles");
    assert!(
        docker
            .errors()
            .iter()
            .all(|e| !e.contains("Conflict") && !e.contains("already in use")),
        "{:?}",
        docker.errors()
    );
    assert_eq!(docker.max_in_flight(ws), 1);
    let w = s
        .wait_for(ws, |w| {
            w.status == pb::WorkspaceStatus::Online as i32
                && w.pending_cycle_id.is_empty()
                && w.running_cycle_id.is_empty()
        })
        .await;
    assert_eq!(
        containers(ws).await,
        [(w.generation.to_string(), "running".to_owned())]
    );
    s.shutdown().await;
    clean_up(ws).await;
}

#[tokio::test]
async fn a_container_killed_out_of_band_is_brought_back_by_exactly_one_reconciler_cycle() {
    let s = server().await;
    let ws = s.create("docker-kill").await;
    online(&s, ws, 1).await;
    docker(&["kill", &format!("ws-{ws}")]).await;

    let w = online(&s, ws, 2).await;
    let reconciler = w
        .trigger_stats
        .iter()
        .find(|t| t.trigger == pb::Trigger::Reconciler as i32)
        .cloned()
        .unwrap_or_default();
    assert_eq!(reconciler.accepted, 1, "{:?}", w.trigger_stats);
    assert_eq!(
        containers(ws).await,
        [("2".to_owned(), "running".to_owned())]
    );
    let cycles = s
        .client()
        .list_cycles(pb::ListCyclesRequest {
            workspace_id: ws.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .cycles;
    assert_eq!(cycles.len(), 2);
    assert!(
        cycles[0]
            .triggers
            .iter()
            .any(|t| t.trigger == pb::Trigger::Reconciler as i32)
    );
    assert_eq!(
        s.docker.as_ref().unwrap().starts(ws).len(),
        2,
        "exactly one more start"
    );
    s.shutdown().await;
    clean_up(ws).await;
}

#[tokio::test]
async fn a_leftover_container_of_an_older_generation_is_removed_before_start() {
    let s = server().await;
    let ws = s.create("docker-leftover").await;
    online(&s, ws, 1).await;
    // A crash left a stray container of generation 1 under another name.
    docker(&[
        "create",
        "--label",
        &format!("wl.workspace={ws}"),
        "--label",
        "wl.generation=1",
        "--name",
        &format!("stray-{ws}"),
        AGENT_IMAGE,
    ])
    .await;
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(matches!(last(&events), Event::Online(o) if o.generation == 2));
    assert_eq!(
        containers(ws).await,
        [("2".to_owned(), "running".to_owned())]
    );
    s.shutdown().await;
    clean_up(ws).await;
}

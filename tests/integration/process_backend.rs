//! End to end on the process backend: the real agent binary as a child
//! process, real Postgres, the real gRPC API.

use std::{os::unix::fs::MetadataExt, time::Duration};

use workspace_lifecycle::{proto as pb, proto::restart_event::Event};

use crate::support::{
    BackendChoice, Options, TestDb, TestServer, agent_reachable_tempdir, assert_limit_refusal,
    bounded, kinds, last, server_process::ServerProcess, workspace,
};

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

#[tokio::test]
async fn create_restart_with_a_secret_stop_and_delete_leave_no_agent_behind() {
    let s = TestServer::start(process_options()).await;
    let ws = s.create("proc").await;
    let first = s.online_at(ws, 1).await;
    let pid1 = agent_pid(&first);
    assert!(alive(pid1), "generation 1 agent runs");

    // Set a secret, then restart: generation 2's agent sees it.
    let set = s.set_secret(ws, "API_KEY", "sk-live-1").await;
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert_eq!(kinds(&events)[0], "accepted");
    assert!(kinds(&events).contains(&"phase"));
    let Event::Online(online_event) = last(&events) else {
        panic!("{events:?}")
    };
    assert_eq!(online_event.generation, 2);
    assert_eq!(online_event.config_version, set.config_version);
    let second = s.online_at(ws, 2).await;
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
    assert!(matches!(last(&s.stop(ws, "done").await), Event::Stopped(_)));
    assert!(!alive(pid2), "stop left the agent {pid2} running");
    assert_eq!(s.get(ws).await.status, pb::WorkspaceStatus::Stopped as i32);

    // Start again, then delete: gone, and no process left.
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(matches!(last(&events), Event::Online(o) if o.generation == 3));
    let pid3 = agent_pid(&s.online_at(ws, 3).await);
    assert!(matches!(last(&s.delete(ws, "").await), Event::Deleted(_)));
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

/// Shutdown never touches an instance (its cycle may be handed to another
/// replica); the agent ends with the server process that launched it.
#[tokio::test]
async fn the_agent_ends_with_the_server_process_that_launched_it() {
    let db = TestDb::create().await;
    let dir = agent_reachable_tempdir();
    let server = ServerProcess::start(dir.path(), "server", |command| {
        command.args(["--database-url", &db.url]);
    })
    .await;
    let client = server.client().await;
    let request = workspace::create_request("parent", pb::BackendKind::Process);
    let id = workspace::create(&client, request).await;
    let online = workspace::settled(&client, &id, workspace::is_online).await;
    let pid = agent_pid(&online);
    assert!(alive(pid));
    let server_pid = server.child.id().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut child = server.child;
    bounded("the server exits", child.wait()).await.unwrap();
    bounded("the agent ends with it", async {
        while alive(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Under root, the agent is `nobody`: its files and log are its own and
/// private, and it runs in a directory neither it nor an operator writes.
#[tokio::test]
async fn the_agent_runs_unprivileged_with_private_files() {
    let s = TestServer::start(process_options()).await;
    let ws = s.create("private").await;
    s.online_at(ws, 1).await;
    s.write_file(ws, "conf/app.toml", b"x = 1").await;
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(matches!(last(&events), Event::Online(o) if o.generation == 2));
    let w = s.online_at(ws, 2).await;
    assert_eq!(w.agent.as_ref().unwrap().file_paths, ["conf/app.toml"]);
    let pid = agent_pid(&w);

    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace()
            .skip(1)
            .all(|u| u == nobody.uid.to_string()),
        "{uid}"
    );
    let generation = s.data_dir.path().join(format!("process/{ws}/gen-2"));
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        generation.join("run")
    );
    for (path, mode) in [
        ("files", 0o700),
        ("files/conf", 0o700),
        ("files/conf/app.toml", 0o600),
        ("agent.log", 0o600),
    ] {
        let meta = std::fs::metadata(generation.join(path)).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o777),
            (nobody.uid.as_raw(), mode),
            "{path}"
        );
    }
    s.shutdown().await;
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
    let created = s.online_at(ws, 1).await;
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
                    request_id: String::new(),
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

#[tokio::test]
async fn a_config_the_agents_exec_could_not_carry_is_refused_and_changes_nothing() {
    // A short window, so the admitted secrets are delivered soon (C7).
    let s = TestServer::start(Options {
        window: Duration::from_secs(2),
        ..process_options()
    })
    .await;
    let mut client = s.client();

    // Secrets of 65,000 bytes, each within the secret limit, until the
    // whole config would be past the limit: that one is refused and stored
    // nothing, and the workspace still boots with every secret admitted.
    let ws = s.create("big-secrets").await;
    s.online_at(ws, 1).await;
    let value = "x".repeat(65_000);
    let mut admitted = Vec::new();
    let refused = loop {
        assert!(admitted.len() < 200, "200 secrets (13 MB) admitted");
        let answer = client
            .set_secret(pb::SetSecretRequest {
                workspace_id: ws.to_string(),
                name: format!("BIG{}", admitted.len()),
                value: value.clone(),
                request_id: String::new(),
            })
            .await;
        match answer {
            Ok(answer) => admitted.push(answer.into_inner()),
            Err(status) => break status,
        }
    };
    assert_limit_refusal(&refused, "process.exec_bytes");
    assert!(!refused.message().contains("xxxx"), "no value in the error");
    let last = admitted
        .last()
        .expect("some large secrets fit")
        .config_version;
    let w = s
        .wait_for(ws, |w| {
            w.status == pb::WorkspaceStatus::Online as i32
                && w.agent.as_ref().is_some_and(|a| a.config_version >= last)
        })
        .await;
    assert_eq!(w.config_version, last, "the refused secret changed nothing");
    assert_eq!(w.secret_names.len(), admitted.len());
    assert_eq!(w.agent.unwrap().secret_names.len(), admitted.len());
    s.shutdown().await;
}

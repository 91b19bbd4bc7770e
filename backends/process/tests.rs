use std::collections::BTreeMap;

use super::*;
use crate::{AgentToken, ConfigVersion, Secret, WorkspaceSpec};

fn backend_in(dir: &Path, grace: Duration) -> ProcessConfig {
    ProcessConfig {
        root: dir.to_path_buf(),
        agent_command: vec!["/bin/sh".into(), "-c".into(), "exec sleep 600".into()],
        stop_grace: grace,
        journal: None,
    }
}

fn launch(workspace: WorkspaceId, generation: u64, command: &[&str]) -> Launch {
    Launch {
        workspace,
        generation: Generation(generation),
        config_version: ConfigVersion(1),
        spec: WorkspaceSpec {
            command: command.iter().map(|s| s.to_string()).collect(),
            ..WorkspaceSpec::default()
        },
        secrets: [("API_KEY".to_owned(), Secret::new("s3cret"))].into(),
        files: BTreeMap::from([("conf/app.toml".to_owned(), b"x = 1".to_vec())]),
        token: AgentToken::new("token"),
        service_url: "http://127.0.0.1:9".into(),
    }
}

fn pid_of(backend: &ProcessBackend, workspace: WorkspaceId) -> u32 {
    let raw = std::fs::read(backend.workspace_dir(workspace).join("instance.json")).unwrap();
    serde_json::from_slice::<InstanceRecord>(&raw).unwrap().pid
}

#[tokio::test]
async fn start_runs_the_command_with_config_and_stop_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backend = ProcessBackend::new(backend_in(dir.path(), Duration::from_secs(5)))
        .await
        .unwrap();
    let ws = WorkspaceId::new();
    // A shell that forks a grandchild: stop must take the whole group.
    let script =
        r#"echo "$API_KEY" > seen; cat "$WL_FILES_DIR/conf/app.toml" >> seen; sleep 600 & wait"#;
    backend
        .start(&launch(ws, 1, &["/bin/sh", "-c", script]))
        .await
        .unwrap();
    let pid = pid_of(&backend, ws);
    assert_eq!(
        backend.state(ws).await.unwrap(),
        InstanceState::of(Generation(1), InstancePhase::Running)
    );
    let seen = backend.generation_dir(ws, Generation(1)).join("seen");
    for _ in 0..200 {
        if std::fs::read_to_string(&seen).is_ok_and(|s| s.contains("x = 1")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "s3cret\nx = 1");

    backend.stop(ws).await.unwrap();
    assert!(
        !procfs::is_alive(pid, None),
        "agent pid {pid} survived stop"
    );
    let group_left = std::process::Command::new("pgrep")
        .args(["-g", &pid.to_string()])
        .output()
        .unwrap();
    assert!(group_left.stdout.is_empty(), "process group not empty");
    assert_eq!(backend.state(ws).await.unwrap(), InstanceState::missing());
    // Idempotent.
    backend.stop(ws).await.unwrap();
}

#[tokio::test]
async fn stop_kills_an_instance_that_ignores_sigterm_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let backend = ProcessBackend::new(backend_in(dir.path(), Duration::from_millis(200)))
        .await
        .unwrap();
    let ws = WorkspaceId::new();
    backend
        .start(&launch(
            ws,
            1,
            &["/bin/sh", "-c", "trap '' TERM; sleep 600 & wait"],
        ))
        .await
        .unwrap();
    let pid = pid_of(&backend, ws);
    tokio::time::sleep(Duration::from_millis(50)).await;
    backend.stop(ws).await.unwrap();
    assert!(!procfs::is_alive(pid, None));
}

#[tokio::test]
async fn a_crashed_instance_reports_failed_with_its_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let backend = ProcessBackend::new(backend_in(dir.path(), Duration::from_secs(1)))
        .await
        .unwrap();
    let ws = WorkspaceId::new();
    backend
        .start(&launch(ws, 4, &["/bin/sh", "-c", "exit 3"]))
        .await
        .unwrap();
    let mut state = backend.state(ws).await.unwrap();
    for _ in 0..200 {
        if matches!(state.phase, InstancePhase::Failed(_)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        state = backend.state(ws).await.unwrap();
    }
    assert_eq!(
        state,
        InstanceState::of(
            Generation(4),
            InstancePhase::Failed("process exited with status 3".into())
        )
    );
}

#[tokio::test]
async fn starting_a_new_generation_replaces_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let backend = ProcessBackend::new(backend_in(dir.path(), Duration::from_secs(1)))
        .await
        .unwrap();
    let ws = WorkspaceId::new();
    backend.start(&launch(ws, 1, &[])).await.unwrap();
    let first = pid_of(&backend, ws);
    backend.start(&launch(ws, 2, &[])).await.unwrap();
    let second = pid_of(&backend, ws);
    assert_ne!(first, second);
    assert!(!procfs::is_alive(first, None), "generation 1 left running");
    assert_eq!(
        backend.state(ws).await.unwrap().generation,
        Some(Generation(2))
    );
    backend.delete(ws).await.unwrap();
    assert!(!procfs::is_alive(second, None));
    assert!(!backend.workspace_dir(ws).exists());
}

#[tokio::test]
async fn server_environment_does_not_leak_into_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let backend = ProcessBackend::new(backend_in(dir.path(), Duration::from_secs(1)))
        .await
        .unwrap();
    let ws = WorkspaceId::new();
    backend
        .start(&launch(
            ws,
            1,
            &["/bin/sh", "-c", "env > env.txt; sleep 600"],
        ))
        .await
        .unwrap();
    let env_file = backend.generation_dir(ws, Generation(1)).join("env.txt");
    for _ in 0..200 {
        if std::fs::read_to_string(&env_file).is_ok_and(|s| s.contains("WL_AGENT_TOKEN")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(env.contains("WL_AGENT_TOKEN=token"));
    assert!(env.contains("API_KEY=s3cret"));
    assert!(!env.contains("CARGO_"), "server env leaked: {env}");
    backend.stop(ws).await.unwrap();
}

#[test]
fn file_paths_that_escape_are_refused() {
    let root = Path::new("/tmp/x");
    for bad in ["../etc/passwd", "/abs", "a/../../b", "", "./a"] {
        assert!(file_target(root, bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(file_target(root, "a/b.txt").unwrap(), root.join("a/b.txt"));
}

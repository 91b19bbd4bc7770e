//! The process backend's lifecycle with real child processes — start,
//! graceful and forced stop, crashes, generations (C18), inventory (C17),
//! journal, pruning — judged by `/proc` and the file system rather than by
//! what the backend says of itself. Isolation is in `isolation`.

use std::{collections::BTreeMap, os::unix::fs::PermissionsExt, path::Path};

use super::*;
use crate::{AgentToken, ConfigVersion, Secret, WorkspaceSpec};

mod isolation;
mod limits;

/// A private temporary directory the agents' user may pass through.
fn reachable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

fn config_in(dir: &Path, grace: Duration) -> ProcessConfig {
    ProcessConfig {
        root: dir.join("process"),
        agent_command: vec!["/bin/sh".into(), "-c".into(), "exec sleep 600".into()],
        stop_grace: grace,
        journal: Some(dir.join("journal")),
        ..ProcessConfig::default()
    }
}

async fn backend_in(dir: &Path, grace: Duration) -> ProcessBackend {
    ProcessBackend::new(config_in(dir, grace)).await.unwrap()
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

fn pid_of(backend: &ProcessBackend, workspace: WorkspaceId, generation: u64) -> u32 {
    let dir = backend.layout.generation(workspace, Generation(generation));
    let raw = std::fs::read(dir.join(record::INSTANCE_FILE)).unwrap();
    serde_json::from_slice::<InstanceRecord>(&raw).unwrap().pid
}

/// Waits (bounded) until `path` holds `expected`.
async fn wait_for_file(path: &Path, expected: &str) -> String {
    for _ in 0..300 {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(expected)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn start_runs_the_command_with_config_and_stop_leaves_nothing() {
    let dir = reachable_tempdir();
    let backend = backend_in(dir.path(), Duration::from_secs(5)).await;
    let ws = WorkspaceId::new();
    // A shell that forks a grandchild: stop must take the whole group.
    let script = r#"echo "$API_KEY" > "$WL_FILES_DIR/seen"; cat "$WL_FILES_DIR/conf/app.toml" >> "$WL_FILES_DIR/seen"; sleep 600 & wait"#;
    backend
        .start(&launch(ws, 1, &["/bin/sh", "-c", script]))
        .await
        .unwrap();
    let pid = pid_of(&backend, ws, 1);
    assert_eq!(
        backend.state(ws).await.unwrap(),
        InstanceState::of(Generation(1), InstancePhase::Running)
    );
    let seen = backend
        .layout
        .generation(ws, Generation(1))
        .join("files/seen");
    assert_eq!(wait_for_file(&seen, "x = 1").await, "s3cret\nx = 1");

    backend
        .stop(ws, Generation(1), Halt::Graceful)
        .await
        .unwrap();
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
    assert!(!seen.exists(), "the files outlived the instance");
    // Idempotent.
    backend
        .stop(ws, Generation(1), Halt::Graceful)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_graceful_stop_kills_an_instance_that_ignores_sigterm_after_the_grace() {
    let dir = reachable_tempdir();
    let backend = backend_in(dir.path(), Duration::from_millis(300)).await;
    let ws = WorkspaceId::new();
    let ignores_term = ["/bin/sh", "-c", "trap '' TERM; exec sleep 1000"];
    backend.start(&launch(ws, 1, &ignores_term)).await.unwrap();
    let pid = pid_of(&backend, ws, 1);
    tokio::time::sleep(Duration::from_millis(50)).await; // The trap is set.
    let began = tokio::time::Instant::now();
    backend
        .stop(ws, Generation(1), Halt::Graceful)
        .await
        .unwrap();
    assert!(!procfs::is_alive(pid, None));
    assert!(
        began.elapsed() >= Duration::from_millis(300),
        "no grace given"
    );
}

#[tokio::test]
async fn a_forced_stop_kills_an_instance_that_ignores_sigterm_at_once() {
    let dir = reachable_tempdir();
    // A grace far longer than the test may take: only SIGKILL at once ends
    // it in time.
    let backend = backend_in(dir.path(), Duration::from_secs(600)).await;
    let ws = WorkspaceId::new();
    let ignores_term = ["/bin/sh", "-c", "trap '' TERM; exec sleep 1000"];
    backend.start(&launch(ws, 1, &ignores_term)).await.unwrap();
    let pid = pid_of(&backend, ws, 1);
    tokio::time::timeout(
        Duration::from_secs(10),
        backend.stop(ws, Generation(1), Halt::Force),
    )
    .await
    .expect("a forced stop does not wait for the grace")
    .unwrap();
    assert!(
        !procfs::is_alive(pid, None),
        "pid {pid} survived a forced stop"
    );
}

#[tokio::test]
async fn a_crashed_instance_reports_failed_with_its_exit_status() {
    let dir = reachable_tempdir();
    let backend = backend_in(dir.path(), Duration::from_secs(1)).await;
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
    let failed = InstancePhase::Failed("process exited with status 3".into());
    assert_eq!(state, InstanceState::of(Generation(4), failed.clone()));
    let listed = backend.inventory().await.unwrap();
    assert!(listed.contains(&InstanceRef {
        workspace: ws,
        generation: Some(Generation(4)),
        phase: failed,
    }));
}

#[tokio::test]
async fn a_start_removes_only_strictly_older_generations_and_a_stale_one_touches_nothing() {
    let dir = reachable_tempdir();
    let backend = backend_in(dir.path(), Duration::from_secs(1)).await;
    let ws = WorkspaceId::new();
    backend.start(&launch(ws, 1, &[])).await.unwrap();
    let first = pid_of(&backend, ws, 1);
    backend.start(&launch(ws, 2, &[])).await.unwrap();
    let second = pid_of(&backend, ws, 2);
    assert!(!procfs::is_alive(first, None), "generation 1 left running");
    assert!(procfs::is_alive(second, None));

    // A retry of generation 2 is the same instance.
    backend.start(&launch(ws, 2, &[])).await.unwrap();
    assert_eq!(pid_of(&backend, ws, 2), second);

    // A stale owner's late start of generation 1 is refused, and
    // generation 2 runs on.
    let stale = backend.start(&launch(ws, 1, &[])).await.unwrap_err();
    assert!(
        matches!(
            stale,
            BackendError::Superseded {
                newer: Generation(2),
                ..
            }
        ),
        "{stale}"
    );
    assert!(
        procfs::is_alive(second, None),
        "a stale start touched generation 2"
    );

    // A stale stop (through 1) leaves generation 2 too.
    backend.stop(ws, Generation(1), Halt::Force).await.unwrap();
    assert!(
        procfs::is_alive(second, None),
        "a stale stop touched generation 2"
    );
    backend
        .delete(ws, Generation(1), Halt::Force)
        .await
        .unwrap();
    assert!(
        procfs::is_alive(second, None),
        "a stale delete touched generation 2"
    );
    assert_eq!(
        backend.state(ws).await.unwrap(),
        InstanceState::of(Generation(2), InstancePhase::Running)
    );

    backend
        .delete(ws, Generation(2), Halt::Graceful)
        .await
        .unwrap();
    assert!(!procfs::is_alive(second, None));
    assert!(!backend.layout.workspace(ws).exists());
    // Idempotent.
    backend
        .delete(ws, Generation(2), Halt::Graceful)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_inventory_lists_every_instance_of_every_workspace() {
    let dir = reachable_tempdir();
    let backend = backend_in(dir.path(), Duration::from_secs(1)).await;
    let (a, b) = (WorkspaceId::new(), WorkspaceId::new());
    backend.start(&launch(a, 1, &[])).await.unwrap();
    backend.start(&launch(b, 3, &[])).await.unwrap();
    let mut listed = backend.inventory().await.unwrap();
    listed.sort_by_key(|i| i.generation);
    let running = |workspace, g| InstanceRef {
        workspace,
        generation: Some(Generation(g)),
        phase: InstancePhase::Running,
    };
    assert_eq!(listed, [running(a, 1), running(b, 3)]);
    backend.stop(a, Generation(1), Halt::Force).await.unwrap();
    assert_eq!(backend.inventory().await.unwrap(), [running(b, 3)]);
    backend.stop(b, Generation(3), Halt::Force).await.unwrap();
    assert_eq!(backend.inventory().await.unwrap(), []);
}

#[tokio::test]
async fn the_journal_records_every_call_that_changes_an_instance() {
    let dir = reachable_tempdir();
    let backend = backend_in(dir.path(), Duration::from_secs(1)).await;
    let ws = WorkspaceId::new();
    backend.start(&launch(ws, 1, &[])).await.unwrap();
    backend
        .stop(ws, Generation(1), Halt::Graceful)
        .await
        .unwrap();
    backend.start(&launch(ws, 2, &[])).await.unwrap();
    backend.stop(ws, Generation(2), Halt::Force).await.unwrap();
    backend
        .delete(ws, Generation(2), Halt::Force)
        .await
        .unwrap();
    let entries = journal::read(&dir.path().join("journal")).unwrap();
    type Call<'a> = (&'a str, Option<u64>, Option<u64>, Option<&'a str>);
    let calls: Vec<Call<'_>> = entries
        .iter()
        .map(|e| {
            (
                e.op.as_str(),
                e.generation.map(|g| g.0),
                e.through.map(|g| g.0),
                e.halt.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("start", Some(1), None, None),
            ("stop", None, Some(1), Some("graceful")),
            ("start", Some(2), None, None),
            ("stop", None, Some(2), Some("force")),
            ("delete", None, Some(2), Some("force")),
        ]
    );
    assert!(entries.iter().all(|e| e.ok && e.begin_us <= e.end_us));
    assert!(entries.windows(2).all(|p| p[0].end_us <= p[1].begin_us));
}

#[tokio::test]
async fn stopped_generation_directories_are_pruned_to_the_newest_few() {
    let dir = reachable_tempdir();
    let backend = ProcessBackend::new(ProcessConfig {
        keep_generations: 2,
        ..config_in(dir.path(), Duration::from_secs(1))
    })
    .await
    .unwrap();
    let ws = WorkspaceId::new();
    for generation in 1..=6 {
        backend.start(&launch(ws, generation, &[])).await.unwrap();
    }
    // The running generation and the two newest stopped ones, logs kept.
    assert_eq!(
        backend.layout.generations(ws),
        [Generation(4), Generation(5), Generation(6)]
    );
    assert!(
        backend
            .layout
            .generation(ws, Generation(5))
            .join("agent.log")
            .exists()
    );
    backend
        .delete(ws, Generation(6), Halt::Force)
        .await
        .unwrap();
    assert!(!backend.layout.workspace(ws).exists());
}

//! The process backend's isolation, judged by `/proc` and the file system:
//! agents run unprivileged in a directory they cannot write, with private
//! files, none of the server's environment, and paths that cannot escape.

use std::os::unix::fs::MetadataExt;

use super::*;

#[tokio::test]
async fn agents_run_unprivileged_in_a_directory_they_cannot_write_with_private_files() {
    let dir = reachable_tempdir();
    let backend = backend_in(dir.path(), Duration::from_secs(1)).await;
    let nobody = nix::unistd::User::from_name(DEFAULT_RUN_AS)
        .unwrap()
        .unwrap();
    let ws = WorkspaceId::new();
    let touch_cwd = "touch ./planted 2>/dev/null; exec sleep 600";
    backend
        .start(&launch(ws, 1, &["/bin/sh", "-c", touch_cwd]))
        .await
        .unwrap();
    let pid = pid_of(&backend, ws, 1);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uids: Vec<u32> = uid_line[4..]
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(uids, [nobody.uid.as_raw(); 4], "{uid_line}");

    let generation = backend.layout.generation(ws, Generation(1));
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(cwd, generation.join("run"));
    let run = std::fs::metadata(&cwd).unwrap();
    assert_eq!((run.uid(), run.mode() & 0o777), (0, 0o711));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!cwd.join("planted").exists(), "the agent wrote its cwd");

    let owned_by_agent = |path: &Path, mode: u32| {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (nobody.uid.as_raw(), nobody.gid.as_raw(), mode),
            "{}",
            path.display()
        );
    };
    owned_by_agent(&generation.join("files"), 0o700);
    owned_by_agent(&generation.join("files/conf"), 0o700);
    owned_by_agent(&generation.join("files/conf/app.toml"), 0o600);
    owned_by_agent(&generation.join("agent.log"), 0o600);
    backend.stop(ws, Generation(1), Halt::Force).await.unwrap();
}

#[tokio::test]
async fn server_environment_does_not_leak_into_the_instance() {
    let dir = reachable_tempdir();
    let backend = backend_in(dir.path(), Duration::from_secs(1)).await;
    let ws = WorkspaceId::new();
    backend
        .start(&launch(
            ws,
            1,
            &[
                "/bin/sh",
                "-c",
                "env > \"$WL_FILES_DIR/env.txt\"; sleep 600",
            ],
        ))
        .await
        .unwrap();
    let env_file = backend
        .layout
        .generation(ws, Generation(1))
        .join("files/env.txt");
    let env = wait_for_file(&env_file, "WL_AGENT_TOKEN").await;
    assert!(env.contains("WL_AGENT_TOKEN=token"));
    assert!(env.contains("API_KEY=s3cret"));
    assert!(!env.contains("CARGO_"), "server env leaked: {env}");
    backend.stop(ws, Generation(1), Halt::Force).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_root_fails_at_startup_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let err = ProcessBackend::new(config_in(dir.path(), Duration::from_secs(1)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("chmod o+x") && err.contains("--process-run-as"),
        "{err}"
    );
}

#[test]
fn file_paths_that_escape_are_refused() {
    let root = Path::new("/tmp/x");
    for bad in ["../etc/passwd", "/abs", "a/../../b", "", "./a"] {
        assert!(layout::file_target(root, bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(
        layout::file_target(root, "a/b.txt").unwrap(),
        root.join("a/b.txt")
    );
}

//! The server binary run as its own process, the way operators run it:
//! flags and environment, a log file, the admin token it generates under
//! its data directory, its pid (for signals, CPU and RSS).
//! No contract of its own: the tests and benches check C1–C20 with it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::process::{Child, Command};
use workspace_lifecycle::{
    auth::client::{LifecycleClient, lifecycle_client},
    proto::workspace_lifecycle_client::WorkspaceLifecycleClient,
};

use crate::{agent_reachable, bounded_by, free_port, server_binary};

/// How long a server process may take to serve (a fresh database's
/// migrations included).
pub const SERVE_WITHIN: Duration = Duration::from_secs(60);

/// An agent that takes 2 s to boot, so a cycle is surely in flight while
/// the test does something to it.
pub fn slow_agent(dir: &Path) -> String {
    let path = dir.join("slow-agent");
    let script = format!("#!/bin/sh\nsleep 2\nexec {} agent\n", server_binary());
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

/// One `workspace-lifecycle` server process.
pub struct ServerProcess {
    /// The process.
    pub child: Child,
    /// Its pid.
    pub pid: u32,
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    /// Its data directory (where its admin token is).
    pub dir: PathBuf,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts the binary on a free port with `dir` as its data directory
    /// (opened to the process backend's agents), logging to
    /// `dir/<name>.log`; `configure` adds the flags and environment.
    /// Returns once it serves (at most [`SERVE_WITHIN`]).
    pub async fn start(dir: &Path, name: &str, configure: impl FnOnce(&mut Command)) -> Self {
        agent_reachable(dir);
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(server_binary());
        command
            .args(["--listen", &addr, "--data-dir", &dir.to_string_lossy()])
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true);
        configure(&mut command);
        let child = command.spawn().expect("the server binary runs");
        let pid = child.id().expect("a pid");
        let server = Self {
            child,
            pid,
            addr: format!("http://{addr}"),
            dir: dir.to_path_buf(),
            log,
        };
        let serving = format!("the server serves (see {})", server.log.display());
        bounded_by(SERVE_WITHIN, &serving, async {
            while WorkspaceLifecycleClient::connect(server.addr.clone())
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        server
    }

    /// The admin token the server generated under its data directory
    /// (servers sharing the directory share it).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin-token"))
            .expect("admin token")
            .trim()
            .to_owned()
    }

    /// A client with the admin token (see [`ServerProcess::token`]).
    pub async fn client(&self) -> LifecycleClient {
        self.client_with(&self.token()).await
    }

    /// A client sending `token`.
    pub async fn client_with(&self, token: &str) -> LifecycleClient {
        let channel = tonic::transport::Endpoint::from_shared(self.addr.clone())
            .unwrap()
            .connect()
            .await
            .expect("connect to the server");
        lifecycle_client(channel, token).unwrap()
    }

    /// Resident memory now, from /proc/<pid>/status.
    pub fn rss_bytes(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// SIGTERM, then at most `grace` for a clean exit, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

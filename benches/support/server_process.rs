//! The server binary run as its own process, as operators run it (built by
//! `cargo bench` with the bench profile): flags, a log file, the admin token
//! it generates under its data directory, its pid for CPU and RSS.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::process::{Child, Command};
use workspace_lifecycle::{
    auth::client::{LifecycleClient, lifecycle_client},
    proto as pb,
};

/// The server binary this benchmark was built with.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_workspace-lifecycle")
}

/// One `workspace-lifecycle serve` process.
pub struct ServerProcess {
    child: Child,
    pub pid: u32,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts the binary on a free port against `database_url` with `dir`
    /// as its data directory (replicas share one: the first one's admin
    /// token and secrets key serve them all); `extra` flags are appended.
    /// Returns once it accepts gRPC calls (at most 60 s).
    pub async fn start(database_url: &str, dir: &Path, name: &str, extra: &[&str]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("server log");
        let mut command = Command::new(binary());
        command
            .args(["--listen", &addr, "--database-url", database_url])
            .arg("--data-dir")
            .arg(dir)
            .args(["--backends", "process"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("server log"))
            .stderr(out)
            .kill_on_drop(true);
        let child = command.spawn().expect("the server binary runs");
        let pid = child.id().expect("a pid");
        let server = Self {
            child,
            pid,
            addr,
            dir: dir.to_path_buf(),
            log,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let token = dir.join("admin-token");
            if token.exists() && tokio::net::TcpStream::connect(&server.addr).await.is_ok() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server did not serve within 60 s; see {}",
                server.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// The admin token the first replica generated.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin-token"))
            .expect("admin token")
            .trim()
            .to_owned()
    }

    pub async fn client(&self) -> LifecycleClient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to the server");
        lifecycle_client(channel, &self.token()).unwrap()
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

/// Each workspace's config version now.
pub async fn versions(client: &LifecycleClient, ids: &[String]) -> Vec<u64> {
    let mut out = Vec::new();
    for id in ids {
        let w = client
            .clone()
            .get_workspace(pb::GetWorkspaceRequest {
                workspace_id: id.clone(),
            })
            .await
            .expect("GetWorkspace")
            .into_inner();
        out.push(w.config_version);
    }
    out
}

/// Waits (at most 120 s) until every workspace is ONLINE.
pub async fn wait_online(client: &LifecycleClient, ids: &[String]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for id in ids {
        loop {
            let w = client
                .clone()
                .get_workspace(pb::GetWorkspaceRequest {
                    workspace_id: id.clone(),
                })
                .await
                .expect("GetWorkspace")
                .into_inner();
            if w.status == pb::WorkspaceStatus::Online as i32 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "workspace {id} not ONLINE within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

//! The server binary run as its own process, the way operators run it:
//! flags and environment, a log file, its generated admin token.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::process::{Child, Command};
use workspace_lifecycle::{
    auth::client::{LifecycleClient, lifecycle_client},
    proto::workspace_lifecycle_client::WorkspaceLifecycleClient,
};

use super::{bounded, server_binary};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    /// Its data directory (where its admin token is).
    pub dir: PathBuf,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts the binary on a free port with `dir` as its data directory,
    /// logging to `dir/<name>.log`; `configure` adds the test's flags and
    /// environment. Returns once it serves.
    pub async fn start(dir: &Path, name: &str, configure: impl FnOnce(&mut Command)) -> Self {
        // The process backend's agents (an unprivileged user under root)
        // must pass through the data directory.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(server_binary());
        command
            .args(["--listen", &addr, "--data-dir", &dir.to_string_lossy()])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true);
        configure(&mut command);
        let server = Self {
            child: command.spawn().expect("the server binary runs"),
            addr: format!("http://{addr}"),
            dir: dir.to_path_buf(),
            log,
        };
        bounded("the server serves", async {
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

    /// A client with the admin token the server generated under its data
    /// directory (servers sharing the directory share it).
    pub async fn client(&self) -> LifecycleClient {
        let channel = tonic::transport::Endpoint::from_shared(self.addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let token = std::fs::read_to_string(self.dir.join("admin-token")).unwrap();
        lifecycle_client(channel, token.trim()).unwrap()
    }
}

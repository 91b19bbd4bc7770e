//! What the integration tests (`tests/integration/`) and the benchmarks
//! (`benches/`) stand on, written once: fresh databases, the server binary
//! run as its own process, backends that count, time and hold what they are
//! asked (the fake one included), and bounded waits on a workspace's state.
//! No contract of its own: the tests and benches check C1–C20 with it.
//!
//! A crate rather than a module both include: it is compiled once (not once
//! per bench binary), its items are a real API (no blanket `dead_code`
//! allowances), and a newcomer finds it by name.

pub mod counted;
pub mod db;
pub mod fake_backend;
pub mod server_process;
pub mod workspace;

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

/// Every wait in the tests ends by this long, pass or fail.
pub const WAIT: Duration = Duration::from_secs(30);

/// Runs `f` with a bound ([`WAIT`]), failing if it takes longer.
pub async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    bounded_by(WAIT, what, f).await
}

/// Runs `f` with the bound `limit`, failing if it takes longer.
pub async fn bounded_by<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {limit:?}"))
}

/// The directory of the running test or bench executable's profile
/// (`target/debug`, `target/release`): Cargo puts the package's binaries
/// there, and the executable itself in `deps/` below it.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let mut dir = exe.parent().expect("an executable lives in a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps/ lives in a profile directory");
    }
    dir.to_path_buf()
}

/// `target/tmp` (what Cargo calls `CARGO_TARGET_TMPDIR`): scratch space
/// kept between runs.
pub fn target_tmpdir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("a profile directory lives in the target directory")
        .join("tmp")
}

/// The path of the server binary built with these tests or benchmarks
/// (Cargo builds a package's binaries for its integration tests and
/// benches, next to their `deps/`); the process backend runs its `agent`
/// subcommand.
pub fn server_binary() -> String {
    let path = profile_dir().join("workspace-lifecycle");
    assert!(
        path.is_file(),
        "no server binary at {} (run through cargo test / cargo bench)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// A temporary directory the process backend's agents can pass through:
/// they run as an unprivileged user when the tests run as root, and a
/// fresh temporary directory is private (0700).
pub fn agent_reachable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    agent_reachable(dir.path());
    dir
}

/// Opens `dir` to the process backend's agents (mode 0711).
pub fn agent_reachable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Resident memory of this process, in bytes (from /proc/self/statm): what
/// the memory test and benchmarks compare before and after a crowd.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

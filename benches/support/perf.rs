//! `perf record` of running processes for the length of a run, for the
//! admission-path profile (scripts/profile-admission).

use std::{path::Path, time::Duration};

/// Starts `perf record` of `pids` into `dir/name.data`; [`stop`] ends it.
pub async fn start(dir: &Path, name: &str, pids: &[u32]) -> tokio::process::Child {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let child = tokio::process::Command::new("perf")
        .args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-q"])
        .arg("-o")
        .arg(dir.join(format!("{name}.data")))
        .args(["-p", &pids.join(",")])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("perf runs (apt-get install linux-perf)");
    // Let it attach before the load starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    child
}

pub async fn stop(mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(120), child.wait()).await;
}

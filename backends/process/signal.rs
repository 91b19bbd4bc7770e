//! Ending an instance's processes: the whole process group, SIGTERM and
//! the grace before SIGKILL (graceful), or SIGKILL at once (forced), then a
//! bounded wait until the group is empty.
//! Contracts: C17, C18 (the backend's own truth the control plane is judged by).

use std::time::Duration;

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};

use super::{procfs, record::InstanceRecord};
use crate::Halt;

/// Signals the instance's process group and waits until it is empty:
/// SIGTERM, the grace, then SIGKILL; or SIGKILL at once when forced.
pub(super) async fn terminate(record: &InstanceRecord, halt: Halt, grace: Duration) {
    let group = Pid::from_raw(record.pid as i32);
    if halt == Halt::Graceful && procfs::is_alive(record.pid, Some(record.start_time)) {
        let _ = killpg(group, Signal::SIGTERM);
        if !wait_until_dead(record, grace).await {
            tracing::warn!(pid = record.pid, "instance ignored SIGTERM; killing");
        }
    }
    // Whatever is left in the group (the leader, or processes it forked)
    // gets SIGKILL, and we wait until the group is empty — except for
    // zombies of a paused server, which run nothing and which nobody will
    // reap until that server resumes.
    let _ = killpg(group, Signal::SIGKILL);
    wait_until_dead(record, Duration::from_secs(5)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut pause = Duration::from_millis(1);
    while killpg(group, None).is_ok()
        && procfs::group_pending(record.pid)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// Polls until the recorded process is gone; true if it went within `limit`.
/// The poll starts at 1 ms and doubles up to 20 ms: an agent usually exits
/// within a few milliseconds of SIGTERM, and a flat 20 ms poll made that
/// wait most of a cycle's control-plane time (see BENCHMARKS.md).
pub(super) async fn wait_until_dead(record: &InstanceRecord, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        if !procfs::is_alive(record.pid, Some(record.start_time)) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

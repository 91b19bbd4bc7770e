//! The server's hold on the embedded cluster: whatever way the process
//! leaves — a startup error, SIGTERM or SIGINT, a panic unwinding `main` —
//! a cluster this process is in charge of is stopped, so no Postgres
//! outlives the server running on it. (`SIGKILL` cannot be caught; a later
//! start finds the cluster running, sees that the server in charge of it is
//! gone, and takes charge of it — [`take_charge`].)
//! No lifecycle contract (C1–C20): how the process runs.

use std::path::Path;

use super::{EmbeddedError, EmbeddedPostgres};

/// Where the pid of the server in charge of the cluster is kept.
const CHARGE_FILE: &str = "pg.owner";

/// Whether this process is in charge of the cluster under `root` (and so
/// stops it on the way out): when it `started` it, or when the server that
/// was in charge is gone. A cluster whose server still runs (another server
/// on the same data directory), or that no server of ours recorded, is left
/// to its owner. Records this process when it takes charge.
pub(super) fn take_charge(root: &Path, started: bool) -> bool {
    let file = root.join(CHARGE_FILE);
    let orphaned = || {
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|raw| raw.trim().parse::<i32>().ok())
            .is_some_and(|pid| !alive(pid))
    };
    if !started && !orphaned() {
        return false;
    }
    if let Err(err) = std::fs::write(&file, std::process::id().to_string()) {
        tracing::warn!(%err, "could not record this server as in charge of the embedded Postgres");
    }
    true
}

/// True if a process `pid` exists (possibly another user's).
fn alive(pid: i32) -> bool {
    pid > 0
        && !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        )
}

/// The embedded cluster, stopped on drop if this process is in charge of it.
#[derive(Debug)]
pub struct Owned(Option<EmbeddedPostgres>);

impl Owned {
    /// Takes charge of `pg`.
    pub fn new(pg: EmbeddedPostgres) -> Self {
        Self(Some(pg))
    }

    /// The cluster.
    pub fn get(&self) -> &EmbeddedPostgres {
        self.0.as_ref().expect("held until stopped")
    }

    /// Stops the cluster now if this process is in charge of it (a cluster
    /// another live server runs on is that server's).
    pub async fn stop(mut self) -> Result<(), EmbeddedError> {
        match self.0.take() {
            Some(pg) if pg.started_here() => pg.stop().await,
            _ => Ok(()),
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(pg) = self.0.take().filter(EmbeddedPostgres::started_here) {
            tracing::info!("stopping the embedded Postgres this process started");
            if let Err(err) = pg.stop_blocking() {
                tracing::warn!(%err, "could not stop the embedded Postgres");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_takes_charge_of_a_cluster_it_started_or_whose_server_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let recorded = || std::fs::read_to_string(dir.path().join(CHARGE_FILE)).unwrap();
        // Running, and no server of ours recorded: someone else's.
        assert!(!take_charge(dir.path(), false));
        // Started here: in charge, and recorded.
        assert!(take_charge(dir.path(), true));
        assert_eq!(recorded(), std::process::id().to_string());
        // Found running while its server lives: left to it.
        assert!(!take_charge(dir.path(), false));
        // Found running after its server died (SIGKILL): taken over.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let pid = gone.id();
        gone.wait().unwrap();
        std::fs::write(dir.path().join(CHARGE_FILE), pid.to_string()).unwrap();
        assert!(take_charge(dir.path(), false));
        assert_eq!(recorded(), std::process::id().to_string());
    }
}

//! Spawning one generation's agent as a child process: its files written
//! first so it boots with its generation's complete config, an environment
//! cleared of the server's own (no database URL or cloud credential leaks
//! into a workspace), an unprivileged user when the server is root, its own
//! process group (so a stop reaches every descendant), and a reaper task
//! that records how it ended for `state`.
//! Contracts: C17, C18 (the backend's own truth the control plane is judged by).

use std::{path::PathBuf, process::Stdio};

use tokio::{process::Command, sync::watch};
use workspace_agent::env as agent_env;

use super::{
    ProcessBackend, layout, procfs,
    record::{ExitRecord, InstanceRecord},
};
use crate::{
    BackendError, ConfigFootprint, Generation, Launch, LimitExceeded, WorkspaceId, footprint,
};

/// A child of this server process.
#[derive(Debug)]
pub(super) struct OwnChild {
    /// Its pid, to tell it from a later process recorded for the same
    /// generation.
    pub(super) pid: u32,
    /// How it ended, published by its reaper task.
    pub(super) exit: watch::Receiver<Option<ExitRecord>>,
}

impl ProcessBackend {
    /// Writes the generation's files and spawns its process.
    pub(super) async fn spawn(&self, launch: &Launch, dir: PathBuf) -> Result<(), BackendError> {
        let files: Vec<(String, Vec<u8>)> = launch
            .files
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let log = {
            let (dir, agent) = (dir.clone(), self.agent.clone());
            tokio::task::spawn_blocking(move || {
                layout::prepare_generation(&dir, &files, agent.as_ref())
            })
            .await
            .map_err(|e| BackendError::Other(format!("preparing the generation: {e}")))??
        };
        let argv = if launch.spec.command.is_empty() {
            &self.config.agent_command
        } else {
            &launch.spec.command
        };
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| BackendError::Rejected("empty command".into()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            // The server's own environment (database URL, cloud credentials)
            // must not leak into a workspace.
            .env_clear()
            .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
            .envs(launch.environment(&dir.join("files").to_string_lossy()))
            .env(agent_env::PARENT_PID, std::process::id().to_string())
            // Neither the operator (files go to files/) nor the agent can
            // write here.
            .current_dir(dir.join("run"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        if let Some(agent) = &self.agent {
            // Set in the child before exec (std also drops supplementary
            // groups), so nothing of the operator's runs as root.
            command.uid(agent.uid).gid(agent.gid);
        }
        let mut child = command
            .spawn()
            .map_err(|e| BackendError::Rejected(format!("cannot run {program:?}: {e}")))?;
        let pid = child
            .id()
            .ok_or_else(|| BackendError::Other("child exited before it was recorded".into()))?;
        let record = InstanceRecord {
            generation: launch.generation,
            pid,
            start_time: procfs::start_time(pid).unwrap_or_default(),
            server_pid: std::process::id(),
        };
        record.write(&dir).await?;
        let (exit_tx, exit_rx) = watch::channel(None);
        let key = (launch.workspace, launch.generation);
        self.own
            .lock()
            .expect("process table poisoned")
            .insert(key, OwnChild { pid, exit: exit_rx });

        // Reap the child when it exits and keep its exit status for `state`
        // (on disk, so other server processes can read it too).
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => ExitRecord::from_status(status),
                Err(e) => ExitRecord::Unknown(e.to_string()),
            };
            exit.write(&dir).await;
            tracing::debug!(workspace = %key.0, generation = %key.1, pid, ?exit, "instance exited");
            let _ = exit_tx.send(Some(exit));
        });
        Ok(())
    }
}

/// The name admission gives the `execve` limit.
pub const EXEC_LIMIT: &str = "process.exec_bytes";

/// What an agent's `execve` may carry on this machine: `ARG_MAX` (a quarter
/// of the stack limit agents inherit; Linux never allows more than 6 MiB),
/// less a margin for what a wrapper program adds before it execs the agent
/// in turn.
pub(super) fn exec_limit() -> usize {
    let arg_max = nix::unistd::sysconf(nix::unistd::SysconfVar::ARG_MAX)
        .ok()
        .flatten()
        .map_or(128 * 1024, |n| n as usize);
    arg_max.min(6 * 1024 * 1024).saturating_sub(EXEC_MARGIN)
}

/// Room left for what a wrapper adds to the environment (`PWD`, `SHLVL`…).
pub(super) const EXEC_MARGIN: usize = 16 * 1024;

impl ProcessBackend {
    /// Refuses a config whose agent `execve` could exceed [`exec_limit`].
    pub(super) fn exec_admits(&self, footprint: &ConfigFootprint) -> Result<(), LimitExceeded> {
        let files_dir = self
            .layout
            .generation(WorkspaceId::new(), Generation(u64::MAX))
            .join("files");
        let path = std::env::var_os("PATH").map_or(0, |p| p.len());
        // PATH and the parent's pid, as `spawn` sets them.
        let extra = "PATH=".len() + path + 1 + agent_env::PARENT_PID.len() + 12;
        let needed = footprint.exec_bytes(
            files_dir.as_os_str().len(),
            extra,
            &self.config.agent_command,
        );
        footprint::exec_admits(needed, EXEC_LIMIT, exec_limit())
    }
}

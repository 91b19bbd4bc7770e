//! The `process` backend: each workspace is the agent running as a local
//! child process. It is the embedded default, so it must be as careful as
//! the real backends: stop is SIGTERM to the whole process group, a bounded
//! wait, then SIGKILL; the agent dies with the server even on SIGKILL
//! (`PR_SET_PDEATHSIG`); and a server that starts up reaps whatever a crashed
//! predecessor left behind. State lives in a directory so several server
//! processes on one machine (replicas) see and stop each other's instances.

pub mod journal;
mod procfs;
mod record;

use std::{
    collections::HashMap,
    path::{Component, Path, PathBuf},
    process::Stdio,
    sync::Mutex,
    time::Duration,
};

use async_trait::async_trait;
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{process::Command, sync::watch};
use workspace_agent::env as agent_env;

use crate::{
    Backend, BackendError, BackendKind, Generation, InstancePhase, InstanceState, Launch,
    WorkspaceId,
};
use record::{ExitRecord, InstanceRecord};

/// How the process backend runs instances.
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    /// Directory for per-workspace state, files and logs.
    pub root: PathBuf,
    /// The default program and arguments (the agent) when a spec has no
    /// command of its own.
    pub agent_command: Vec<String>,
    /// How long a stopped instance gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Where to append the record of every start and stop (see
    /// [`journal`]); `None` keeps none.
    pub journal: Option<PathBuf>,
}

/// Runs each workspace as a child process of this server.
#[derive(Debug)]
pub struct ProcessBackend {
    config: ProcessConfig,
    /// Children this process spawned, with the exit status their reaper
    /// task will publish, so `state` can report how an own child ended.
    own: Mutex<HashMap<WorkspaceId, OwnChild>>,
    journal: Option<journal::Journal>,
}

impl ProcessBackend {
    /// Prepares the state directory and stops instances whose launching
    /// server is gone (a crashed predecessor's children).
    pub async fn new(config: ProcessConfig) -> Result<Self, BackendError> {
        tokio::fs::create_dir_all(&config.root).await?;
        let backend = Self {
            journal: config.journal.clone().map(journal::Journal::new),
            config,
            own: Mutex::new(HashMap::new()),
        };
        backend.reap_orphans().await;
        Ok(backend)
    }

    fn workspace_dir(&self, workspace: WorkspaceId) -> PathBuf {
        self.config.root.join(workspace.to_string())
    }

    fn generation_dir(&self, workspace: WorkspaceId, generation: Generation) -> PathBuf {
        self.workspace_dir(workspace)
            .join(format!("gen-{}", generation.0))
    }

    /// Stops every instance recorded by a server process that no longer runs.
    async fn reap_orphans(&self) {
        let Ok(mut dirs) = tokio::fs::read_dir(&self.config.root).await else {
            return;
        };
        while let Ok(Some(entry)) = dirs.next_entry().await {
            let Some(workspace) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<WorkspaceId>().ok())
            else {
                continue;
            };
            let dir = entry.path();
            if let Some(record) = InstanceRecord::read(&dir).await {
                if !procfs::is_alive(record.server_pid, None) {
                    tracing::warn!(%workspace, pid = record.pid, "stopping instance left by a dead server");
                    let _ = self
                        .journaled(
                            "reap",
                            workspace,
                            None,
                            self.stop_recorded(workspace, record),
                        )
                        .await;
                }
            }
        }
    }

    /// Writes the generation's files and spawns its process.
    async fn launch(&self, launch: &Launch) -> Result<(), BackendError> {
        let workspace_dir = self.workspace_dir(launch.workspace);
        if let Some(existing) = InstanceRecord::read(&workspace_dir).await {
            if existing.generation == launch.generation
                && procfs::is_alive(existing.pid, Some(existing.start_time))
            {
                return Ok(()); // A retried start of the same generation.
            }
            // Never two instances of one workspace: whatever is left of an
            // older generation goes first.
            self.terminate(&existing).await;
        }

        let generation_dir = self.generation_dir(launch.workspace, launch.generation);
        let files_dir = generation_dir.join("files");
        if tokio::fs::try_exists(&generation_dir).await? {
            tokio::fs::remove_dir_all(&generation_dir).await?;
        }
        tokio::fs::create_dir_all(&files_dir).await?;
        for (relative, content) in &launch.files {
            let target = file_target(&files_dir, relative)?;
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::write(&target, content).await?;
        }

        let argv = if launch.spec.command.is_empty() {
            &self.config.agent_command
        } else {
            &launch.spec.command
        };
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| BackendError::Rejected("empty command".into()))?;
        let log = std::fs::File::create(generation_dir.join("agent.log"))?;
        let mut command = Command::new(program);
        command
            .args(args)
            // The server's own environment (database URL, cloud credentials)
            // must not leak into a workspace.
            .env_clear()
            .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
            .envs(launch.environment(&files_dir.to_string_lossy()))
            .env(agent_env::PARENT_PID, std::process::id().to_string())
            .current_dir(&generation_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
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
        record.write(&workspace_dir).await?;
        let (exit_tx, exit_rx) = watch::channel(None);
        self.own
            .lock()
            .expect("process table poisoned")
            .insert(launch.workspace, OwnChild { pid, exit: exit_rx });

        // Reap the child when it exits and keep its exit status for `state`
        // (on disk, so other server processes can read it too).
        let exit_path = generation_dir.clone();
        let workspace = launch.workspace;
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => ExitRecord::from_status(status),
                Err(e) => ExitRecord::Unknown(e.to_string()),
            };
            exit.write(&exit_path).await;
            tracing::debug!(%workspace, pid, ?exit, "instance exited");
            let _ = exit_tx.send(Some(exit));
        });
        Ok(())
    }

    /// Stops the process `record` names — only that one, even if another
    /// server has recorded a newer instance meanwhile — and forgets it.
    async fn stop_recorded(
        &self,
        workspace: WorkspaceId,
        record: InstanceRecord,
    ) -> Result<(), BackendError> {
        let dir = self.workspace_dir(workspace);
        self.terminate(&record).await;
        if procfs::is_alive(record.pid, Some(record.start_time)) {
            return Err(BackendError::Other(format!(
                "process {} survived SIGKILL",
                record.pid
            )));
        }
        // The files may hold sensitive config; the log stays for operators.
        let _ = tokio::fs::remove_dir_all(
            self.generation_dir(workspace, record.generation)
                .join("files"),
        )
        .await;
        if InstanceRecord::read(&dir)
            .await
            .is_some_and(|current| current.pid == record.pid)
        {
            InstanceRecord::remove(&dir).await?;
        }
        let mut own = self.own.lock().expect("process table poisoned");
        if own.get(&workspace).is_some_and(|c| c.pid == record.pid) {
            own.remove(&workspace);
        }
        Ok(())
    }

    /// Runs `work` and appends what it was to the journal, if one is kept.
    async fn journaled(
        &self,
        op: &str,
        workspace: WorkspaceId,
        launch: Option<&Launch>,
        work: impl std::future::Future<Output = Result<(), BackendError>>,
    ) -> Result<(), BackendError> {
        let begin_us = journal::now_us();
        let result = work.await;
        if let Some(journal) = &self.journal {
            journal.append(&journal::Entry {
                op: op.to_owned(),
                workspace,
                generation: launch.map(|l| l.generation),
                config_version: launch.map(|l| l.config_version),
                begin_us,
                end_us: journal::now_us(),
                ok: result.is_ok(),
                server_pid: std::process::id(),
            });
        }
        result
    }

    /// Signals the instance's process group and waits until its leader is
    /// gone: SIGTERM, `stop_grace`, then SIGKILL.
    async fn terminate(&self, record: &InstanceRecord) {
        let group = Pid::from_raw(record.pid as i32);
        if procfs::is_alive(record.pid, Some(record.start_time)) {
            let _ = killpg(group, Signal::SIGTERM);
            if !wait_until_dead(record, self.config.stop_grace).await {
                tracing::warn!(pid = record.pid, "instance ignored SIGTERM; killing");
            }
        }
        // Whatever is left in the group (the leader, or processes it forked)
        // gets SIGKILL, and we wait until the group is empty.
        let _ = killpg(group, Signal::SIGKILL);
        wait_until_dead(record, Duration::from_secs(5)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut pause = Duration::from_millis(1);
        while killpg(group, None).is_ok() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }
}

/// A child of this server process.
#[derive(Debug)]
struct OwnChild {
    pid: u32,
    exit: watch::Receiver<Option<ExitRecord>>,
}

/// Polls until the recorded process is gone; true if it went within `limit`.
/// The poll starts at 1 ms and doubles up to 20 ms: an agent usually exits
/// within a few milliseconds of SIGTERM, and a flat 20 ms poll made that
/// wait most of a cycle's control-plane time (see BENCHMARKS.md).
async fn wait_until_dead(record: &InstanceRecord, limit: Duration) -> bool {
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

/// Resolves a stored file path under `root`, refusing anything that could
/// escape it (the API validates paths too; this is the last line).
fn file_target(root: &Path, relative: &str) -> Result<PathBuf, BackendError> {
    let path = Path::new(relative);
    if relative.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(BackendError::Rejected(format!(
            "file path {relative:?} is not a plain relative path"
        )));
    }
    Ok(root.join(path))
}

#[async_trait]
impl Backend for ProcessBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    #[tracing::instrument(name = "spawn process", skip_all, fields(otel.kind = "client"))]
    async fn start(&self, launch: &Launch) -> Result<(), BackendError> {
        self.journaled("start", launch.workspace, Some(launch), self.launch(launch))
            .await
    }

    #[tracing::instrument(name = "stop process", skip_all, fields(otel.kind = "client"))]
    async fn stop(&self, workspace: WorkspaceId) -> Result<(), BackendError> {
        let work = async {
            match InstanceRecord::read(&self.workspace_dir(workspace)).await {
                Some(record) => self.stop_recorded(workspace, record).await,
                None => Ok(()),
            }
        };
        self.journaled("stop", workspace, None, work).await
    }

    async fn delete(&self, workspace: WorkspaceId) -> Result<(), BackendError> {
        self.stop(workspace).await?;
        match tokio::fs::remove_dir_all(self.workspace_dir(workspace)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn state(&self, workspace: WorkspaceId) -> Result<InstanceState, BackendError> {
        let Some(record) = InstanceRecord::read(&self.workspace_dir(workspace)).await else {
            return Ok(InstanceState::missing());
        };
        if procfs::is_alive(record.pid, Some(record.start_time)) {
            return Ok(InstanceState::of(record.generation, InstancePhase::Running));
        }
        let own_exit = self
            .own
            .lock()
            .expect("process table poisoned")
            .get(&workspace)
            .filter(|child| child.pid == record.pid)
            .map(|child| child.exit.clone());
        if let Some(mut exit) = own_exit {
            // Our reaper publishes the status a moment after the process
            // dies; wait for it rather than report an unknown end.
            let _ =
                tokio::time::timeout(Duration::from_secs(2), exit.wait_for(Option::is_some)).await;
        }
        let exit = ExitRecord::read(&self.generation_dir(workspace, record.generation)).await;
        let phase = match exit {
            Some(exit) if exit.is_clean() => InstancePhase::Stopped,
            Some(exit) => InstancePhase::Failed(exit.describe()),
            None => InstancePhase::Failed("process is gone".into()),
        };
        Ok(InstanceState::of(record.generation, phase))
    }
}

impl ProcessBackend {
    /// Stops every instance this server process started; called on graceful
    /// shutdown so no child outlives the server.
    pub async fn stop_own(&self) {
        let own: Vec<(WorkspaceId, u32)> = self
            .own
            .lock()
            .expect("process table poisoned")
            .iter()
            .map(|(workspace, child)| (*workspace, child.pid))
            .collect();
        for (workspace, pid) in own {
            // Another server may have replaced our instance since; its
            // record is not ours to stop.
            let Some(record) = InstanceRecord::read(&self.workspace_dir(workspace)).await else {
                continue;
            };
            if record.pid != pid || record.server_pid != std::process::id() {
                continue;
            }
            let stopped = self
                .journaled(
                    "shutdown",
                    workspace,
                    None,
                    self.stop_recorded(workspace, record),
                )
                .await;
            if let Err(err) = stopped {
                tracing::warn!(%workspace, %err, "could not stop instance at shutdown");
            }
        }
    }
}

#[cfg(test)]
mod tests;

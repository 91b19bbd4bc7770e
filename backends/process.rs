//! The `process` backend: each workspace is the agent running as a local
//! child process. It is the embedded default, so it must be as careful as
//! the real backends: each generation has its own directory and record, so
//! a start removes only strictly older generations (C18); a stop is SIGTERM
//! to the whole process group, the grace, then SIGKILL (or SIGKILL at once
//! when forced); the agent runs as an unprivileged user when the server is
//! root ([`identity`]), in a working directory nobody else writes; the
//! agent dies with the server even on SIGKILL (`PR_SET_PDEATHSIG`, set by
//! the agent); and a server that starts up reaps whatever a crashed
//! predecessor left behind. State lives in a directory so several server
//! processes on one machine (replicas) see and stop each other's instances.

mod identity;
pub mod journal;
mod layout;
mod procfs;
mod record;
mod signal;
mod spawn;

use std::{collections::HashMap, path::PathBuf, sync::Mutex, time::Duration};

use async_trait::async_trait;

use crate::{
    Backend, BackendError, BackendKind, ConfigFootprint, Generation, Halt, InstancePhase,
    InstanceRef, InstanceState, Launch, LimitExceeded, WorkspaceId,
};
pub use identity::DEFAULT_RUN_AS;
use identity::Identity;
use journal::Call;
use layout::Layout;
use record::{ExitRecord, InstanceRecord};
pub use spawn::EXEC_LIMIT;
use spawn::OwnChild;

/// How the process backend runs instances.
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    /// Directory for per-workspace state, files and logs.
    pub root: PathBuf,
    /// The default program and arguments (the agent) when a spec has no
    /// command of its own.
    pub agent_command: Vec<String>,
    /// How long a gracefully stopped instance gets between SIGTERM and
    /// SIGKILL.
    pub stop_grace: Duration,
    /// Where to append the record of every call that changes an instance
    /// (see [`journal`]); `None` keeps none.
    pub journal: Option<PathBuf>,
    /// The user agents run as. `None`: [`DEFAULT_RUN_AS`] when the server
    /// runs as root, the server's own user otherwise.
    pub run_as: Option<String>,
    /// How many stopped generation directories (with their logs) each
    /// workspace keeps; older ones are removed when a generation starts.
    pub keep_generations: usize,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::new(),
            agent_command: Vec::new(),
            stop_grace: Duration::from_secs(10),
            journal: None,
            run_as: None,
            keep_generations: 3,
        }
    }
}

/// Runs each workspace as a child process of this server.
#[derive(Debug)]
pub struct ProcessBackend {
    config: ProcessConfig,
    layout: Layout,
    /// The user agents run as, when it is not the server's own.
    agent: Option<Identity>,
    /// Children this process spawned, with the exit status their reaper
    /// task will publish, so `state` can report how an own child ended.
    own: Mutex<HashMap<(WorkspaceId, Generation), OwnChild>>,
    journal: Option<journal::Journal>,
}

impl ProcessBackend {
    /// Prepares the state directory, checks that the agents' user can reach
    /// it and run the agent program, and stops instances whose launching
    /// server is gone (a crashed predecessor's children).
    pub async fn new(config: ProcessConfig) -> Result<Self, BackendError> {
        let agent = identity::resolve(config.run_as.as_deref())?;
        layout::server_dir(&config.root)?;
        if let Some(agent) = &agent {
            agent.check_reaches(&config.root)?;
            if let Some(program) = config.agent_command.first() {
                agent.check_runs(program)?;
            }
        }
        let backend = Self {
            journal: config.journal.clone().map(journal::Journal::new),
            layout: Layout::new(config.root.clone()),
            agent,
            config,
            own: Mutex::new(HashMap::new()),
        };
        backend.reap_orphans().await;
        Ok(backend)
    }

    /// Stops every instance recorded by a server process that no longer runs.
    async fn reap_orphans(&self) {
        for workspace in self.layout.workspaces() {
            for generation in self.layout.generations(workspace) {
                let dir = self.layout.generation(workspace, generation);
                let Some(record) = InstanceRecord::read(&dir).await else {
                    continue;
                };
                if procfs::is_alive(record.server_pid, None) {
                    continue;
                }
                tracing::warn!(%workspace, %generation, pid = record.pid, "stopping instance left by a dead server");
                let call = Call {
                    op: "reap",
                    workspace,
                    launch: None,
                    through: Some(generation),
                    halt: Some(Halt::Graceful),
                };
                let work = self.stop_recorded(workspace, generation, record, Halt::Graceful);
                let _ = journal::journaled(self.journal.as_ref(), call, work).await;
            }
        }
    }

    /// Starts one generation: refuses if a newer one exists, does nothing
    /// if this one runs, stops the older ones, spawns, prunes.
    async fn launch(&self, launch: &Launch) -> Result<(), BackendError> {
        let (workspace, generation) = (launch.workspace, launch.generation);
        let generations = self.layout.generations(workspace);
        if let Some(&newer) = generations.iter().rev().find(|g| **g > generation) {
            return Err(BackendError::Superseded {
                requested: generation,
                newer,
            });
        }
        let dir = self.layout.generation(workspace, generation);
        if let Some(existing) = InstanceRecord::read(&dir).await {
            if procfs::is_alive(existing.pid, Some(existing.start_time)) {
                return Ok(()); // A retried start of the same generation.
            }
        }
        if let Some(older) = generation.0.checked_sub(1) {
            self.stop_through(workspace, Generation(older), Halt::Graceful)
                .await?;
        }
        self.spawn(launch, dir).await?;
        self.prune(workspace, generation);
        Ok(())
    }

    /// Keeps the newest `keep_generations` stopped directories older than
    /// `current`; never touches a generation that still has an instance.
    fn prune(&self, workspace: WorkspaceId, current: Generation) {
        let stopped: Vec<Generation> = self
            .layout
            .generations(workspace)
            .into_iter()
            .filter(|g| *g < current)
            .filter(|g| {
                let dir = self.layout.generation(workspace, *g);
                !dir.join(record::INSTANCE_FILE).exists()
            })
            .collect();
        let excess = stopped.len().saturating_sub(self.config.keep_generations);
        for generation in &stopped[..excess] {
            if let Err(err) = layout::remove_tree(&self.layout.generation(workspace, *generation)) {
                tracing::warn!(%workspace, %generation, %err, "cannot prune a generation directory");
            }
        }
    }

    /// Stops every recorded instance of generation `through` or older.
    async fn stop_through(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError> {
        let mut first_error = None;
        for generation in self.layout.generations(workspace) {
            if generation > through {
                break;
            }
            let dir = self.layout.generation(workspace, generation);
            let Some(record) = InstanceRecord::read(&dir).await else {
                continue;
            };
            if let Err(err) = self
                .stop_recorded(workspace, generation, record, halt)
                .await
            {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops the process `record` names — only that one, even if another
    /// server has recorded a new process for the generation meanwhile —
    /// and forgets it.
    async fn stop_recorded(
        &self,
        workspace: WorkspaceId,
        generation: Generation,
        record: InstanceRecord,
        halt: Halt,
    ) -> Result<(), BackendError> {
        let dir = self.layout.generation(workspace, generation);
        signal::terminate(&record, halt, self.config.stop_grace).await;
        if procfs::is_alive(record.pid, Some(record.start_time)) {
            return Err(BackendError::Other(format!(
                "process {} survived SIGKILL",
                record.pid
            )));
        }
        // The files may hold sensitive config; the log stays for operators.
        layout::remove_tree(&dir.join("files"))?;
        if InstanceRecord::read(&dir)
            .await
            .is_some_and(|current| current.pid == record.pid)
        {
            InstanceRecord::remove(&dir).await?;
        }
        let mut own = self.own.lock().expect("process table poisoned");
        if own
            .get(&(workspace, generation))
            .is_some_and(|c| c.pid == record.pid)
        {
            own.remove(&(workspace, generation));
        }
        Ok(())
    }

    /// What the recorded process of a generation is doing.
    async fn phase(
        &self,
        workspace: WorkspaceId,
        generation: Generation,
        record: &InstanceRecord,
    ) -> InstancePhase {
        if procfs::is_alive(record.pid, Some(record.start_time)) {
            return InstancePhase::Running;
        }
        let own_exit = self
            .own
            .lock()
            .expect("process table poisoned")
            .get(&(workspace, generation))
            .filter(|child| child.pid == record.pid)
            .map(|child| child.exit.clone());
        if let Some(mut exit) = own_exit {
            // Our reaper publishes the status a moment after the process
            // dies; wait for it rather than report an unknown end.
            let _ =
                tokio::time::timeout(Duration::from_secs(2), exit.wait_for(Option::is_some)).await;
        }
        match ExitRecord::read(&self.layout.generation(workspace, generation)).await {
            Some(exit) if exit.is_clean() => InstancePhase::Stopped,
            Some(exit) => InstancePhase::Failed(exit.describe()),
            None => InstancePhase::Failed("process is gone".into()),
        }
    }
}

#[async_trait]
impl Backend for ProcessBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    /// The agent is exec'd with its secrets in its environment: refuses a
    /// config past this machine's `execve` limit (`ARG_MAX`).
    fn admits(&self, footprint: &ConfigFootprint) -> Result<(), LimitExceeded> {
        self.exec_admits(footprint)
    }

    /// A process runs whatever command it is given; the image, instance
    /// and resource fields do not apply.
    fn check_spec(&self, _spec: &crate::WorkspaceSpec) -> Result<(), crate::SpecRejected> {
        Ok(())
    }

    #[tracing::instrument(name = "spawn process", skip_all, fields(otel.kind = "client"))]
    async fn start(&self, launch: &Launch) -> Result<(), BackendError> {
        let call = Call {
            op: "start",
            workspace: launch.workspace,
            launch: Some(launch),
            through: None,
            halt: None,
        };
        journal::journaled(self.journal.as_ref(), call, self.launch(launch)).await
    }

    #[tracing::instrument(name = "stop process", skip_all, fields(otel.kind = "client"))]
    async fn stop(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError> {
        let call = Call {
            op: "stop",
            workspace,
            launch: None,
            through: Some(through),
            halt: Some(halt),
        };
        journal::journaled(
            self.journal.as_ref(),
            call,
            self.stop_through(workspace, through, halt),
        )
        .await
    }

    #[tracing::instrument(name = "delete process", skip_all, fields(otel.kind = "client"))]
    async fn delete(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError> {
        let work = async {
            self.stop_through(workspace, through, halt).await?;
            for generation in self.layout.generations(workspace) {
                if generation <= through {
                    layout::remove_tree(&self.layout.generation(workspace, generation))?;
                }
            }
            // Only once empty: a newer generation's directory stays.
            match std::fs::remove_dir(self.layout.workspace(workspace)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => Ok(()),
                other => other,
            }?;
            Ok(())
        };
        let call = Call {
            op: "delete",
            workspace,
            launch: None,
            through: Some(through),
            halt: Some(halt),
        };
        journal::journaled(self.journal.as_ref(), call, work).await
    }

    async fn state(&self, workspace: WorkspaceId) -> Result<InstanceState, BackendError> {
        for generation in self.layout.generations(workspace).into_iter().rev() {
            let dir = self.layout.generation(workspace, generation);
            if let Some(record) = InstanceRecord::read(&dir).await {
                let phase = self.phase(workspace, generation, &record).await;
                return Ok(InstanceState::of(generation, phase));
            }
        }
        Ok(InstanceState::missing())
    }

    async fn inventory(&self) -> Result<Vec<InstanceRef>, BackendError> {
        let mut found = Vec::new();
        for workspace in self.layout.workspaces() {
            for generation in self.layout.generations(workspace) {
                let dir = self.layout.generation(workspace, generation);
                if let Some(record) = InstanceRecord::read(&dir).await {
                    found.push(InstanceRef {
                        workspace,
                        generation: Some(generation),
                        phase: self.phase(workspace, generation, &record).await,
                    });
                }
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests;

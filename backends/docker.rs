//! The `docker` backend: each generation of a workspace is its own
//! container, named `ws-<workspace id>-g<generation>` and labelled with its
//! workspace and generation, so two generations never share a name (no
//! conflict while one replaces the other) and every call addresses
//! generations by label (C18): a start removes strictly older generations
//! only, a stop only those up to the generation it names.
//!
//! The control plane owns restarts, so containers get no restart policy.
//! Files are uploaded into the created container before it starts, and
//! secrets are its environment, so the agent boots with the complete config
//! of its generation.

mod archive;
mod create;
mod engine_call;
mod found;
mod phase;
mod reference;

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use bollard::{
    Docker,
    query_parameters::{
        CreateContainerOptions, InspectContainerOptions, ListContainersOptions,
        RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
        UploadToContainerOptions,
    },
};
use tracing::Instrument;

use workspace_agent::env as agent_env;

use crate::{
    Backend, BackendError, BackendKind, ConfigFootprint, Generation, Halt, InstanceRef,
    InstanceState, Launch, LimitExceeded, SpecRejected, WorkspaceId, WorkspaceSpec, footprint,
};
use engine_call::{backend_error, docker_span, status_code};
use found::{Found, age_since};
use phase::Seen;

/// Label with the workspace id.
pub const LABEL_WORKSPACE: &str = "wl.workspace";
/// Label with the generation.
pub const LABEL_GENERATION: &str = "wl.generation";
/// Label marking containers this service manages.
pub const LABEL_MANAGED: &str = "wl.managed-by";
/// Where files are placed inside the container.
pub const FILES_DIR: &str = "/workspace/files";
/// The name admission gives the `execve` limit in a container.
pub const EXEC_LIMIT: &str = "docker.exec_bytes";
/// A quarter of the engine's default 8 MiB stack limit.
pub const EXEC_MAX: usize = 2 * 1024 * 1024;

/// How the Docker backend runs containers.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// The image when a spec names none (the agent image the project builds).
    pub default_image: String,
    /// Network mode (`host` lets the agent reach a control plane on
    /// 127.0.0.1); `None` uses the engine's default network.
    pub network_mode: Option<String>,
    /// SIGTERM → SIGKILL grace of a graceful stop.
    pub stop_grace: Duration,
    /// How long after its creation a container that has not started yet
    /// counts as booting; past it, it is failed.
    pub boot_window: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            default_image: "workspace-agent:latest".into(),
            network_mode: None,
            stop_grace: Duration::from_secs(10),
            boot_window: Duration::from_secs(120),
        }
    }
}

/// Runs each workspace as a container.
#[derive(Debug)]
pub struct DockerBackend {
    docker: Docker,
    config: DockerConfig,
}

/// The name of one generation's container.
pub fn container_name(workspace: WorkspaceId, generation: Generation) -> String {
    format!("ws-{workspace}-g{generation}")
}

impl DockerBackend {
    /// Connects to the engine (`DOCKER_HOST` or the local socket) and checks
    /// that it answers.
    pub async fn connect(config: DockerConfig) -> Result<Self, BackendError> {
        let docker = Docker::connect_with_defaults()
            .map_err(|e| BackendError::Unavailable(format!("docker: {e}")))?;
        docker.ping().await.map_err(|e| {
            BackendError::Unavailable(format!("docker engine does not answer: {e}"))
        })?;
        Ok(Self { docker, config })
    }

    /// Every container carrying `label` (`key` or `key=value`), running or
    /// not.
    async fn listed(&self, label: String) -> Result<Vec<Found>, BackendError> {
        let filters = HashMap::from([("label".to_owned(), vec![label])]);
        let listed = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .instrument(docker_span("list containers"))
            .await
            .map_err(|e| backend_error("list containers", e))?;
        Ok(listed.into_iter().filter_map(Found::from_summary).collect())
    }

    /// Every container of the workspace, oldest generation first.
    async fn containers(&self, workspace: WorkspaceId) -> Result<Vec<Found>, BackendError> {
        let mut found = self
            .listed(format!("{LABEL_WORKSPACE}={workspace}"))
            .await?;
        found.sort_by_key(|f| f.generation);
        Ok(found)
    }

    /// Stops and removes one container; gone already is fine. Graceful:
    /// SIGTERM, the grace, SIGKILL; forced: removed at once (SIGKILL).
    async fn remove(&self, container: &Found, halt: Halt) -> Result<(), BackendError> {
        if halt == Halt::Graceful && container.running() {
            let grace = self.config.stop_grace.as_secs().clamp(1, i32::MAX as u64) as i32;
            match self
                .docker
                .stop_container(
                    &container.id,
                    Some(StopContainerOptions {
                        t: Some(grace),
                        signal: None,
                    }),
                )
                .instrument(docker_span("stop container"))
                .await
            {
                Ok(()) => {}
                Err(e) if matches!(status_code(&e), Some(304 | 404)) => {}
                Err(e) => return Err(backend_error("stop container", e)),
            }
        }
        // A removal already in progress answers 409: wait for it to finish.
        for _ in 0..50 {
            match self
                .docker
                .remove_container(
                    &container.id,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: true,
                        link: false,
                    }),
                )
                .instrument(docker_span("remove container"))
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if status_code(&e) == Some(404) => return Ok(()),
                Err(e) if status_code(&e) == Some(409) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(backend_error("remove container", e)),
            }
        }
        Err(BackendError::Unavailable(format!(
            "container {} is still being removed",
            container.id
        )))
    }

    /// Creates the generation's container (its config, labels and no
    /// restart policy).
    async fn create(&self, launch: &Launch, name: &str) -> Result<(), BackendError> {
        self.exec_fits(launch).await?;
        let body = create::container_body(launch, name, &self.config);
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_owned()),
                    platform: String::new(),
                }),
                body,
            )
            .instrument(docker_span("create container"))
            .await
            .map_err(|e| backend_error("create container", e))?;
        Ok(())
    }

    /// Refuses a launch whose exec would exceed the limit with the image's
    /// own environment and command counted as they are (admission can only
    /// allow them 8 KiB): the failure then names the limit, where the
    /// container would only exit at once. An image that cannot be inspected
    /// is left to the create to report.
    async fn exec_fits(&self, launch: &Launch) -> Result<(), BackendError> {
        let image = create::image_of(launch, &self.config);
        let Ok(inspected) = self.docker.inspect_image(&image).await else {
            return Ok(());
        };
        let needed = create::exec_bytes(launch, inspected.config.unwrap_or_default());
        Ok(footprint::exec_admits(needed, EXEC_LIMIT, EXEC_MAX)?)
    }

    /// Uploads the files (before the first start) and starts the container.
    async fn upload_and_start(&self, launch: &Launch, name: &str) -> Result<(), BackendError> {
        if !launch.files.is_empty() {
            let archive = archive::files_archive(launch, FILES_DIR)?;
            self.docker
                .upload_to_container(
                    name,
                    Some(UploadToContainerOptions {
                        path: "/".into(),
                        ..Default::default()
                    }),
                    bollard::body_full(archive.into()),
                )
                .instrument(docker_span("upload files"))
                .await
                .map_err(|e| backend_error("upload files", e))?;
        }
        match self
            .docker
            .start_container(name, None::<StartContainerOptions>)
            .instrument(docker_span("start container"))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if status_code(&e) == Some(304) => Ok(()), // Already started.
            Err(e) => Err(backend_error("start container", e)),
        }
    }

    /// What the engine says of one container, in detail.
    async fn inspect_phase(&self, container: &Found) -> Result<crate::InstancePhase, BackendError> {
        let inspected = match self
            .docker
            .inspect_container(&container.id, None::<InspectContainerOptions>)
            .instrument(docker_span("inspect container"))
            .await
        {
            Ok(inspected) => inspected,
            // Removed between the listing and now.
            Err(e) if status_code(&e) == Some(404) => return Ok(crate::InstancePhase::Missing),
            Err(e) => return Err(backend_error("inspect container", e)),
        };
        let state = inspected.state.unwrap_or_default();
        let status = state.status.map(|s| s.to_string()).unwrap_or_default();
        let age = inspected
            .created
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .and_then(|c| age_since(c.timestamp()))
            .or_else(|| container.created.and_then(age_since));
        let seen = Seen {
            status: &status,
            exit_code: state.exit_code,
            oom_killed: state.oom_killed == Some(true),
            error: state.error.as_deref(),
            age,
        };
        Ok(phase::phase(&seen, self.config.boot_window))
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    /// The container's program is exec'd with the secrets in its
    /// environment: refuses a config past the `execve` limit of a container
    /// with the engine's default 8 MiB stack.
    fn admits(&self, footprint: &ConfigFootprint) -> Result<(), LimitExceeded> {
        // The agent's endpoint, and what the engine and image add (PATH,
        // HOSTNAME, HOME) and the image's own command.
        let extra = agent_env::ENDPOINT.len() + 128 + 8 * 1024;
        let needed = footprint.exec_bytes(FILES_DIR.len(), extra, &[]);
        footprint::exec_admits(needed, EXEC_LIMIT, EXEC_MAX)
    }

    fn check_spec(&self, spec: &WorkspaceSpec) -> Result<(), SpecRejected> {
        reference::check(spec)
    }

    async fn start(&self, launch: &Launch) -> Result<(), BackendError> {
        let found = self.containers(launch.workspace).await?;
        if let Some(newer) = found
            .iter()
            .filter_map(|c| c.generation)
            .find(|g| *g > launch.generation)
        {
            return Err(BackendError::Superseded {
                requested: launch.generation,
                newer,
            });
        }
        for older in found.iter().filter(|c| c.older_than(launch.generation)) {
            self.remove(older, Halt::Graceful).await?;
        }
        let name = container_name(launch.workspace, launch.generation);
        match found
            .iter()
            .find(|c| c.generation == Some(launch.generation))
        {
            // A retried start of the same generation.
            Some(same) if same.running() || same.status == "paused" => Ok(()),
            // Created (or ended) by an earlier attempt of this start: the
            // same container, never a second one.
            Some(_) => self.upload_and_start(launch, &name).await,
            None => {
                self.create(launch, &name).await?;
                self.upload_and_start(launch, &name).await
            }
        }
    }

    async fn stop(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError> {
        for container in self.containers(workspace).await? {
            if container.at_most(through) {
                self.remove(&container, halt).await?;
            }
        }
        Ok(())
    }

    async fn state(&self, workspace: WorkspaceId) -> Result<InstanceState, BackendError> {
        let found = self.containers(workspace).await?;
        let Some(newest) = found.last() else {
            return Ok(InstanceState::missing());
        };
        let phase = self.inspect_phase(newest).await?;
        Ok(InstanceState {
            phase,
            generation: newest.generation,
        })
    }

    async fn inventory(&self) -> Result<Vec<InstanceRef>, BackendError> {
        let found = self.listed(LABEL_MANAGED.to_owned()).await?;
        Ok(found
            .into_iter()
            .filter_map(|c| {
                let seen = Seen {
                    status: &c.status,
                    exit_code: phase::exit_code_of(&c.status_text),
                    age: c.created.and_then(age_since),
                    ..Seen::default()
                };
                Some(InstanceRef {
                    workspace: c.workspace?,
                    generation: c.generation,
                    phase: phase::phase(&seen, self.config.boot_window),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_generation_has_its_own_name() {
        let ws = WorkspaceId::new();
        assert_ne!(
            container_name(ws, Generation(1)),
            container_name(ws, Generation(2))
        );
    }
}

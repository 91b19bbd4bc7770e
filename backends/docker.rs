//! The `docker` backend: each workspace is one container on a Docker Engine,
//! named `ws-<workspace id>` and labelled with its workspace and generation.
//!
//! The control plane owns restarts, so containers get no restart policy.
//! Files are uploaded into the created container before it starts, and
//! secrets are its environment, so the agent boots with the complete config
//! of its generation. Before a start, every container of the workspace from
//! another generation (a leftover after a crash, say) is removed — never one
//! of the generation being started, which makes a retried start idempotent.

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use bollard::{
    Docker,
    errors::Error as DockerError,
    models::{
        ContainerCreateBody, ContainerStateStatusEnum, HostConfig, RestartPolicy,
        RestartPolicyNameEnum,
    },
    query_parameters::{
        CreateContainerOptions, InspectContainerOptions, ListContainersOptions,
        RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
        UploadToContainerOptions,
    },
};
use tracing::Instrument;
use workspace_agent::env as agent_env;

use crate::{
    Backend, BackendError, BackendKind, Generation, InstancePhase, InstanceState, Launch,
    WorkspaceId,
};

/// Label with the workspace id.
pub const LABEL_WORKSPACE: &str = "wl.workspace";
/// Label with the generation.
pub const LABEL_GENERATION: &str = "wl.generation";
/// Label marking containers this service manages.
pub const LABEL_MANAGED: &str = "wl.managed-by";
/// Where files are placed inside the container.
pub const FILES_DIR: &str = "/workspace/files";

/// How the Docker backend runs containers.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// The image when a spec names none (the agent image the project builds).
    pub default_image: String,
    /// Network mode (`host` lets the agent reach a control plane on
    /// 127.0.0.1); `None` uses the engine's default network.
    pub network_mode: Option<String>,
    /// SIGTERM → SIGKILL grace when stopping.
    pub stop_grace: Duration,
}

/// Runs each workspace as a container.
#[derive(Debug)]
pub struct DockerBackend {
    docker: Docker,
    config: DockerConfig,
}

fn container_name(workspace: WorkspaceId) -> String {
    format!("ws-{workspace}")
}

fn status_code(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn backend_error(what: &str, err: DockerError) -> BackendError {
    match err {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } if (400..500).contains(&status_code) => {
            BackendError::Rejected(format!("{what}: {message}"))
        }
        DockerError::DockerResponseServerError { message, .. } => {
            BackendError::Unavailable(format!("{what}: docker engine: {message}"))
        }
        other => BackendError::Unavailable(format!("{what}: {other}")),
    }
}

/// A container of the workspace, as listed.
struct Found {
    id: String,
    generation: Option<Generation>,
    running: bool,
}

/// A span for one call to the engine, so a cycle's trace shows where
/// the backend's time went.
fn docker_span(operation: &'static str) -> tracing::Span {
    tracing::info_span!("docker", otel.name = operation, otel.kind = "client")
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

    /// Every container labelled for the workspace, running or not.
    async fn containers(&self, workspace: WorkspaceId) -> Result<Vec<Found>, BackendError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_WORKSPACE}={workspace}")],
        )]);
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
        Ok(listed
            .into_iter()
            .filter_map(|c| {
                let generation = c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_GENERATION))
                    .and_then(|g| g.parse().ok())
                    .map(Generation);
                Some(Found {
                    id: c.id?,
                    generation,
                    running: c.state.is_some_and(|s| s.to_string() == "running"),
                })
            })
            .collect())
    }

    /// Stops (SIGTERM, grace, SIGKILL) and removes one container; gone
    /// already is fine.
    async fn remove(&self, container: &Found) -> Result<(), BackendError> {
        if container.running {
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

    /// The files of `launch` as a tar archive rooted at `/`.
    fn files_archive(launch: &Launch) -> Result<Vec<u8>, BackendError> {
        let mut archive = tar::Builder::new(Vec::new());
        for (path, content) in &launch.files {
            if path
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(BackendError::Rejected(format!(
                    "file path {path:?} is not a plain relative path"
                )));
            }
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            let full = format!("{}/{path}", FILES_DIR.trim_start_matches('/'));
            archive.append_data(&mut header, full, content.as_slice())?;
        }
        Ok(archive.into_inner()?)
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    async fn start(&self, launch: &Launch) -> Result<(), BackendError> {
        let name = container_name(launch.workspace);
        for found in self.containers(launch.workspace).await? {
            if found.generation == Some(launch.generation) && found.running {
                return Ok(()); // A retried start of the same generation.
            }
            self.remove(&found).await?;
        }

        let mut env: Vec<String> = launch
            .environment(FILES_DIR)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("{}={name}", agent_env::ENDPOINT));
        let spec = &launch.spec;
        let image = if spec.image.is_empty() {
            self.config.default_image.clone()
        } else {
            spec.image.clone()
        };
        let labels = HashMap::from([
            (LABEL_WORKSPACE.to_owned(), launch.workspace.to_string()),
            (LABEL_GENERATION.to_owned(), launch.generation.to_string()),
            (LABEL_MANAGED.to_owned(), "workspace-lifecycle".to_owned()),
        ]);
        let body = ContainerCreateBody {
            image: Some(image),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: self.config.network_mode.clone(),
                memory: (spec.memory_mib > 0).then(|| i64::from(spec.memory_mib) * 1024 * 1024),
                nano_cpus: (spec.cpu_millis > 0).then(|| i64::from(spec.cpu_millis) * 1_000_000),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    platform: String::new(),
                }),
                body,
            )
            .instrument(docker_span("create container"))
            .await
            .map_err(|e| backend_error("create container", e))?;
        if !launch.files.is_empty() {
            let archive = Self::files_archive(launch)?;
            self.docker
                .upload_to_container(
                    &name,
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
        self.docker
            .start_container(&name, None::<StartContainerOptions>)
            .instrument(docker_span("start container"))
            .await
            .map_err(|e| backend_error("start container", e))?;
        Ok(())
    }

    async fn stop(&self, workspace: WorkspaceId) -> Result<(), BackendError> {
        for found in self.containers(workspace).await? {
            self.remove(&found).await?;
        }
        Ok(())
    }

    async fn state(&self, workspace: WorkspaceId) -> Result<InstanceState, BackendError> {
        let inspected = match self
            .docker
            .inspect_container(&container_name(workspace), None::<InspectContainerOptions>)
            .instrument(docker_span("inspect container"))
            .await
        {
            Ok(inspected) => inspected,
            Err(e) if status_code(&e) == Some(404) => return Ok(InstanceState::missing()),
            Err(e) => return Err(backend_error("inspect container", e)),
        };
        let generation = inspected
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_GENERATION))
            .and_then(|g| g.parse().ok())
            .map(Generation);
        let state = inspected.state.unwrap_or_default();
        let phase = match state.status {
            Some(ContainerStateStatusEnum::CREATED | ContainerStateStatusEnum::RESTARTING) => {
                InstancePhase::Pending
            }
            Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::PAUSED) => {
                InstancePhase::Running
            }
            Some(ContainerStateStatusEnum::REMOVING) => InstancePhase::Stopping,
            Some(ContainerStateStatusEnum::EXITED) => match state.exit_code {
                Some(0) => InstancePhase::Stopped,
                code => InstancePhase::Failed(format!(
                    "container exited with code {}{}",
                    code.unwrap_or(-1),
                    if state.oom_killed == Some(true) {
                        " (out of memory)"
                    } else {
                        ""
                    }
                )),
            },
            Some(ContainerStateStatusEnum::DEAD) => InstancePhase::Failed(format!(
                "container is dead: {}",
                state.error.unwrap_or_default()
            )),
            Some(ContainerStateStatusEnum::EMPTY) | None => InstancePhase::Pending,
        };
        Ok(InstanceState { phase, generation })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{AgentToken, ConfigVersion, WorkspaceSpec};

    #[test]
    fn files_are_archived_under_the_files_directory_and_escapes_refused() {
        let mut launch = Launch {
            workspace: WorkspaceId::new(),
            generation: Generation(1),
            config_version: ConfigVersion(1),
            spec: WorkspaceSpec::default(),
            secrets: BTreeMap::new(),
            files: BTreeMap::from([("a/b.txt".to_owned(), b"hi".to_vec())]),
            token: AgentToken::new("t"),
            service_url: String::new(),
        };
        let bytes = DockerBackend::files_archive(&launch).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let paths: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(paths, ["workspace/files/a/b.txt"]);
        launch.files.insert("../escape".into(), vec![]);
        assert!(DockerBackend::files_archive(&launch).is_err());
    }
}

//! What a generation's container is created with: its workspace and
//! generation labels, by which every later call addresses it (C18); the
//! image, command and environment of its launch (secrets included, so the
//! agent boots with its generation's complete config); its resource
//! limits; and no restart policy, since the control plane owns restarts.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use workspace_agent::env as agent_env;

use super::{DockerConfig, FILES_DIR, LABEL_GENERATION, LABEL_MANAGED, LABEL_WORKSPACE};
use crate::Launch;

/// The image `launch` runs: its spec's, or the configured default.
pub(super) fn image_of(launch: &Launch, config: &DockerConfig) -> String {
    if launch.spec.image.is_empty() {
        config.default_image.clone()
    } else {
        launch.spec.image.clone()
    }
}

/// The create request of `launch`'s container, named `name`.
pub(super) fn container_body(
    launch: &Launch,
    name: &str,
    config: &DockerConfig,
) -> ContainerCreateBody {
    let mut env: Vec<String> = launch
        .environment(FILES_DIR)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.push(format!("{}={name}", agent_env::ENDPOINT));
    let spec = &launch.spec;
    let image = image_of(launch, config);
    let labels = HashMap::from([
        (LABEL_WORKSPACE.to_owned(), launch.workspace.to_string()),
        (LABEL_GENERATION.to_owned(), launch.generation.to_string()),
        (LABEL_MANAGED.to_owned(), "workspace-lifecycle".to_owned()),
    ]);
    ContainerCreateBody {
        image: Some(image),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(env),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: config.network_mode.clone(),
            memory: (spec.memory_mib > 0).then(|| i64::from(spec.memory_mib) * 1024 * 1024),
            nano_cpus: (spec.cpu_millis > 0).then(|| i64::from(spec.cpu_millis) * 1_000_000),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

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

/// What `launch`'s exec in a container of an image with `image` config
/// needs at most: its footprint, the image's own environment and command as
/// they are (the container's variables replace the image's of the same
/// name, and a spec's command replaces the image's), the agent's endpoint
/// and what the engine adds (HOSTNAME, HOME).
pub(super) fn exec_bytes(launch: &Launch, image: bollard::models::ImageConfig) -> usize {
    let set = launch.environment(FILES_DIR);
    let replaced = |var: &String| {
        let name = var.split_once('=').map_or(var.as_str(), |(n, _)| n);
        name == agent_env::ENDPOINT || set.iter().any(|(k, _)| k == name)
    };
    let env = image.env.into_iter().flatten().filter(|v| !replaced(v));
    let cmd = image.cmd.filter(|_| launch.spec.command.is_empty());
    let own: usize = env
        .chain(cmd.into_iter().flatten())
        .chain(image.entrypoint.into_iter().flatten())
        .map(|s| s.len() + 1 + size_of::<usize>())
        .sum();
    let extra = agent_env::ENDPOINT.len() + 128 + 256 + own;
    launch.footprint().exec_bytes(FILES_DIR.len(), extra, &[])
}

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

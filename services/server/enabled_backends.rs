//! The backends the flags enable, built from their flags: the process
//! backend (the embedded default), Docker and EC2.

use std::sync::Arc;

use workspace_backends::{
    docker::{DockerBackend, DockerConfig},
    ec2::{Ec2Backend, Ec2Config},
    process::{ProcessBackend, ProcessConfig},
};

use super::ServeError;
use crate::{config::ServeArgs, domain::BackendKind, engine::backend_set::Backends};

/// The backends `args` enables.
pub(super) async fn enabled_backends(args: &ServeArgs) -> Result<Backends, ServeError> {
    let mut backends = Backends::new();
    for kind in &args.backends {
        match kind {
            BackendKind::Process => {
                let agent_command = match &args.agent_command {
                    Some(command) if !command.is_empty() => command.clone(),
                    _ => vec![
                        std::env::current_exe()?.to_string_lossy().into_owned(),
                        "agent".into(),
                    ],
                };
                let backend = ProcessBackend::new(ProcessConfig {
                    root: std::path::absolute(args.data_dir.join("process"))?,
                    agent_command,
                    stop_grace: args.stop_grace,
                    journal: args.process_journal.clone(),
                    run_as: args.process_run_as.clone(),
                    keep_generations: args.process_keep_generations,
                })
                .await?;
                backends = backends.with(Arc::new(backend));
            }
            BackendKind::Docker => {
                let backend = DockerBackend::connect(DockerConfig {
                    default_image: args.docker_image.clone(),
                    network_mode: args.docker_network.clone(),
                    stop_grace: args.stop_grace,
                    boot_window: args.docker_boot_window,
                })
                .await?;
                backends = backends.with(Arc::new(backend));
            }
            BackendKind::Ec2 => {
                let backend = Ec2Backend::connect(Ec2Config {
                    endpoint_url: args.ec2_endpoint.clone(),
                    region: args.ec2_region.clone(),
                    default_ami: args.ec2_ami.clone(),
                    default_instance_type: args.ec2_instance_type.clone(),
                    subnet_id: args.ec2_subnet.clone(),
                    security_group_ids: args.ec2_security_groups.clone(),
                    ..Ec2Config::default()
                })
                .await?;
                backends = backends.with(Arc::new(backend));
            }
        }
    }
    Ok(backends)
}

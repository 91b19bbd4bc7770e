//! The `ec2` backend: each workspace is one VM, addressed per generation
//! by its tags (C18), whose `pending` boot never reads as dead (C9).
//!
//! An instance is tagged with its workspace and generation, and launched
//! with a `ClientToken` derived from (workspace, generation), so a start the
//! SDK retries (or the engine retries after a crash) never launches a second
//! instance. Every call addresses instances by their generation tag (C18):
//! a start terminates strictly older generations only, a stop only those up
//! to the generation it names. Its user data boots the agent (see
//! [`user_data`]), and admission refuses a config whose user data could
//! exceed EC2's 16 KiB. The EC2
//! `pending` window — 20–30 s in production — is reported as booting, never
//! as dead, so a health probe cannot mistake it for a crash. Waiting and
//! retrying are the SDK's: its `InstanceTerminated` waiter and its standard
//! retry policy (throttling included), not hand-written loops.

mod run_instance;
mod sdk_error;
mod tagged;
pub mod user_data;

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::{
    Client,
    client::Waiters,
    config::retry::RetryConfig,
    types::{Filter, Instance},
};

use crate::{
    Backend, BackendError, BackendKind, ConfigFootprint, Generation, Halt, InstancePhase,
    InstanceRef, InstanceState, Launch, LimitExceeded, WorkspaceId,
};
pub use run_instance::client_token;
use sdk_error::{aws_smithy_error_text, sdk_error};
use tagged::{generation_of, phase_of, tag};

/// Tag with the workspace id.
pub const TAG_WORKSPACE: &str = "wl:workspace";
/// Tag with the generation.
pub const TAG_GENERATION: &str = "wl:generation";
/// Tag marking instances this service manages.
pub const TAG_MANAGED: &str = "wl:managed-by";

/// How the EC2 backend launches instances.
#[derive(Clone, Debug)]
pub struct Ec2Config {
    /// Endpoint override (an EC2-compatible endpoint); `None` uses AWS.
    pub endpoint_url: Option<String>,
    /// Region override; `None` uses the standard configuration chain.
    pub region: Option<String>,
    /// AMI when a spec names none.
    pub default_ami: String,
    /// Instance type when a spec names none.
    pub default_instance_type: String,
    /// Subnet to launch into (optional).
    pub subnet_id: Option<String>,
    /// Security groups (optional).
    pub security_group_ids: Vec<String>,
    /// Attempts per API call (throttling and transient errors are retried).
    pub max_attempts: u32,
    /// How long stop waits for instances to be terminated.
    pub terminate_timeout: Duration,
}

impl Default for Ec2Config {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: None,
            default_ami: String::new(),
            default_instance_type: "t3.micro".into(),
            subnet_id: None,
            security_group_ids: Vec::new(),
            max_attempts: 5,
            terminate_timeout: Duration::from_secs(300),
        }
    }
}

/// Runs each workspace as an EC2 instance.
#[derive(Debug)]
pub struct Ec2Backend {
    client: Client,
    config: Ec2Config,
}

impl Ec2Backend {
    /// A client from the standard AWS configuration chain (environment,
    /// profile, instance role) with the endpoint/region overrides and the
    /// SDK's standard retries.
    /// Fails when no region can be found: every call would fail later.
    pub async fn connect(config: Ec2Config) -> Result<Self, BackendError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts));
        if let Some(endpoint) = &config.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let shared = loader.load().await;
        if shared.region().is_none() {
            return Err(BackendError::Other(
                "ec2: no region (set --ec2-region or AWS_REGION)".into(),
            ));
        }
        Ok(Self::with_client(Client::new(&shared), config))
    }

    /// A backend over an already built client (tests script one).
    pub fn with_client(client: Client, config: Ec2Config) -> Self {
        Self { client, config }
    }

    /// Every instance of the workspace that is not terminated.
    async fn instances(&self, workspace: WorkspaceId) -> Result<Vec<Instance>, BackendError> {
        self.described(
            Filter::builder()
                .name(format!("tag:{TAG_WORKSPACE}"))
                .values(workspace.to_string())
                .build(),
        )
        .await
    }

    /// Every instance matching `filter` that is not terminated.
    async fn described(&self, filter: Filter) -> Result<Vec<Instance>, BackendError> {
        let mut pages = self
            .client
            .describe_instances()
            .filters(filter)
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .set_values(Some(
                        ["pending", "running", "stopping", "stopped", "shutting-down"]
                            .map(String::from)
                            .to_vec(),
                    ))
                    .build(),
            )
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("describe instances", e))?;
            for reservation in page.reservations() {
                found.extend(
                    reservation
                        .instances()
                        .iter()
                        .filter(|i| !matches!(phase_of(i), InstancePhase::Missing))
                        .cloned(),
                );
            }
        }
        Ok(found)
    }

    /// Terminates (and waits for) the instances of `workspace` whose
    /// generation passes `select` (unlabelled ones count as older than
    /// every generation).
    async fn terminate_where(
        &self,
        workspace: WorkspaceId,
        select: impl Fn(Option<Generation>) -> bool,
    ) -> Result<(), BackendError> {
        let ids = self
            .instances(workspace)
            .await?
            .iter()
            .filter(|i| select(generation_of(i)))
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        self.terminate(ids).await
    }

    /// Terminates `ids` and waits (the SDK's waiter) until they are gone.
    async fn terminate(&self, ids: Vec<String>) -> Result<(), BackendError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.client
            .terminate_instances()
            .set_instance_ids(Some(ids.clone()))
            .send()
            .await
            .map_err(|e| sdk_error("terminate instances", e))?;
        self.client
            .wait_until_instance_terminated()
            .set_instance_ids(Some(ids))
            .wait(self.config.terminate_timeout)
            .await
            .map_err(|e| {
                BackendError::Unavailable(format!(
                    "waiting for termination: {}",
                    aws_smithy_error_text(&e)
                ))
            })?;
        Ok(())
    }
}

#[async_trait]
impl Backend for Ec2Backend {
    fn kind(&self) -> BackendKind {
        BackendKind::Ec2
    }

    fn admits(&self, footprint: &ConfigFootprint) -> Result<(), LimitExceeded> {
        user_data::admits(footprint)
    }

    /// Instance type and AMI are checked by EC2 itself, per account and
    /// region; nothing here can know them.
    fn check_spec(&self, _spec: &crate::WorkspaceSpec) -> Result<(), crate::SpecRejected> {
        Ok(())
    }

    async fn start(&self, launch: &Launch) -> Result<(), BackendError> {
        let existing = self.instances(launch.workspace).await?;
        if let Some(newer) = existing
            .iter()
            .filter_map(generation_of)
            .find(|g| *g > launch.generation)
        {
            return Err(BackendError::Superseded {
                requested: launch.generation,
                newer,
            });
        }
        // Older generations go first: never two instances serving.
        let older: Vec<String> = existing
            .iter()
            .filter(|i| generation_of(i).is_none_or(|g| g < launch.generation))
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        self.terminate(older).await?;
        if existing
            .iter()
            .any(|i| generation_of(i) == Some(launch.generation))
        {
            return Ok(()); // A retried start of the same generation.
        }

        self.run_instance(launch).await
    }

    /// Graceful or forced, an instance is terminated: EC2 gives a stopped
    /// instance no faster way out.
    async fn stop(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        _halt: Halt,
    ) -> Result<(), BackendError> {
        self.terminate_where(workspace, |g| g.is_none_or(|g| g <= through))
            .await
    }

    async fn state(&self, workspace: WorkspaceId) -> Result<InstanceState, BackendError> {
        let instances = self.instances(workspace).await?;
        // The newest generation is the one that matters.
        let newest = instances.iter().max_by_key(|i| generation_of(i));
        Ok(match newest {
            Some(instance) => InstanceState {
                phase: phase_of(instance),
                generation: generation_of(instance),
            },
            None => InstanceState::missing(),
        })
    }

    async fn inventory(&self) -> Result<Vec<InstanceRef>, BackendError> {
        let managed = Filter::builder()
            .name("tag-key")
            .values(TAG_MANAGED)
            .build();
        Ok(self
            .described(managed)
            .await?
            .iter()
            .filter_map(|i| {
                Some(InstanceRef {
                    workspace: tag(i, TAG_WORKSPACE)?.parse().ok()?,
                    generation: generation_of(i),
                    phase: phase_of(i),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;

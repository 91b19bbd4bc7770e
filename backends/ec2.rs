//! The `ec2` backend: each workspace is one VM.
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

pub mod user_data;

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::{
    Client,
    client::Waiters,
    config::retry::RetryConfig,
    types::{Filter, Instance, InstanceStateName, ResourceType, Tag, TagSpecification},
};
use sha2::{Digest, Sha256};

use crate::{
    Backend, BackendError, BackendKind, ConfigFootprint, Generation, Halt, InstancePhase,
    InstanceRef, InstanceState, Launch, LimitExceeded, WorkspaceId,
};

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

fn sdk_error<E>(what: &str, err: aws_sdk_ec2::error::SdkError<E>) -> BackendError
where
    E: std::error::Error + aws_sdk_ec2::error::ProvideErrorMetadata + 'static,
{
    use aws_sdk_ec2::error::SdkError;
    match &err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("unknown");
            let message = service.err().message().unwrap_or_default();
            if code.starts_with("Invalid")
                || code.starts_with("Unsupported")
                || code == "MissingParameter"
            {
                BackendError::Rejected(format!("{what}: {code}: {message}"))
            } else {
                BackendError::Unavailable(format!("{what}: {code}: {message}"))
            }
        }
        _ => BackendError::Unavailable(format!("{what}: {}", aws_smithy_error_text(&err))),
    }
}

fn aws_smithy_error_text(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The idempotency token of one (workspace, generation): the same start,
/// retried, is the same launch.
pub fn client_token(workspace: WorkspaceId, generation: Generation) -> String {
    let digest = Sha256::digest(format!("wl:{workspace}:{generation}").as_bytes());
    // EC2 accepts up to 64 ASCII characters.
    hex_lower(&digest)[..64].to_owned()
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tag(instance: &Instance, key: &str) -> Option<String> {
    instance
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value().map(str::to_owned))
}

fn generation_of(instance: &Instance) -> Option<Generation> {
    tag(instance, TAG_GENERATION)
        .and_then(|g| g.parse().ok())
        .map(Generation)
}

fn phase_of(instance: &Instance) -> InstancePhase {
    match instance.state().and_then(|s| s.name()) {
        Some(InstanceStateName::Pending) => InstancePhase::Pending,
        Some(InstanceStateName::Running) => InstancePhase::Running,
        Some(InstanceStateName::Stopping | InstanceStateName::ShuttingDown) => {
            InstancePhase::Stopping
        }
        Some(InstanceStateName::Stopped) => InstancePhase::Stopped,
        Some(InstanceStateName::Terminated) | None => InstancePhase::Missing,
        Some(other) => InstancePhase::Failed(format!("instance state {}", other.as_str())),
    }
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

        let spec = &launch.spec;
        let ami = if spec.ami.is_empty() {
            &self.config.default_ami
        } else {
            &spec.ami
        };
        if ami.is_empty() {
            return Err(BackendError::Rejected(
                "no AMI: set spec.ami or the server's --ec2-ami".into(),
            ));
        }
        let instance_type = if spec.instance_type.is_empty() {
            &self.config.default_instance_type
        } else {
            &spec.instance_type
        };
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(
                Tag::builder()
                    .key(TAG_WORKSPACE)
                    .value(launch.workspace.to_string())
                    .build(),
            )
            .tags(
                Tag::builder()
                    .key(TAG_GENERATION)
                    .value(launch.generation.to_string())
                    .build(),
            )
            .tags(
                Tag::builder()
                    .key(TAG_MANAGED)
                    .value("workspace-lifecycle")
                    .build(),
            )
            .tags(
                Tag::builder()
                    .key("Name")
                    .value(format!("ws-{}", launch.workspace))
                    .build(),
            )
            .build();
        let mut request = self
            .client
            .run_instances()
            .image_id(ami)
            .instance_type(instance_type.as_str().into())
            .min_count(1)
            .max_count(1)
            .client_token(client_token(launch.workspace, launch.generation))
            .tag_specifications(tags)
            .user_data(user_data::encode(launch)?);
        if let Some(subnet) = &self.config.subnet_id {
            request = request.subnet_id(subnet);
        }
        for group in &self.config.security_group_ids {
            request = request.security_group_ids(group);
        }
        request
            .send()
            .await
            .map_err(|e| sdk_error("run instances", e))?;
        Ok(())
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

    async fn delete(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError> {
        // The instances are all a workspace has on EC2.
        self.stop(workspace, through, halt).await
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

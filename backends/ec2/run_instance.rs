//! Launching one generation's instance, idempotently: its `ClientToken` is
//! derived from (workspace, generation), so a start the SDK retries, or the
//! engine retries after a crash, never launches a second instance; its
//! tags name the workspace and generation every later call addresses
//! it by (C18).

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use sha2::{Digest, Sha256};

use super::{
    Ec2Backend, TAG_GENERATION, TAG_MANAGED, TAG_WORKSPACE, sdk_error::sdk_error, user_data,
};
use crate::{BackendError, Generation, Launch, WorkspaceId};

/// The idempotency token of one (workspace, generation): the same start,
/// retried, is the same launch.
pub fn client_token(workspace: WorkspaceId, generation: Generation) -> String {
    let digest = Sha256::digest(format!("wl:{workspace}:{generation}").as_bytes());
    // EC2 accepts up to 64 ASCII characters.
    hex_lower(&digest)[..64].to_owned()
}

/// Bytes as lowercase hex.
fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Ec2Backend {
    /// Launches `launch.generation`'s instance, tagged with its workspace
    /// and generation, with the user data that boots its agent.
    pub(super) async fn run_instance(&self, launch: &Launch) -> Result<(), BackendError> {
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
}

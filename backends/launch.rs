//! What a backend is asked to start: one generation of one workspace with the
//! complete config the cycle read after taking the gate (C2). Secret values and the
//! agent token are wrapped so that no `Debug`, log line or error can print
//! them.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};
use workspace_agent::env as agent_env;

use crate::{ConfigVersion, Generation, WorkspaceId};

/// What a workspace runs. Each backend reads the fields that apply to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkspaceSpec {
    /// Container image (docker); empty means the server's agent image.
    pub image: String,
    /// Instance type (ec2); empty means the server's default.
    pub instance_type: String,
    /// Machine image (ec2); empty means the server's default.
    pub ami: String,
    /// The command to run; empty runs the agent.
    pub command: Vec<String>,
    /// Plain environment.
    pub env: BTreeMap<String, String>,
    /// CPU limit in thousandths of a core (0: none).
    pub cpu_millis: u32,
    /// Memory limit in MiB (0: none).
    pub memory_mib: u32,
}

/// A secret value. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that must hand it to an instance.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The bearer token of one generation's agent. Only its hash is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentToken(String);

impl AgentToken {
    /// Wraps a token string.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The token itself, to hand to the agent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AgentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentToken(<redacted>)")
    }
}

/// One generation of one workspace, ready to start.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// The generation to start; the instance is labelled with it.
    pub generation: Generation,
    /// The config version of `spec`, `secrets` and `files`.
    pub config_version: ConfigVersion,
    /// What to run.
    pub spec: WorkspaceSpec,
    /// Secret name → value, delivered as environment.
    pub secrets: BTreeMap<String, Secret>,
    /// Relative path → content, placed before the instance starts.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The token the agent registers with.
    pub token: AgentToken,
    /// Where the agent reaches the control plane.
    pub service_url: String,
}

impl Launch {
    /// The environment every backend gives the instance: the spec's plain
    /// variables, then the secrets, then the agent's own variables last so
    /// nothing can shadow them.
    pub fn environment(&self, files_dir: &str) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = self.spec.env.clone();
        env.extend(
            self.secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_owned())),
        );
        let secret_names: Vec<&str> = self.secrets.keys().map(String::as_str).collect();
        env.extend([
            (agent_env::SERVICE_URL.to_owned(), self.service_url.clone()),
            (agent_env::TOKEN.to_owned(), self.token.expose().to_owned()),
            (
                agent_env::WORKSPACE_ID.to_owned(),
                self.workspace.to_string(),
            ),
            (
                agent_env::GENERATION.to_owned(),
                self.generation.to_string(),
            ),
            (
                agent_env::CONFIG_VERSION.to_owned(),
                self.config_version.to_string(),
            ),
            (agent_env::SECRET_NAMES.to_owned(), secret_names.join(",")),
            (agent_env::FILES_DIR.to_owned(), files_dir.to_owned()),
        ]);
        env.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secret_or_token() {
        let launch = Launch {
            workspace: WorkspaceId::new(),
            generation: Generation(3),
            config_version: ConfigVersion(7),
            spec: WorkspaceSpec::default(),
            secrets: [("API_KEY".to_owned(), Secret::new("hunter2-value"))].into(),
            files: BTreeMap::new(),
            token: AgentToken::new("tok-very-secret"),
            service_url: "http://127.0.0.1:1".into(),
        };
        let shown = format!("{launch:?}");
        assert!(!shown.contains("hunter2-value"), "{shown}");
        assert!(!shown.contains("tok-very-secret"), "{shown}");
        assert!(shown.contains("API_KEY"));
    }

    #[test]
    fn agent_variables_cannot_be_shadowed_by_secrets() {
        let launch = Launch {
            workspace: WorkspaceId::new(),
            generation: Generation(1),
            config_version: ConfigVersion(1),
            spec: WorkspaceSpec::default(),
            secrets: [(agent_env::TOKEN.to_owned(), Secret::new("evil"))].into(),
            files: BTreeMap::new(),
            token: AgentToken::new("real"),
            service_url: "http://x".into(),
        };
        let env = launch.environment("/f");
        let tokens: Vec<_> = env.iter().filter(|(k, _)| k == agent_env::TOKEN).collect();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].1, "real");
    }
}

//! The identifiers every layer shares. Newtypes so a generation can never be
//! passed where a config version is expected.
//! Contracts: C12, C18 (instances are addressed per generation).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A workspace, named by a server-generated UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkspaceId(Uuid);

impl WorkspaceId {
    /// A fresh random id; only the server mints workspace ids.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// The id as a UUID, for storage.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for WorkspaceId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for WorkspaceId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl FromStr for WorkspaceId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One provisioning of a workspace. Bumped once per provisioning cycle; the
/// instance is labelled with it and the agent's token is bound to it, so
/// anything from an older generation can be recognised and refused.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Generation(pub u64);

impl Generation {
    /// The generation after this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The version of a workspace's config (spec, secrets, files). Bumped by every
/// mutation so an agent can report exactly what it booted with.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct ConfigVersion(pub u64);

impl fmt::Display for ConfigVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which backend runs a workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A local child process (the embedded default).
    Process,
    /// A container on a Docker Engine.
    Docker,
    /// A VM on EC2.
    Ec2,
}

impl BackendKind {
    /// The name used in storage, configuration and labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Docker => "docker",
            Self::Ec2 => "ec2",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "process" => Ok(Self::Process),
            "docker" => Ok(Self::Docker),
            "ec2" => Ok(Self::Ec2),
            other => Err(format!(
                "unknown backend {other:?} (expected process, docker or ec2)"
            )),
        }
    }
}

//! Identifiers minted by the control plane itself.
//! Contracts: C12 (a lease is held in a replica's id).

use std::{fmt, str::FromStr};

use uuid::Uuid;

/// One cycle (one pass through the gate). Minted when a request opens a
/// follow-up cycle, so a coalesced caller can follow it before it starts.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct CycleId(Uuid);

impl CycleId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// The id as a UUID, for storage.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for CycleId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for CycleId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl FromStr for CycleId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl fmt::Display for CycleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One running server process. Leases are held in its name, so a replica
/// that vanished can be recognised by its expired leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplicaId(Uuid);

impl ReplicaId {
    /// A fresh id for a process that is starting.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// The id as a UUID, for storage.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for ReplicaId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for ReplicaId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

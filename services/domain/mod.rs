//! The vocabulary of the control plane: one type per concept, shared by the
//! engine, the store and the gRPC adapters.
//! Contracts: the state every contract speaks of (C1–C20).

/// Gives an enum its stored name: `as_str`, `Display` and `FromStr`.
macro_rules! named_enum {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The name used in storage and on the wire.
            pub fn as_str(&self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(Self::$variant),)+
                    other => Err(format!(concat!("unknown ", stringify!($ty), " {:?}"), other)),
                }
            }
        }
    };
}

pub mod change;
pub mod clock;
mod cycle;
mod error;
mod event;
mod ids;
pub mod ledger;
mod status;
mod trigger;
pub mod validate;

pub use cycle::{CycleState, Finish, Outcome, Phase};
pub use error::Error;
pub use event::{Event, EventKind, Handling};
pub use ids::{CycleId, ReplicaId};
pub use status::{Desired, Goal, WorkspaceStatus};
pub use trigger::Trigger;
pub use workspace_backends::{
    BackendKind, ConfigVersion, Generation, Secret, WorkspaceId, WorkspaceSpec,
};

/// A point in time as the control plane and Postgres see it.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

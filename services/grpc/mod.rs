//! Thin adapters from the wire to the engine: each handler validates and
//! converts its request, calls the engine, and converts the answer. Errors
//! become gRPC statuses in exactly one place ([`status`]).
//! Contracts: C13, C20.

mod agent;
mod answers;
pub mod codec;
mod convert;
mod follow;
mod idempotent;
mod lifecycle;
pub mod origin;
mod page_token;
pub mod status;

pub use agent::AgentService;
pub use lifecycle::LifecycleService;

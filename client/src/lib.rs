//! The Rust client of the workspace lifecycle control plane, for services
//! that call it: so that no caller has to generate stubs, attach the token,
//! follow a restart stream to its end or decide what is safe to retry.
//! No server contract (C1–C20): the caller's side; it relies on C13 and C20.
//!
//! ```no_run
//! # async fn demo() -> Result<(), workspace_lifecycle_client::Error> {
//! use workspace_lifecycle_client::{Client, proto::Trigger};
//! let client = Client::builder("http://127.0.0.1:50051")
//!     .token(std::fs::read_to_string(".wl-data/admin-token").unwrap().trim())
//!     .connect()
//!     .await?;
//! let ws = client.get_workspace("6f1c…").await?;
//! client.set_secret(&ws.id, "API_KEY", "sk-123").await?; // retried safely
//! let served = client.restart(&ws.id, Trigger::Manual, "new key").await?.wait_online().await?;
//! println!("online: generation {} with config {}", served.generation, served.config_version);
//! # Ok(()) }
//! ```
//!
//! - [`Client`]: every RPC, typed; mutations carry a fresh `request_id`
//!   (AIP-155), so the [`RetryPolicy`] may repeat them after `UNAVAILABLE`
//!   or a `RESOURCE_EXHAUSTED` that says when to retry, without a second
//!   effect.
//! - [`CycleStream`]: a restart, stop or delete as it happens, and
//!   [`CycleStream::wait_online`] for the generation it ends in.
//! - [`Error`]: the server's status with its `google.rpc` details read out
//!   (which field, which reason, when to retry).

mod client;
mod connect;
mod cycle;
mod error;
mod retry;

pub use client::{Client, Raw};
pub use connect::{Bearer, Builder, Tls};
pub use cycle::{CycleStream, Served};
pub use error::Error;
pub use retry::RetryPolicy;

/// The generated messages and client of `workspace.lifecycle.v1`.
pub mod proto {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    tonic::include_proto!("workspace.lifecycle.v1");
}

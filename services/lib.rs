//! The workspace lifecycle control plane.
//! Contracts: C1–C20 (ARCHITECTURE.md says where each lives).
//!
//! A gRPC service that creates, restarts, stops and deletes workspaces — a
//! child process, a Docker container or an EC2 VM per workspace — and stays
//! correct when restart requests pour in from everywhere at once.
//!
//! - [`domain`]: the vocabulary (ids, triggers, statuses, input rules);
//! - [`engine`]: the restart machinery — one tower stack of debounce,
//!   coalesce, gate and cycle service, keyed by workspace id;
//! - [`store`]: Postgres, the truth every replica shares;
//! - [`grpc`]: thin adapters from the wire to the engine;
//! - [`auth`]: who may call what, and how often;
//! - [`health`]: what `grpc.health.v1` says, and why;
//! - [`transport`]: which connections the server holds, and how long;
//! - [`server`]: assembling and serving it all;
//! - [`allocator`]: the server's allocator and the runtime that makes it
//!   return memory, shared with its memory benchmark;

pub mod allocator;
pub mod auth;
pub mod config;
pub mod domain;
pub mod embedded_pg;
pub mod engine;
pub mod grpc;
pub mod health;
pub mod private_file;
pub mod proto;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod transport;

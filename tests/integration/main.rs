//! Integration tests: a real Postgres, servers on port 0, the real gRPC
//! API. One binary so the crate graph links once.

// Test helpers are not an API.
#![allow(unreachable_pub, missing_docs)]

// Each suite uses a different part of the shared support.
#[allow(dead_code)]
mod support;

mod attacks;
mod bad_input;
mod cli;
mod client;
mod contracts;
mod docker_backend;
mod ec2_backend;
mod faults;
mod grpcurl;
mod health;
mod idempotency;
mod process_backend;
mod replicas;
mod revocation;
mod security;
mod server_image;
mod telemetry;

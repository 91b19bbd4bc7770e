//! The generated protobuf and gRPC code for `workspace.lifecycle.v1`, and
//! its descriptor set for server reflection.
//! No lifecycle contract (C1–C20): how the process runs.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

tonic::include_proto!("workspace.lifecycle.v1");

/// The encoded `FileDescriptorSet` of `proto/` (with imports), for
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lifecycle_descriptor.bin"));

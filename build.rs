//! Compiles `proto/` into Rust with no system `protoc`: `protox` parses the
//! files in pure Rust and `tonic-prost-build` generates from its descriptors.
//! The descriptor set is also written out so the server can offer reflection.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "workspace/lifecycle/v1/lifecycle.proto",
    "workspace/lifecycle/v1/agent.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // The migrations are embedded (refinery): a new file must rebuild.
    println!("cargo:rerun-if-changed=migrations");
    let descriptors = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("lifecycle_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Undecodable requests are INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::grpc::codec::StrictCodec")
        .compile_fds(descriptors)?;
    Ok(())
}

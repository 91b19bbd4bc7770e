//! Generates the `WorkspaceLifecycle` client from the shared `proto/` with
//! no system `protoc` (see the root `build.rs`). Only the client: callers
//! never need the server traits.
//! No contract: builds the client's protobuf code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto/workspace/lifecycle/v1/lifecycle.proto");
    let descriptors = protox::compile(["workspace/lifecycle/v1/lifecycle.proto"], ["../proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}

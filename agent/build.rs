//! Generates the agent's client for `WorkspaceAgent` from the shared
//! `proto/` with no system `protoc` (see the root `build.rs`).
//! No contract: builds the agent's protobuf code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto/workspace/lifecycle/v1/agent.proto");
    let descriptors = protox::compile(["workspace/lifecycle/v1/agent.proto"], ["../proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}

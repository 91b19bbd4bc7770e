//! The workspace agent as a standalone binary, for container and VM images.

#[tokio::main(flavor = "current_thread")]
async fn main() {
    std::process::exit(workspace_agent::main_from_env().await);
}

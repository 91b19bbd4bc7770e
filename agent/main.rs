//! The workspace agent as a standalone binary, for container and VM images.
//! Contracts: C10 (the agent registers its generation).

#[tokio::main(flavor = "current_thread")]
async fn main() {
    std::process::exit(workspace_agent::main_from_env().await);
}

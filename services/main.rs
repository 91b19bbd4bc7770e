//! The `workspace-lifecycle` binary: `serve` (the default) runs the control
//! plane; `agent` runs the workspace agent the process backend launches.

use clap::Parser;
use workspace_lifecycle::{
    auth,
    config::{Cli, Command},
    server, telemetry,
};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Agent) => std::process::exit(workspace_agent::main_from_env().await),
        Some(Command::NewToken { role, name }) => {
            let token = auth::generate_token();
            println!("token: {token}");
            println!("token file line: {}", auth::entry(role, &name, &token));
            return;
        }
        Some(Command::Serve) | None => {}
    }
    telemetry::init(cli.serve.log_format);
    let running = match server::start(&cli.serve, server::Parts::default()).await {
        Ok(running) => running,
        Err(err) => {
            tracing::error!(%err, "cannot start");
            std::process::exit(1);
        }
    };
    workspace_agent::shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
}

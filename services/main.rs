//! The `workspace-lifecycle` binary: `serve` (the default) runs the control
//! plane; `agent` runs the workspace agent the process backend launches.

use clap::Parser;
use workspace_lifecycle::{
    auth,
    config::{Cli, Command},
    server, telemetry,
};

/// jemalloc with background purge threads rather than glibc's malloc:
/// memory freed after a crowd of requests (a million resident workspace ids,
/// say) goes back to the OS within seconds instead of staying in malloc's
/// free lists — measured in BENCHMARKS.md (memory) against glibc and
/// mimalloc.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    let telemetry = telemetry::init(cli.serve.log_format);
    let running = match server::start(&cli.serve, server::Parts::default()).await {
        Ok(running) => running,
        Err(err) => {
            tracing::error!(%err, "cannot start");
            telemetry.shutdown(std::time::Duration::from_secs(1)).await;
            std::process::exit(1);
        }
    };
    workspace_agent::shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    // Flush what the cycles just recorded; a collector that is down costs
    // at most this long.
    telemetry.shutdown(std::time::Duration::from_secs(5)).await;
}

//! The `workspace-lifecycle` binary: `serve` (the default) runs the control
//! plane; `agent` runs the workspace agent the process backend launches.
//! No lifecycle contract (C1–C20): how the process runs.
//!
//! Every way out of `serve` — a startup error, SIGTERM or SIGINT during
//! startup or after, a panic unwinding the server's task — stops the embedded
//! Postgres this process started: the server holds it through
//! `embedded_pg::Owned`, which stops it when dropped, a signal during
//! startup waits for startup to end and then shuts down, and no path here
//! leaves through `exit` while the cluster is still held.

use std::process::ExitCode;

use clap::Parser;
use workspace_lifecycle::{
    allocator, auth,
    config::{Cli, Command},
    server, telemetry,
};

// mimalloc, returned to the OS as the runtime's workers park
// (services/allocator.rs says why).
workspace_lifecycle::server_allocator!();

fn main() -> ExitCode {
    match allocator::run_on_workers(run()) {
        Ok(code) => code,
        Err(err) => {
            // The runtime did not start, or the server's task panicked
            // (its unwinding dropped, and so stopped, what it held).
            eprintln!("the server stopped abnormally: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Agent) => std::process::exit(workspace_agent::main_from_env().await),
        Some(Command::NewToken { role, name }) => {
            let token = auth::generate_token();
            println!("token: {token}");
            println!("token file line: {}", auth::entry(role, &name, &token));
            return ExitCode::SUCCESS;
        }
        Some(Command::Serve) | None => {}
    }
    let telemetry = telemetry::init(cli.serve.log_format);
    server::raise_fd_limit();
    let signal = workspace_agent::shutdown_signal();
    tokio::pin!(signal);
    // A signal during startup lets startup finish (or fail) and then stops
    // at once: cancelling it half-way could orphan a Postgres whose
    // `pg_ctl start` was under way.
    let start = server::start(&cli.serve, server::Parts::default());
    tokio::pin!(start);
    let mut signalled = false;
    let started = loop {
        tokio::select! {
            started = &mut start => break started,
            () = &mut signal, if !signalled => {
                tracing::info!("signalled during startup; stopping once started");
                signalled = true;
            }
        }
    };
    let running = match started {
        Ok(running) => running,
        Err(err) => {
            tracing::error!(%err, "cannot start");
            telemetry.shutdown(std::time::Duration::from_secs(1)).await;
            return ExitCode::FAILURE;
        }
    };
    if !signalled {
        signal.await;
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    // Flush what the cycles just recorded; a collector that is down costs
    // at most this long.
    telemetry.shutdown(std::time::Duration::from_secs(5)).await;
    ExitCode::SUCCESS
}

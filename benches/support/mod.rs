//! What the benchmarks share: a Postgres to run on, servers started in
//! process, and HDR-histogram reports. Fresh databases, server processes,
//! the counting (timing, holding) backend and the waits are the
//! `test-support` crate's, shared with the integration tests.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::{net::SocketAddr, time::Duration};

use hdrhistogram::Histogram;
pub mod cpu;
pub mod load;
pub mod memory;
pub mod perf;
pub mod pg;
pub mod stack;

use workspace_backends::process::{ProcessBackend, ProcessConfig};
use workspace_lifecycle::{
    auth::client::{LifecycleClient, lifecycle_client},
    config::ServeArgs,
    server::{self, Parts, RunningServer},
};

/// A maintenance URL of a Postgres that allows `connections` more
/// connections than the benchmark's own few (see [`pg`]).
pub async fn admin_url(connections: usize) -> String {
    let cluster = pg::cluster(connections, false).await;
    println!("# {}", cluster.describe());
    cluster.admin
}

/// A fresh database on the cluster `admin` reaches; returns its URL.
pub async fn fresh_database(admin: &str) -> String {
    test_support::db::create_database(admin, "wl_bench").await
}

/// The process backend under `root`, running the server binary's `agent`
/// subcommand, 5 s to stop.
pub async fn process_backend(root: &std::path::Path) -> ProcessBackend {
    ProcessBackend::new(ProcessConfig {
        root: root.to_path_buf(),
        agent_command: vec![test_support::server_binary(), "agent".into()],
        stop_grace: Duration::from_secs(5),
        ..ProcessConfig::default()
    })
    .await
    .unwrap()
}

/// Server flags for a benchmark on `url`.
pub fn args(url: &str, data_dir: &std::path::Path) -> ServeArgs {
    let mut args = ServeArgs::defaults();
    args.listen = "127.0.0.1:0".parse().unwrap();
    args.database_url = Some(url.to_owned());
    args.data_dir = data_dir.to_path_buf();
    args.backends = vec![];
    args.stop_grace = Duration::from_secs(5);
    args
}

pub struct Bench {
    pub running: RunningServer,
    pub addr: SocketAddr,
    /// A client with the server's admin token.
    pub client: LifecycleClient,
}

pub async fn serve(args: &ServeArgs, parts: Parts) -> Bench {
    let running = server::start(args, parts).await.expect("server starts");
    let addr = running.addr;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // No token file is configured: the server made its admin token under
    // the data directory.
    let token = std::fs::read_to_string(args.data_dir.join("admin-token")).unwrap();
    let client = lifecycle_client(channel, token.trim()).unwrap();
    Bench {
        running,
        addr,
        client,
    }
}

/// A latency histogram in microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(d.as_micros().max(1) as u64);
}

/// "p50 1.23 ms  p99 4.56 ms  max 7.89 ms (n=20)".
pub fn summary(h: &Histogram<u64>) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "p50 {:>8.2} ms  p90 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms  (n={})",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        h.len()
    )
}

/// The command that reproduces a figure, printed with it.
pub fn command(bench: &str) -> String {
    format!("cargo bench --bench {bench}")
}

/// "2 cores, <cpu model>, 24 GiB".
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024 / 1024)
        .unwrap_or(0);
    format!("{cpus} cores, {model}, {mem_gib} GiB")
}

pub use test_support::rss_bytes;

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

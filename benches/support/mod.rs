//! What the benchmarks share: a Postgres to run on, servers started in
//! process, backends that time themselves, and HDR-histogram reports.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use hdrhistogram::Histogram;
pub mod cpu;
pub mod load;
pub mod memory;
pub mod perf;
pub mod pg;
pub mod server_process;
pub mod stack;

use tokio_postgres::NoTls;
use workspace_backends::{
    Backend, BackendError, BackendKind, Generation, Halt, InstanceRef, InstanceState, Launch,
    WorkspaceId,
};
use workspace_lifecycle::{
    auth::client::{LifecycleClient, lifecycle_client},
    config::ServeArgs,
    server::{self, Parts, RunningServer},
};

/// A maintenance URL of a Postgres that allows `connections` more
/// connections than the benchmark's own few (see [`pg`]).
pub async fn admin_url(connections: usize) -> String {
    let cluster = pg::cluster(connections).await;
    println!("# {}", cluster.describe());
    cluster.admin
}

/// A fresh database; returns its URL.
pub async fn fresh_database(admin: &str) -> String {
    let (client, connection) = tokio_postgres::connect(admin, NoTls).await.unwrap();
    tokio::spawn(connection);
    let name = format!("wl_bench_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let mut parts: Vec<String> = admin
        .split_whitespace()
        .filter(|p| !p.starts_with("dbname="))
        .map(str::to_owned)
        .collect();
    parts.push(format!("dbname={name}"));
    parts.join(" ")
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

/// One timed backend call.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub took: Duration,
    /// Wall-clock end (to compare with server timestamps).
    pub ended: chrono::DateTime<chrono::Utc>,
}

/// A backend that times its own stop and start calls.
pub struct Timed<B> {
    pub inner: B,
    pub stops: Mutex<Vec<Call>>,
    pub starts: Mutex<Vec<Call>>,
}

impl<B> Timed<B> {
    pub fn new(inner: B) -> Arc<Self> {
        Arc::new(Self {
            inner,
            stops: Mutex::default(),
            starts: Mutex::default(),
        })
    }
}

async fn timed<T>(log: &Mutex<Vec<Call>>, f: impl std::future::Future<Output = T>) -> T {
    let started = tokio::time::Instant::now();
    let out = f.await;
    log.lock().unwrap().push(Call {
        took: started.elapsed(),
        ended: chrono::Utc::now(),
    });
    out
}

#[async_trait]
impl<B: Backend> Backend for Timed<B> {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    async fn start(&self, launch: &Launch) -> Result<(), BackendError> {
        timed(&self.starts, self.inner.start(launch)).await
    }
    async fn stop(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError> {
        timed(&self.stops, self.inner.stop(workspace, through, halt)).await
    }
    async fn delete(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError> {
        self.inner.delete(workspace, through, halt).await
    }
    async fn state(&self, workspace: WorkspaceId) -> Result<InstanceState, BackendError> {
        self.inner.state(workspace).await
    }
    async fn inventory(&self) -> Result<Vec<InstanceRef>, BackendError> {
        self.inner.inventory().await
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

/// A temporary directory the process backend's agents (an unprivileged
/// user when the benchmark runs as root) can pass through.
pub fn agent_reachable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
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

/// A backend that counts its Start calls per workspace (the contracts count
/// cycles that way) and, while armed, holds every Start until released — so
/// a storm's requests all arrive while the cycle it interrupts is in flight.
pub struct Held<B> {
    pub inner: B,
    starts: Mutex<std::collections::HashMap<WorkspaceId, usize>>,
    armed: std::sync::atomic::AtomicBool,
    holding: std::sync::atomic::AtomicUsize,
    release: tokio::sync::watch::Sender<bool>,
}

impl<B> Held<B> {
    pub fn new(inner: B) -> Arc<Self> {
        Arc::new(Self {
            inner,
            starts: Mutex::default(),
            armed: Default::default(),
            holding: Default::default(),
            release: tokio::sync::watch::channel(false).0,
        })
    }

    /// From now on, Starts wait for [`Held::release`].
    pub fn arm(&self) {
        self.release.send_replace(false);
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lets every held Start (and later ones) through.
    pub fn release(&self) {
        self.armed.store(false, std::sync::atomic::Ordering::SeqCst);
        self.release.send_replace(true);
    }

    /// How many Starts are waiting now.
    pub fn holding(&self) -> usize {
        self.holding.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Start calls for `workspace` so far.
    pub fn starts(&self, workspace: WorkspaceId) -> usize {
        self.starts
            .lock()
            .unwrap()
            .get(&workspace)
            .copied()
            .unwrap_or(0)
    }

    /// Start calls so far, all workspaces.
    pub fn total_starts(&self) -> usize {
        self.starts.lock().unwrap().values().sum()
    }
}

#[async_trait]
impl<B: Backend> Backend for Held<B> {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    async fn start(&self, launch: &Launch) -> Result<(), BackendError> {
        *self
            .starts
            .lock()
            .unwrap()
            .entry(launch.workspace)
            .or_default() += 1;
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            use std::sync::atomic::Ordering::SeqCst;
            self.holding.fetch_add(1, SeqCst);
            let mut released = self.release.subscribe();
            let _ = released.wait_for(|r| *r).await;
            self.holding.fetch_sub(1, SeqCst);
        }
        self.inner.start(launch).await
    }
    async fn stop(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError> {
        self.inner.stop(workspace, through, halt).await
    }
    async fn delete(
        &self,
        workspace: WorkspaceId,
        through: Generation,
        halt: Halt,
    ) -> Result<(), BackendError> {
        self.inner.delete(workspace, through, halt).await
    }
    async fn state(&self, workspace: WorkspaceId) -> Result<InstanceState, BackendError> {
        self.inner.state(workspace).await
    }
    async fn inventory(&self) -> Result<Vec<InstanceRef>, BackendError> {
        self.inner.inventory().await
    }
}

/// Resident memory of this process, in bytes (from /proc/self/statm).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

//! Restart storms against the real service (gRPC, Postgres, process backend),
//! with 1, 2 and 3 replicas on one Postgres:
//!
//! - **Storm absorption**: 20,000 `RestartWorkspace` calls from 256 concurrent
//!   clients over 200 workspaces, mixed triggers. Each workspace first gets
//!   one `MANUAL` restart, whose cycle is held inside the backend's Start
//!   (after it took the gate and read the config) until every call of the
//!   storm was acknowledged; so every other call arrives while that cycle is
//!   in flight, and C2/C7 allow exactly one more cycle after it (when at
//!   least one of those calls is `MANUAL` or `CONFIG_CHANGED`; probe and
//!   reconciler triggers in flight are dropped, C7/C9). The minimum per
//!   workspace is therefore 2 storm cycles; the figure is the cycles the
//!   backend was asked to Start divided by that minimum.
//! - **Intent throughput**: acknowledged calls per second during the storm
//!   (a call is acknowledged by its first event: `accepted`, `coalesced` or
//!   `debounced`, each only once durable), next to a bare single-row `UPDATE`
//!   on the same Postgres from the same number of clients, measured in the
//!   same run.
//!
//!   cargo bench --bench storm            (STORM_REPLICAS=1,2,3 by default)

mod support;

// The server binary's allocator and runtime (services/allocator.rs), so the
// in-process servers allocate as the binary does.
workspace_lifecycle::server_allocator!();

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use hdrhistogram::Histogram;
use support::{histogram, record, summary};
use test_support::{counted::Counted, workspace};
use tokio::time::Instant;
use tonic::transport::Endpoint;
use workspace_backends::{Backend, Halt, WorkspaceId, process::ProcessBackend};
use workspace_lifecycle::{
    auth::client::{LifecycleClient, lifecycle_client},
    proto::{self as pb, restart_event::Event},
    server::{self, Parts, RunningServer},
};

const WORKSPACES: usize = 200;
const CALLS: usize = 20_000;
const CLIENTS: usize = 256;
/// Each replica's Postgres pool (the server's default).
const DB_CONNECTIONS: usize = 32;
/// The debounce window the servers run with (shorter than the 60 s default
/// so that a deferred config cycle would show within the run).
const WINDOW: Duration = Duration::from_secs(10);

type Client = LifecycleClient;

/// The trigger of storm call `i` (deterministic mix).
fn trigger(i: usize) -> pb::Trigger {
    // A small multiplicative hash, so neighbouring calls differ.
    match (i.wrapping_mul(2_654_435_761) >> 7) % 4 {
        0 => pb::Trigger::Manual,
        1 => pb::Trigger::ConfigChanged,
        2 => pb::Trigger::HealthProbe,
        _ => pb::Trigger::Reconciler,
    }
}

#[derive(Default)]
struct Tally {
    accepted: AtomicUsize,
    coalesced: AtomicUsize,
    debounced: AtomicUsize,
    other: AtomicUsize,
    errors: AtomicUsize,
}

/// Calls RestartWorkspace and waits for the first event only (the
/// acknowledgement); the cycle itself goes on without the caller.
async fn restart(
    client: &mut Client,
    workspace: &str,
    trigger: pb::Trigger,
    tally: &Tally,
) -> Option<Duration> {
    let began = Instant::now();
    let answer = client
        .restart_workspace(pb::RestartWorkspaceRequest {
            workspace_id: workspace.to_owned(),
            trigger: trigger as i32,
            reason: "storm".into(),
            request_id: String::new(),
        })
        .await;
    let mut stream = match answer {
        Ok(stream) => stream.into_inner(),
        Err(status) => {
            eprintln!("  error: {status}");
            tally.errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let first = stream.next().await;
    let took = began.elapsed();
    match first {
        Some(Ok(event)) => {
            let slot = match event.event {
                Some(Event::Accepted(_)) => &tally.accepted,
                Some(Event::Coalesced(_)) => &tally.coalesced,
                Some(Event::Debounced(_)) => &tally.debounced,
                Some(Event::Failed(_)) | None => &tally.errors,
                Some(_) => &tally.other,
            };
            slot.fetch_add(1, Ordering::Relaxed);
            Some(took)
        }
        Some(Err(status)) => {
            eprintln!("  error: {status}");
            tally.errors.fetch_add(1, Ordering::Relaxed);
            None
        }
        None => {
            tally.errors.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

async fn get(client: &mut Client, id: &str) -> Option<pb::Workspace> {
    client
        .get_workspace(pb::GetWorkspaceRequest {
            workspace_id: id.to_owned(),
        })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Waits until every workspace is ONLINE with no cycle running or pending.
async fn settle(client: &Client, ids: &[String], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let states = futures::stream::iter(ids.iter().cloned())
            .map(|id| {
                let mut client = client.clone();
                async move { get(&mut client, &id).await }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        let unsettled = states
            .iter()
            .filter(|w| {
                !w.as_ref()
                    .is_some_and(workspace::idle_in(pb::WorkspaceStatus::Online))
            })
            .count();
        if unsettled == 0 || Instant::now() >= deadline {
            return unsettled;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Transactions committed in the database `url` names so far (Postgres
/// flushes these counters about once a second; callers wait that out).
async fn commits(url: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// 20,000 single-row UPDATEs from `CLIENTS` connections over `WORKSPACES`
/// rows of a fresh table: updates per second.
async fn bare_update(url: &str) -> f64 {
    let (setup, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    setup
        .batch_execute(&format!(
            "CREATE TABLE bare_bench (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
             INSERT INTO bare_bench (id) SELECT generate_series(0, {})",
            WORKSPACES - 1
        ))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        clients.push(client);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let next = next.clone();
            tokio::spawn(async move {
                let update = client
                    .prepare("UPDATE bare_bench SET n = n + 1 WHERE id = $1")
                    .await
                    .unwrap();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= CALLS {
                        break;
                    }
                    let row = ((i * 7919) % WORKSPACES) as i32;
                    client.execute(&update, &[&row]).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    CALLS as f64 / began.elapsed().as_secs_f64()
}

struct Figures {
    replicas: usize,
    errors: usize,
    acks_per_s: f64,
    bare_per_s: f64,
    observed: usize,
    minimum: usize,
    worst: f64,
    over: usize,
    ttfe: Histogram<u64>,
    postgres_cores: Option<f64>,
    busy_cores: f64,
}

async fn storm(
    replicas: usize,
    backend: Arc<Counted<ProcessBackend>>,
    cluster: &support::pg::Cluster,
) -> Figures {
    let url = support::fresh_database(&cluster.admin).await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = support::args(&url, dir.path());
    args.debounce_window = WINDOW;
    args.shutdown_grace = Duration::from_secs(5);
    // All 256 clients use the one generated admin token: let that caller
    // have every client's call in flight (the per-caller limit is not what
    // this measures).
    args.max_calls_per_caller = 4 * CLIENTS;
    args.db_connections = DB_CONNECTIONS;
    let mut servers: Vec<RunningServer> = Vec::new();
    for _ in 0..replicas {
        servers.push(
            server::start(
                &args,
                Parts {
                    backends: vec![backend.clone()],
                    ..Parts::default()
                },
            )
            .await
            .expect("server starts"),
        );
    }
    // The replicas share a data directory, so the first one's generated
    // admin token serves them all.
    let token = std::fs::read_to_string(dir.path().join("admin-token")).expect("admin token");
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let addr = servers[i % replicas].addr;
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        clients.push(lifecycle_client(channel, token.trim()).unwrap());
    }

    // 200 workspaces, ONLINE (generation 1).
    let ids: Vec<String> = futures::stream::iter(0..WORKSPACES)
        .map(|i| {
            let client = clients[i % CLIENTS].clone();
            let request =
                workspace::create_request(&format!("storm-{i}"), pb::BackendKind::Process);
            async move { workspace::create(&client, request).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let unsettled = settle(&clients[0], &ids, Duration::from_secs(180)).await;
    assert_eq!(unsettled, 0, "workspaces did not come ONLINE");

    // One MANUAL restart per workspace; its cycle is held in Start.
    backend.arm();
    let tally = Arc::new(Tally::default());
    let ttfe = Arc::new(std::sync::Mutex::new(histogram()));
    let kicks: Vec<_> = futures::stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let mut client = clients[i % CLIENTS].clone();
            let tally = tally.clone();
            async move { restart(&mut client, id, pb::Trigger::Manual, &tally).await }
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    for took in kicks.into_iter().flatten() {
        record(&mut ttfe.lock().unwrap(), took);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while backend.holding() < WORKSPACES && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = backend.holding();

    // The storm: the other 19,800 calls, 256 clients pulling from one queue.
    let storm_calls = CALLS - WORKSPACES;
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(ids);
    let asked: Arc<Vec<std::sync::Mutex<Vec<pb::Trigger>>>> = Arc::new(
        (0..WORKSPACES)
            .map(|_| std::sync::Mutex::default())
            .collect(),
    );
    let commits_before = commits(&url).await;
    // The servers run in this process (with the clients).
    let meter = support::cpu::Meter::start(cluster.postmaster, &[std::process::id()]);
    let began = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|mut client| {
            let (next, ids, tally, ttfe, asked) = (
                next.clone(),
                ids.clone(),
                tally.clone(),
                ttfe.clone(),
                asked.clone(),
            );
            tokio::spawn(async move {
                let mut local = histogram();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= storm_calls {
                        break;
                    }
                    let w = (i * 7919) % WORKSPACES;
                    let trigger = trigger(i);
                    if let Some(took) = restart(&mut client, &ids[w], trigger, &tally).await {
                        record(&mut local, took);
                        asked[w].lock().unwrap().push(trigger);
                    }
                }
                ttfe.lock().unwrap().add(&local).unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let storm_took = began.elapsed();
    let cpu = meter.stop();
    let storm_commits = commits(&url).await - commits_before;
    backend.release();

    let unsettled = settle(&clients[0], &ids, Duration::from_secs(120)).await;

    // Cycles: backend Starts per workspace, minus the create's.
    let (mut observed, mut minimum, mut worst, mut over) = (0, 0, 0.0f64, 0);
    for (w, id) in ids.iter().enumerate() {
        let workspace: WorkspaceId = id.parse().unwrap();
        let ran = backend.starts(workspace).len().saturating_sub(1);
        let needs_follow_up = asked[w]
            .lock()
            .unwrap()
            .iter()
            .any(|t| matches!(t, pb::Trigger::Manual | pb::Trigger::ConfigChanged));
        let least = 1 + usize::from(needs_follow_up);
        observed += ran;
        minimum += least;
        if ran != least {
            over += 1;
        }
        worst = worst.max(ran as f64 / least as f64);
    }
    // Failed cycles count as errors.
    let mut failed_cycles = 0;
    for id in ids.iter() {
        let cycles = clients[0]
            .clone()
            .list_cycles(pb::ListCyclesRequest {
                workspace_id: id.clone(),
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .map(|r| r.into_inner().cycles)
            .unwrap_or_default();
        failed_cycles += cycles
            .iter()
            .filter(|c| c.outcome == pb::CycleOutcome::CycleFailed as i32)
            .count();
    }

    let bare_before = commits(&url).await;
    let bare_per_s = bare_update(&url).await;
    let bare_commits = commits(&url).await - bare_before;
    let errors = tally.errors.load(Ordering::Relaxed) + failed_cycles + unsettled;

    let label = if replicas == 1 {
        "1 replica".to_owned()
    } else {
        format!("{replicas} replicas")
    };
    println!(
        "\nstorm, {label}: {CALLS} RestartWorkspace calls, {CLIENTS} clients, {WORKSPACES} workspaces, process backend"
    );
    println!(
        "  first events               accepted {}, coalesced {}, debounced {}, other {}",
        tally.accepted.load(Ordering::Relaxed),
        tally.coalesced.load(Ordering::Relaxed),
        tally.debounced.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
    );
    println!(
        "  cycles held in flight      {held} of {WORKSPACES} while the storm ran ({:.2} s)",
        storm_took.as_secs_f64()
    );
    let ttfe = ttfe.lock().unwrap().clone();
    println!("  time to first event        {}", summary(&ttfe));
    println!(
        "  cycles / C2-C7 minimum     {observed} / {minimum} = {:.2}  (worst workspace {:.2}, {over} workspaces off the minimum)",
        observed as f64 / minimum.max(1) as f64,
        worst
    );
    println!(
        "  errors                     {errors}  (RPC errors or failed first events {}, failed cycles {failed_cycles}, workspaces not settled {unsettled})",
        tally.errors.load(Ordering::Relaxed)
    );
    let acks_per_s = storm_calls as f64 / storm_took.as_secs_f64();
    println!(
        "  acknowledged intents/s     {acks_per_s:>8.0}  ({storm_calls} storm calls, {CLIENTS} clients)"
    );
    println!(
        "  bare single-row UPDATE/s   {bare_per_s:>8.0}  ({CALLS} UPDATEs, {CLIENTS} connections, same Postgres)"
    );
    println!(
        "  CPU during the storm       {}",
        cpu.line("servers+clients (this process)")
    );
    println!(
        "  intents / bare UPDATE      {:.2}",
        acks_per_s / bare_per_s
    );
    println!(
        "  Postgres commits per call  {:.2} storm (all replicas, incl. background work)  vs  {:.2} bare",
        storm_commits as f64 / storm_calls as f64,
        bare_commits as f64 / CALLS as f64
    );

    drop(clients);
    for server in servers {
        server.shutdown().await;
    }
    // Shutdown never touches an instance; the agents are stopped here.
    for instance in backend.inner().inventory().await.unwrap_or_default() {
        let through = instance.generation.unwrap_or_default();
        let _ = backend
            .inner()
            .stop(instance.workspace, through, Halt::Force)
            .await;
    }
    Figures {
        replicas,
        errors,
        acks_per_s,
        bare_per_s,
        observed,
        minimum,
        worst,
        over,
        ttfe,
        postgres_cores: cpu.postgres,
        busy_cores: cpu.busy,
    }
}

fn main() {
    // The servers' tasks run on the workers; the driver, on this thread.
    workspace_lifecycle::allocator::runtime()
        .expect("the server's runtime starts")
        .block_on(run());
}

async fn run() {
    let replicas: Vec<usize> = std::env::var("STORM_REPLICAS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    println!("# storm — {}", support::command("storm"));
    println!("# machine: {}", support::machine());
    // Each replica's pool and listener, the bare UPDATE's connections
    // (opened while the replicas still run), the settle/commit probes.
    let most = replicas.iter().copied().max().unwrap_or(1);
    let cluster = support::pg::cluster(most * (DB_CONNECTIONS + 2) + CLIENTS, false).await;
    println!("# {}", cluster.describe());
    let dir = test_support::agent_reachable_tempdir();
    let backend = Counted::new(support::process_backend(dir.path()).await);
    let mut all = Vec::new();
    for n in replicas {
        all.push(storm(n, backend.clone(), &cluster).await);
    }
    println!(
        "\nstorm summary (replicas: cycles/minimum, time to first event p50/p99/max, errors, \
         intents/s vs bare UPDATE/s, Postgres CPU)"
    );
    let mut failed = false;
    for f in &all {
        let ratio = f.observed as f64 / f.minimum.max(1) as f64;
        let p99 = f.ttfe.value_at_quantile(0.99) as f64 / 1000.0;
        println!(
            "  {}: {:.2} (worst {:.2}, {} off), {:.2}/{:.2}/{:.2} ms (p99 target < 100 ms: {}), {} errors, \
             {:.0}/s vs {:.0}/s = {:.2}, Postgres {} of {:.2} busy cores",
            f.replicas,
            ratio,
            f.worst,
            f.over,
            f.ttfe.value_at_quantile(0.5) as f64 / 1000.0,
            p99,
            f.ttfe.max() as f64 / 1000.0,
            if p99 < 100.0 { "met" } else { "missed" },
            f.errors,
            f.acks_per_s,
            f.bare_per_s,
            f.acks_per_s / f.bare_per_s,
            f.postgres_cores
                .map_or_else(|| "?".to_owned(), |c| format!("{c:.2}")),
            f.busy_cores,
        );
        // A storm fails when a call failed or a workspace ran other than
        // the minimum number of cycles (C2/C7).
        failed |= f.errors > 0 || f.observed != f.minimum || f.over > 0;
    }
    if failed {
        eprintln!("storm: FAILED (errors, or cycles off the C2-C7 minimum)");
        std::process::exit(1);
    }
}

//! Config changes through the real gRPC API against the database's own
//! limit, measured from outside the process: h2load sends `SetSecret` (each
//! a committed config change) to the server binary, pgbench runs a
//! single-row `UPDATE` on the same Postgres, both at 32 concurrent
//! requests, in interleaved runs (service, pgbench, service, …); the figure
//! is the ratio of the medians. Two shapes: one hot workspace (one row), and
//! 16 workspaces (16 rows). Every service run is verified: the workspaces'
//! config versions moved by exactly the number of calls (h2load counts HTTP
//! statuses only, and a gRPC error is HTTP 200), and every pgbench run by
//! the rows' counters.
//!
//! The 32 streams: one workspace — h2load with 32 connections, one stream
//! each (split across the replicas); 16 workspaces — one h2load per
//! workspace with 2 connections each, all 16 run together (h2load posts one
//! body, so one process per workspace). pgbench: 32 connections, `-j 1`,
//! prepared statements, each transaction one `UPDATE` of a row picked at
//! random among the shape's rows.
//!
//! With 2 and 3 server processes on the one database (16 workspaces), the
//! same comparison shows whether throughput rises with replicas or Postgres'
//! CPU is the limit (each run prints who used the CPU).
//!
//! The whole plan runs on a durable cluster (`fsync=on`, as the service's
//! embedded cluster and any production Postgres run: a commit waits for its
//! WAL flush, and Postgres flushes concurrent commits together), then on
//! one with `fsync=off` (a commit costs no flush: the bare `UPDATE` is
//! bounded by CPU and round trips only, the harder comparison for a service
//! that does more than one statement per call).
//!
//!   cargo bench --bench h2load_vs_pgbench
//!     H2LOAD_PLAN=1x1,16x1,16x2,16x3   workspaces x server processes, in order
//!     H2LOAD_FSYNC=on,off   the clusters to run the plan on, in order
//!     H2LOAD_REQUESTS=20000  H2LOAD_ROUNDS=5
//!     H2LOAD_PERF=<dir>   record `perf` of the servers during each service run

mod support;

use std::time::Duration;

use support::{
    cpu::Meter,
    load::{self, H2load, grpc_frame, median},
    perf, pg,
};
use test_support::{server_process::ServerProcess, workspace};
use tokio_postgres::NoTls;
use workspace_lifecycle::proto as pb;

const CONCURRENCY: usize = 32;
const RUN_LIMIT: Duration = Duration::from_secs(600);

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Shape {
    fsync: bool,
    workspaces: usize,
    replicas: usize,
    service: f64,
    bare: f64,
    failures: Vec<String>,
}

async fn shape(cluster: &pg::Cluster, workspaces: usize, replicas: usize) -> Shape {
    let requests = env_num("H2LOAD_REQUESTS", 20_000).div_ceil(CONCURRENCY) * CONCURRENCY;
    let rounds = env_num("H2LOAD_ROUNDS", 5).max(1);
    let perf_dir = std::env::var_os("H2LOAD_PERF").map(std::path::PathBuf::from);
    let url = support::fresh_database(&cluster.admin).await;
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for r in 0..replicas {
        let server = ServerProcess::start(dir.path(), &format!("replica-{r}"), |command| {
            command
                .args(["--database-url", &url, "--backends", "process"])
                .env("RUST_LOG", "warn");
        })
        .await;
        servers.push(server);
    }
    let client = servers[0].client().await;
    let token = servers[0].token();
    let mut ids = Vec::new();
    for i in 0..workspaces {
        let request = workspace::create_request(&format!("h2load-{i}"), pb::BackendKind::Process);
        ids.push(workspace::create(&client, request).await);
    }
    workspace::wait_online(&client, &ids, Duration::from_secs(120)).await;

    // One request body per workspace.
    let bodies: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let path = dir.path().join(format!("set-secret-{i}.bin"));
            let request = pb::SetSecretRequest {
                workspace_id: id.clone(),
                name: "BENCH_SECRET".into(),
                value: "a value of the length of a typical token 0123456789".into(),
                request_id: String::new(),
            };
            std::fs::write(&path, grpc_frame(&request)).unwrap();
            path
        })
        .collect();
    // The drivers: (server, workspace, clients, requests).
    let drivers: Vec<(usize, usize, usize, usize)> = if workspaces == 1 {
        (0..replicas)
            .map(|r| {
                let clients = CONCURRENCY / replicas + usize::from(r < CONCURRENCY % replicas);
                (r, 0, clients, requests * clients / CONCURRENCY)
            })
            .collect()
    } else {
        (0..workspaces)
            .map(|w| {
                let clients = CONCURRENCY / workspaces;
                (w % replicas, w, clients, requests * clients / CONCURRENCY)
            })
            .collect()
    };
    let calls: usize = drivers.iter().map(|d| d.3).sum();
    assert_eq!(calls, requests, "drivers split the calls exactly");

    // pgbench's table: one row per workspace, on the same cluster.
    let (db, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    if cluster.statements {
        db.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await
            .unwrap();
    }
    db.batch_execute(&format!(
        "CREATE TABLE bare_bench (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
         INSERT INTO bare_bench (id) SELECT generate_series(1, {workspaces})"
    ))
    .await
    .unwrap();
    let script = dir.path().join("update.sql");
    std::fs::write(
        &script,
        format!(
            "\\set id random(1, {workspaces})\nUPDATE bare_bench SET n = n + 1 WHERE id = :id;\n"
        ),
    )
    .unwrap();
    let database = url
        .split_whitespace()
        .find_map(|p| p.strip_prefix("dbname="))
        .unwrap()
        .to_owned();
    let pg_flags = cluster.pgbench_flags();
    let bare_total = async || -> i64 {
        db.query_one("SELECT sum(n)::bigint FROM bare_bench", &[])
            .await
            .unwrap()
            .get(0)
    };
    let pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
    let rss_start: u64 = servers.iter().map(ServerProcess::rss_bytes).sum();

    println!(
        "\nSetSecret via h2load vs pgbench UPDATE: fsync={}, {workspaces} workspace(s), {replicas} server process(es), \
         {CONCURRENCY} concurrent, {requests} calls per run, {rounds} rounds (+1 warm-up)",
        cluster.fsync
    );
    let mut failures = Vec::new();
    let (mut service, mut bare) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        let label = if round == 0 {
            "warm-up".to_owned()
        } else {
            format!("round {round}")
        };
        // The service.
        let before = workspace::versions(&client, &ids).await;
        let pg_before = pg::counters(&db).await;
        let loads: Vec<H2load<'_>> = drivers
            .iter()
            .map(|&(server, w, clients, requests)| H2load {
                url: format!(
                    "{}/workspace.lifecycle.v1.WorkspaceLifecycle/SetSecret",
                    servers[server].addr
                ),
                body: &bodies[w],
                token: &token,
                clients,
                requests,
            })
            .collect();
        let perf = match &perf_dir {
            Some(d) if round > 0 => Some(
                perf::start(d, &format!("perf-{workspaces}w-{replicas}r-{round}"), &pids).await,
            ),
            _ => None,
        };
        let meter = Meter::start(cluster.postmaster, &pids);
        let run = load::h2load_all(&loads, RUN_LIMIT).await;
        let cpu = meter.stop();
        if let Some(perf) = perf {
            perf::stop(perf).await;
        }
        let per_call = pg::per_call(pg_before, pg::counters(&db).await, requests);
        let after = workspace::versions(&client, &ids).await;
        let moved: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
        let mut bad = run.errors.clone();
        if moved != requests as u64 {
            bad.push(format!(
                "config versions moved by {moved}, not by the {requests} calls"
            ));
        }
        for (w, (a, b)) in after.iter().zip(&before).enumerate() {
            let sent: usize = drivers.iter().filter(|d| d.1 == w).map(|d| d.3).sum();
            if a - b != sent as u64 {
                bad.push(format!(
                    "workspace {w}: version moved by {}, {sent} calls",
                    a - b
                ));
            }
        }
        if run.outcome.status_2xx != requests || run.outcome.failed != 0 {
            bad.push(format!(
                "h2load: {} HTTP 2xx, {} failed of {requests}",
                run.outcome.status_2xx, run.outcome.failed
            ));
        }
        println!(
            "  {label:<8} service  {:>8.0} calls/s  ({:.2} s; versions +{moved}; {per_call}; {})",
            run.per_s(requests),
            run.took.as_secs_f64(),
            cpu.line("servers")
        );
        // pgbench.
        let sum_before = bare_total().await;
        let pg_before = pg::counters(&db).await;
        let meter = Meter::start(cluster.postmaster, &[]);
        let pg_run = load::pgbench(
            &cluster.bin,
            &pg_flags,
            &database,
            &script,
            CONCURRENCY,
            requests / CONCURRENCY,
            RUN_LIMIT,
        )
        .await;
        let pg_cpu = meter.stop();
        let pg_per_call = pg::per_call(pg_before, pg::counters(&db).await, requests);
        let updated = bare_total().await - sum_before;
        bad.extend(pg_run.errors.iter().cloned());
        if pg_run.outcome != requests || updated != requests as i64 {
            bad.push(format!(
                "pgbench: {} transactions reported, rows moved by {updated}, of {requests}",
                pg_run.outcome
            ));
        }
        println!(
            "  {label:<8} pgbench  {:>8.0} UPDATEs/s ({:.2} s; rows +{updated}; {pg_per_call}; {})",
            pg_run.per_s(requests),
            pg_run.took.as_secs_f64(),
            pg_cpu.line("servers")
        );
        for b in &bad {
            println!("    FAILED: {b}");
        }
        failures.extend(bad.into_iter().map(|b| format!("{label}: {b}")));
        if round > 0 {
            service.push(run.per_s(requests));
            bare.push(pg_run.per_s(requests));
        }
    }
    if cluster.statements {
        // What the round trips are: the most frequent statements in this
        // database over every run (the service's and pgbench's), per call.
        let total = ((rounds + 1) * requests) as f64;
        println!(
            "  statements per SetSecret (all runs; pgbench's UPDATE is per UPDATE), with each one's mean execution time:"
        );
        let rows = db
            .query(
                "SELECT calls, mean_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 110)
                 FROM pg_stat_statements
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                 ORDER BY calls DESC LIMIT 14",
                &[],
            )
            .await
            .unwrap_or_default();
        for row in rows {
            let calls: i64 = row.get(0);
            let mean_ms: f64 = row.get(1);
            let query: String = row.get(2);
            println!(
                "    {:>6.2}  {:>7.1} µs  {query}",
                calls as f64 / total,
                mean_ms * 1000.0
            );
        }
    }
    let rss_end: u64 = servers.iter().map(ServerProcess::rss_bytes).sum();
    let (s, b) = (median(&service), median(&bare));
    println!(
        "  median   service {s:.0} calls/s, pgbench {b:.0} UPDATEs/s, ratio {:.2} (target ≥ 1.0: {})",
        s / b,
        if s / b >= 1.0 { "met" } else { "missed" }
    );
    println!(
        "  server RSS {:.1} MB at start, {:.1} MB after the runs",
        support::mib(rss_start),
        support::mib(rss_end)
    );
    for server in servers {
        server.stop(Duration::from_secs(30)).await;
    }
    Shape {
        fsync: cluster.fsync == "on",
        workspaces,
        replicas,
        service: s,
        bare: b,
        failures,
    }
}

#[tokio::main]
async fn main() {
    println!(
        "# h2load vs pgbench — {}",
        support::command("h2load_vs_pgbench")
    );
    println!("# machine: {}", support::machine());
    let plan: Vec<(usize, usize)> = std::env::var("H2LOAD_PLAN")
        .unwrap_or_else(|_| "1x1,16x1,16x2,16x3".into())
        .split(',')
        .filter_map(|p| {
            let (w, r) = p.trim().split_once('x')?;
            Some((w.parse().ok()?, r.parse().ok()?))
        })
        .collect();
    let fsyncs: Vec<bool> = std::env::var("H2LOAD_FSYNC")
        .unwrap_or_else(|_| "on,off".into())
        .split(',')
        .filter_map(|f| match f.trim() {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        })
        .collect();
    let most = plan.iter().map(|p| p.1).max().unwrap_or(1);
    let mut all = Vec::new();
    for &fsync in &fsyncs {
        // Each replica's pool (32) and its listener, pgbench's 32, setup.
        let cluster = pg::cluster(most * 34 + CONCURRENCY, fsync).await;
        println!("\n# {}", cluster.describe());
        for &(w, r) in &plan {
            assert!(
                w >= 1 && r >= 1 && CONCURRENCY % w == 0,
                "H2LOAD_PLAN: workspaces must divide {CONCURRENCY}"
            );
            all.push(shape(&cluster, w, r).await);
        }
    }
    println!(
        "\nh2load vs pgbench summary (fsync, workspaces, server processes: SetSecret/s vs UPDATE/s)"
    );
    let mut failed = false;
    for s in &all {
        println!(
            "  fsync={:<3} {:>2} workspace(s), {} process(es): {:.0}/s vs {:.0}/s = {:.2}{}",
            if s.fsync { "on" } else { "off" },
            s.workspaces,
            s.replicas,
            s.service,
            s.bare,
            s.service / s.bare,
            if s.failures.is_empty() {
                String::new()
            } else {
                format!("  FAILED ({} checks)", s.failures.len())
            }
        );
        failed |= !s.failures.is_empty();
    }
    if failed {
        eprintln!("h2load_vs_pgbench: verification failed (see FAILED lines)");
        std::process::exit(1);
    }
}

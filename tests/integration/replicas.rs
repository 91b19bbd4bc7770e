//! Several server *processes* on one Postgres with the process backend,
//! judged by the backend's own journal of starts and stops (not by the
//! service's opinion of itself): a random storm over three replicas, and a
//! `kill -9` of the replica running a cycle.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::join_all;
use workspace_backends::process::journal::{self, Entry};
use workspace_lifecycle::{
    auth::client::LifecycleClient,
    domain::WorkspaceId,
    embedded_pg::EmbeddedPostgres,
    proto::{self as pb, restart_event::Event},
};

use crate::support::{
    TestDb, bounded,
    server_process::{ServerProcess, slow_agent},
    workspace,
};

/// One replica: the server process with the storm's timings (`extra`
/// flags override them).
pub(crate) async fn replica(
    database_url: &str,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> ServerProcess {
    ServerProcess::start(dir, name, |command| {
        command
            .args(["--database-url", database_url])
            .args(["--process-journal", &dir.join("journal").to_string_lossy()])
            .args([
                "--debounce-window",
                "1s",
                "--burst-quiet",
                "200ms",
                "--burst-max-wait",
                "1s",
            ])
            // Overridable by `extra` (a flag beats the environment).
            .env("WL_LEASE_TTL", "3s")
            .args(["--sweep-interval", "200ms", "--reconcile-interval", "500ms"])
            .args([
                "--heartbeat-interval",
                "1s",
                "--stop-grace",
                "2s",
                "--provision-deadline",
                "30s",
            ])
            .args(["--db-connections", "8"])
            .args(extra);
    })
    .await
}

/// A MANUAL restart sent to `c`, answered `accepted` (so `c`'s replica runs
/// the cycle); the stream is returned to keep it open.
pub(crate) async fn restart_accepted(
    c: &mut LifecycleClient,
    ws: WorkspaceId,
    reason: &str,
) -> tonic::Streaming<pb::RestartEvent> {
    let mut stream = c
        .restart_workspace(pb::RestartWorkspaceRequest {
            workspace_id: ws.to_string(),
            trigger: pb::Trigger::Manual as i32,
            reason: reason.into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let accepted = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(accepted.event, Some(Event::Accepted(_))),
        "{accepted:?}"
    );
    stream
}

/// Waits until the journal shows the backend asked to start `generation`.
pub(crate) async fn started_generation(dir: &Path, ws: WorkspaceId, generation: u64) {
    bounded("the backend starts the generation", async {
        while !journal_of(dir, ws)
            .iter()
            .any(|e| e.op == "start" && e.generation.map(|g| g.0) == Some(generation))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Everything the journal says about one workspace — every call that
/// changes an instance: starts, stops, deletes, reaps, whoever made them
/// (cycles, the collector, shutdown) — in order of start.
pub(crate) fn journal_of(dir: &Path, ws: WorkspaceId) -> Vec<Entry> {
    let mut ops: Vec<Entry> = journal::read(&dir.join("journal"))
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.workspace == ws)
        .collect();
    ops.sort_by_key(|e| e.begin_us);
    ops
}

/// No two backend calls on the workspace overlapped, every start came
/// right after a stop (a whole Stop→Start), and generations only grew.
pub(crate) fn assert_serial(ws: WorkspaceId, ops: &[Entry]) {
    for pair in ops.windows(2) {
        assert!(
            pair[0].end_us <= pair[1].begin_us,
            "{ws}: overlapping backend calls {:?} and {:?}",
            pair[0],
            pair[1]
        );
        assert!(
            !(pair[0].op == "start" && pair[1].op == "start"),
            "{ws}: two starts without a stop between: {pair:?}"
        );
    }
    let generations: Vec<u64> = ops
        .iter()
        .filter_map(|e| e.generation)
        .map(|g| g.0)
        .collect();
    assert!(
        generations.windows(2).all(|g| g[0] < g[1]),
        "{ws}: generations out of order {generations:?}"
    );
}

/// The start of the first cycle (its stop) that began after `sent_us`, and
/// the config version it started with.
fn covering_cycle(ops: &[Entry], sent_us: u64) -> Option<(u64, u64)> {
    ops.windows(2)
        .find(|pair| pair[0].op == "stop" && pair[0].begin_us >= sent_us && pair[1].op == "start")
        .map(|pair| (pair[0].begin_us, pair[1].config_version.unwrap().0))
}

/// Waits until the workspace is ONLINE, idle, its agent serving the
/// current config.
pub(crate) async fn settled(c: &mut LifecycleClient, ws: WorkspaceId) -> pb::Workspace {
    workspace::settled(c, &ws.to_string(), workspace::serving_current_config).await
}

/// Creates a PROCESS workspace.
pub(crate) async fn create(c: &mut LifecycleClient, name: &str) -> WorkspaceId {
    workspace::create(c, workspace::create_request(name, pb::BackendKind::Process))
        .await
        .parse()
        .unwrap()
}

/// A request the service acknowledged: when it was sent, and the config
/// version it must be served with (0 for a plain restart).
#[derive(Clone, Copy, Debug)]
struct Acked {
    ws: WorkspaceId,
    sent_us: u64,
    config_version: u64,
}

/// A small deterministic generator (xorshift), seeded and printed so a
/// failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Sends one random request to a random replica; returns it if acknowledged.
async fn one_request(
    rng: &mut Rng,
    clients: &[LifecycleClient],
    workspaces: &[WorkspaceId],
    n: usize,
) -> Option<Acked> {
    let mut c = clients[rng.below(clients.len())].clone();
    let ws = workspaces[rng.below(workspaces.len())];
    let id = ws.to_string();
    let sent_us = journal::now_us();
    let acked = |config_version| {
        Some(Acked {
            ws,
            sent_us,
            config_version,
        })
    };
    match rng.below(5) {
        kind @ 0..=2 => {
            let trigger = [
                pb::Trigger::Manual,
                pb::Trigger::ConfigChanged,
                pb::Trigger::HealthProbe,
            ][kind];
            let mut stream = c
                .restart_workspace(pb::RestartWorkspaceRequest {
                    workspace_id: id,
                    trigger: trigger as i32,
                    reason: "storm".into(),
                    request_id: String::new(),
                })
                .await
                .expect("restart answered")
                .into_inner();
            let first = stream
                .message()
                .await
                .expect("an event")
                .expect("a first event");
            match first.event {
                Some(Event::Accepted(_) | Event::Coalesced(_)) => acked(0),
                Some(Event::Debounced(_)) => None,
                other => panic!("unexpected first event {other:?}"),
            }
        }
        3 => {
            let set = c
                .set_secret(pb::SetSecretRequest {
                    workspace_id: id,
                    name: format!("S{}", rng.below(3)),
                    value: format!("v{n}"),
                    request_id: String::new(),
                })
                .await
                .expect("set secret")
                .into_inner();
            acked(set.config_version)
        }
        _ => {
            let written = c
                .write_file(pb::WriteFileRequest {
                    workspace_id: id,
                    path: format!("f{}.txt", rng.below(3)),
                    content: format!("{n}").into_bytes(),
                    request_id: String::new(),
                })
                .await
                .expect("write file")
                .into_inner();
            acked(written.config_version)
        }
    }
}

#[tokio::test]
async fn a_storm_over_three_replica_processes_never_overlaps_and_loses_nothing() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(replica(&db.url, dir.path(), &format!("replica-{i}"), &[]).await);
    }
    let clients: Vec<_> = join_all(replicas.iter().map(ServerProcess::client)).await;
    let mut c = clients[0].clone();
    let mut workspaces = Vec::new();
    for i in 0..3 {
        workspaces.push(create(&mut c, &format!("storm-{i}")).await);
    }
    for ws in &workspaces {
        settled(&mut c, *ws).await;
    }

    let seed = journal::now_us() | 1;
    println!("storm seed {seed}");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    let senders = (0..6u64).map(|k| {
        let (clients, workspaces, acked) = (clients.clone(), workspaces.clone(), acked.clone());
        async move {
            let mut rng = Rng(seed.wrapping_mul(k + 7) | 1);
            let mut n = 0;
            while tokio::time::Instant::now() < until {
                n += 1;
                if let Some(a) = one_request(&mut rng, &clients, &workspaces, n).await {
                    acked.lock().unwrap().push(a);
                }
                tokio::time::sleep(Duration::from_millis(rng.below(40) as u64)).await;
            }
        }
    });
    join_all(senders).await;

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the storm sent too little: {}",
        acked.len()
    );
    let mut cycles = HashMap::new();
    for ws in &workspaces {
        let w = settled(&mut c, *ws).await;
        let ops = journal_of(dir.path(), *ws);
        assert_serial(*ws, &ops);
        let last_start = ops.iter().rev().find(|e| e.op == "start").unwrap();
        assert_eq!(
            last_start.config_version.unwrap().0,
            w.config_version,
            "{ws} does not run its latest config"
        );
        cycles.insert(*ws, ops.iter().filter(|e| e.op == "start").count());
    }
    for a in &acked {
        let ops = journal_of(dir.path(), a.ws);
        let (_, served) = covering_cycle(&ops, a.sent_us)
            .unwrap_or_else(|| panic!("no cycle started after acknowledged {a:?}"));
        // The first cycle after it may predate a config write that landed
        // mid-cycle; then a later cycle must carry it.
        let carried = ops.iter().any(|e| {
            e.op == "start"
                && e.begin_us >= a.sent_us
                && e.config_version.unwrap().0 >= a.config_version
        });
        assert!(
            carried,
            "config {} of {a:?} never started (first cover had {served})",
            a.config_version
        );
    }
    println!(
        "{} acknowledged requests, cycles per workspace {cycles:?}",
        acked.len()
    );
    drop(replicas);
}

#[tokio::test]
async fn kill_9_of_the_replica_running_a_cycle_is_completed_by_another() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    // An agent that takes 2 s to boot, so the cycle is surely in flight
    // when its replica dies.
    let slow = slow_agent(dir.path());
    let agent = ["--agent-command", slow.as_str()];
    let mut victim = replica(&db.url, dir.path(), "victim", &agent).await;
    let survivor = replica(&db.url, dir.path(), "survivor", &agent).await;
    let mut a = victim.client().await;
    let mut b = survivor.client().await;
    let ws = create(&mut b, "kill-9").await;
    settled(&mut b, ws).await;

    // A cycle on the victim, and a config change while it runs.
    let _stream = restart_accepted(&mut a, ws, "to be killed").await;
    let secret = a
        .set_secret(pb::SetSecretRequest {
            workspace_id: ws.to_string(),
            name: "LATE".into(),
            value: "v".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    // Kill it once the backend has been asked to start the new generation.
    started_generation(dir.path(), ws, 2).await;
    let killed_at = tokio::time::Instant::now();
    victim.child.start_kill().unwrap();
    victim.child.wait().await.unwrap();

    let w = settled(&mut b, ws).await;
    let took = killed_at.elapsed();
    assert_eq!(w.config_version, secret.config_version);
    assert_eq!(
        w.agent.unwrap().config_version,
        secret.config_version,
        "ONLINE on the latest config"
    );
    // Lease expiry (3 s) plus the cycle the victim had begun and the
    // follow-up for the config change (2 s agent boot each), with slack.
    assert!(took < Duration::from_secs(3 + 2 * 3 + 3), "took {took:?}");
    let ops = journal_of(dir.path(), ws);
    assert_serial(ws, &ops);
    println!("completed {took:?} after kill -9");
}

#[tokio::test]
async fn postgres_restarted_mid_run_gives_unavailable_then_recovers_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pg_root = dir.path().join("pg-root");
    let pg = EmbeddedPostgres::ensure(&pg_root)
        .await
        .expect("a private Postgres");
    let slow = slow_agent(dir.path());
    let replica = replica(
        &pg.url(),
        dir.path(),
        "replica",
        &["--agent-command", &slow],
    )
    .await;
    let mut c = replica.client().await;
    let ws = create(&mut c, "pg-restart").await;
    settled(&mut c, ws).await;

    // Acknowledged, then the database goes away under the cycle it started.
    let secret = c
        .set_secret(pb::SetSecretRequest {
            workspace_id: ws.to_string(),
            name: "BEFORE_OUTAGE".into(),
            value: "v".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    pg.stop().await.expect("Postgres stops");

    let get = c
        .get_workspace(pb::GetWorkspaceRequest {
            workspace_id: ws.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(get.code(), tonic::Code::Unavailable, "{get:?}");
    let restart = c
        .restart_workspace(pb::RestartWorkspaceRequest {
            workspace_id: ws.to_string(),
            trigger: pb::Trigger::Manual as i32,
            reason: "during the outage".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(restart.code(), tonic::Code::Unavailable, "{restart:?}");
    assert!(
        !restart.message().contains("password") && !restart.message().contains("host="),
        "no connection details in errors: {}",
        restart.message()
    );

    // The outage outlasts a lease renewal of the cycle in flight.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _pg = EmbeddedPostgres::ensure(&pg_root)
        .await
        .expect("Postgres restarts");
    let w = settled(&mut c, ws).await;
    assert_eq!(
        w.agent.unwrap().config_version,
        secret.config_version,
        "the acknowledged change survived the outage"
    );
    let ops = journal_of(dir.path(), ws);
    assert_serial(ws, &ops);
    drop(replica);
    pg.stop().await.ok();
}

#[tokio::test]
async fn sigterm_hands_the_running_cycle_to_another_replica_at_once() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let slow = slow_agent(dir.path());
    // Leases long enough that only a hand-off explains a quick completion.
    let flags = [
        "--agent-command",
        &slow,
        "--lease-ttl",
        "60s",
        "--shutdown-grace",
        "200ms",
    ];
    let mut leaving = replica(&db.url, dir.path(), "leaving", &flags).await;
    let staying = replica(&db.url, dir.path(), "staying", &flags).await;
    let mut a = leaving.client().await;
    let mut b = staying.client().await;
    let ws = create(&mut b, "sigterm").await;
    settled(&mut b, ws).await;

    let _stream = restart_accepted(&mut a, ws, "during shutdown").await;
    started_generation(dir.path(), ws, 2).await;
    let signalled_at = tokio::time::Instant::now();
    let pid = nix::unistd::Pid::from_raw(leaving.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let exit = bounded("the leaving replica exits", leaving.child.wait())
        .await
        .unwrap();
    assert!(exit.success(), "graceful exit: {exit:?}");

    let w = settled(&mut b, ws).await;
    let took = signalled_at.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}: the lease was waited out, not handed off"
    );
    assert!(w.generation >= 2);
    assert_serial(ws, &journal_of(dir.path(), ws));
    println!("handed off and completed {took:?} after SIGTERM");
}

//! The contracts of SPEC.md (C1–C12, C15), each pinned by a test that fails
//! when the guard behind it is removed. Cycles are counted as backend Start
//! calls, as the fake backend saw them. Windows run on a manual clock; every
//! wait is bounded.

use std::time::Duration;

use futures::future::join_all;
use workspace_backends::InstancePhase;
use workspace_lifecycle::proto::{
    self as pb, config_change_response::Delivery, report_unreachable_response::Outcome,
    restart_event::Event, workspace_agent_client::WorkspaceAgentClient,
};

use crate::support::{
    AgentMode, Options, TestServer, bounded, collect, cycles, kinds, last, report_unreachable,
    stats,
};

/// A contract test run on one server and on two replicas of one database,
/// calls spread over both: the guarantee must not depend on which replica a
/// request reaches.
macro_rules! on_one_and_two_replicas {
    ($body:ident) => {
        on_one_and_two_replicas!($body, on);
    };
    ($body:ident, $options:ident) => {
        mod $body {
            #[tokio::test]
            async fn one_replica() {
                let s = super::TestServer::start(super::$options(1)).await;
                super::$body(&s).await;
                s.shutdown().await;
            }

            #[tokio::test]
            async fn two_replicas() {
                let s = super::TestServer::start(super::$options(2)).await;
                super::$body(&s).await;
                s.shutdown().await;
            }
        }
    };
}

const WINDOW: Duration = Duration::from_secs(60);
const PAST_WINDOW: Duration = Duration::from_secs(61);

/// The options of a contract test on `replicas` replicas.
fn on(replicas: usize) -> Options {
    Options {
        replicas,
        ..Options::default()
    }
}

fn first_cycle(events: &[pb::RestartEvent]) -> String {
    events[0].cycle_id.clone()
}

#[tokio::test]
async fn c1_one_request_on_an_idle_workspace_runs_exactly_one_cycle() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("c1").await;
    s.advance(PAST_WINDOW);
    assert_eq!(s.backend.start_count(ws), 1, "the create cycle");

    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert_eq!(
        kinds(&events),
        ["accepted", "phase", "phase", "phase", "online"]
    );
    assert!(matches!(last(&events), Event::Online(o) if o.generation == 2));
    assert_eq!(s.backend.start_count(ws), 2);

    let w = s.get(ws).await;
    assert!(w.running_cycle_id.is_empty() && w.pending_cycle_id.is_empty());
    let history = cycles(&s, ws).await;
    assert_eq!(history.len(), 2);
    assert!(
        history
            .iter()
            .all(|c| c.state == pb::CycleState::Ended as i32)
    );
    s.shutdown().await;
}

on_one_and_two_replicas!(
    c2_requests_during_a_cycle_give_exactly_one_more_that_reads_config_at_its_start
);
async fn c2_requests_during_a_cycle_give_exactly_one_more_that_reads_config_at_its_start(
    s: &TestServer,
) {
    let ws = s.create_online("c2").await;
    let hold = s.backend.hold_next_start(ws);
    let first = tokio::spawn({
        let stream = s.restart_stream(ws, pb::Trigger::Manual).await.unwrap();
        collect(stream)
    });
    s.backend.wait_for_starts(2).await;

    // While the first cycle is in flight (it already read its config):
    let late = s.set_secret(ws, "LATE", "after-the-first-read").await;
    let followers = join_all((0..5).map(|_| s.restart_stream(ws, pb::Trigger::Manual))).await;
    hold.add_permits(1);

    let first = bounded("first restart", first).await.unwrap();
    assert_eq!(kinds(&first)[0], "accepted");
    let mut follow_up = None;
    for stream in followers {
        let events = collect(stream.unwrap()).await;
        assert_eq!(kinds(&events)[0], "coalesced", "{events:?}");
        assert!(matches!(last(&events), Event::Online(_)));
        follow_up.get_or_insert_with(|| first_cycle(&events));
        assert_eq!(
            Some(first_cycle(&events)),
            follow_up,
            "all joined one cycle"
        );
    }
    assert_eq!(
        Some(late.cycle_id),
        follow_up,
        "the change rides the follow-up"
    );

    let starts = s.backend.starts(ws);
    assert_eq!(
        starts.len(),
        3,
        "create + the cycle in flight + exactly one follow-up"
    );
    assert!(!starts[1].secrets.contains_key("LATE"));
    assert_eq!(starts[2].secrets["LATE"], "after-the-first-read");
    assert!(starts[2].config_version.0 >= late.config_version);
}

#[tokio::test]
async fn c3_sequential_manual_requests_each_run_a_cycle() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("c3").await;
    for n in 1..=3u64 {
        let events = s.restart(ws, pb::Trigger::Manual).await;
        assert!(matches!(last(&events), Event::Online(o) if o.generation == n + 1));
    }
    assert_eq!(s.backend.start_count(ws), 4);
    s.shutdown().await;
}

#[tokio::test]
async fn c4_workspaces_never_wait_for_each_other() {
    let s = TestServer::start(Options::default()).await;
    let (a, b) = (s.create_online("c4-a").await, s.create_online("c4-b").await);
    let hold = s.backend.hold_next_start(a);
    let blocked = tokio::spawn({
        let stream = s.restart_stream(a, pb::Trigger::Manual).await.unwrap();
        collect(stream)
    });
    s.backend.wait_for_starts(3).await;

    let events = s.restart(b, pb::Trigger::Manual).await;
    assert!(
        matches!(last(&events), Event::Online(_)),
        "B finished while A is blocked"
    );
    assert!(!blocked.is_finished());

    hold.add_permits(1);
    let a_events = bounded("A", blocked).await.unwrap();
    assert!(matches!(last(&a_events), Event::Online(_)));
    s.shutdown().await;
}

on_one_and_two_replicas!(c5_one_stop_start_at_a_time_across_every_entry_point);
async fn c5_one_stop_start_at_a_time_across_every_entry_point(s: &TestServer) {
    let ws = s.create_online("c5").await;
    let hold = s.backend.hold_next_start(ws);
    let first = s.restart_stream(ws, pb::Trigger::Manual).await.unwrap();
    s.backend.wait_for_starts(2).await;

    let c = s.client();
    let id = ws.to_string();
    let restarts = join_all(
        [
            pb::Trigger::Manual,
            pb::Trigger::ConfigChanged,
            pb::Trigger::HealthProbe,
            pb::Trigger::Reconciler,
        ]
        .into_iter()
        .cycle()
        .take(12)
        .map(|t| s.restart_stream(ws, t)),
    );
    let secrets = join_all((0..4).map(|i| {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            c.set_secret(pb::SetSecretRequest {
                workspace_id: id,
                name: format!("S{i}"),
                value: "v".into(),
                request_id: String::new(),
            })
            .await
        }
    }));
    let probes = join_all((0..4).map(|_| report_unreachable(s, ws)));
    let (restarts, secrets, _probes) = tokio::join!(restarts, secrets, probes);
    let stop = s
        .client()
        .stop_workspace(pb::StopWorkspaceRequest {
            workspace_id: id.clone(),
            reason: "test".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(secrets.iter().all(|r| r.is_ok()));
    hold.add_permits(1);

    collect(first).await;
    for stream in restarts {
        collect(stream.unwrap()).await;
    }
    let stopped = collect(stop).await;
    assert!(matches!(last(&stopped), Event::Stopped(_)), "{stopped:?}");
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(matches!(last(&events), Event::Online(_)));

    assert_eq!(
        s.backend.max_in_flight(ws),
        1,
        "two backend calls overlapped"
    );
    let calls = s.backend.calls(ws);
    assert!(
        !calls.contains("TT"),
        "two starts without a stop between: {calls}"
    );
    assert!(calls.starts_with("ST"), "{calls}");
}

#[tokio::test]
async fn c6_a_failing_or_panicking_cycle_releases_everything_and_the_next_request_runs() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("c6").await;

    s.backend.fail_next_starts(1);
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(matches!(last(&events), Event::Failed(f) if f.reason.contains("told to fail")));
    let w = s.get(ws).await;
    assert_eq!(w.status, pb::WorkspaceStatus::Failed as i32);
    assert!(!w.status_reason.is_empty());
    assert!(w.running_cycle_id.is_empty());

    s.backend.panic_next_starts(1);
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(
        matches!(last(&events), Event::Failed(f) if f.reason.contains("panicked")),
        "{events:?}"
    );

    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(matches!(last(&events), Event::Online(_)));
    assert_eq!(s.get(ws).await.status, pb::WorkspaceStatus::Online as i32);
    s.shutdown().await;
}

#[tokio::test]
async fn c6_no_workspace_stays_provisioning_past_the_deadline() {
    let s = TestServer::start(Options {
        deadline: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    let ws = s.create_online("c6-deadline").await;
    s.backend.set_agent(AgentMode::Silent);
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(
        matches!(last(&events), Event::Failed(f) if f.reason.contains("deadline")),
        "{events:?}"
    );
    let w = s.get(ws).await;
    assert_eq!(w.status, pb::WorkspaceStatus::Failed as i32);

    s.backend.set_agent(AgentMode::Register);
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(matches!(last(&events), Event::Online(_)));
    s.shutdown().await;
}

on_one_and_two_replicas!(c7_probes_in_the_window_are_dropped_and_counted);
async fn c7_probes_in_the_window_are_dropped_and_counted(s: &TestServer) {
    let ws = s.create_online("c7-drop").await;
    for trigger in [pb::Trigger::HealthProbe, pb::Trigger::Reconciler] {
        let events = s.restart(ws, trigger).await;
        assert_eq!(kinds(&events), ["debounced"], "{trigger:?}");
        let Event::Debounced(d) = last(&events) else {
            unreachable!()
        };
        assert!(d.until.is_some());
    }
    let answer = report_unreachable(s, ws).await;
    assert!(!answer.acted);
    assert_eq!(answer.outcome, Outcome::DroppedDebounced as i32);
    assert_eq!(s.backend.start_count(ws), 1, "no cycle for any of them");
    let w = s.get(ws).await;
    assert_eq!(stats(&w, pb::Trigger::HealthProbe).dropped, 2);
    assert_eq!(stats(&w, pb::Trigger::Reconciler).dropped, 1);

    // After the window a probe acts.
    s.advance(PAST_WINDOW);
    let answer = report_unreachable(s, ws).await;
    assert!(answer.acted, "{answer:?}");
    s.wait_for(ws, |w| {
        w.generation == 2 && w.status == pb::WorkspaceStatus::Online as i32
    })
    .await;
}

on_one_and_two_replicas!(
    c7_config_changes_in_the_window_are_deferred_never_lost_one_cycle_per_window
);
async fn c7_config_changes_in_the_window_are_deferred_never_lost_one_cycle_per_window(
    s: &TestServer,
) {
    let ws = s.create_online("c7-defer").await;
    let window_end = s.get(ws).await.debounce_until.unwrap();

    let mut last_version = 0;
    let mut cycle = None;
    for i in 0..5 {
        let r = s.set_secret(ws, &format!("K{i}"), "v").await;
        assert_eq!(r.delivery, Delivery::Deferred as i32, "{r:?}");
        assert_eq!(r.not_before, Some(window_end));
        cycle.get_or_insert(r.cycle_id.clone());
        assert_eq!(Some(r.cycle_id), cycle, "one follow-up for the window");
        last_version = r.config_version;
    }
    assert_eq!(
        s.backend.start_count(ws),
        1,
        "nothing runs inside the window"
    );

    s.advance(WINDOW);
    s.wait_for(ws, |w| {
        w.generation == 2 && w.status == pb::WorkspaceStatus::Online as i32
    })
    .await;
    let starts = s.backend.starts(ws);
    assert_eq!(starts.len(), 2, "exactly one deferred cycle");
    assert!(starts[1].config_version.0 >= last_version);
    assert_eq!(starts[1].secrets.len(), 5, "every change delivered");
    assert_eq!(
        stats(&s.get(ws).await, pb::Trigger::ConfigChanged).deferred,
        5
    );
}

#[tokio::test]
async fn c7_manual_is_never_debounced() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("c7-manual").await;
    for _ in 0..3 {
        let events = s.restart(ws, pb::Trigger::Manual).await;
        assert_eq!(kinds(&events)[0], "accepted");
        assert!(matches!(last(&events), Event::Online(_)));
    }
    assert_eq!(s.backend.start_count(ws), 4);
    s.shutdown().await;
}

/// One reading of how a request was handled: a MANUAL restart that joins
/// the deferred follow-up (and so starts it at once) is answered
/// `accepted` and counted accepted — not answered one way and counted
/// another; the deferred change rides in that cycle (C2, C7).
#[tokio::test]
async fn c7_a_manual_restart_joining_a_deferred_cycle_is_answered_and_counted_accepted() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("c7-join").await;
    let deferred = s.set_secret(ws, "K", "v").await;
    assert_eq!(deferred.delivery, Delivery::Deferred as i32, "{deferred:?}");

    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert_eq!(kinds(&events)[0], "accepted", "{events:?}");
    assert!(matches!(last(&events), Event::Online(_)), "{events:?}");
    let Some(Event::Accepted(accepted)) = &events[0].event else {
        unreachable!()
    };
    assert_eq!(
        accepted.cycle_id, deferred.cycle_id,
        "the restart started the deferred cycle"
    );

    let w = s.get(ws).await;
    let manual = stats(&w, pb::Trigger::Manual);
    assert_eq!((manual.accepted, manual.coalesced), (1, 0), "{manual:?}");
    assert_eq!(stats(&w, pb::Trigger::ConfigChanged).deferred, 1);
    let starts = s.backend.starts(ws);
    assert_eq!(starts.len(), 2, "create, then exactly one more cycle");
    assert_eq!(starts[1].secrets.len(), 1, "the deferred change delivered");
    s.shutdown().await;
}

on_one_and_two_replicas!(c8_a_burst_of_ten_writes_gives_one_cycle_with_all_ten_files);
async fn c8_a_burst_of_ten_writes_gives_one_cycle_with_all_ten_files(s: &TestServer) {
    let ws = s.create_online("c8").await;
    let other = s.create_online("c8-other").await;
    s.advance(PAST_WINDOW);

    for i in 0..10 {
        let path = format!("src/file{i}.txt");
        let r = s.write_file(ws, &path, path.as_bytes()).await;
        assert_eq!(
            r.delivery,
            Delivery::Deferred as i32,
            "waits for the burst to end"
        );
    }
    assert_eq!(s.backend.start_count(ws), 1);
    assert_eq!(
        s.backend.start_count(other),
        1,
        "other workspaces untouched"
    );

    s.advance(Duration::from_secs(6));
    s.wait_for(ws, |w| {
        w.generation == 2 && w.status == pb::WorkspaceStatus::Online as i32
    })
    .await;
    let starts = s.backend.starts(ws);
    assert_eq!(starts.len(), 2);
    assert_eq!(
        starts[1].files.len(),
        10,
        "every write of the burst is in the cycle"
    );

    // After the window, a new write fires again.
    s.advance(PAST_WINDOW);
    s.write_file(ws, "later.txt", b"later.txt").await;
    s.advance(Duration::from_secs(6));
    s.wait_for(ws, |w| {
        w.generation == 3 && w.status == pb::WorkspaceStatus::Online as i32
    })
    .await;
    assert_eq!(s.backend.start_count(ws), 3);
    assert_eq!(s.backend.start_count(other), 1);
}

on_one_and_two_replicas!(c8_fifty_concurrent_writes_give_one_cycle);
async fn c8_fifty_concurrent_writes_give_one_cycle(s: &TestServer) {
    let ws = s.create_online("c8-fifty").await;
    s.advance(PAST_WINDOW);
    let answers = join_all((0..50).map(|i| {
        let mut c = s.client();
        let id = ws.to_string();
        async move {
            c.write_file(pb::WriteFileRequest {
                workspace_id: id,
                path: format!("f{i}"),
                content: vec![b'x'; 10],
                request_id: String::new(),
            })
            .await
        }
    }))
    .await;
    let cycles: std::collections::HashSet<String> = answers
        .into_iter()
        .map(|a| a.unwrap().into_inner().cycle_id)
        .collect();
    assert_eq!(cycles.len(), 1, "all writes joined one cycle");
    s.advance(Duration::from_secs(6));
    s.wait_for(ws, |w| {
        w.generation == 2 && w.status == pb::WorkspaceStatus::Online as i32
    })
    .await;
    let starts = s.backend.starts(ws);
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[1].files.len(), 50);
}

#[tokio::test]
async fn c9_probes_during_a_cycle_never_restart_and_are_counted() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("c9").await;
    s.advance(PAST_WINDOW);
    let hold = s.backend.hold_next_start(ws);
    let manual = s.restart_stream(ws, pb::Trigger::Manual).await.unwrap();
    s.backend.wait_for_starts(2).await;

    for _ in 0..4 {
        let answer = report_unreachable(&s, ws).await;
        assert!(!answer.acted);
        assert_eq!(answer.outcome, Outcome::DroppedCycleInFlight as i32);
    }
    hold.add_permits(1);
    let events = collect(manual).await;
    assert!(matches!(last(&events), Event::Online(_)));
    assert_eq!(
        s.backend.start_count(ws),
        2,
        "1 manual cycle, no probe cycle"
    );
    assert_eq!(stats(&s.get(ws).await, pb::Trigger::HealthProbe).dropped, 4);
    assert!(s.get(ws).await.pending_cycle_id.is_empty());
    s.shutdown().await;
}

/// A drop is counted without the workspace's row lock (C9): probes during a
/// cycle are answered and counted while another transaction holds the row
/// the way the service's writers do, so a probe storm never queues behind
/// an admission or a cycle's writes. (Red when a batch of drops locks its
/// row, or when a counter's insert waits for the holder: the answers wait
/// until the lock times out.)
#[tokio::test]
async fn c9_probes_are_dropped_and_counted_while_the_row_is_held() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("c9-held").await;
    s.advance(PAST_WINDOW);
    let hold = s.backend.hold_next_start(ws);
    let manual = s.restart_stream(ws, pb::Trigger::Manual).await.unwrap();
    s.backend.wait_for_starts(2).await;

    let sql = s.db.client().await;
    sql.batch_execute("BEGIN").await.unwrap();
    sql.execute(
        "SELECT 1 FROM workspaces WHERE id = $1 FOR NO KEY UPDATE",
        &[&ws.as_uuid()],
    )
    .await
    .unwrap();
    let answers = bounded(
        "probes answered while the row is held",
        join_all((0..4).map(|_| report_unreachable(&s, ws))),
    )
    .await;
    for answer in answers {
        assert!(!answer.acted);
        assert_eq!(answer.outcome, Outcome::DroppedCycleInFlight as i32);
    }
    sql.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(stats(&s.get(ws).await, pb::Trigger::HealthProbe).dropped, 4);

    hold.add_permits(1);
    let events = collect(manual).await;
    assert!(matches!(last(&events), Event::Online(_)));
    assert_eq!(s.backend.start_count(ws), 2, "no probe cycle");
    s.shutdown().await;
}

#[tokio::test]
async fn c9_a_booting_instance_is_never_declared_dead() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("c9-booting").await;
    s.advance(PAST_WINDOW);
    s.backend.script_phase(ws, Some(InstancePhase::Pending));
    for _ in 0..4 {
        let answer = report_unreachable(&s, ws).await;
        assert!(!answer.acted);
        assert_eq!(answer.outcome, Outcome::DroppedInstanceBooting as i32);
    }
    let w = s.get(ws).await;
    assert_eq!(
        w.status,
        pb::WorkspaceStatus::Online as i32,
        "not marked dead"
    );
    assert_eq!(s.backend.start_count(ws), 1);
    assert_eq!(stats(&w, pb::Trigger::HealthProbe).dropped, 4);

    s.backend.script_phase(ws, Some(InstancePhase::Stopped));
    assert!(
        report_unreachable(&s, ws).await.acted,
        "a dead instance is restarted"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn c10_online_only_after_a_fresh_registration_of_the_cycles_own_generation() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("c10").await;
    let old_token = s.backend.starts(ws)[0].token.clone();
    s.backend.set_agent(AgentMode::Silent);
    let stream = s.restart_stream(ws, pb::Trigger::Manual).await.unwrap();
    s.backend.wait_for_starts(2).await;
    let new = s.backend.starts(ws)[1].clone();

    let mut agent = WorkspaceAgentClient::connect(format!("http://{}", s.addr))
        .await
        .unwrap();
    let refused = agent
        .register(pb::RegisterRequest {
            token: old_token.clone(),
            workspace_id: ws.to_string(),
            config_version: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        s.get(ws).await.status,
        pb::WorkspaceStatus::Provisioning as i32,
        "an old generation's agent does not make the cycle ONLINE"
    );

    agent
        .register(pb::RegisterRequest {
            token: new.token,
            workspace_id: ws.to_string(),
            config_version: new.config_version.0,
            ..Default::default()
        })
        .await
        .unwrap();
    let events = collect(stream).await;
    assert!(matches!(last(&events), Event::Online(o) if o.generation == 2));
    s.shutdown().await;
}

#[tokio::test]
async fn c11_create_racing_restart_serializes_and_both_complete() {
    let s = TestServer::start(Options::default()).await;
    let hold = s.backend.hold_starts();
    let ws = s.create("c11").await;
    let restart = s.restart_stream(ws, pb::Trigger::Manual).await.unwrap();
    let stop_and_restart = s.restart_stream(ws, pb::Trigger::Manual).await.unwrap();
    s.backend.wait_for_starts(1).await;
    hold.add_permits(10);
    s.backend.release_starts();
    for stream in [restart, stop_and_restart] {
        let events = collect(stream).await;
        assert_eq!(kinds(&events)[0], "coalesced");
        assert!(matches!(last(&events), Event::Online(_)), "{events:?}");
    }
    assert_eq!(
        s.backend.start_count(ws),
        2,
        "the create cycle, then one follow-up"
    );
    assert_eq!(s.backend.max_in_flight(ws), 1);
    s.shutdown().await;
}

/// C12 on a 30 s lease, with a deadline that counts across takeovers (C20):
/// long enough that the takeover 31 s in still has time.
fn c12_options(replicas: usize) -> Options {
    Options {
        lease_ttl: Duration::from_secs(30),
        deadline: Duration::from_secs(120),
        ..on(replicas)
    }
}

on_one_and_two_replicas!(
    c12_a_stale_cycles_failure_never_touches_the_newer_generation,
    c12_options
);
async fn c12_a_stale_cycles_failure_never_touches_the_newer_generation(s: &TestServer) {
    let ws = s.create_online("c12").await;
    let gen1_token = s.backend.starts(ws)[0].token.clone();

    // The next start (generation 2) hangs and will fail when let go.
    let hold = s.backend.hold_next_start(ws);
    s.backend.fail_next_starts(1);
    let stale = s.restart_stream(ws, pb::Trigger::Manual).await.unwrap();
    s.backend.wait_for_starts(2).await;

    // Its runner goes silent past the lease: the cycle is taken over and
    // reaches ONLINE as generation 3.
    s.advance(Duration::from_secs(31));
    let w = s
        .wait_for(ws, |w| {
            w.generation == 3 && w.status == pb::WorkspaceStatus::Online as i32
        })
        .await;

    // Now the stale runner's start fails. Nothing may change.
    hold.add_permits(1);
    let events = collect(stale).await;
    assert!(
        matches!(last(&events), Event::Online(o) if o.generation == 3),
        "{events:?}"
    );
    bounded("the stale runner to finish", async {
        while s.running_cycles() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let after = s.get(ws).await;
    assert_eq!(after.status, pb::WorkspaceStatus::Online as i32);
    assert_eq!(after.generation, 3);
    assert_eq!(
        after.updated_at, w.updated_at,
        "the stale failure wrote nothing"
    );
    // create, the stale cycle's own stop, the takeover's stop — and not the
    // stale runner's clean-up stop after its failure.
    assert_eq!(
        s.backend.stop_count(ws),
        3,
        "the stale runner stopped nothing"
    );

    // Old tokens are refused.
    let mut agent = WorkspaceAgentClient::connect(format!("http://{}", s.addr))
        .await
        .unwrap();
    for token in [gen1_token, s.backend.starts(ws)[1].token.clone()] {
        let err = agent
            .heartbeat(pb::HeartbeatRequest {
                token,
                workspace_id: ws.to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
}

#[tokio::test]
async fn c15_per_workspace_state_is_gone_once_idle() {
    let s = TestServer::start(Options::default()).await;
    let mut workspaces = Vec::new();
    for i in 0..10 {
        workspaces.push(s.create_online(&format!("c15-{i}")).await);
    }
    let server = &s;
    let storms = join_all(workspaces.iter().flat_map(|ws| {
        (0..5).map(move |_| async move {
            let s = server;
            let stream = s.restart_stream(*ws, pb::Trigger::Manual).await.unwrap();
            collect(stream).await
        })
    }))
    .await;
    assert!(storms.iter().all(|e| matches!(last(e), Event::Online(_))));
    bounded("per-key state to drain", async {
        while s.engine.live_keys() != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn storm_of_200_mixed_requests_on_10_workspaces_runs_at_most_two_cycles_each() {
    let s = TestServer::start(Options::default()).await;
    let mut workspaces = Vec::new();
    for i in 0..10 {
        workspaces.push(s.create_online(&format!("storm-{i}")).await);
    }
    let triggers = [
        pb::Trigger::Manual,
        pb::Trigger::ConfigChanged,
        pb::Trigger::HealthProbe,
        pb::Trigger::Reconciler,
    ];
    // The storm's first cycles stay in flight until every request has been
    // admitted (an answered call is an admitted one): "during a cycle" is
    // then a fact, not a race with how fast the fake cycles.
    let _held = s.backend.hold_starts();
    let streams = join_all((0..200).map(|i| {
        let ws = workspaces[i % 10];
        let trigger = triggers[(i / 10) % 4];
        s.restart_stream(ws, trigger)
    }))
    .await;
    s.backend.release_starts();
    // Deferred follow-ups wait for the window: let it pass once every
    // request has its answer.
    let collected =
        tokio::spawn(join_all(streams.into_iter().map(|stream| {
            collect(stream.expect("every call answered without an error status"))
        })));
    s.advance(PAST_WINDOW);
    let all = bounded("storm", collected).await.unwrap();
    assert_eq!(all.len(), 200);
    for ws in &workspaces {
        let n = s.backend.start_count(*ws) - 1;
        assert!(
            (1..=2).contains(&n),
            "{ws}: {n} cycles: {:#?}; calls {}",
            cycles(&s, *ws).await,
            s.backend.calls(*ws)
        );
        assert_eq!(s.backend.max_in_flight(*ws), 1);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn the_reconciler_restarts_a_dead_instance_once_and_respects_the_window() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("reconcile").await;
    // Inside the window the reconciler's request is dropped (and counted).
    s.backend
        .script_phase(ws, Some(InstancePhase::Failed("crashed".into())));
    s.wait_for(ws, |w| stats(w, pb::Trigger::Reconciler).dropped > 0)
        .await;
    assert_eq!(s.backend.start_count(ws), 1);

    // After it, exactly one RECONCILER cycle brings the workspace back.
    s.backend.script_phase(ws, None);
    s.backend.stop_instance(ws);
    s.advance(PAST_WINDOW);
    let w = s
        .wait_for(ws, |w| {
            w.generation == 2 && w.status == pb::WorkspaceStatus::Online as i32
        })
        .await;
    assert_eq!(stats(&w, pb::Trigger::Reconciler).accepted, 1);
    let history = cycles(&s, ws).await;
    assert!(
        history[0]
            .triggers
            .iter()
            .any(|t| t.trigger == pb::Trigger::Reconciler as i32)
    );
    // Healthy again: no further cycle, however many passes run.
    s.advance(PAST_WINDOW);
    let looked = s.backend.state_queries();
    bounded("three more reconciler passes", async {
        while s.backend.state_queries() < looked + 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(s.backend.start_count(ws), 2, "exactly one reconciler cycle");
    s.shutdown().await;
}

/// C2 and C13 across replicas: a replica admits against the row as
/// Postgres has it, never as it last wrote it. Replica `a` remembers the
/// rows it admits into and decides its next group on them without reading
/// them again; here `b` moves the row in between, so `a`'s guarded commit
/// is refused and `a` admits again from the row read under the lock.
/// (Red when the guard does not compare versions: `a` hands out the config
/// version `b` already gave, and the row goes back to it.)
#[tokio::test]
async fn a_replica_admits_against_the_row_another_replica_moved_not_the_one_it_remembers() {
    let a = TestServer::start(Options::default()).await;
    let b = a.replica(Options::default()).await;
    let ws = a.create_online("remembered").await;

    let first = a.set_secret(ws, "FIRST", "1").await.config_version;
    let second = b.set_secret(ws, "SECOND", "2").await.config_version;
    assert_eq!(second, first + 1);
    let third = a.set_secret(ws, "THIRD", "3").await.config_version;
    assert_eq!(
        third,
        second + 1,
        "a admitted against the row it remembered"
    );
    let fourth = a.set_secret(ws, "FOURTH", "4").await.config_version;
    assert_eq!(fourth, third + 1);
    assert_eq!(a.get(ws).await.config_version, fourth);
    b.shutdown().await;
    a.shutdown().await;
}

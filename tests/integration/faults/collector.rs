//! The garbage collector against a cycle (C5, C17): a leftover's removal
//! and a cycle of the same workspace never overlap on the backend, counted
//! by what the fake backend saw in flight.

use std::time::Duration;

use workspace_backends::Generation;
use workspace_lifecycle::proto::{self as pb, restart_event::Event};

use crate::support::{Options, TestServer, bounded, last};

#[tokio::test]
async fn a_cycle_claimed_while_the_collector_removes_a_leftover_waits_for_the_removal() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("collected").await;
    assert!(matches!(last(&s.stop(ws, "test").await), Event::Stopped(_)));
    let stops = || s.backend.calls(ws).matches('S').count();
    let before = stops();

    // A crash left generation 1 running behind the stopped workspace; the
    // collector's removal of it is held inside the backend.
    let removal = s.backend.hold_next_stop(ws);
    s.backend.plant(ws, Generation(1));
    bounded("the collector's removal to begin", async {
        while stops() == before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // A restart now: its cycle must not reach the backend while the
    // removal runs (the removal holds the workspace's row).
    let restart = tokio::spawn({
        let client = s.client();
        async move {
            let mut client = client;
            let stream = client
                .restart_workspace(pb::RestartWorkspaceRequest {
                    workspace_id: ws.to_string(),
                    trigger: pb::Trigger::Manual as i32,
                    reason: "while collecting".into(),
                    request_id: String::new(),
                })
                .await
                .expect("restart")
                .into_inner();
            crate::support::collect(stream).await
        }
    });
    let starts = s.backend.total_starts();
    let started_meanwhile = tokio::time::timeout(
        Duration::from_secs(2),
        s.backend.wait_for_starts(starts + 1),
    )
    .await;
    assert!(
        started_meanwhile.is_err(),
        "a cycle started while the collector's removal ran: {}",
        s.backend.calls(ws)
    );

    removal.add_permits(1);
    let events = bounded("the restart", restart).await.unwrap();
    assert!(matches!(last(&events), Event::Online(_)), "{events:?}");
    assert_eq!(
        s.backend.max_in_flight(ws),
        1,
        "the removal and the cycle overlapped: {}",
        s.backend.calls(ws)
    );
    s.shutdown().await;
}

//! Postgres slow, then gone, between a replica and its database (C13, C17,
//! C18, C20): through a proxy the test controls, latency first, then every
//! connection cut for longer than a lease while a cycle waits for its
//! agent. The acknowledged change is delivered once Postgres is back,
//! nothing overlaps on the backend and only the serving generation runs.

use std::time::Duration;

use tokio::time::Instant;

use workspace_lifecycle::proto::{self as pb, restart_event::Event};

use super::processes::live_instances;
use crate::{
    replicas::{assert_serial, create, journal_of, replica, settled},
    support::{
        TestDb, agent_reachable_tempdir, bounded, pg_proxy::PgProxy, server_process::slow_agent,
    },
};

#[tokio::test]
async fn a_cut_longer_than_a_lease_delays_the_cycle_and_loses_nothing() {
    let db = TestDb::create().await;
    let proxy = PgProxy::start(&db.url).await;
    let dir = agent_reachable_tempdir();
    let agent = slow_agent(dir.path());
    let server = replica(
        &proxy.url(),
        dir.path(),
        "server",
        &["--agent-command", &agent],
    )
    .await;
    let mut c = server.client().await;
    let ws = create(&mut c, "cut").await;
    settled(&mut c, ws).await;

    // Latency: everything still works, only slower.
    proxy.set_latency(Duration::from_millis(20));
    let secret = c
        .set_secret(pb::SetSecretRequest {
            workspace_id: ws.to_string(),
            name: "DURING_LATENCY".into(),
            value: "v".into(),
            ..Default::default()
        })
        .await
        .expect("a slow database still answers")
        .into_inner();
    let w = settled(&mut c, ws).await;
    assert_eq!(w.agent.unwrap().config_version, secret.config_version);
    proxy.set_latency(Duration::ZERO);

    // A restart, cut while it waits for its agent, for longer than the
    // 3 s lease.
    let acked = c
        .set_secret(pb::SetSecretRequest {
            workspace_id: ws.to_string(),
            name: "BEFORE_THE_CUT".into(),
            value: "v".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut stream = c
        .restart_workspace(pb::RestartWorkspaceRequest {
            workspace_id: ws.to_string(),
            trigger: pb::Trigger::Manual as i32,
            reason: "cut me".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    bounded("the cycle waits for its agent", async {
        loop {
            let event = stream.message().await.unwrap().expect("the stream goes on");
            if matches!(event.event, Some(Event::Phase(p)) if p.phase == pb::restart_event::Phase::WaitingForAgent as i32)
            {
                return;
            }
        }
    })
    .await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.restore();
    let restored = Instant::now();
    let w = settled(&mut c, ws).await;
    eprintln!(
        "recovery after a 5 s cut: {:?} to ONLINE (generation {})",
        restored.elapsed(),
        w.generation
    );
    assert!(
        w.agent.as_ref().unwrap().config_version >= acked.config_version,
        "the acknowledged change was not delivered: {w:?}"
    );
    assert_serial(ws, &journal_of(dir.path(), ws));
    assert_eq!(live_instances(dir.path(), ws), [w.generation]);
}

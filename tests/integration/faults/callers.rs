//! Callers that go away mid-call (C13, C20): a request whose caller hung up
//! before the answer was either admitted — and then delivered — or never
//! happened; nothing is left half done, and every acknowledged change
//! reaches a generation.

use std::time::Duration;

use futures::future::join_all;
use workspace_lifecycle::proto as pb;

use crate::support::{Options, TestServer};

#[tokio::test]
async fn callers_cancelling_mid_admission_leave_nothing_half_done() {
    let s = TestServer::start(Options::default()).await;
    let mut workspaces = Vec::new();
    for i in 0..4 {
        workspaces.push(s.create_online(&format!("cancel-{i}")).await);
    }
    // 200 SetSecret calls, each abandoned after 0–4 ms (so some are cut
    // before, some during, some after their admission commits).
    // Their own connection: a peer resetting this many streams may be cut
    // off by the server's rapid-reset guard, which must not hit the checks.
    let cancelling = s.client_with(crate::support::ADMIN_TOKEN).await;
    let calls = (0..200u64).map(|i| {
        let ws = workspaces[(i % 4) as usize];
        let mut c = cancelling.clone();
        async move {
            let call = c.set_secret(pb::SetSecretRequest {
                workspace_id: ws.to_string(),
                name: format!("K{}", i % 3),
                value: format!("v{i}"),
                ..Default::default()
            });
            match tokio::time::timeout(Duration::from_micros(i % 5 * 1000), call).await {
                Ok(Ok(answer)) => Some((ws, answer.into_inner().config_version)),
                // The connection was cut under it: not acknowledged.
                Ok(Err(status))
                    if matches!(
                        status.code(),
                        tonic::Code::Cancelled | tonic::Code::Unavailable
                    ) =>
                {
                    None
                }
                Ok(Err(status)) => panic!("an abandoned call's sibling failed: {status:?}"),
                Err(_) => None,
            }
        }
    });
    let acked: Vec<_> = join_all(calls).await.into_iter().flatten().collect();
    // Deferred config changes run once the window has passed.
    s.advance(Duration::from_secs(61));
    for ws in &workspaces {
        let w = s
            .wait_for(*ws, |w| {
                w.status == pb::WorkspaceStatus::Online as i32
                    && w.running_cycle_id.is_empty()
                    && w.pending_cycle_id.is_empty()
            })
            .await;
        let served = w.agent.as_ref().expect("an agent").config_version;
        assert_eq!(
            served, w.config_version,
            "{ws}: the last committed change was not delivered"
        );
        for (_, version) in acked.iter().filter(|(a, _)| a == ws) {
            assert!(
                *version <= served,
                "{ws}: acknowledged {version}, served {served}"
            );
        }
        assert_eq!(
            s.backend.max_in_flight(*ws),
            1,
            "{ws}: overlapping backend calls"
        );
    }
    assert_eq!(s.running_cycles(), 0, "a cycle was left running");
    s.shutdown().await;
}

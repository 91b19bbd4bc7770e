//! Nothing leaks, nothing wedges (C17, C20), with the counting fake
//! backend: a failed delete is asked again and ends DELETED, a delete of a
//! deleted workspace is answered, not refused; a cycle that runs into its
//! deadline removes its own instance; a watch on a deleted workspace ends.

use std::time::Duration;

use workspace_backends::Backend;
use workspace_lifecycle::{domain::WorkspaceId, proto as pb};

use crate::support::{Options, TestServer, collect, fake_backend::AgentMode, kinds, last};

/// The workspace's instances the backend still has.
async fn instances(s: &TestServer, ws: WorkspaceId) -> usize {
    s.backend
        .inventory()
        .await
        .unwrap()
        .iter()
        .filter(|i| i.workspace == ws)
        .count()
}

#[tokio::test]
async fn a_failed_delete_is_retried_until_the_workspace_is_deleted() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("doomed").await;
    // The delete and its forced retry inside the cycle both fail.
    s.backend.fail_next_deletes(2);
    let first = s.delete(ws, "test").await;
    assert!(
        matches!(last(&first), pb::restart_event::Event::Failed(_)),
        "{:?}",
        kinds(&first)
    );
    // Nobody asks again: the reconciler does, and the delete completes.
    let deleted = s
        .wait_for(ws, |w| w.status == pb::WorkspaceStatus::Deleted as i32)
        .await;
    assert!(deleted.secret_names.is_empty() && deleted.file_paths.is_empty());
    assert_eq!(
        instances(&s, ws).await,
        0,
        "the deleted workspace left an instance"
    );
    // Asking again is fine and says so.
    for _ in 0..2 {
        let again = s.delete(ws, "test").await;
        assert_eq!(kinds(&again), ["deleted"], "delete is idempotent");
    }
    // Other requests are still refused, and change nothing.
    let before = s.get(ws).await;
    let refused = s.restart_stream(ws, pb::Trigger::Manual).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        s.get(ws).await,
        before,
        "a refused call changed the workspace"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_delete_that_needs_force_still_ends_deleted() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("stubborn").await;
    s.backend.fail_next_deletes(1);
    let events = s.delete(ws, "test").await;
    assert!(
        matches!(last(&events), pb::restart_event::Event::Deleted(_)),
        "{:?}",
        kinds(&events)
    );
    assert_eq!(instances(&s, ws).await, 0);
    s.shutdown().await;
}

#[tokio::test]
async fn a_cycle_past_its_deadline_removes_its_own_instance() {
    let s = TestServer::start(Options {
        deadline: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    let ws = s.create_online("silent").await;
    s.backend.set_agent(AgentMode::Silent);
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(
        matches!(last(&events), pb::restart_event::Event::Failed(_)),
        "{:?}",
        kinds(&events)
    );
    assert_eq!(
        instances(&s, ws).await,
        0,
        "the failed generation's instance was left running"
    );
    assert!(
        s.backend.calls(ws).ends_with("TS"),
        "no forced stop after the failed start: {}",
        s.backend.calls(ws)
    );
    // The next request runs normally.
    s.backend.set_agent(AgentMode::Register);
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(matches!(last(&events), pb::restart_event::Event::Online(_)));
    s.shutdown().await;
}

#[tokio::test]
async fn a_watch_on_a_deleted_workspace_ends() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("watched").await;
    let events = s.delete(ws, "test").await;
    assert!(matches!(
        last(&events),
        pb::restart_event::Event::Deleted(_)
    ));
    let stream = s
        .client()
        .watch_workspace(pb::WatchWorkspaceRequest {
            workspace_id: ws.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    // `collect` is bounded: the stream must end by itself.
    let seen = collect(stream).await;
    assert_eq!(seen.len(), 1, "one snapshot, then the end: {seen:?}");
    s.shutdown().await;
}

/// Once a delete is requested no agent of the workspace can register, so a
/// cycle waiting for one ends at once, saying why, and the delete follows —
/// instead of the restart failing at its deadline with a reason that did
/// not happen ("the instance ended…") and the delete waiting for it.
#[tokio::test]
async fn a_delete_ends_a_cycles_wait_for_its_agent_at_once_and_says_so() {
    use pb::restart_event::{Event, Phase};
    use tokio_stream::StreamExt;

    // A deadline no bounded wait of this test reaches.
    let s = TestServer::start(Options {
        deadline: Duration::from_secs(600),
        ..Options::default()
    })
    .await;
    let ws = s.create_online("deleted-while-booting").await;
    s.backend.set_agent(AgentMode::Silent);
    let mut restart = s
        .restart_stream(ws, pb::Trigger::Manual)
        .await
        .expect("restart");
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), restart.next())
            .await
            .expect("the cycle reaches WAITING_FOR_AGENT")
            .expect("the stream goes on")
            .unwrap();
        let waiting = matches!(&event.event, Some(Event::Phase(p)) if p.phase == Phase::WaitingForAgent as i32);
        seen.push(event);
        if waiting {
            break;
        }
    }

    let deleted = s.delete(ws, "gone while booting").await;
    assert!(
        matches!(last(&deleted), Event::Deleted(_)),
        "{:?}",
        kinds(&deleted)
    );
    seen.extend(collect(restart).await);
    let Event::Failed(failed) = last(&seen) else {
        panic!("the restart ends failed: {:?}", kinds(&seen))
    };
    assert!(
        failed
            .reason
            .contains("a delete of the workspace was requested"),
        "{failed:?}"
    );
    assert_eq!(instances(&s, ws).await, 0, "nothing left");
    assert_eq!(s.backend.start_count(ws), 2, "no start after the delete");
    s.shutdown().await;
}

/// Retention finds long-deleted workspaces by when they were deleted, and
/// leaves live ones and recently deleted ones; and no index of the
/// workspaces table names a column every admission rewrites, so those
/// writes stay in place (HOT) instead of adding index entries each time
/// (migration V7).
#[tokio::test]
async fn retention_takes_long_deleted_workspaces_only_and_no_index_blocks_in_place_writes() {
    let s = TestServer::start(Options::default()).await;
    let (live, gone) = (s.create_online("kept").await, s.create_online("gone").await);
    let events = s.delete(gone, "test").await;
    assert!(
        matches!(last(&events), pb::restart_event::Event::Deleted(_)),
        "{:?}",
        kinds(&events)
    );
    let store = s.engine.store();
    let now = workspace_lifecycle::domain::clock::Clock::now(&**store.clock());

    let early = store.prune(now - chrono::Duration::hours(1)).await.unwrap();
    assert_eq!(
        early.workspaces, 0,
        "deleted just now: kept until the cut-off"
    );
    let late = store.prune(now + chrono::Duration::hours(1)).await.unwrap();
    assert_eq!(late.workspaces, 1, "deleted before the cut-off: pruned");

    let sql = s.db.client().await;
    let left: Vec<uuid::Uuid> = sql
        .query("SELECT id FROM workspaces", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        left,
        vec![live.as_uuid()],
        "only the live workspace is left"
    );

    let indexes: Vec<String> = sql
        .query(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index
             WHERE indrelid = 'workspaces'::regclass",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(indexes.len() >= 5, "{indexes:?}");
    for index in &indexes {
        for rewritten in ["updated_at", "config_version"] {
            assert!(
                !index.contains(rewritten),
                "{index} names {rewritten}: every admission's write would add index entries"
            );
        }
    }
}

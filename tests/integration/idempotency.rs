//! Idempotent mutations (AIP-155): the same `request_id` twice —
//! sequentially, concurrently, across two replicas — gives one effect and
//! identical answers; the id on a different request is INVALID_ARGUMENT.

use futures::future::join_all;
use tonic::Code;
use tonic_types::StatusExt;
use workspace_lifecycle::proto as pb;

use crate::support::{Options, TestServer, collect, kinds};

fn set_secret(ws: &str, value: &str, id: &str) -> pb::SetSecretRequest {
    pb::SetSecretRequest {
        workspace_id: ws.into(),
        name: "API_KEY".into(),
        value: value.into(),
        request_id: id.into(),
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn a_repeat_gets_the_first_answer_and_changes_nothing() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("idem").await;
    let before = s.get(ws).await.config_version;

    // SetSecret twice with one id: one bump, the same answer.
    let id = new_id();
    let first = s
        .client()
        .set_secret(set_secret(&ws.to_string(), "v1", &id))
        .await
        .unwrap()
        .into_inner();
    let again = s
        .client()
        .set_secret(set_secret(&ws.to_string(), "v1", &id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(first.config_version, before + 1);
    assert_eq!(s.get(ws).await.config_version, before + 1);

    // CreateWorkspace twice with one id: one workspace, the same answer.
    let id = new_id();
    let create = pb::CreateWorkspaceRequest {
        name: "made-once".into(),
        backend: pb::BackendKind::Process as i32,
        spec: Some(pb::WorkspaceSpec {
            env: [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "2".to_owned()),
            ]
            .into(),
            ..Default::default()
        }),
        request_id: id.clone(),
    };
    let made = s
        .client()
        .create_workspace(create.clone())
        .await
        .unwrap()
        .into_inner();
    let remade = s
        .client()
        .create_workspace(create)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        made, remade,
        "a repeated create answers the first workspace"
    );
    let all = s
        .client()
        .list_workspaces(pb::ListWorkspacesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workspaces;
    assert_eq!(all.iter().filter(|w| w.name == "made-once").count(), 1);

    // RestartWorkspace twice with one id: one cycle; the repeat gets the
    // same admission and follows the same cycle to its end.
    let starts = s.backend.starts(ws).len();
    let restart = pb::RestartWorkspaceRequest {
        workspace_id: ws.to_string(),
        trigger: pb::Trigger::Manual as i32,
        reason: "once".into(),
        request_id: new_id(),
    };
    let events = collect(
        s.client()
            .restart_workspace(restart.clone())
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let replayed = collect(
        s.client()
            .restart_workspace(restart)
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(kinds(&events).first(), Some(&"accepted"));
    assert_eq!(replayed[0], events[0], "the same first event");
    assert_eq!(kinds(&replayed).last(), Some(&"online"), "{replayed:?}");
    let (end, replayed_end) = (events.last().unwrap(), replayed.last().unwrap());
    assert_eq!(replayed_end.cycle_id, end.cycle_id, "the same cycle");
    // (Read back from Postgres, the time has microseconds only.)
    assert_eq!(replayed_end.event, end.event, "the same end");
    assert_eq!(s.backend.starts(ws).len(), starts + 1, "one cycle");
    s.shutdown().await;
}

#[tokio::test]
async fn concurrent_repeats_on_two_replicas_have_one_effect() {
    let s = TestServer::start(Options {
        replicas: 2,
        ..Options::default()
    })
    .await;
    let ws = s.create_online("idem-many").await;
    let before = s.get(ws).await.config_version;
    let id = new_id();
    // s.client() alternates between the replicas.
    let calls = (0..16).map(|_| {
        let mut client = s.client();
        let request = set_secret(&ws.to_string(), "same", &id);
        async move { client.set_secret(request).await.map(|r| r.into_inner()) }
    });
    let answers: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|a| a.expect("every repeat succeeds"))
        .collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert_eq!(answers[0].config_version, before + 1);
    assert_eq!(s.get(ws).await.config_version, before + 1, "one effect");
    s.shutdown().await;
}

#[tokio::test]
async fn a_reused_id_on_a_different_request_is_invalid_argument() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("idem-reuse").await.to_string();
    let id = new_id();
    s.client()
        .set_secret(set_secret(&ws, "first", &id))
        .await
        .unwrap();
    let version = s.get(ws.parse().unwrap()).await.config_version;

    let different_body = s
        .client()
        .set_secret(set_secret(&ws, "second", &id))
        .await
        .unwrap_err();
    let different_method = s
        .client()
        .delete_secret(pb::DeleteSecretRequest {
            workspace_id: ws.clone(),
            name: "API_KEY".into(),
            request_id: id.clone(),
        })
        .await
        .unwrap_err();
    for status in [different_body, different_method] {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "REQUEST_ID_REUSED");
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "request_id"
        );
        assert!(
            !status.message().contains("second"),
            "no value in the error"
        );
    }
    assert_eq!(
        s.get(ws.parse().unwrap()).await.config_version,
        version,
        "nothing changed"
    );
    // A request id that is not a UUID names the field.
    let status = s
        .client()
        .set_secret(set_secret(&ws, "x", "not-a-uuid"))
        .await
        .unwrap_err();
    assert_eq!(
        status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations[0]
            .field,
        "request_id"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_failed_request_leaves_its_id_free_for_the_retry() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("idem-retry").await.to_string();
    let id = new_id();
    // Refused by the engine (no such secret): nothing is recorded...
    let missing = s
        .client()
        .delete_secret(pb::DeleteSecretRequest {
            workspace_id: ws.clone(),
            name: "LATER".into(),
            request_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // ...so once the secret exists, the same request with the same id runs.
    s.client()
        .set_secret(pb::SetSecretRequest {
            workspace_id: ws.clone(),
            name: "LATER".into(),
            value: "v".into(),
            request_id: new_id(),
        })
        .await
        .unwrap();
    s.client()
        .delete_secret(pb::DeleteSecretRequest {
            workspace_id: ws.clone(),
            name: "LATER".into(),
            request_id: id,
        })
        .await
        .expect("the retry runs");
    assert!(s.get(ws.parse().unwrap()).await.secret_names.is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn many_keyed_mutations_at_once_do_not_starve_the_pool() {
    // Each claim holds a connection while its mutation needs another: more
    // concurrent claims than connections must still all complete.
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("idem-crowd").await;
    let before = s.get(ws).await.config_version;
    let calls = (0..64).map(|i| {
        let mut client = s.client();
        let request = pb::SetSecretRequest {
            workspace_id: ws.to_string(),
            name: format!("KEY_{i}"),
            value: "v".into(),
            request_id: new_id(),
        };
        async move { client.set_secret(request).await }
    });
    for answer in join_all(calls).await {
        answer.expect("every keyed mutation completes");
    }
    assert_eq!(s.get(ws).await.config_version, before + 64);
    s.shutdown().await;
}

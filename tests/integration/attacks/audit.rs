//! Road: an attacker probes tokens or roles and leaves no trace; or anyone
//! holding the service's database role rewrites history. Guards:
//! `auth::refusals` (refused calls become aggregated audit rows) and
//! migration V4 (audit_log refuses UPDATE, DELETE and TRUNCATE).

use std::time::Duration;

use tonic::Code;
use workspace_lifecycle::{config::ServeArgs, proto as pb};

use crate::support::{Options, READER_TOKEN, TestServer, bounded};

/// (actor, action, code, peer, rows, total count) of the refused-call rows.
type Refused = Vec<(String, String, String, Option<String>, i64, i64)>;

async fn refused_rows(s: &TestServer) -> Refused {
    s.db.client()
        .await
        .query(
            "SELECT actor, action, detail->>'refused', detail->>'peer',
                    count(*), sum((detail->>'count')::int8)::int8
             FROM audit_log WHERE detail ? 'refused'
             GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect()
}

#[tokio::test]
async fn refused_calls_leave_aggregated_audit_rows() {
    let s = TestServer::start(Options {
        configure: Some(std::sync::Arc::new(|args: &mut ServeArgs| {
            args.audit_flush_interval = Duration::from_millis(300);
        })),
        ..Options::default()
    })
    .await;
    let anonymous = s.anonymous_client().await;
    for _ in 0..200 {
        let status = anonymous
            .clone()
            .get_workspace(pb::GetWorkspaceRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let bad = s.client_with("guessed-token-123").await;
    for _ in 0..50 {
        bad.clone()
            .list_workspaces(pb::ListWorkspacesRequest::default())
            .await
            .unwrap_err();
    }
    let reader = s.client_with(READER_TOKEN).await;
    for _ in 0..30 {
        let status = reader
            .clone()
            .create_workspace(pb::CreateWorkspaceRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
    }
    let expected = |rows: &Refused| rows.iter().map(|r| r.5).sum::<i64>() == 280;
    let rows = bounded("refused calls reach the audit log", async {
        loop {
            let rows = refused_rows(&s).await;
            if expected(&rows) {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let localhost = Some("127.0.0.1".to_owned());
    let summary: Vec<_> = rows
        .iter()
        .map(|(actor, action, code, peer, _, count)| {
            (
                actor.as_str(),
                action.as_str(),
                code.as_str(),
                peer.clone(),
                *count,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "anonymous",
                "GetWorkspace",
                "UNAUTHENTICATED",
                localhost.clone(),
                200
            ),
            (
                "anonymous",
                "ListWorkspaces",
                "UNAUTHENTICATED",
                localhost,
                50
            ),
            (
                "test-reader",
                "CreateWorkspace",
                "PERMISSION_DENIED",
                None,
                30
            ),
        ]
    );
    // Aggregated: a handful of rows per key (one per flush interval the
    // burst spanned), not one per call.
    for row in &rows {
        assert!(row.4 <= 10, "{} rows for {} calls: {row:?}", row.4, row.5);
    }
    let text: Vec<String> =
        s.db.client()
            .await
            .query("SELECT detail::text FROM audit_log", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert!(
        text.iter().all(|t| !t.contains("guessed-token")),
        "a refused token was recorded"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn the_service_role_cannot_update_or_delete_audit_rows() {
    let s = TestServer::start(Options::default()).await;
    s.create_online("audited").await;
    // The tests' server connects with this very role.
    let db = s.db.client().await;
    let count = || async {
        let row = db
            .query_one("SELECT count(*) FROM audit_log", &[])
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let before = count().await;
    assert!(before >= 1, "the create was audited");
    for statement in [
        "UPDATE audit_log SET actor = 'someone-else'",
        "DELETE FROM audit_log",
        "DELETE FROM audit_log WHERE false",
        "TRUNCATE audit_log",
    ] {
        let err = db.batch_execute(statement).await.expect_err(statement);
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{statement}: {err}"
        );
    }
    assert_eq!(count().await, before);
    let actors: Vec<String> = db
        .query("SELECT DISTINCT actor FROM audit_log", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!actors.contains(&"someone-else".to_owned()));
    s.shutdown().await;
}

//! Road: a path the backends cannot carry — a segment over the
//! filesystem's 255 bytes, shell metacharacters that reach a user-data
//! script, a leading '-' that a tool reads as an option — is accepted and
//! every later cycle of the workspace fails. Guard: `validate::file_path`,
//! the portable filename characters and 255-byte segments. Each is refused
//! with INVALID_ARGUMENT and nothing changes.

use tonic::Code;
use tonic_types::StatusExt;
use workspace_lifecycle::proto as pb;

use crate::support::{Options, TestServer};

async fn files(s: &TestServer) -> (i64, i64) {
    let row =
        s.db.client()
            .await
            .query_one(
                "SELECT (SELECT count(*) FROM files),
                    (SELECT coalesce(sum(config_version), 0)::int8 FROM workspaces)",
                &[],
            )
            .await
            .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn paths_the_backends_cannot_carry_are_refused_and_change_nothing() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("paths").await;
    let long_segment = "s".repeat(256);
    let long_nested = format!("dir/{long_segment}");
    let cases = [
        long_segment.as_str(),
        long_nested.as_str(),
        "a b",
        "x$(reboot)",
        "x`id`",
        "a;b",
        "'quoted'",
        "a\nb",
        "a\"b",
        "a|b",
        "a>b",
        "a*",
        "~root",
        "é.txt",
        "a\u{202e}txt.exe",
        "-rf",
        "dir/--help",
        "a:b",
    ];
    let before = files(&s).await;
    for path in cases {
        let status = s
            .client()
            .write_file(pb::WriteFileRequest {
                workspace_id: ws.to_string(),
                path: path.into(),
                content: b"x".to_vec(),
                request_id: String::new(),
            })
            .await
            .expect_err(path);
        assert_eq!(status.code(), Code::InvalidArgument, "{path:?}: {status:?}");
    }
    assert_eq!(files(&s).await, before, "a refused path changed something");

    // The longest segment a filesystem takes is fine.
    s.client()
        .write_file(pb::WriteFileRequest {
            workspace_id: ws.to_string(),
            path: format!("dir/{}", "s".repeat(255)),
            content: b"x".to_vec(),
            request_id: String::new(),
        })
        .await
        .expect("a 255-byte segment is accepted");
    s.shutdown().await;
}

/// A file below a file (`a` and `a/b`) could never be written together:
/// refused either way round, changing nothing. DeleteFile removes a file
/// (and a missing one is NOT_FOUND), after which the other path is free.
#[tokio::test]
async fn a_path_is_a_file_or_a_directory_and_files_can_be_deleted() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("tree").await;
    let write = |path: &'static str| {
        let mut c = s.client();
        async move {
            c.write_file(pb::WriteFileRequest {
                workspace_id: ws.to_string(),
                path: path.into(),
                content: b"x".to_vec(),
                ..Default::default()
            })
            .await
        }
    };
    let delete = |path: &'static str| {
        let mut c = s.client();
        async move {
            c.delete_file(pb::DeleteFileRequest {
                workspace_id: ws.to_string(),
                path: path.into(),
                ..Default::default()
            })
            .await
        }
    };
    write("conf/app").await.expect("a first file");
    let before = files(&s).await;
    for clash in ["conf", "conf/app/more", "conf/app/x/y"] {
        let status = write(clash).await.expect_err(clash);
        assert_eq!(status.code(), Code::InvalidArgument, "{clash}: {status:?}");
        let violations = status.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "path", "the field is named");
    }
    assert_eq!(files(&s).await, before, "a refused path changed something");
    write("conf/other").await.expect("a sibling is fine");

    let missing = delete("conf/none").await.expect_err("nothing there");
    assert_eq!(missing.code(), Code::NotFound);
    let bad = delete("../etc/passwd").await.expect_err("not a path");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let deleted = delete("conf/app").await.expect("deleted").into_inner();
    assert!(deleted.config_version > 0);
    write("conf/app/more").await.expect("the path is free now");
    let w = s.get(ws).await;
    assert_eq!(w.file_paths, ["conf/app/more", "conf/other"]);
    s.shutdown().await;
}

//! Bad input gets a precise status and changes nothing: each case checks
//! the exact code and that every table is byte-for-byte what it was.

use tonic::Code;
use workspace_lifecycle::{
    auth::client::LifecycleClient,
    proto::{self as pb, workspace_agent_client::WorkspaceAgentClient},
};

use crate::support::{Options, TestServer, collect, last};

/// A fingerprint of every table's contents.
async fn fingerprint(s: &TestServer) -> Vec<(String, i64, String)> {
    let client = s.db.client().await;
    let mut out = Vec::new();
    for table in [
        "workspaces",
        "secrets",
        "files",
        "cycles",
        "cycle_triggers",
        "generations",
        "trigger_stats",
        "audit_log",
    ] {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '')
                     FROM {table} t"
                ),
                &[],
            )
            .await
            .unwrap();
        out.push((table.to_owned(), row.get(0), row.get(1)));
    }
    out
}

type Client = LifecycleClient;
/// The workspaces the cases aim at.
#[derive(Clone)]
struct Ids {
    live: String,
    gone: String,
    unknown: String,
}

type Call =
    Box<dyn Fn(Client, Ids) -> futures::future::BoxFuture<'static, Result<(), tonic::Status>>>;

macro_rules! case {
    ($name:expr, $code:expr, |$c:ident, $ids:ident| $body:expr) => {
        (
            $name,
            $code,
            Box::new(move |mut $c: Client, $ids: Ids| {
                Box::pin(async move { $body.await.map(|_| ()) })
                    as futures::future::BoxFuture<'static, Result<(), tonic::Status>>
            }) as Call,
        )
    };
}

fn create(name: &str, backend: i32, spec: Option<pb::WorkspaceSpec>) -> pb::CreateWorkspaceRequest {
    pb::CreateWorkspaceRequest {
        name: name.into(),
        backend,
        spec,
    }
}

fn spec_env(name: &str) -> Option<pb::WorkspaceSpec> {
    Some(pb::WorkspaceSpec {
        env: [(name.to_owned(), "v".to_owned())].into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn every_bad_request_is_refused_precisely_and_changes_nothing() {
    let s = TestServer::start(Options::default()).await;
    let live = s.create_online("live").await.to_string();
    let gone = s.create_online("gone").await;
    let deleted = s
        .client()
        .delete_workspace(pb::DeleteWorkspaceRequest {
            workspace_id: gone.to_string(),
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        last(&collect(deleted).await),
        pb::restart_event::Event::Deleted(_)
    ));
    let gone = gone.to_string();
    let unknown = uuid::Uuid::new_v4().to_string();
    let process = pb::BackendKind::Process as i32;

    let ids = Ids {
        live,
        gone,
        unknown,
    };
    let cases: Vec<(&str, Code, Call)> = vec![
        case!("create: empty name", Code::InvalidArgument, |c, _ids| c
            .create_workspace(create("", process, None))),
        case!("create: name too long", Code::InvalidArgument, |c, _ids| c
            .create_workspace(create(&"a".repeat(64), process, None))),
        case!(
            "create: upper-case name",
            Code::InvalidArgument,
            |c, _ids| c.create_workspace(create("Dev", process, None))
        ),
        case!(
            "create: name with a space",
            Code::InvalidArgument,
            |c, _ids| c.create_workspace(create("a b", process, None))
        ),
        case!(
            "create: name ends with '-'",
            Code::InvalidArgument,
            |c, _ids| c.create_workspace(create("a-", process, None))
        ),
        case!("create: no backend", Code::InvalidArgument, |c, _ids| c
            .create_workspace(create("x", 0, None))),
        case!(
            "create: unknown backend",
            Code::InvalidArgument,
            |c, _ids| c.create_workspace(create("x", 99, None))
        ),
        case!(
            "create: backend not enabled",
            Code::FailedPrecondition,
            |c, _ids| c.create_workspace(create("x", pb::BackendKind::Ec2 as i32, None))
        ),
        case!("create: duplicate name", Code::AlreadyExists, |c, _ids| c
            .create_workspace(create("live", process, None))),
        case!(
            "create: reserved env name",
            Code::InvalidArgument,
            |c, _ids| c.create_workspace(create("x", process, spec_env("WL_AGENT_TOKEN")))
        ),
        case!("create: bad env name", Code::InvalidArgument, |c, _ids| c
            .create_workspace(create("x", process, spec_env("1A")))),
        case!(
            "create: image with spaces",
            Code::InvalidArgument,
            |c, _ids| c.create_workspace(create(
                "x",
                process,
                Some(pb::WorkspaceSpec {
                    image: "a b".into(),
                    ..Default::default()
                })
            ))
        ),
        case!(
            "create: command with NUL",
            Code::InvalidArgument,
            |c, _ids| c.create_workspace(create(
                "x",
                process,
                Some(pb::WorkspaceSpec {
                    command: vec!["a\0b".into()],
                    ..Default::default()
                })
            ))
        ),
        case!("get: empty id", Code::InvalidArgument, |c, _ids| c
            .get_workspace(pb::GetWorkspaceRequest {
                workspace_id: String::new()
            })),
        case!("get: malformed id", Code::InvalidArgument, |c, _ids| c
            .get_workspace(pb::GetWorkspaceRequest {
                workspace_id: "not-a-uuid".into()
            })),
        case!("get: unknown id", Code::NotFound, |c, ids| c.get_workspace(
            pb::GetWorkspaceRequest {
                workspace_id: ids.unknown
            }
        )),
        case!("list: page too large", Code::InvalidArgument, |c, _ids| c
            .list_workspaces(pb::ListWorkspacesRequest {
                page_size: 1001,
                ..Default::default()
            })),
        case!("list: bad page token", Code::InvalidArgument, |c, _ids| c
            .list_workspaces(pb::ListWorkspacesRequest {
                page_token: "abc".into(),
                ..Default::default()
            })),
        case!(
            "list: negative page token",
            Code::InvalidArgument,
            |c, _ids| c.list_workspaces(pb::ListWorkspacesRequest {
                page_token: "-5".into(),
                ..Default::default()
            })
        ),
        case!("restart: malformed id", Code::InvalidArgument, |c, _ids| c
            .restart_workspace(pb::RestartWorkspaceRequest {
                workspace_id: "nope".into(),
                ..Default::default()
            })),
        case!("restart: unknown id", Code::NotFound, |c, ids| c
            .restart_workspace(pb::RestartWorkspaceRequest {
                workspace_id: ids.unknown,
                ..Default::default()
            })),
        case!(
            "restart: unknown trigger",
            Code::InvalidArgument,
            |c, ids| c.restart_workspace(pb::RestartWorkspaceRequest {
                workspace_id: ids.live,
                trigger: 99,
                ..Default::default()
            })
        ),
        case!(
            "restart: CREATE trigger",
            Code::InvalidArgument,
            |c, ids| c.restart_workspace(pb::RestartWorkspaceRequest {
                workspace_id: ids.live,
                trigger: pb::Trigger::Create as i32,
                ..Default::default()
            })
        ),
        case!(
            "restart: reason too long",
            Code::InvalidArgument,
            |c, ids| c.restart_workspace(pb::RestartWorkspaceRequest {
                workspace_id: ids.live,
                reason: "r".repeat(1025),
                ..Default::default()
            })
        ),
        case!(
            "restart: deleted workspace",
            Code::FailedPrecondition,
            |c, ids| c.restart_workspace(pb::RestartWorkspaceRequest {
                workspace_id: ids.gone,
                ..Default::default()
            })
        ),
        case!(
            "restart: probe on deleted workspace",
            Code::FailedPrecondition,
            |c, ids| c.restart_workspace(pb::RestartWorkspaceRequest {
                workspace_id: ids.gone,
                trigger: pb::Trigger::HealthProbe as i32,
                ..Default::default()
            })
        ),
        case!("stop: malformed id", Code::InvalidArgument, |c, _ids| c
            .stop_workspace(pb::StopWorkspaceRequest {
                workspace_id: "x".into(),
                ..Default::default()
            })),
        case!("stop: unknown id", Code::NotFound, |c, ids| c
            .stop_workspace(pb::StopWorkspaceRequest {
                workspace_id: ids.unknown,
                ..Default::default()
            })),
        case!(
            "stop: deleted workspace",
            Code::FailedPrecondition,
            |c, ids| c.stop_workspace(pb::StopWorkspaceRequest {
                workspace_id: ids.gone,
                ..Default::default()
            })
        ),
        case!("delete: unknown id", Code::NotFound, |c, ids| c
            .delete_workspace(pb::DeleteWorkspaceRequest {
                workspace_id: ids.unknown,
                ..Default::default()
            })),
        // A delete of a deleted workspace is not bad input: delete is
        // idempotent (C17) and answers `deleted` (tests/integration/faults).
        case!(
            "delete: reason too long",
            Code::InvalidArgument,
            |c, ids| c.delete_workspace(pb::DeleteWorkspaceRequest {
                workspace_id: ids.live,
                reason: "r".repeat(2000)
            })
        ),
        case!("set secret: bad name", Code::InvalidArgument, |c, ids| c
            .set_secret(pb::SetSecretRequest {
                workspace_id: ids.live,
                name: "A-B".into(),
                value: "v".into()
            })),
        case!("set secret: empty name", Code::InvalidArgument, |c, ids| c
            .set_secret(pb::SetSecretRequest {
                workspace_id: ids.live,
                name: String::new(),
                value: "v".into()
            })),
        case!(
            "set secret: reserved name",
            Code::InvalidArgument,
            |c, ids| c.set_secret(pb::SetSecretRequest {
                workspace_id: ids.live,
                name: "WL_AGENT_TOKEN".into(),
                value: "v".into()
            })
        ),
        case!(
            "set secret: value too large",
            Code::InvalidArgument,
            |c, ids| c.set_secret(pb::SetSecretRequest {
                workspace_id: ids.live,
                name: "K".into(),
                value: "v".repeat(64 * 1024 + 1)
            })
        ),
        case!(
            "set secret: NUL in value",
            Code::InvalidArgument,
            |c, ids| c.set_secret(pb::SetSecretRequest {
                workspace_id: ids.live,
                name: "K".into(),
                value: "a\0b".into()
            })
        ),
        case!("set secret: unknown workspace", Code::NotFound, |c, ids| c
            .set_secret(pb::SetSecretRequest {
                workspace_id: ids.unknown,
                name: "K".into(),
                value: "v".into()
            })),
        case!(
            "set secret: deleted workspace",
            Code::FailedPrecondition,
            |c, ids| c.set_secret(pb::SetSecretRequest {
                workspace_id: ids.gone,
                name: "K".into(),
                value: "v".into()
            })
        ),
        case!("delete secret: missing", Code::NotFound, |c, ids| c
            .delete_secret(pb::DeleteSecretRequest {
                workspace_id: ids.live,
                name: "NOPE".into()
            })),
        case!(
            "delete secret: bad name",
            Code::InvalidArgument,
            |c, ids| c.delete_secret(pb::DeleteSecretRequest {
                workspace_id: ids.live,
                name: "no pe".into()
            })
        ),
        case!("write file: traversal", Code::InvalidArgument, |c, ids| c
            .write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "../etc/passwd".into(),
                content: vec![1]
            })),
        case!(
            "write file: absolute path",
            Code::InvalidArgument,
            |c, ids| c.write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "/etc/passwd".into(),
                content: vec![1]
            })
        ),
        case!("write file: empty path", Code::InvalidArgument, |c, ids| c
            .write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: String::new(),
                content: vec![1]
            })),
        case!(
            "write file: NUL in path",
            Code::InvalidArgument,
            |c, ids| c.write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "a\0b".into(),
                content: vec![1]
            })
        ),
        case!(
            "write file: empty segment",
            Code::InvalidArgument,
            |c, ids| c.write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "a//b".into(),
                content: vec![1]
            })
        ),
        case!("write file: oversize", Code::InvalidArgument, |c, ids| c
            .write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "big".into(),
                content: vec![0; 1024 * 1024 + 1]
            })),
        case!(
            "write file: dot segment",
            Code::InvalidArgument,
            |c, ids| c.write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "a/./b".into(),
                content: vec![1]
            })
        ),
        case!(
            "write file: backslash traversal",
            Code::InvalidArgument,
            |c, ids| c.write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "a\\..\\..\\b".into(),
                content: vec![1]
            })
        ),
        case!(
            "write file: message over the server's size limit",
            Code::OutOfRange,
            |c, ids| c.write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "huge".into(),
                content: vec![0; 3 * 1024 * 1024]
            })
        ),
        case!("write file: unknown workspace", Code::NotFound, |c, ids| c
            .write_file(pb::WriteFileRequest {
                workspace_id: ids.unknown,
                path: "a".into(),
                content: vec![1]
            })),
        case!(
            "report unreachable: malformed id",
            Code::InvalidArgument,
            |c, _ids| c.report_unreachable(pb::ReportUnreachableRequest {
                workspace_id: "1".into(),
                detail: String::new()
            })
        ),
        case!(
            "report unreachable: unknown id",
            Code::NotFound,
            |c, ids| c.report_unreachable(pb::ReportUnreachableRequest {
                workspace_id: ids.unknown,
                detail: String::new()
            })
        ),
        case!(
            "report unreachable: detail too long",
            Code::InvalidArgument,
            |c, ids| c.report_unreachable(pb::ReportUnreachableRequest {
                workspace_id: ids.live,
                detail: "d".repeat(1025)
            })
        ),
        case!("watch: malformed id", Code::InvalidArgument, |c, _ids| c
            .watch_workspace(pb::WatchWorkspaceRequest {
                workspace_id: "zzz".into()
            })),
        case!("watch: unknown id", Code::NotFound, |c, ids| c
            .watch_workspace(pb::WatchWorkspaceRequest {
                workspace_id: ids.unknown
            })),
        case!(
            "list cycles: malformed id",
            Code::InvalidArgument,
            |c, _ids| c.list_cycles(pb::ListCyclesRequest {
                workspace_id: "zzz".into(),
                ..Default::default()
            })
        ),
        case!("list cycles: unknown id", Code::NotFound, |c, ids| c
            .list_cycles(pb::ListCyclesRequest {
                workspace_id: ids.unknown,
                ..Default::default()
            })),
        case!(
            "list cycles: page too large",
            Code::InvalidArgument,
            |c, ids| c.list_cycles(pb::ListCyclesRequest {
                workspace_id: ids.live,
                page_size: 5000,
                ..Default::default()
            })
        ),
    ];
    assert!(cases.len() >= 40);

    for (name, code, call) in cases {
        let before = fingerprint(&s).await;
        let status = call(s.client(), ids.clone())
            .await
            .expect_err(&format!("{name}: was accepted"));
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert_eq!(
            fingerprint(&s).await,
            before,
            "{name}: changed the database"
        );
    }

    // The agent service refuses tokens it does not know.
    let mut agent = WorkspaceAgentClient::connect(format!("http://{}", s.addr))
        .await
        .unwrap();
    let before = fingerprint(&s).await;
    for token in ["", "wla_0000", &"x".repeat(300)] {
        for workspace_id in ["", "not-a-uuid", ids.live.as_str()] {
            let err = agent
                .register(pb::RegisterRequest {
                    token: token.into(),
                    workspace_id: workspace_id.into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
            let err = agent
                .heartbeat(pb::HeartbeatRequest {
                    token: token.into(),
                    workspace_id: workspace_id.into(),
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated);
        }
    }
    assert_eq!(fingerprint(&s).await, before);
    s.shutdown().await;
}

#[tokio::test]
async fn no_rpc_ever_returns_a_secret_value() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("secretive").await;
    let secret = "s3cr3t-VALUE-d41d8cd98f00b204";
    let set = s
        .client()
        .set_secret(pb::SetSecretRequest {
            workspace_id: ws.to_string(),
            name: "API_KEY".into(),
            value: secret.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = format!("{set:?}");
    let restart = s.restart(ws, pb::Trigger::Manual).await;
    seen += &format!("{restart:?}");
    let workspace = s.get(ws).await;
    assert_eq!(workspace.secret_names, ["API_KEY"], "names are shown");
    seen += &format!("{workspace:?}");
    let list = s
        .client()
        .list_workspaces(pb::ListWorkspacesRequest::default())
        .await
        .unwrap()
        .into_inner();
    seen += &format!("{list:?}");
    let cycles = s
        .client()
        .list_cycles(pb::ListCyclesRequest {
            workspace_id: ws.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    seen += &format!("{cycles:?}");
    let mut watch = s
        .client()
        .watch_workspace(pb::WatchWorkspaceRequest {
            workspace_id: ws.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    seen += &format!("{:?}", watch.message().await.unwrap());
    // Errors mentioning the secret's workspace do not carry it either.
    let err = s
        .client()
        .delete_secret(pb::DeleteSecretRequest {
            workspace_id: ws.to_string(),
            name: "OTHER".into(),
        })
        .await
        .unwrap_err();
    seen += &format!("{err:?}");

    assert!(!seen.contains(secret), "a secret value was returned");
    // ...while the workspace really did get it.
    assert_eq!(
        s.backend.starts(ws).last().unwrap().secrets["API_KEY"],
        secret
    );
    s.shutdown().await;
}

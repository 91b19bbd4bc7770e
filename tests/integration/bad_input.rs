//! Bad input gets a precise status and changes nothing: each case checks
//! the exact code and that every table is byte-for-byte what it was.

use tonic::Code;
use tonic_types::StatusExt;
use workspace_lifecycle::{
    auth::client::LifecycleClient,
    proto::{self as pb, workspace_agent_client::WorkspaceAgentClient},
};

use crate::support::{Options, TestServer, last};

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

/// A case: its name, the code it must get, the field an INVALID_ARGUMENT
/// must name in its `BadRequest`, and the call.
macro_rules! case {
    ($name:expr, field = $field:literal, |$c:ident, $ids:ident| $body:expr) => {
        case!(@ $name, Code::InvalidArgument, Some($field), |$c, $ids| $body)
    };
    ($name:expr, $code:expr, |$c:ident, $ids:ident| $body:expr) => {
        case!(@ $name, $code, None, |$c, $ids| $body)
    };
    (@ $name:expr, $code:expr, $field:expr, |$c:ident, $ids:ident| $body:expr) => {
        (
            $name,
            $code,
            $field,
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
        request_id: String::new(),
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
    assert!(matches!(
        last(&s.delete(gone, "").await),
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
    let cases: Vec<(&str, Code, Option<&str>, Call)> = vec![
        case!("create: empty name", field = "name", |c, _ids| c
            .create_workspace(create("", process, None))),
        case!("create: name too long", field = "name", |c, _ids| c
            .create_workspace(create(&"a".repeat(64), process, None))),
        case!("create: upper-case name", field = "name", |c, _ids| c
            .create_workspace(create("Dev", process, None))),
        case!("create: name with a space", field = "name", |c, _ids| c
            .create_workspace(create("a b", process, None))),
        case!("create: name ends with '-'", field = "name", |c, _ids| c
            .create_workspace(create("a-", process, None))),
        case!("create: no backend", field = "backend", |c, _ids| c
            .create_workspace(create("x", 0, None))),
        case!("create: unknown backend", field = "backend", |c, _ids| c
            .create_workspace(create("x", 99, None))),
        case!(
            "create: backend not enabled",
            Code::FailedPrecondition,
            |c, _ids| c.create_workspace(create("x", pb::BackendKind::Ec2 as i32, None))
        ),
        case!("create: duplicate name", Code::AlreadyExists, |c, _ids| c
            .create_workspace(create("live", process, None))),
        case!(
            "create: reserved env name",
            field = "spec.env",
            |c, _ids| c.create_workspace(create("x", process, spec_env("WL_AGENT_TOKEN")))
        ),
        case!("create: bad env name", field = "spec.env", |c, _ids| c
            .create_workspace(create("x", process, spec_env("1A")))),
        case!(
            "create: image with spaces",
            field = "spec.image",
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
            field = "spec.command",
            |c, _ids| c.create_workspace(create(
                "x",
                process,
                Some(pb::WorkspaceSpec {
                    command: vec!["a\0b".into()],
                    ..Default::default()
                })
            ))
        ),
        case!("get: empty id", field = "workspace_id", |c, _ids| c
            .get_workspace(pb::GetWorkspaceRequest {
                workspace_id: String::new()
            })),
        case!("get: malformed id", field = "workspace_id", |c, _ids| c
            .get_workspace(pb::GetWorkspaceRequest {
                workspace_id: "not-a-uuid".into()
            })),
        case!("get: unknown id", Code::NotFound, |c, ids| c.get_workspace(
            pb::GetWorkspaceRequest {
                workspace_id: ids.unknown
            }
        )),
        case!("list: page too large", field = "page_size", |c, _ids| c
            .list_workspaces(pb::ListWorkspacesRequest {
                page_size: 1001,
                ..Default::default()
            })),
        case!("list: bad page token", field = "page_token", |c, _ids| c
            .list_workspaces(pb::ListWorkspacesRequest {
                page_token: "abc".into(),
                ..Default::default()
            })),
        case!(
            "list: negative page token",
            field = "page_token",
            |c, _ids| c.list_workspaces(pb::ListWorkspacesRequest {
                page_token: "-5".into(),
                ..Default::default()
            })
        ),
        case!(
            "restart: malformed id",
            field = "workspace_id",
            |c, _ids| c.restart_workspace(pb::RestartWorkspaceRequest {
                workspace_id: "nope".into(),
                ..Default::default()
            })
        ),
        case!("restart: unknown id", Code::NotFound, |c, ids| c
            .restart_workspace(pb::RestartWorkspaceRequest {
                workspace_id: ids.unknown,
                ..Default::default()
            })),
        case!("restart: unknown trigger", field = "trigger", |c, ids| c
            .restart_workspace(pb::RestartWorkspaceRequest {
                workspace_id: ids.live,
                trigger: 99,
                ..Default::default()
            })),
        case!("restart: CREATE trigger", field = "trigger", |c, ids| c
            .restart_workspace(pb::RestartWorkspaceRequest {
                workspace_id: ids.live,
                trigger: pb::Trigger::Create as i32,
                ..Default::default()
            })),
        case!("restart: reason too long", field = "reason", |c, ids| c
            .restart_workspace(pb::RestartWorkspaceRequest {
                workspace_id: ids.live,
                reason: "r".repeat(1025),
                ..Default::default()
            })),
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
        case!("stop: malformed id", field = "workspace_id", |c, _ids| c
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
        case!("delete: reason too long", field = "reason", |c, ids| c
            .delete_workspace(pb::DeleteWorkspaceRequest {
                workspace_id: ids.live,
                reason: "r".repeat(2000),
                request_id: String::new(),
            })),
        case!("set secret: bad name", field = "name", |c, ids| c
            .set_secret(pb::SetSecretRequest {
                workspace_id: ids.live,
                name: "A-B".into(),
                value: "v".into(),
                request_id: String::new(),
            })),
        case!("set secret: empty name", field = "name", |c, ids| c
            .set_secret(pb::SetSecretRequest {
                workspace_id: ids.live,
                name: String::new(),
                value: "v".into(),
                request_id: String::new(),
            })),
        case!("set secret: reserved name", field = "name", |c, ids| c
            .set_secret(pb::SetSecretRequest {
                workspace_id: ids.live,
                name: "WL_AGENT_TOKEN".into(),
                value: "v".into(),
                request_id: String::new(),
            })),
        case!("set secret: value too large", field = "value", |c, ids| c
            .set_secret(pb::SetSecretRequest {
                workspace_id: ids.live,
                name: "K".into(),
                value: "v".repeat(64 * 1024 + 1),
                request_id: String::new(),
            })),
        case!("set secret: NUL in value", field = "value", |c, ids| c
            .set_secret(pb::SetSecretRequest {
                workspace_id: ids.live,
                name: "K".into(),
                value: "a\0b".into(),
                request_id: String::new(),
            })),
        case!("set secret: unknown workspace", Code::NotFound, |c, ids| c
            .set_secret(pb::SetSecretRequest {
                workspace_id: ids.unknown,
                name: "K".into(),
                value: "v".into(),
                request_id: String::new(),
            })),
        case!(
            "set secret: deleted workspace",
            Code::FailedPrecondition,
            |c, ids| c.set_secret(pb::SetSecretRequest {
                workspace_id: ids.gone,
                name: "K".into(),
                value: "v".into(),
                request_id: String::new(),
            })
        ),
        case!("delete secret: missing", Code::NotFound, |c, ids| c
            .delete_secret(pb::DeleteSecretRequest {
                workspace_id: ids.live,
                name: "NOPE".into(),
                request_id: String::new(),
            })),
        case!("delete secret: bad name", field = "name", |c, ids| c
            .delete_secret(pb::DeleteSecretRequest {
                workspace_id: ids.live,
                name: "no pe".into(),
                request_id: String::new(),
            })),
        case!("write file: traversal", field = "path", |c, ids| c
            .write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "../etc/passwd".into(),
                content: vec![1],
                request_id: String::new()
            })),
        case!("write file: absolute path", field = "path", |c, ids| c
            .write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "/etc/passwd".into(),
                content: vec![1],
                request_id: String::new(),
            })),
        case!("write file: empty path", field = "path", |c, ids| c
            .write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: String::new(),
                content: vec![1],
                request_id: String::new(),
            })),
        case!("write file: NUL in path", field = "path", |c, ids| c
            .write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "a\0b".into(),
                content: vec![1],
                request_id: String::new(),
            })),
        case!("write file: empty segment", field = "path", |c, ids| c
            .write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "a//b".into(),
                content: vec![1],
                request_id: String::new(),
            })),
        case!("write file: oversize", field = "content", |c, ids| c
            .write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "big".into(),
                content: vec![0; 1024 * 1024 + 1],
                request_id: String::new(),
            })),
        case!("write file: dot segment", field = "path", |c, ids| c
            .write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "a/./b".into(),
                content: vec![1],
                request_id: String::new(),
            })),
        case!(
            "write file: backslash traversal",
            field = "path",
            |c, ids| c.write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "a\\..\\..\\b".into(),
                content: vec![1],
                request_id: String::new()
            })
        ),
        case!(
            "write file: message over the server's size limit",
            Code::OutOfRange,
            |c, ids| c.write_file(pb::WriteFileRequest {
                workspace_id: ids.live,
                path: "huge".into(),
                content: vec![0; 3 * 1024 * 1024],
                request_id: String::new(),
            })
        ),
        case!("write file: unknown workspace", Code::NotFound, |c, ids| c
            .write_file(pb::WriteFileRequest {
                workspace_id: ids.unknown,
                path: "a".into(),
                content: vec![1],
                request_id: String::new(),
            })),
        case!(
            "report unreachable: malformed id",
            field = "workspace_id",
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
            field = "detail",
            |c, ids| c.report_unreachable(pb::ReportUnreachableRequest {
                workspace_id: ids.live,
                detail: "d".repeat(1025)
            })
        ),
        case!("watch: malformed id", field = "workspace_id", |c, _ids| c
            .watch_workspace(pb::WatchWorkspaceRequest {
                workspace_id: "zzz".into()
            })),
        case!("watch: unknown id", Code::NotFound, |c, ids| c
            .watch_workspace(pb::WatchWorkspaceRequest {
                workspace_id: ids.unknown
            })),
        case!(
            "list cycles: malformed id",
            field = "workspace_id",
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
            field = "page_size",
            |c, ids| c.list_cycles(pb::ListCyclesRequest {
                workspace_id: ids.live,
                page_size: 5000,
                ..Default::default()
            })
        ),
    ];
    assert!(cases.len() >= 40);

    for (name, code, field, call) in cases {
        let before = fingerprint(&s).await;
        let status = call(s.client(), ids.clone())
            .await
            .expect_err(&format!("{name}: was accepted"));
        assert_eq!(status.code(), code, "{name}: {status:?}");
        let details = status.get_error_details();
        if code == Code::OutOfRange {
            // tonic's own message-size limit, before any handler or codec.
            continue;
        }
        let info = details
            .error_info()
            .unwrap_or_else(|| panic!("{name}: no ErrorInfo in {status:?}"));
        assert_eq!(info.domain, "workspace-lifecycle", "{name}");
        assert!(!info.reason.is_empty(), "{name}");
        if let Some(field) = field {
            let violations = &details
                .bad_request()
                .unwrap_or_else(|| panic!("{name}: no BadRequest in {status:?}"))
                .field_violations;
            assert_eq!(violations.len(), 1, "{name}: {violations:?}");
            assert_eq!(violations[0].field, field, "{name}");
            assert!(!violations[0].description.is_empty(), "{name}");
            assert_eq!(info.reason, "INVALID_FIELD", "{name}");
        }
        if code == Code::FailedPrecondition {
            let violations = &details
                .precondition_failure()
                .unwrap_or_else(|| panic!("{name}: no PreconditionFailure in {status:?}"))
                .violations;
            assert_eq!(violations.len(), 1, "{name}: {violations:?}");
        }
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
    let id = ws.to_string();
    let secret = "s3cr3t-VALUE-d41d8cd98f00b204";
    // Through the client crate, as internal services call it.
    let client = s.typed_client().await;
    let set = client.set_secret(&id, "API_KEY", secret).await.unwrap();
    let mut seen = format!("{set:?}");
    let mut restart = client
        .restart(
            &id,
            workspace_lifecycle_client::proto::Trigger::Manual,
            "test",
        )
        .await
        .unwrap();
    while let Some(event) = restart.next().await {
        seen += &format!("{:?}", event.unwrap());
    }
    let workspace = client.get_workspace(&id).await.unwrap();
    assert_eq!(workspace.secret_names, ["API_KEY"], "names are shown");
    seen += &format!("{workspace:?}");
    seen += &format!("{:?}", client.all_workspaces(true).await.unwrap());
    seen += &format!("{:?}", client.list_cycles(&id, 1000, "").await.unwrap());
    let mut watch = client.watch(&id).await.unwrap();
    seen += &format!("{:?}", watch.message().await.unwrap());
    // Errors mentioning the secret's workspace do not carry it either,
    // details included.
    let err = client.delete_secret(&id, "OTHER").await.unwrap_err();
    seen += &format!("{err:?} {:?}", err.status().map(|s| s.details()));
    // Nor does a refused repeat of the request id that set it.
    let reused = uuid::Uuid::new_v4().to_string();
    client
        .set_secret_with_id(&id, "API_KEY", secret, &reused)
        .await
        .unwrap();
    let err = client
        .set_secret_with_id(&id, "API_KEY", "other-value", &reused)
        .await
        .unwrap_err();
    seen += &format!("{err:?} {:?}", err.status().map(|s| s.details()));

    assert!(!seen.contains(secret), "a secret value was returned");
    // ...while the workspace really did get it.
    assert_eq!(
        s.backend.starts(ws).last().unwrap().secrets["API_KEY"],
        secret
    );
    s.shutdown().await;
}

/// Raw bytes as a gRPC message, to send what no generated client would.
#[derive(Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

#[tokio::test]
async fn an_undecodable_body_is_invalid_argument_naming_the_field() {
    let s = TestServer::start(Options::default()).await;
    let live = s.create_online("raw").await.to_string();
    let mut grpc = tonic::client::Grpc::new(s.channel().await);
    let before = fingerprint(&s).await;
    let mut valid_id = vec![0x0a, live.len() as u8];
    valid_id.extend_from_slice(live.as_bytes());
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "SetSecret",
            "invalid UTF-8 in name",
            [
                valid_id.clone(),
                vec![0x12, 0x02, 0xff, 0xfe, 0x1a, 0x01, b'v'],
            ]
            .concat(),
            "name",
        ),
        (
            "CreateWorkspace",
            "invalid UTF-8 in spec.image",
            // name "x", spec { image: 0xff }
            vec![0x0a, 0x01, b'x', 0x1a, 0x03, 0x0a, 0x01, 0xff],
            "spec.image",
        ),
        (
            "WriteFile",
            "a truncated varint",
            [valid_id.clone(), vec![0x28, 0xff]].concat(),
            "request",
        ),
        ("GetWorkspace", "garbage", vec![0xff; 16], "request"),
    ];
    for (method, what, body, field) in cases {
        grpc.ready().await.unwrap();
        let mut request = tonic::Request::new(body);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", crate::support::ADMIN_TOKEN)
                .parse()
                .unwrap(),
        );
        let path = format!("/workspace.lifecycle.v1.WorkspaceLifecycle/{method}")
            .parse()
            .unwrap();
        let status = grpc.unary(request, path, RawCodec).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        let details = status.get_error_details();
        assert_eq!(
            details.error_info().unwrap().reason,
            "UNDECODABLE_MESSAGE",
            "{what}"
        );
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            field,
            "{what}"
        );
    }
    assert_eq!(
        fingerprint(&s).await,
        before,
        "an undecodable call changed something"
    );
    s.shutdown().await;
}

/// A malformed id is named, not echoed whole: a megabyte of a caller's
/// garbage does not come back in the message and again in `BadRequest`.
#[tokio::test]
async fn a_huge_malformed_id_is_refused_without_being_echoed_back() {
    let s = TestServer::start(Options::default()).await;
    let huge = "x".repeat(100_000);
    let refused = s
        .client()
        .get_workspace(pb::GetWorkspaceRequest {
            workspace_id: huge.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().len() < 200, "{}", refused.message());
    assert!(
        refused.message().contains("100000 bytes"),
        "{}",
        refused.message()
    );
    let violation = &refused.get_details_bad_request().unwrap().field_violations[0];
    assert_eq!(violation.field, "workspace_id");
    assert!(violation.description.len() < 200);
    let refused = s
        .client()
        .set_secret(pb::SetSecretRequest {
            workspace_id: uuid::Uuid::new_v4().to_string(),
            name: "K".into(),
            value: "v".into(),
            request_id: huge,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().len() < 200, "{}", refused.message());
    s.shutdown().await;
}

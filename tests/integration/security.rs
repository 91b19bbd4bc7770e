//! Who may call what: every lifecycle RPC refuses a missing or unknown
//! token (UNAUTHENTICATED) and a token of too low a role
//! (PERMISSION_DENIED); agent tokens work only for their own workspace and
//! generation; secrets are sealed at rest; mutations leave an audit record.

use futures::future::BoxFuture;
use tonic::{
    Code, Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};
use workspace_lifecycle::{
    auth::{Role, client::Bearer},
    proto::{
        self as pb, workspace_agent_client::WorkspaceAgentClient,
        workspace_lifecycle_client::WorkspaceLifecycleClient,
    },
    store::Sealer,
};

use crate::support::{
    ADMIN_TOKEN, OPERATOR_TOKEN, Options, READER_TOKEN, TestServer, collect, last,
    server_process::ServerProcess, stop, workspace,
};

/// Sends a bearer token, or none.
#[derive(Clone)]
struct MaybeBearer(Option<Bearer>);

impl Interceptor for MaybeBearer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match &mut self.0 {
            Some(bearer) => bearer.call(request),
            None => Ok(request),
        }
    }
}

type Client = WorkspaceLifecycleClient<InterceptedService<Channel, MaybeBearer>>;
type Call = fn(Client) -> BoxFuture<'static, Result<(), Status>>;

/// Every lifecycle RPC, the least role it needs, and a call that would be
/// refused as INVALID_ARGUMENT once past authentication (so nothing changes
/// whoever calls).
fn every_rpc() -> Vec<(&'static str, Role, Call)> {
    vec![
        ("CreateWorkspace", Role::Admin, |mut c| {
            Box::pin(async move {
                c.create_workspace(pb::CreateWorkspaceRequest::default())
                    .await
                    .map(drop)
            })
        }),
        ("DeleteWorkspace", Role::Admin, |mut c| {
            Box::pin(async move {
                c.delete_workspace(pb::DeleteWorkspaceRequest::default())
                    .await
                    .map(drop)
            })
        }),
        ("RestartWorkspace", Role::Operator, |mut c| {
            Box::pin(async move {
                c.restart_workspace(pb::RestartWorkspaceRequest::default())
                    .await
                    .map(drop)
            })
        }),
        ("StopWorkspace", Role::Operator, |mut c| {
            Box::pin(async move {
                c.stop_workspace(pb::StopWorkspaceRequest::default())
                    .await
                    .map(drop)
            })
        }),
        ("SetSecret", Role::Operator, |mut c| {
            Box::pin(async move {
                c.set_secret(pb::SetSecretRequest::default())
                    .await
                    .map(drop)
            })
        }),
        ("DeleteSecret", Role::Operator, |mut c| {
            Box::pin(async move {
                c.delete_secret(pb::DeleteSecretRequest::default())
                    .await
                    .map(drop)
            })
        }),
        ("WriteFile", Role::Operator, |mut c| {
            Box::pin(async move {
                c.write_file(pb::WriteFileRequest::default())
                    .await
                    .map(drop)
            })
        }),
        ("ReportUnreachable", Role::Operator, |mut c| {
            Box::pin(async move {
                c.report_unreachable(pb::ReportUnreachableRequest::default())
                    .await
                    .map(drop)
            })
        }),
        ("GetWorkspace", Role::Reader, |mut c| {
            Box::pin(async move {
                c.get_workspace(pb::GetWorkspaceRequest::default())
                    .await
                    .map(drop)
            })
        }),
        ("ListWorkspaces", Role::Reader, |mut c| {
            Box::pin(async move {
                c.list_workspaces(pb::ListWorkspacesRequest {
                    page_size: 5000,
                    ..Default::default()
                })
                .await
                .map(drop)
            })
        }),
        ("WatchWorkspace", Role::Reader, |mut c| {
            Box::pin(async move {
                c.watch_workspace(pb::WatchWorkspaceRequest::default())
                    .await
                    .map(drop)
            })
        }),
        ("ListCycles", Role::Reader, |mut c| {
            Box::pin(async move {
                c.list_cycles(pb::ListCyclesRequest::default())
                    .await
                    .map(drop)
            })
        }),
    ]
}

/// Row counts of every table a call could change.
async fn counts(s: &TestServer) -> Vec<i64> {
    let db = s.db.client().await;
    let mut out = Vec::new();
    for table in [
        "workspaces",
        "secrets",
        "files",
        "cycles",
        "trigger_stats",
        // Refused calls are audited too (attacks::audit); those rows name
        // no workspace.
        "audit_log WHERE workspace_id IS NOT NULL",
    ] {
        let row = db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap();
        out.push(row.get(0));
    }
    out
}

#[tokio::test]
async fn every_rpc_needs_a_valid_token_of_a_sufficient_role() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("guarded").await;
    let agent_token = s.backend.starts(ws)[0].token.clone();
    let channel = s.channel().await;
    let client = |token: Option<&str>| {
        WorkspaceLifecycleClient::with_interceptor(
            channel.clone(),
            MaybeBearer(token.map(|t| Bearer::new(t).unwrap())),
        )
    };
    let callers: [(&str, Option<&str>, Option<Role>); 7] = [
        ("no token", None, None),
        ("unknown token", Some("not-a-token"), None),
        ("empty token", Some(""), None),
        ("an agent's generation token", Some(&agent_token), None),
        ("reader", Some(READER_TOKEN), Some(Role::Reader)),
        ("operator", Some(OPERATOR_TOKEN), Some(Role::Operator)),
        ("admin", Some(ADMIN_TOKEN), Some(Role::Admin)),
    ];
    let before = counts(&s).await;
    let mut checked = 0;
    for (rpc, needs, call) in every_rpc() {
        for (who, token, role) in &callers {
            let expected = match role {
                None => Code::Unauthenticated,
                Some(role) if *role < needs => Code::PermissionDenied,
                // Past authentication: the deliberately bad request.
                Some(_) => Code::InvalidArgument,
            };
            let status = call(client(*token)).await.expect_err(rpc);
            assert_eq!(status.code(), expected, "{rpc} as {who}: {status:?}");
            if let Some(token) = token.filter(|t| !t.is_empty()) {
                assert!(!status.message().contains(token), "{rpc}: token echoed");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 12 * 7);
    assert_eq!(counts(&s).await, before, "a refused call changed something");

    // Health and reflection need no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status, 1, "SERVING");
    s.shutdown().await;
}

#[tokio::test]
async fn an_agent_token_works_only_for_its_own_workspace_and_generation() {
    let s = TestServer::start(Options::default()).await;
    let a = s.create_online("agent-a").await;
    let b = s.create_online("agent-b").await;
    let a1 = s.backend.starts(a)[0].token.clone();
    let b1 = s.backend.starts(b)[0].token.clone();
    s.restart(a, pb::Trigger::Manual).await;
    let a2 = s.backend.starts(a)[1].token.clone();

    let mut agent = WorkspaceAgentClient::new(s.channel().await);
    let (a, b) = (a.to_string(), b.to_string());
    let cases = [
        ("A's old generation, for A", &a1, &a, Code::Unauthenticated),
        ("A's current token, for B", &a2, &b, Code::Unauthenticated),
        ("B's token, for A", &b1, &a, Code::Unauthenticated),
        (
            "A's current token, no workspace",
            &a2,
            &String::new(),
            Code::Unauthenticated,
        ),
        ("A's current token, for A", &a2, &a, Code::Ok),
        ("B's token, for B", &b1, &b, Code::Ok),
    ];
    for (what, token, workspace, expected) in cases {
        let registered = agent
            .register(pb::RegisterRequest {
                token: token.clone(),
                workspace_id: workspace.clone(),
                config_version: 1,
                ..Default::default()
            })
            .await;
        let beat = agent
            .heartbeat(pb::HeartbeatRequest {
                token: token.clone(),
                workspace_id: workspace.clone(),
            })
            .await;
        for (call, result) in [
            ("register", registered.map(drop)),
            ("heartbeat", beat.map(drop)),
        ] {
            let code = result.err().map_or(Code::Ok, |s| s.code());
            assert_eq!(code, expected, "{call}: {what}");
        }
    }
    s.shutdown().await;
}

#[tokio::test]
async fn secrets_are_sealed_at_rest() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("sealed").await;
    let values = [
        ("API_KEY", "sk-plaintext-must-not-be-stored-0001"),
        ("MODEL", "model-plaintext-must-not-be-stored"),
    ];
    for (name, value) in values {
        s.set_secret(ws, name, value).await;
    }
    let db = s.db.client().await;
    let rows = db
        .query(
            "SELECT name, value, nonce, t::text FROM secrets t WHERE workspace_id = $1 ORDER BY name",
            &[&ws.as_uuid()],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let sealer = Sealer::new(&TestServer::secrets_key());
    for row in &rows {
        let name: String = row.get(0);
        let stored: Vec<u8> = row.get(1);
        let nonce: Vec<u8> = row.get(2);
        let as_text: String = row.get(3);
        let (_, plain) = values.iter().find(|(n, _)| *n == name).unwrap();
        let plain_bytes = plain.as_bytes();
        assert!(
            !stored.windows(plain_bytes.len()).any(|w| w == plain_bytes),
            "{name} is stored in plain text"
        );
        assert!(!as_text.contains(plain), "{name} readable in the row");
        assert!(
            !as_text.contains(&hex::encode(plain_bytes)),
            "{name} as hex"
        );
        assert_eq!(nonce.len(), 24);
        // It is the value, sealed: the configured key opens it.
        let opened = sealer.open(ws, &name, &nonce, &stored).unwrap();
        assert_eq!(opened.expose(), *plain);
    }
    // No table holds a value anywhere (audit log, cycles, events...).
    let tables = db
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .unwrap();
    for table in tables.iter().map(|r| r.get::<_, String>(0)) {
        let dump: String = db
            .query_one(
                &format!("SELECT coalesce(string_agg(t::text, '|'), '') FROM \"{table}\" t"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        for (_, plain) in values {
            assert!(!dump.contains(plain), "{table} holds a secret value");
        }
    }
    // ...while the workspace's next generation boots with them.
    s.restart(ws, pb::Trigger::Manual).await;
    let started = s.backend.starts(ws).last().unwrap().clone();
    assert_eq!(started.secrets["API_KEY"], values[0].1);
    s.shutdown().await;
}

#[tokio::test]
async fn every_mutation_leaves_an_audit_record() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("audited").await;
    let operator = s.client_with(OPERATOR_TOKEN).await;
    let id = ws.to_string();
    operator
        .clone()
        .set_secret(pb::SetSecretRequest {
            workspace_id: id.clone(),
            name: "API_KEY".into(),
            value: "sk-audit-value-never-recorded".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    operator
        .clone()
        .write_file(pb::WriteFileRequest {
            workspace_id: id.clone(),
            path: "conf/app.toml".into(),
            content: b"x = 1".to_vec(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    operator
        .clone()
        .delete_secret(pb::DeleteSecretRequest {
            workspace_id: id.clone(),
            name: "API_KEY".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let restarted = operator
        .clone()
        .restart_workspace(pb::RestartWorkspaceRequest {
            workspace_id: id.clone(),
            trigger: pb::Trigger::Manual as i32,
            reason: "audit".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    collect(restarted).await;
    // Inside the debounce window a probe report is dropped before it is
    // admitted: it changes nothing (it is counted in the trigger stats) and
    // leaves no audit record.
    let probe = operator
        .clone()
        .report_unreachable(pb::ReportUnreachableRequest {
            workspace_id: id.clone(),
            detail: "probe".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!probe.acted, "{probe:?}");
    stop(&mut operator.clone(), ws, "").await;
    assert!(matches!(
        last(&s.delete(ws, "").await),
        pb::restart_event::Event::Deleted(_)
    ));
    // A refused mutation leaves none.
    let refused = s
        .client_with(READER_TOKEN)
        .await
        .set_secret(pb::SetSecretRequest {
            workspace_id: id.clone(),
            name: "X".into(),
            value: "v".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    let rows = s
        .db
        .client()
        .await
        .query(
            "SELECT actor, action, detail::text, at FROM audit_log WHERE workspace_id = $1 ORDER BY id",
            &[&ws.as_uuid()],
        )
        .await
        .unwrap();
    let seen: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected = [
        ("test-admin", "CreateWorkspace"),
        ("test-operator", "SetSecret"),
        ("test-operator", "WriteFile"),
        ("test-operator", "DeleteSecret"),
        ("test-operator", "RestartWorkspace"),
        ("test-operator", "StopWorkspace"),
        ("test-admin", "DeleteWorkspace"),
    ]
    .map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(seen, expected);
    let details: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
    assert!(details[0].contains("\"audited\""), "{}", details[0]);
    assert!(details[1].contains("API_KEY"), "{}", details[1]);
    assert!(details[2].contains("conf/app.toml") && details[2].contains("\"bytes\": 5"));
    assert!(details.iter().all(|d| !d.contains("sk-audit-value")));
    let at: chrono::DateTime<chrono::Utc> = rows[0].get(3);
    let now = workspace_lifecycle::domain::clock::Clock::now(&s.clock);
    assert!((at - now).num_seconds().abs() < 3600);
    s.shutdown().await;
}

#[tokio::test]
async fn a_caller_over_its_concurrency_limit_gets_resource_exhausted() {
    let s = TestServer::start(Options {
        max_calls_per_caller: 2,
        ..Options::default()
    })
    .await;
    let ws = s.create_online("limited").await;
    // Two open watch streams hold both of the operator's slots.
    let operator = s.client_with(OPERATOR_TOKEN).await;
    let watch = |mut c: workspace_lifecycle::auth::client::LifecycleClient| {
        let id = ws.to_string();
        async move {
            c.watch_workspace(pb::WatchWorkspaceRequest { workspace_id: id })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let first = watch(operator.clone()).await;
    let second = watch(operator.clone()).await;
    let refused = operator
        .clone()
        .get_workspace(pb::GetWorkspaceRequest {
            workspace_id: ws.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Other callers are not affected.
    s.get(ws).await;
    // A closed stream gives its slot back.
    drop(first);
    let again = crate::support::bounded("the slot comes back", async {
        loop {
            let result = operator
                .clone()
                .get_workspace(pb::GetWorkspaceRequest {
                    workspace_id: ws.to_string(),
                })
                .await;
            match result {
                Ok(w) => break w.into_inner(),
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    })
    .await;
    assert_eq!(again.id, ws.to_string());
    drop(second);
    s.shutdown().await;
}

/// A server process on the process backend, logging at debug level to a
/// file, so the test can read every line it wrote.
struct LoggedServer {
    process: ServerProcess,
    _dir: tempfile::TempDir,
    _db: crate::support::TestDb,
}

impl LoggedServer {
    async fn start() -> Self {
        let db = crate::support::TestDb::create().await;
        let dir = crate::support::agent_reachable_tempdir();
        // Logs go to stdout, the agents' complaints to stderr: the process
        // keeps both in server.log.
        let process = ServerProcess::start(dir.path(), "server", |command| {
            command
                .args(["--database-url", &db.url])
                .args(["--heartbeat-interval", "1s", "--stop-grace", "2s"])
                .env("WL_AUTH_TOKENS", crate::support::test_token_entries())
                .env("WL_SECRETS_KEY", crate::support::SECRETS_KEY_HEX)
                .env("RUST_LOG", "debug");
        })
        .await;
        Self {
            process,
            _dir: dir,
            _db: db,
        }
    }

    async fn client(&self) -> workspace_lifecycle::auth::client::LifecycleClient {
        self.process.client_with(ADMIN_TOKEN).await
    }
}

#[tokio::test]
async fn known_secret_values_appear_in_no_log_line_error_or_response() {
    let server = LoggedServer::start().await;
    let mut c = server.client().await;
    let known = [
        "sk-live-4f1c9e7a-log-canary",
        "sk-rejected-nul-canary",
        "sk-unknown-workspace-canary",
        "sk-bad-name-canary",
        "sk-oversize-canary",
    ];
    let mut seen = String::new();
    let request = workspace::create_request("canary", pb::BackendKind::Process);
    let id = workspace::create(&c, request).await;
    workspace::settled(&c, &id, |w| w.status == pb::WorkspaceStatus::Online as i32).await;

    let set = |workspace_id: &str, name: &str, value: String| pb::SetSecretRequest {
        workspace_id: workspace_id.into(),
        name: name.into(),
        value,
        request_id: String::new(),
    };
    let accepted = c
        .set_secret(set(&id, "API_KEY", known[0].into()))
        .await
        .unwrap();
    seen += &format!("{accepted:?}");
    let refusals = [
        (
            set(&id, "K", format!("{}\0", known[1])),
            Code::InvalidArgument,
        ),
        (
            set(&uuid::Uuid::new_v4().to_string(), "K", known[2].into()),
            Code::NotFound,
        ),
        (set(&id, "BAD NAME", known[3].into()), Code::InvalidArgument),
        (
            set(&id, "K", format!("{}{}", known[4], "x".repeat(70_000))),
            Code::InvalidArgument,
        ),
        (
            set("not-a-uuid", "K", known[0].into()),
            Code::InvalidArgument,
        ),
    ];
    for (request, code) in refusals {
        let status = c.set_secret(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        seen += &format!("{status:?}");
    }
    // The secret really reaches the next generation: its agent reports it.
    let restarted = c
        .restart_workspace(pb::RestartWorkspaceRequest {
            workspace_id: id.clone(),
            trigger: pb::Trigger::Manual as i32,
            reason: String::new(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let events = collect(restarted).await;
    assert!(
        matches!(last(&events), pb::restart_event::Event::Online(_)),
        "{events:?}"
    );
    seen += &format!("{events:?}");
    let w = crate::support::workspace::settled(&c, &id, |w| {
        w.agent
            .as_ref()
            .is_some_and(|a| a.generation == 2 && a.secret_names.contains(&"API_KEY".into()))
    })
    .await;
    seen += &format!("{w:?}");
    let cycles = c
        .list_cycles(pb::ListCyclesRequest {
            workspace_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    seen += &format!("{cycles:?}");
    let deleted = c
        .delete_workspace(pb::DeleteWorkspaceRequest {
            workspace_id: id.clone(),
            reason: String::new(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    seen += &format!("{:?}", collect(deleted).await);

    let mut server = server;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.process.pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    crate::support::bounded("the server exits", server.process.child.wait())
        .await
        .unwrap();
    let log = std::fs::read_to_string(&server.process.log).unwrap();
    assert!(
        log.lines().count() > 20 && log.contains(&id),
        "the log is too thin to judge:\n{log}"
    );
    for value in known {
        assert!(!seen.contains(value), "{value} in a response or error");
        for line in log.lines() {
            assert!(!line.contains(value), "{value} logged: {line}");
        }
    }
}

#[tokio::test]
async fn a_callers_deadline_is_honoured() {
    let s = TestServer::start(Options::default()).await;
    // An uncommitted row holding the name makes CreateWorkspace wait on
    // Postgres (for up to its 10 s lock timeout).
    let mut db = s.db.client().await;
    let tx = db.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO workspaces (id, name, backend, spec, created_at, updated_at, status)
         VALUES ($1, 'held', 'process', '{}', now(), now(), 'PROVISIONING')",
        &[&uuid::Uuid::new_v4()],
    )
    .await
    .unwrap();
    let mut request = Request::new(pb::CreateWorkspaceRequest {
        name: "held".into(),
        backend: pb::BackendKind::Process as i32,
        spec: None,
        request_id: String::new(),
    });
    request.set_timeout(std::time::Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let status = crate::support::bounded("the call ends", s.client().create_workspace(request))
        .await
        .unwrap_err();
    let took = started.elapsed();
    // The server's own deadline handling answers (the client only sends
    // grpc-timeout), long before the lock would have been given up.
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(status.message().contains("Timeout expired"), "{status:?}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    tx.rollback().await.unwrap();
    s.shutdown().await;
}

/// A secret the configured key cannot open (the key was changed, or the
/// sealed value was tampered with) fails the cycle that was to deliver it,
/// with a reason that names the secret and never a value, and the gate is
/// free again: the next restart is admitted and fails the same way, none
/// waits forever. (Before, the claim itself failed on it: the restart was
/// answered as deferred and the scheduler retried the claim without end.)
#[tokio::test]
async fn a_secret_the_key_cannot_open_fails_its_cycle_and_frees_the_gate() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("unopenable").await;
    let value = "sk-value-that-must-never-be-shown";
    s.set_secret(ws, "API_KEY", value).await;
    let db = s.db.client().await;
    let tampered = db
        .execute(
            "UPDATE secrets SET value = set_byte(value, 0, get_byte(value, 0) # 1)
             WHERE workspace_id = $1",
            &[&ws.as_uuid()],
        )
        .await
        .unwrap();
    assert_eq!(tampered, 1);
    for attempt in 1..=2 {
        let events = s.restart(ws, pb::Trigger::Manual).await;
        let pb::restart_event::Event::Failed(failed) = last(&events) else {
            panic!("attempt {attempt}: the cycle must fail, got {events:?}");
        };
        assert!(
            failed.reason.contains("API_KEY") && failed.reason.contains("cannot be opened"),
            "attempt {attempt}: the reason names the secret: {:?}",
            failed.reason
        );
        assert!(!failed.reason.contains(value), "a secret value leaked");
    }
    assert_eq!(s.get(ws).await.status, pb::WorkspaceStatus::Failed as i32);
    s.shutdown().await;
}

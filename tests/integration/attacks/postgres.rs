//! Road: the embedded Postgres trusted every local TCP connection, so any
//! local user — or a container on the host network — was its superuser
//! (rewrite a spec's command, `COPY … TO PROGRAM`, delete the audit log).
//! And a server that failed to start left the Postgres it started running.
//! Guards: `embedded_pg` (scram-sha-256, a generated 0600 password) and
//! `embedded_pg::Owned` (stopped on every way out).

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Stdio, time::Duration};

use tokio::process::Command;

use crate::support::{bounded, free_port, server_binary, server_process::ServerProcess};

/// A data directory the `postgres` user can traverse, so the cluster lives
/// (and is removed) inside it.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

fn port(dir: &Path) -> u16 {
    std::fs::read_to_string(dir.join("pg.port"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// psql as the unprivileged `nobody`, never prompting for a password.
async fn psql_as_nobody(host: &str, port: u16) -> (bool, String) {
    let output = Command::new("runuser")
        .args(["-u", "nobody", "--", "psql", "-w", "-X", "-h", host])
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .args(["-c", "SELECT 1"])
        .env_remove("PGPASSWORD")
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("runuser and psql are installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

async fn connects(url: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    client.simple_query("SELECT 1").await?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// Sends `signal` to `server` and waits (bounded) for it to exit.
async fn signalled(
    mut server: ServerProcess,
    signal: nix::sys::signal::Signal,
) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(server.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, signal).unwrap();
    bounded("the server exits on the signal", server.child.wait())
        .await
        .unwrap()
}

/// SIGTERMs `server` and waits (bounded) for it to exit.
async fn terminate(server: ServerProcess) -> std::process::ExitStatus {
    signalled(server, nix::sys::signal::Signal::SIGTERM).await
}

/// A closed terminal (SIGHUP) is a clean exit too: the server drains and
/// stops the Postgres it started, as on Ctrl-C.
#[tokio::test]
async fn a_hangup_stops_the_server_and_its_postgres_cleanly() {
    let dir = data_dir();
    let server = ServerProcess::start(dir.path(), "hung-up", |_| {}).await;
    let password = std::fs::read_to_string(dir.path().join("pg-password")).unwrap();
    let url = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres password={}",
        port(dir.path()),
        password.trim()
    );
    connects(&url).await.expect("the cluster runs");
    let status = signalled(server, nix::sys::signal::Signal::SIGHUP).await;
    assert!(status.success(), "{status:?}");
    assert!(
        connects(&url).await.is_err(),
        "the embedded Postgres outlived a hangup"
    );
}

#[tokio::test]
async fn a_local_user_cannot_connect_to_the_embedded_postgres() {
    let dir = data_dir();
    let server = ServerProcess::start(dir.path(), "embedded", |_| {}).await;
    let port = port(dir.path());
    let password_file = dir.path().join("pg-password");
    let mode = std::fs::metadata(&password_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the password is the service's alone");

    // Over TCP and over the socket directory, as `nobody`: refused.
    let socket_dir = dir.path().join("pg");
    for host in ["127.0.0.1", socket_dir.to_str().unwrap()] {
        let (ok, output) = psql_as_nobody(host, port).await;
        assert!(!ok, "nobody connected through {host}: {output}");
        println!("nobody via {host}: {}", output.trim());
    }
    // Even root needs the password…
    let base = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    connects(&base)
        .await
        .expect_err("no password, no connection");
    let wrong = connects(&format!("{base} password=guess")).await;
    assert!(wrong.is_err(), "a wrong password connects");
    // …and with it the cluster answers (the refusals above were about
    // authentication, not a server that is down).
    let password = std::fs::read_to_string(&password_file).unwrap();
    connects(&format!("{base} password={}", password.trim()))
        .await
        .expect("the service's password connects");

    // SIGTERM stops the server and the Postgres it started.
    assert!(terminate(server).await.success());
    let after = connects(&format!("{base} password={}", password.trim())).await;
    assert!(after.is_err(), "the embedded Postgres outlived its server");
}

/// Runs the binary on the embedded default with `extra` flags, expecting
/// it to fail to start; returns its log.
async fn failed_start(dir: &Path, extra: &[&str]) -> String {
    let log = dir.join("failed.log");
    let out = std::fs::File::create(&log).unwrap();
    let status = bounded(
        "the server gives up",
        Command::new(server_binary())
            .args(["--data-dir", &dir.to_string_lossy()])
            .args(extra)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .status(),
    )
    .await
    .unwrap();
    assert!(!status.success(), "the server started");
    std::fs::read_to_string(&log).unwrap()
}

#[tokio::test]
async fn a_server_that_cannot_start_leaves_no_postgres_running() {
    let dir = data_dir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let listen = format!("127.0.0.1:{}", free_port());

    // A port in use for gRPC: refused before anything starts.
    let log = failed_start(dir.path(), &["--listen", &taken_addr]).await;
    assert!(log.contains("cannot start"), "{log}");

    // A port in use for metrics: found only after Postgres, migrations and
    // the engine are up — all of which must go again.
    let log = failed_start(
        dir.path(),
        &["--listen", &listen, "--metrics-listen", &taken_addr],
    )
    .await;
    assert!(log.contains("using the embedded Postgres"), "{log}");
    let port = port(dir.path());
    let password = std::fs::read_to_string(dir.path().join("pg-password")).unwrap();
    let url = format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres password={}",
        password.trim()
    );
    let probe = bounded("the cluster is gone", async {
        // pg_ctl stop -w returned before the server exited; allow a moment.
        for _ in 0..50 {
            if connects(&url).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    })
    .await;
    assert!(probe, "the embedded Postgres outlived a failed start");
}

#[tokio::test]
async fn a_signal_during_startup_leaves_no_postgres_running() {
    let dir = data_dir();
    let log = dir.path().join("signalled.log");
    let out = std::fs::File::create(&log).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(server_binary())
        .args([
            "--listen",
            &listen,
            "--data-dir",
            &dir.path().to_string_lossy(),
        ])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Interrupt while the cluster is being initialised or started.
    bounded("the cluster is being set up", async {
        while !dir.path().join("pg").exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = bounded("the server exits on SIGINT", child.wait())
        .await
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status:?}: {text}");
    assert!(text.contains("signalled during startup"), "{text}");
    let port = port(dir.path());
    let password = std::fs::read_to_string(dir.path().join("pg-password")).unwrap();
    let url = format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres password={}",
        password.trim()
    );
    assert!(
        connects(&url).await.is_err(),
        "the embedded Postgres outlived an interrupted start: {text}"
    );
}

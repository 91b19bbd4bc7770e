//! Health tells the truth: NOT_SERVING while Postgres is unreachable and
//! from the moment SIGTERM arrives (while the port still answers), with
//! Health/Watch streaming each change.

use std::time::Duration;

use tokio::time::{Instant, timeout};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::{
    Options, TestServer, bounded, db::TestDb, pg_proxy::PgProxy, server_process::ServerProcess,
};

fn whole_server() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

/// The next status a Watch stream reports, within `within`.
async fn next_status(
    watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
    within: Duration,
) -> ServingStatus {
    let message = timeout(within, watch.message())
        .await
        .unwrap_or_else(|_| panic!("no health change within {within:?}"))
        .expect("the watch stream is healthy")
        .expect("the watch stream is open");
    ServingStatus::try_from(message.status).unwrap()
}

#[tokio::test]
async fn not_serving_while_postgres_is_unreachable_and_serving_once_it_returns() {
    let db = TestDb::create().await;
    let proxy = PgProxy::start(&db.url).await;
    let s = TestServer::start(Options::on_database(proxy.url())).await;
    let mut health = HealthClient::new(s.channel().await);
    let mut watch = health.watch(whole_server()).await.unwrap().into_inner();
    assert_eq!(
        next_status(&mut watch, Duration::from_secs(5)).await,
        ServingStatus::Serving
    );

    proxy.cut();
    let cut_at = Instant::now();
    assert_eq!(
        next_status(&mut watch, Duration::from_secs(2)).await,
        ServingStatus::NotServing,
        "NOT_SERVING within 2 s of the outage"
    );
    assert!(cut_at.elapsed() <= Duration::from_secs(2));
    // Check agrees, for the server and for each service.
    for service in ["", "workspace.lifecycle.v1.WorkspaceLifecycle"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::NotServing as i32, "{service:?}");
    }

    proxy.restore();
    assert_eq!(
        next_status(&mut watch, Duration::from_secs(5)).await,
        ServingStatus::Serving,
        "SERVING again once Postgres answers"
    );
    // ...and the service itself works again.
    bounded("a call succeeds after the outage", async {
        loop {
            if s.client()
                .list_workspaces(workspace_lifecycle::proto::ListWorkspacesRequest::default())
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    drop(watch);
    s.shutdown().await;
}

#[tokio::test]
async fn sigterm_says_not_serving_before_the_port_closes() {
    let db = TestDb::create().await;
    let dir = crate::support::agent_reachable_tempdir();
    let url = db.url.clone();
    let mut server = ServerProcess::start(dir.path(), "health", |command| {
        command.args(["--database-url", &url, "--drain-delay", "3s"]);
    })
    .await;
    let channel = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut watch = health.watch(whole_server()).await.unwrap().into_inner();
    assert_eq!(
        next_status(&mut watch, Duration::from_secs(5)).await,
        ServingStatus::Serving
    );

    let pid = nix::unistd::Pid::from_raw(server.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(
        next_status(&mut watch, Duration::from_secs(2)).await,
        ServingStatus::NotServing,
        "NOT_SERVING as soon as SIGTERM arrives"
    );
    // The port still answers, on a new connection too, and says so.
    let fresh = tonic::transport::Endpoint::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .expect("the listener is still open while draining");
    let status = HealthClient::new(fresh)
        .check(whole_server())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);

    // Then the Watch stream ends, the process exits and the port closes.
    bounded("the watch stream ends", async {
        while let Ok(Some(_)) = watch.message().await {}
    })
    .await;
    let exit = bounded("the server exits", server.child.wait())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let port = server.addr.trim_start_matches("http://");
    assert!(
        tokio::net::TcpStream::connect(port).await.is_err(),
        "the port is closed after exit"
    );
}

//! The server's own image (`scripts/build-server-image`: static, FROM
//! scratch, unprivileged), run as operators run it — a container on the
//! host network against the test Postgres — through create → restart →
//! online.

use std::time::Duration;

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use workspace_lifecycle_client::{Client, proto as cpb};

use crate::support::{
    ADMIN_TOKEN, SECRETS_KEY_HEX, WAIT, bounded, db::TestDb, free_port, test_token_entries,
};

/// The image the script builds.
const SERVER_IMAGE: &str = "workspace-lifecycle:latest";

/// A container removed when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.0])
            .output();
    }
}

fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("the image test needs the docker CLI")
}

#[tokio::test]
async fn the_server_image_creates_restarts_and_serves_online() {
    let inspect = docker(&["image", "inspect", SERVER_IMAGE]);
    assert!(
        inspect.status.success(),
        "{SERVER_IMAGE} is missing: run scripts/build-server-image (scripts/test does)"
    );
    let db = TestDb::create().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let name = format!("wl-image-test-{}", uuid::Uuid::new_v4().simple());
    let run = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "-e",
        &format!("WL_AUTH_TOKENS={}", test_token_entries()),
        "-e",
        &format!("WL_SECRETS_KEY={SECRETS_KEY_HEX}"),
        "-e",
        &format!("DATABASE_URL={}", db.url),
        SERVER_IMAGE,
        "--listen",
        &listen,
        "--reconcile-interval",
        "1s",
    ]);
    assert!(run.status.success(), "{run:?}");
    let container = Container(name);
    let logs = || String::from_utf8_lossy(&docker(&["logs", &container.0]).stderr).into_owned();

    // Up: health says SERVING.
    let endpoint = format!("http://{listen}");
    bounded("the containerised server serves", async {
        loop {
            let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
                .unwrap()
                .connect()
                .await;
            if let Ok(mut health) = channel.map(HealthClient::new) {
                if let Ok(answer) = health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    if answer.into_inner().status == ServingStatus::Serving as i32 {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    let client = Client::connect(endpoint, ADMIN_TOKEN).await.unwrap();
    let created = client
        .create_workspace("in-a-container", cpb::BackendKind::Process, None)
        .await
        .unwrap_or_else(|e| panic!("create: {e}\n{}", logs()));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = client.get_workspace(&created.id).await.unwrap();
        if now.status == cpb::WorkspaceStatus::Online as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never online: {now:?}\n{}",
            logs()
        );
        let mut watch = client.watch(&created.id).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_millis(500), watch.message()).await;
    }
    let served = client
        .restart(&created.id, cpb::Trigger::Manual, "image test")
        .await
        .unwrap()
        .wait_online()
        .await
        .unwrap_or_else(|e| panic!("restart: {e}\n{}", logs()));
    assert_eq!(served.generation, 2);
    let agent = client
        .get_workspace(&created.id)
        .await
        .unwrap()
        .agent
        .unwrap();
    assert_eq!(agent.generation, 2, "the new generation's agent registered");
}

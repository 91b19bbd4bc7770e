//! The client crate against a real server: retries that are safe because
//! every mutation carries a request id, and a restart followed to the
//! generation the agent reports.

use std::time::Duration;

use tokio::time::timeout;
use tonic::Code;
use workspace_lifecycle_client::{Client, Error, RetryPolicy, proto as cpb};

use crate::support::{
    ADMIN_TOKEN, BackendChoice, Options, TestServer, bounded, db::TestDb, pg_proxy::PgProxy,
};

async fn client_of(s: &TestServer, retry: RetryPolicy) -> Client {
    Client::builder(format!("http://{}", s.addr))
        .token(ADMIN_TOKEN)
        .retry(retry)
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_set_secret_retried_through_a_database_outage_bumps_the_config_version_once() {
    let db = TestDb::create().await;
    let proxy = PgProxy::start(&db.url).await;
    let s = TestServer::start(Options::on_database(proxy.url())).await;
    let ws = s.create_online("retried").await.to_string();
    let client = client_of(&s, RetryPolicy::default()).await;
    let before = client.get_workspace(&ws).await.unwrap().config_version;

    // While Postgres is cut, a call fails with UNAVAILABLE and says when
    // to retry; without retries the caller sees it.
    proxy.cut();
    let once = client_of(&s, RetryPolicy::never()).await;
    let err = once
        .set_secret(&ws, "API_KEY", "never-applied")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert_eq!(err.reason().as_deref(), Some("DATABASE_UNAVAILABLE"));
    assert!(err.retry_delay().is_some(), "RetryInfo tells when to retry");

    // With the default policy the call keeps retrying through the outage…
    let id = uuid::Uuid::new_v4().to_string();
    let call = {
        let (client, ws, id) = (client.clone(), ws.clone(), id.clone());
        tokio::spawn(async move {
            client
                .set_secret_with_id(&ws, "API_KEY", "applied-once", &id)
                .await
        })
    };
    let mut call = call;
    assert!(
        timeout(Duration::from_millis(500), &mut call)
            .await
            .is_err(),
        "the call cannot succeed while Postgres is cut"
    );
    // …and succeeds once Postgres is back.
    proxy.restore();
    let answer = bounded("the retried call succeeds", call)
        .await
        .unwrap()
        .expect("retried until Postgres returned");
    assert_eq!(answer.config_version, before + 1);
    assert_eq!(
        client.get_workspace(&ws).await.unwrap().config_version,
        before + 1,
        "the failed attempts changed nothing, the retry once"
    );
    // A late repeat of the same request (a caller retrying after a lost
    // answer) gets the same answer and changes nothing.
    let repeat = client
        .set_secret_with_id(&ws, "API_KEY", "applied-once", &id)
        .await
        .unwrap();
    assert_eq!(repeat, answer);
    assert_eq!(
        client.get_workspace(&ws).await.unwrap().config_version,
        before + 1
    );
    s.shutdown().await;
}

#[tokio::test]
async fn wait_online_returns_the_generation_the_agent_reports() {
    let s = TestServer::start(Options {
        backend: BackendChoice::Process,
        wall_clock: true,
        ..Options::default()
    })
    .await;
    let client = client_of(&s, RetryPolicy::default()).await;
    let created = client
        .create_workspace("followed", cpb::BackendKind::Process, None)
        .await
        .unwrap();
    s.wait_for(created.id.parse().unwrap(), |w| {
        w.status == workspace_lifecycle::proto::WorkspaceStatus::Online as i32
    })
    .await;
    client
        .set_secret(&created.id, "API_KEY", "for-the-new-generation")
        .await
        .unwrap();

    let served = client
        .restart(&created.id, cpb::Trigger::Manual, "client test")
        .await
        .unwrap()
        .wait_online()
        .await
        .unwrap();
    let now = client.get_workspace(&created.id).await.unwrap();
    let agent = now.agent.expect("the agent registered");
    assert_eq!(served.generation, agent.generation);
    assert_eq!(served.config_version, agent.config_version);
    assert!(agent.secret_names.contains(&"API_KEY".to_owned()));
    assert_eq!(served.generation, now.generation);

    // A restart of a deleted workspace is a typed failure, not a hang.
    let deleted = client
        .delete(&created.id, "done")
        .await
        .unwrap()
        .wait_online()
        .await;
    assert!(matches!(deleted, Err(Error::Deleted)), "{deleted:?}");
    let refused = client
        .restart(&created.id, cpb::Trigger::Manual, "too late")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::FailedPrecondition));
    assert_eq!(refused.reason().as_deref(), Some("WORKSPACE_DELETED"));
    s.shutdown().await;
}

//! Road: a workspace's own agent reports any config version it likes and
//! readers take it as fact. Guard: registration checks the report against
//! what the control plane handed that generation (`store/agents.rs`); a
//! mismatch is recorded and shown, never believed silently.

use workspace_lifecycle::proto as pb;

use crate::support::{Options, TestServer, fake_backend::AgentMode};

#[tokio::test]
async fn an_agent_that_misreports_its_config_is_shown_as_such() {
    let s = TestServer::start(Options::default()).await;
    let honest = s.create_online("honest").await;
    let agent = s.get(honest).await.agent.expect("registered");
    assert_eq!(agent.report_mismatch, "", "an honest report is not flagged");

    s.backend.set_agent(AgentMode::Misreport);
    let liar = s.create("liar").await;
    let w = s
        .wait_for(liar, |w| w.status == pb::WorkspaceStatus::Online as i32)
        .await;
    let agent = w.agent.expect("registered");
    assert_eq!(
        agent.config_version,
        w.config_version + 100,
        "the claim is kept"
    );
    assert_eq!(
        agent.report_mismatch,
        format!(
            "reported config version {}, was handed {}",
            w.config_version + 100,
            w.config_version
        )
    );
    s.shutdown().await;
}

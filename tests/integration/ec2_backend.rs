//! The EC2 backend end to end. Against moto in server mode (the real SDK
//! over HTTP): one instance per generation, none after delete, strays of
//! older generations terminated by a start, stale calls harmless. Against scripted SDK
//! responses (aws-smithy-mocks): the `pending` window, which moto skips,
//! never looks dead (C9), and throttled launches are retried into one
//! instance.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_sdk_ec2::{
    Client,
    config::{Region, retry::RetryConfig},
    operation::{describe_instances::DescribeInstancesOutput, run_instances::RunInstancesOutput},
    types::{
        Instance, InstanceState, InstanceStateName, Reservation, ResourceType, Tag,
        TagSpecification,
    },
};
use aws_smithy_mocks::{MockResponseInterceptor, RuleMode, mock};
use tokio::sync::watch;
use workspace_backends::{
    AgentToken, Backend, BackendError, ConfigVersion, Generation, Halt, InstanceRef, Launch,
    WorkspaceSpec,
    ec2::{Ec2Backend, Ec2Config, TAG_GENERATION, TAG_MANAGED, TAG_WORKSPACE},
};
use workspace_lifecycle::{
    domain::WorkspaceId,
    proto::{self as pb, report_unreachable_response::Outcome, restart_event::Event},
};

use crate::support::{
    Options, TestServer, assert_limit_refusal, bounded,
    counted::Counted,
    cycles, last,
    moto::{InstanceBooter, Moto, run_agent},
    report_unreachable, stats, workspace,
};

/// A server whose EC2 workspaces run on moto, each instance "booted" by
/// the booter.
async fn on_moto(moto: &Moto) -> (TestServer, Arc<Counted<Ec2Backend>>) {
    let ec2 = Counted::new(Ec2Backend::with_client(
        moto.client(),
        Ec2Config {
            default_ami: moto.ami().await,
            terminate_timeout: Duration::from_secs(30),
            ..Ec2Config::default()
        },
    ));
    let s = TestServer::start(Options {
        given: Some(ec2.clone()),
        wall_clock: true,
        window: Duration::from_secs(2),
        deadline: Duration::from_secs(60),
        ..Options::default()
    })
    .await;
    (s, ec2)
}

#[tokio::test]
async fn create_restart_and_delete_on_moto_keep_exactly_the_current_generation() {
    let moto = Moto::start().await;
    let _booter = InstanceBooter::start(moto.client());
    let (s, ec2) = on_moto(&moto).await;

    let ws = s.create("ec2-life").await;
    s.online_at(ws, 1).await;
    assert_eq!(moto.live_instances(ws).await.len(), 1);
    assert_eq!(moto.live_instances(ws).await[0].0, "1");

    let secret = s.set_secret(ws, "API_KEY", "sk-ec2").await;
    let events = s.restart(ws, pb::Trigger::Manual).await;
    assert!(
        matches!(last(&events), Event::Online(o) if o.generation == 2),
        "{events:?}"
    );
    let agent = s.online_at(ws, 2).await.agent.unwrap();
    assert_eq!(
        agent.config_version, secret.config_version,
        "the new instance booted with the latest config"
    );
    assert_eq!(agent.secret_names, ["API_KEY"]);
    let live = moto.live_instances(ws).await;
    assert_eq!(live.len(), 1, "exactly one instance: {live:?}");
    assert_eq!(live[0].0, "2");

    assert!(matches!(last(&s.delete(ws, "").await), Event::Deleted(_)));
    assert_eq!(moto.live_instances(ws).await, [], "delete left an instance");
    assert_eq!(ec2.max_in_flight(ws), 1, "backend calls never overlapped");
    assert_eq!(ec2.errors(), Vec::<String>::new());
    s.shutdown().await;
}

/// What a crash between launching a generation and terminating its
/// predecessor leaves on moto: an instance of `generation`, not launched
/// by the backend.
async fn stray(moto: &Moto, ws: WorkspaceId, generation: &str) {
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(
            Tag::builder()
                .key(TAG_WORKSPACE)
                .value(ws.to_string())
                .build(),
        )
        .tags(Tag::builder().key(TAG_GENERATION).value(generation).build())
        .tags(
            Tag::builder()
                .key(TAG_MANAGED)
                .value("workspace-lifecycle")
                .build(),
        )
        .build();
    let launched = moto
        .client()
        .run_instances()
        .image_id(moto.ami().await)
        .min_count(1)
        .max_count(1)
        .tag_specifications(tags)
        .send()
        .await
        .unwrap();
    assert_eq!(launched.instances().len(), 1, "the stray was launched");
}

fn launch(ws: WorkspaceId, generation: u64) -> Launch {
    Launch {
        workspace: ws,
        generation: Generation(generation),
        config_version: ConfigVersion(1),
        spec: WorkspaceSpec::default(),
        secrets: Default::default(),
        files: Default::default(),
        token: AgentToken::new("wla_t"),
        service_url: "http://127.0.0.1:1".into(),
    }
}

/// Judged by DescribeInstances: a start terminates strictly older
/// generations only; a stale start, stop or delete leaves the newer
/// generation; the inventory lists what lives.
#[tokio::test]
async fn on_moto_calls_address_generations_and_stale_ones_touch_nothing() {
    let moto = Moto::start().await;
    let ec2 = Ec2Backend::with_client(
        moto.client(),
        Ec2Config {
            default_ami: moto.ami().await,
            terminate_timeout: Duration::from_secs(30),
            ..Ec2Config::default()
        },
    );
    let ws = WorkspaceId::new();
    stray(&moto, ws, "1").await;
    ec2.start(&launch(ws, 2)).await.unwrap();
    let live = moto.live_instances(ws).await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].0, "2", "the older generation was terminated");

    let stale = ec2.start(&launch(ws, 1)).await.unwrap_err();
    assert!(matches!(stale, BackendError::Superseded { .. }), "{stale}");
    ec2.stop(ws, Generation(1), Halt::Force).await.unwrap();
    ec2.delete(ws, Generation(1), Halt::Graceful).await.unwrap();
    let live = moto.live_instances(ws).await;
    assert_eq!(live.len(), 1, "a stale call touched generation 2: {live:?}");

    let listed: Vec<InstanceRef> = ec2
        .inventory()
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.workspace == ws)
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].generation, Some(Generation(2)));

    ec2.delete(ws, Generation(2), Halt::Graceful).await.unwrap();
    assert_eq!(moto.live_instances(ws).await, [], "delete left an instance");
    assert!(
        ec2.inventory()
            .await
            .unwrap()
            .iter()
            .all(|i| i.workspace != ws)
    );
    ec2.delete(ws, Generation(2), Halt::Graceful).await.unwrap();
}

/// One EC2 "account" behind scripted responses: RunInstances is throttled
/// twice, then launches an instance that DescribeInstances reports as
/// `pending` until the test says otherwise.
#[derive(Clone, Default)]
struct ScriptedEc2 {
    instance: Arc<Mutex<Option<Instance>>>,
    launched_with: Arc<Mutex<Option<TagSpecification>>>,
}

const THROTTLED: &str = "<Response><Errors><Error><Code>RequestLimitExceeded</Code>\
    <Message>Request limit exceeded.</Message></Error></Errors><RequestID>r</RequestID></Response>";

impl ScriptedEc2 {
    fn client(&self, launched: watch::Sender<Option<String>>) -> (Client, aws_smithy_mocks::Rule) {
        let describe = mock!(Client::describe_instances).then_output({
            let world = self.clone();
            move || {
                let instances = world.instance.lock().unwrap().clone().into_iter().collect();
                DescribeInstancesOutput::builder()
                    .reservations(
                        Reservation::builder()
                            .set_instances(Some(instances))
                            .build(),
                    )
                    .build()
            }
        });
        let run = mock!(Client::run_instances)
            .match_requests({
                let world = self.clone();
                move |input| {
                    *world.launched_with.lock().unwrap() =
                        input.tag_specifications().first().cloned();
                    launched.send_replace(input.user_data().map(str::to_owned));
                    true
                }
            })
            .sequence()
            .http_status(503, Some(THROTTLED.into()))
            .times(2)
            .output({
                let world = self.clone();
                move || {
                    let tags = world.launched_with.lock().unwrap().clone().unwrap();
                    let instance = Instance::builder()
                        .instance_id("i-scripted")
                        .state(
                            InstanceState::builder()
                                .name(InstanceStateName::Pending)
                                .build(),
                        )
                        .set_tags(tags.tags)
                        .build();
                    *world.instance.lock().unwrap() = Some(instance.clone());
                    RunInstancesOutput::builder().instances(instance).build()
                }
            })
            .build();
        let interceptor = MockResponseInterceptor::new()
            .rule_mode(RuleMode::MatchAny)
            .with_rule(&describe)
            .with_rule(&run);
        let config = aws_sdk_ec2::Config::builder()
            .with_test_defaults()
            .region(Region::new("us-east-1"))
            .http_client(aws_smithy_mocks::create_mock_http_client())
            .interceptor(interceptor)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(4)
                    .with_initial_backoff(Duration::from_millis(1)),
            )
            .build();
        (Client::from_conf(config), run)
    }
}

#[tokio::test]
async fn the_pending_window_is_never_a_dead_workspace_and_throttled_launches_are_retried() {
    let world = ScriptedEc2::default();
    let (launched, mut user_data) = watch::channel(None);
    let (client, run_instances) = world.client(launched);
    let ec2 = Counted::new(Ec2Backend::with_client(
        client,
        Ec2Config {
            default_ami: "ami-12345678".into(),
            ..Ec2Config::default()
        },
    ));
    let s = TestServer::start(Options {
        given: Some(ec2.clone()),
        ..Options::default()
    })
    .await;
    let ws = s.create("ec2-pending").await;
    let encoded = bounded("RunInstances answered", user_data.wait_for(Option::is_some))
        .await
        .unwrap()
        .clone()
        .unwrap();

    // The cycle waits for its agent while the instance is pending.
    for _ in 0..4 {
        let answer = report_unreachable(&s, ws).await;
        assert!(!answer.acted);
        assert_eq!(answer.outcome, Outcome::DroppedCycleInFlight as i32);
        assert!(!answer.reason.is_empty(), "a no-op says why");
    }

    // The agent registers, but EC2 still says pending: booting, not dead.
    let _agent = run_agent(&encoded, "i-scripted");
    s.online_at(ws, 1).await;
    s.advance(Duration::from_secs(61)); // Past the debounce window.
    for _ in 0..4 {
        let answer = report_unreachable(&s, ws).await;
        assert!(!answer.acted);
        assert_eq!(answer.outcome, Outcome::DroppedInstanceBooting as i32);
        assert!(
            answer.reason.contains("pending") || answer.reason.contains("boot"),
            "{}",
            answer.reason
        );
    }
    let w = s.get(ws).await;
    assert_eq!(w.status, pb::WorkspaceStatus::Online as i32);
    assert_eq!(stats(&w, pb::Trigger::HealthProbe).dropped, 8);
    assert_eq!(cycles(&s, ws).await.len(), 1, "no cycle from a probe (C9)");
    assert_eq!(ec2.starts(ws).len(), 1);
    assert_eq!(
        run_instances.num_calls(),
        3,
        "throttled twice, retried by the SDK into one launch"
    );
    assert!(world.instance.lock().unwrap().is_some());
    s.shutdown().await;
}

/// A backend states its limits and admission applies them (C17): a file
/// that can never fit EC2's 16 KiB of user data is refused up front, naming
/// the limit, with nothing stored and no cycle — instead of acknowledged and
/// failing every cycle after. A config that fits still goes through.
#[tokio::test]
async fn a_file_too_big_for_user_data_is_refused_and_changes_nothing() {
    let moto = Moto::start().await;
    let _booter = InstanceBooter::start(moto.client());
    let (s, ec2) = on_moto(&moto).await;
    // A spec whose environment alone could never fit: refused at create,
    // nothing created.
    let refused = s
        .client()
        .create_workspace(pb::CreateWorkspaceRequest {
            spec: Some(pb::WorkspaceSpec {
                env: [("BIG".to_owned(), "v".repeat(20 * 1024))].into(),
                ..Default::default()
            }),
            ..workspace::create_request("ec2-too-big", pb::BackendKind::Ec2)
        })
        .await
        .unwrap_err();
    assert_limit_refusal(&refused, "ec2.user_data_bytes");
    let listed = s.listed().await;
    assert!(listed.is_empty(), "nothing created: {listed:?}");

    let ws = s.create("ec2-limits").await;
    s.online_at(ws, 1).await;
    let before = s.get(ws).await;
    let starts = ec2.starts(ws);

    let refused = s
        .client()
        .write_file(pb::WriteFileRequest {
            workspace_id: ws.to_string(),
            path: "big.bin".into(),
            content: vec![b'x'; 20 * 1024],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_limit_refusal(&refused, "ec2.user_data_bytes");
    let after = s.get(ws).await;
    assert_eq!(after.config_version, before.config_version);
    assert!(after.file_paths.is_empty(), "nothing stored");
    assert!(after.pending_cycle_id.is_empty(), "no cycle: {after:?}");

    let fits = s
        .client()
        .write_file(pb::WriteFileRequest {
            workspace_id: ws.to_string(),
            path: "small.txt".into(),
            content: vec![b'y'; 1024],
            ..Default::default()
        })
        .await
        .expect("a file that fits is accepted");
    assert_eq!(fits.into_inner().config_version, before.config_version + 1);
    assert_eq!(ec2.starts(ws), starts, "the refusal started nothing");
}

//! The EC2 backend against scripted SDK responses (aws-smithy-mocks): the
//! pending window, retried launches, throttling. The real SDK stack runs
//! (serialisation, retries, waiters); only the HTTP exchange is scripted.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use aws_sdk_ec2::{
    operation::{
        describe_instances::DescribeInstancesOutput, run_instances::RunInstancesOutput,
        terminate_instances::TerminateInstancesOutput,
    },
    types::{InstanceState as Ec2State, InstanceStateName, Reservation, Tag},
};
use aws_smithy_mocks::{MockResponseInterceptor, Rule, RuleMode, mock};

use super::*;
use crate::{AgentToken, ConfigVersion, Secret, WorkspaceSpec};

fn client(rules: &[&Rule]) -> Client {
    let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
    for rule in rules {
        interceptor = interceptor.with_rule(rule);
    }
    let config = aws_sdk_ec2::Config::builder()
        .with_test_defaults()
        .region(aws_sdk_ec2::config::Region::new("us-east-1"))
        .http_client(aws_smithy_mocks::create_mock_http_client())
        .interceptor(interceptor)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(4)
                .with_initial_backoff(Duration::from_millis(1)),
        )
        .build();
    Client::from_conf(config)
}

fn backend(rules: &[&Rule]) -> Ec2Backend {
    Ec2Backend::with_client(
        client(rules),
        Ec2Config {
            default_ami: "ami-12345678".into(),
            terminate_timeout: Duration::from_secs(5),
            ..Ec2Config::default()
        },
    )
}

fn instance(
    id: &str,
    workspace: WorkspaceId,
    generation: u64,
    state: InstanceStateName,
) -> Instance {
    Instance::builder()
        .instance_id(id)
        .state(Ec2State::builder().name(state).build())
        .tags(
            Tag::builder()
                .key(TAG_WORKSPACE)
                .value(workspace.to_string())
                .build(),
        )
        .tags(
            Tag::builder()
                .key(TAG_GENERATION)
                .value(generation.to_string())
                .build(),
        )
        .build()
}

fn described(instances: Vec<Instance>) -> DescribeInstancesOutput {
    DescribeInstancesOutput::builder()
        .reservations(
            Reservation::builder()
                .set_instances(Some(instances))
                .build(),
        )
        .build()
}

fn launch(workspace: WorkspaceId, generation: u64) -> Launch {
    Launch {
        workspace,
        generation: Generation(generation),
        config_version: ConfigVersion(2),
        spec: WorkspaceSpec::default(),
        secrets: [("API_KEY".to_owned(), Secret::new("v"))].into(),
        files: BTreeMap::new(),
        token: AgentToken::new("wla_secret"),
        service_url: "http://127.0.0.1:50051".into(),
    }
}

const THROTTLED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>x</RequestID></Response>"#;

#[tokio::test]
async fn pending_is_booting_never_dead_and_states_map_as_documented() {
    let ws = WorkspaceId::new();
    let cases = [
        (InstanceStateName::Pending, InstancePhase::Pending),
        (InstanceStateName::Running, InstancePhase::Running),
        (InstanceStateName::ShuttingDown, InstancePhase::Stopping),
        (InstanceStateName::Stopping, InstancePhase::Stopping),
        (InstanceStateName::Stopped, InstancePhase::Stopped),
    ];
    for (ec2_state, phase) in cases {
        let state = ec2_state.clone();
        let rule = mock!(Client::describe_instances)
            .then_output(move || described(vec![instance("i-1", ws, 3, state.clone())]));
        let seen = backend(&[&rule]).state(ws).await.unwrap();
        assert_eq!(
            seen,
            InstanceState::of(Generation(3), phase.clone()),
            "{ec2_state:?}"
        );
        assert_eq!(seen.is_booting(), ec2_state == InstanceStateName::Pending);
        assert!(!(seen.is_booting() && seen.is_down()));
    }
    let none = mock!(Client::describe_instances).then_output(|| described(vec![]));
    assert_eq!(
        backend(&[&none]).state(ws).await.unwrap(),
        InstanceState::missing()
    );
}

#[tokio::test]
async fn a_retried_run_instances_launches_one_instance_with_one_client_token() {
    let ws = WorkspaceId::new();
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let user_data = Arc::new(Mutex::new(None));
    let none = mock!(Client::describe_instances).then_output(|| described(vec![]));
    let run = mock!(Client::run_instances)
        .match_requests({
            let (tokens, user_data) = (tokens.clone(), user_data.clone());
            move |input| {
                tokens
                    .lock()
                    .unwrap()
                    .push(input.client_token().unwrap_or_default().to_owned());
                *user_data.lock().unwrap() = input.user_data().map(str::to_owned);
                true
            }
        })
        .sequence()
        .http_status(503, Some(THROTTLED.into()))
        .http_status(500, None)
        .output(move || {
            RunInstancesOutput::builder()
                .instances(instance("i-only", ws, 1, InstanceStateName::Pending))
                .build()
        })
        .build();
    backend(&[&none, &run]).start(&launch(ws, 1)).await.unwrap();

    let tokens = tokens.lock().unwrap().clone();
    // The SDK retries the same serialised request: one token for all three.
    assert_eq!(run.num_calls(), 3, "two failures, retried by the SDK");
    assert!(!tokens.is_empty());
    assert!(tokens.iter().all(|t| *t == client_token(ws, Generation(1))));
    // The user data boots the agent with its generation's token.
    let env: BTreeMap<_, _> = user_data::environment(&user_data.lock().unwrap().clone().unwrap())
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(env["WL_AGENT_TOKEN"], "wla_secret");
    assert_eq!(env["WL_CONFIG_VERSION"], "2");
}

#[tokio::test]
async fn a_start_of_a_generation_that_already_runs_launches_nothing() {
    let ws = WorkspaceId::new();
    let existing = mock!(Client::describe_instances)
        .then_output(move || described(vec![instance("i-1", ws, 4, InstanceStateName::Pending)]));
    let run = mock!(Client::run_instances).then_output(|| RunInstancesOutput::builder().build());
    backend(&[&existing, &run])
        .start(&launch(ws, 4))
        .await
        .unwrap();
    assert_eq!(run.num_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn throttled_calls_are_retried_and_stop_waits_for_termination() {
    let ws = WorkspaceId::new();
    let describe = mock!(Client::describe_instances)
        .sequence()
        .http_status(503, Some(THROTTLED.into()))
        .times(2)
        .output(move || described(vec![instance("i-1", ws, 1, InstanceStateName::Running)]))
        // The waiter's polls: shutting down, then terminated.
        .output(move || {
            described(vec![instance(
                "i-1",
                ws,
                1,
                InstanceStateName::ShuttingDown,
            )])
        })
        .output(move || described(vec![instance("i-1", ws, 1, InstanceStateName::Terminated)]))
        .build();
    let terminate = mock!(Client::terminate_instances)
        .sequence()
        .http_status(503, Some(THROTTLED.into()))
        .output(|| TerminateInstancesOutput::builder().build())
        .build();
    let ec2 = backend(&[&describe, &terminate]);
    tokio::time::timeout(
        Duration::from_secs(60),
        ec2.stop(ws, Generation(1), Halt::Graceful),
    )
    .await
    .expect("stop finished")
    .unwrap();
    assert_eq!(terminate.num_calls(), 2, "throttled once, retried");
    assert!(
        describe.num_calls() >= 5,
        "listed, then waited until terminated"
    );
}

/// A scripted account holding `instances`; returns the rules and the ids
/// TerminateInstances was asked for.
fn account(instances: Vec<Instance>) -> (Rule, Rule, Rule, Arc<Mutex<Vec<String>>>) {
    // The waiter's polls: whatever it waits for is terminated.
    let gone: Vec<Instance> = instances
        .iter()
        .map(|i| {
            let mut i = i.clone();
            i.state = Some(
                Ec2State::builder()
                    .name(InstanceStateName::Terminated)
                    .build(),
            );
            i
        })
        .collect();
    let describe = mock!(Client::describe_instances)
        .match_requests(|input| {
            // The listing, not the waiter (which names instance ids).
            input.instance_ids().is_empty()
        })
        .then_output(move || described(instances.clone()));
    let waited = mock!(Client::describe_instances)
        .match_requests(|input| !input.instance_ids().is_empty())
        .then_output(move || described(gone.clone()));
    let terminated = Arc::new(Mutex::new(Vec::new()));
    let terminate = mock!(Client::terminate_instances)
        .match_requests({
            let terminated = terminated.clone();
            move |input| {
                terminated
                    .lock()
                    .unwrap()
                    .extend(input.instance_ids().iter().cloned());
                true
            }
        })
        .then_output(|| TerminateInstancesOutput::builder().build());
    (describe, waited, terminate, terminated)
}

#[tokio::test(start_paused = true)]
async fn a_start_terminates_only_older_generations_and_a_stale_start_touches_nothing() {
    let ws = WorkspaceId::new();
    let (describe, waited, terminate, terminated) = account(vec![
        instance("i-old", ws, 1, InstanceStateName::Running),
        instance("i-cur", ws, 2, InstanceStateName::Running),
    ]);
    let run = mock!(Client::run_instances).then_output(|| RunInstancesOutput::builder().build());
    let ec2 = backend(&[&describe, &waited, &terminate, &run]);
    // Generation 2 runs already: only generation 1 goes.
    ec2.start(&launch(ws, 2)).await.unwrap();
    assert_eq!(*terminated.lock().unwrap(), ["i-old"]);
    assert_eq!(run.num_calls(), 0, "a retried start launches nothing");

    // A stale owner's start of generation 1 sees generation 2: refused,
    // nothing terminated, nothing launched.
    terminated.lock().unwrap().clear();
    let stale = ec2.start(&launch(ws, 1)).await.unwrap_err();
    assert!(matches!(stale, BackendError::Superseded { .. }), "{stale}");
    assert!(terminated.lock().unwrap().is_empty());
    assert_eq!(run.num_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stop_terminates_through_its_generation_and_keeps_newer_ones() {
    let ws = WorkspaceId::new();
    let (describe, waited, terminate, terminated) = account(vec![
        instance("i-old", ws, 1, InstanceStateName::Running),
        instance("i-cur", ws, 2, InstanceStateName::Running),
        // A cycle that began after the caller read the database.
        instance("i-newer", ws, 3, InstanceStateName::Pending),
    ]);
    backend(&[&describe, &waited, &terminate])
        .stop(ws, Generation(2), Halt::Force)
        .await
        .unwrap();
    let mut gone = terminated.lock().unwrap().clone();
    gone.sort();
    assert_eq!(gone, ["i-cur", "i-old"]);
}

#[tokio::test]
async fn the_inventory_lists_managed_instances_of_every_workspace() {
    let (a, b) = (WorkspaceId::new(), WorkspaceId::new());
    let listed = mock!(Client::describe_instances)
        .match_requests(|input| {
            input
                .filters()
                .iter()
                .any(|f| f.name() == Some("tag-key") && f.values() == [TAG_MANAGED])
        })
        .then_output(move || {
            described(vec![
                instance("i-a", a, 1, InstanceStateName::Pending),
                instance("i-b", b, 4, InstanceStateName::Running),
            ])
        });
    let mut found = backend(&[&listed]).inventory().await.unwrap();
    found.sort_by_key(|i| i.generation);
    assert_eq!(
        found,
        [
            InstanceRef {
                workspace: a,
                generation: Some(Generation(1)),
                phase: InstancePhase::Pending
            },
            InstanceRef {
                workspace: b,
                generation: Some(Generation(4)),
                phase: InstancePhase::Running
            },
        ]
    );
}

#[test]
fn admission_refuses_a_config_whose_user_data_cannot_fit() {
    let ec2 = backend(&[]);
    let mut footprint = launch(WorkspaceId::new(), 1).footprint();
    assert_eq!(ec2.admits(&footprint), Ok(()));
    footprint.files += 1;
    footprint.file_bytes += 13 * 1024;
    let refused = ec2.admits(&footprint).unwrap_err();
    assert_eq!(refused.limit, "ec2.user_data_bytes");
    assert_eq!(refused.max, 16384);
    assert!(refused.to_string().contains("ec2.user_data_bytes"));
}

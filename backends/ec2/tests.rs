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
    types::{InstanceState as Ec2State, Reservation},
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
    tokio::time::timeout(Duration::from_secs(60), ec2.stop(ws))
        .await
        .expect("stop finished")
        .unwrap();
    assert_eq!(terminate.num_calls(), 2, "throttled once, retried");
    assert!(
        describe.num_calls() >= 5,
        "listed, then waited until terminated"
    );
}

#[tokio::test]
async fn strays_of_older_generations_are_terminated_current_and_newer_kept() {
    let ws = WorkspaceId::new();
    let describe = mock!(Client::describe_instances)
        .sequence()
        .output(move || {
            described(vec![
                instance("i-old", ws, 1, InstanceStateName::Running),
                instance("i-new", ws, 2, InstanceStateName::Running),
                // A cycle that began after the caller read the database.
                instance("i-newer", ws, 3, InstanceStateName::Pending),
            ])
        })
        .output(move || {
            described(vec![instance(
                "i-old",
                ws,
                1,
                InstanceStateName::Terminated,
            )])
        })
        .build();
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
    let removed = backend(&[&describe, &terminate])
        .remove_strays(ws, Generation(2))
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(*terminated.lock().unwrap(), ["i-old"]);
}

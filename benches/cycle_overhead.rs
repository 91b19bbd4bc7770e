//! What the control plane adds to a cycle, against what the backend itself
//! takes: every restart is timed from the caller's request to its `online`
//! event, and split into the backend's own stop and start calls (timed
//! inside the backend), the agent's boot until it registered, and the rest —
//! the control plane's share (admission, gate, config read, fenced writes,
//! events). For Docker, the engine's own stop+remove and create+start of the
//! same image, driven directly, is measured alongside.
//!
//!   cargo bench --bench cycle_overhead            (CYCLES=20 by default)

mod support;

use std::{collections::HashMap, sync::Arc, time::Duration};

use bollard::{
    Docker,
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{
        CreateContainerOptions, RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
    },
};
use futures::StreamExt;
use support::{histogram, record, summary};
use test_support::{counted::Counted, workspace};
use workspace_backends::{
    Backend,
    docker::{DockerBackend, DockerConfig},
};
use workspace_lifecycle::{proto as pb, server::Parts};

const IMAGE: &str = "workspace-agent:latest";

fn ts(t: &prost_types::Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap()
}

async fn measure<B: Backend>(
    label: &str,
    backend: Arc<Counted<B>>,
    kind: pb::BackendKind,
    cycles: usize,
) {
    let admin = support::admin_url(40).await;
    let url = support::fresh_database(&admin).await;
    let dir = tempfile::tempdir().unwrap();
    let args = support::args(&url, dir.path());
    let bench = support::serve(
        &args,
        Parts {
            backends: vec![backend.clone()],
            ..Parts::default()
        },
    )
    .await;
    let mut client = bench.client.clone();
    let id = workspace::create(&client, workspace::create_request("bench", kind)).await;
    workspace::wait_until(&client, &id, Duration::from_secs(60), workspace::is_online).await;

    let (mut total, mut stop, mut start, mut boot, mut overhead) = (
        histogram(),
        histogram(),
        histogram(),
        histogram(),
        histogram(),
    );
    // The control plane's share, hop by hop (wall clock; the server runs in
    // this process, so its timestamps and ours share one clock).
    let (mut to_started, mut to_stop, mut between, mut to_ended, mut to_caller) = (
        histogram(),
        histogram(),
        histogram(),
        histogram(),
        histogram(),
    );
    let gap = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
        (to - from).to_std().unwrap_or_default()
    };
    for _ in 0..cycles {
        let asked = chrono::Utc::now();
        let began = tokio::time::Instant::now();
        let mut stream = client
            .restart_workspace(pb::RestartWorkspaceRequest {
                workspace_id: id.clone(),
                trigger: pb::Trigger::Manual as i32,
                reason: "bench".into(),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut online = false;
        let mut cycle_id = String::new();
        let mut told = chrono::Utc::now();
        while let Some(event) = stream.next().await {
            match event.unwrap().event {
                Some(pb::restart_event::Event::Online(_)) => {
                    told = chrono::Utc::now();
                    online = true;
                }
                Some(pb::restart_event::Event::Accepted(accepted)) => cycle_id = accepted.cycle_id,
                _ => {}
            }
        }
        let took = began.elapsed();
        assert!(online, "a cycle failed during the benchmark");
        let stop_call = backend.last_stop().unwrap();
        let start_call = backend.last_start().unwrap();
        let agent = workspace::get(&client, &id).await.agent.unwrap();
        let registered = ts(agent.registered_at.as_ref().unwrap());
        let booted = (registered - start_call.ended).to_std().unwrap_or_default();
        let backend_time = stop_call.took + start_call.took;
        record(&mut total, took);
        record(&mut stop, stop_call.took);
        record(&mut start, start_call.took);
        record(&mut boot, booted);
        record(&mut overhead, took.saturating_sub(backend_time + booted));
        let cycle = workspace::cycles(&client, &id)
            .await
            .into_iter()
            .find(|c| c.id == cycle_id);
        if let Some(cycle) = cycle {
            let started = ts(cycle.started_at.as_ref().unwrap());
            let ended = ts(cycle.ended_at.as_ref().unwrap());
            let stop_began =
                stop_call.ended - chrono::Duration::from_std(stop_call.took).unwrap_or_default();
            let start_began =
                start_call.ended - chrono::Duration::from_std(start_call.took).unwrap_or_default();
            record(&mut to_started, gap(asked, started));
            record(&mut to_stop, gap(started, stop_began));
            record(&mut between, gap(stop_call.ended, start_began));
            record(&mut to_ended, gap(registered, ended));
            record(&mut to_caller, gap(ended, told));
        }
    }
    let share = overhead.value_at_quantile(0.5) as f64
        / (stop.value_at_quantile(0.5) + start.value_at_quantile(0.5)).max(1) as f64;
    println!("\n{label}: {cycles} restarts of one workspace");
    println!("  cycle, request → online   {}", summary(&total));
    println!("  backend stop              {}", summary(&stop));
    println!("  backend start             {}", summary(&start));
    println!("  agent boot → registered   {}", summary(&boot));
    println!("  control plane (the rest)  {}", summary(&overhead));
    println!(
        "  control plane / backend stop+start at p50: {:.1}%",
        share * 100.0
    );
    println!("  control plane, hop by hop:");
    println!("    request → cycle started   {}", summary(&to_started));
    println!("    cycle started → stop      {}", summary(&to_stop));
    println!("    stop done → start called  {}", summary(&between));
    println!("    registered → cycle ended  {}", summary(&to_ended));
    println!("    cycle ended → caller told {}", summary(&to_caller));
    let _ = client
        .delete_workspace(pb::DeleteWorkspaceRequest {
            workspace_id: id,
            reason: String::new(),
            request_id: String::new(),
        })
        .await
        .map(|r| r.into_inner());
    bench.running.shutdown().await;
}

/// The engine's own stop+remove and create+start of the agent image.
async fn docker_direct(docker: &Docker, cycles: usize) {
    let (mut down, mut up) = (histogram(), histogram());
    let name = format!("wl-bench-{}", uuid::Uuid::new_v4().simple());
    let body = || ContainerCreateBody {
        image: Some(IMAGE.into()),
        // The agent keeps retrying a closed port: a live process to stop.
        env: Some(vec![
            "WL_SERVICE_URL=http://127.0.0.1:9".into(),
            "WL_AGENT_TOKEN=bench".into(),
            "WL_CONFIG_VERSION=1".into(),
        ]),
        labels: Some(HashMap::from([("wl.bench".to_owned(), "1".to_owned())])),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let create_and_start = || async {
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    platform: String::new(),
                }),
                body(),
            )
            .await
            .unwrap();
        docker
            .start_container(&name, None::<StartContainerOptions>)
            .await
            .unwrap();
    };
    create_and_start().await;
    for _ in 0..cycles {
        let began = tokio::time::Instant::now();
        docker
            .stop_container(
                &name,
                Some(StopContainerOptions {
                    t: Some(5),
                    signal: None,
                }),
            )
            .await
            .unwrap();
        docker
            .remove_container(
                &name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
            .unwrap();
        record(&mut down, began.elapsed());
        let began = tokio::time::Instant::now();
        create_and_start().await;
        record(&mut up, began.elapsed());
    }
    let _ = docker
        .remove_container(
            &name,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    println!("\ndocker engine directly (same image, no control plane): {cycles} cycles");
    println!("  stop + remove             {}", summary(&down));
    println!("  create + start            {}", summary(&up));
}

#[tokio::main]
async fn main() {
    let cycles: usize = std::env::var("CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(20);
    println!("# cycle overhead — {}", support::command("cycle_overhead"));
    println!("# machine: {}", support::machine());

    let dir = test_support::agent_reachable_tempdir();
    let process = support::process_backend(dir.path()).await;
    measure(
        "process backend",
        Counted::new(process),
        pb::BackendKind::Process,
        cycles,
    )
    .await;

    match DockerBackend::connect(DockerConfig {
        default_image: IMAGE.into(),
        network_mode: Some("host".into()),
        stop_grace: Duration::from_secs(5),
        ..DockerConfig::default()
    })
    .await
    {
        Ok(docker_backend) => {
            measure(
                "docker backend",
                Counted::new(docker_backend),
                pb::BackendKind::Docker,
                cycles,
            )
            .await;
            let docker = Docker::connect_with_defaults().unwrap();
            docker_direct(&docker, cycles).await;
        }
        Err(err) => println!("\ndocker backend: not measured ({err})"),
    }
}

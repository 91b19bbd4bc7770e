//! Reads as history grows: ListWorkspaces, GetWorkspace and ListCycles'
//! first page, timed at checkpoints while the listed workspaces' cycles
//! pile up to `HISTORY` generations in all. A read that touched every
//! generation (the soak saw ListWorkspaces' p50 go 2.1 → 4.9 ms
//! over 3,600) shows as a slope; reads bounded by the page stay flat. The
//! backend is the counting fake, so history grows at the control plane's
//! own pace.
//!
//!   cargo bench --bench read_history     (HISTORY=3600, WORKSPACES=20, READS=300)

mod support;

use std::time::Duration;

use futures::future::join_all;
use hdrhistogram::Histogram;
use support::{histogram, record, summary};
use test_support::{fake_backend::FakeBackend, workspace};
use workspace_backends::BackendKind;
use workspace_lifecycle::{auth::client::LifecycleClient, proto as pb, server::Parts};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One restart of `id`, followed to its last event.
async fn restart(client: &LifecycleClient, id: &str) {
    let mut stream = client
        .clone()
        .restart_workspace(pb::RestartWorkspaceRequest {
            workspace_id: id.into(),
            trigger: pb::Trigger::Manual as i32,
            reason: "history".into(),
            request_id: String::new(),
        })
        .await
        .expect("RestartWorkspace")
        .into_inner();
    let mut last = None;
    while let Some(event) = stream.message().await.expect("restart stream") {
        last = event.event;
    }
    assert!(
        matches!(last, Some(pb::restart_event::Event::Online(_))),
        "a restart did not end online: {last:?}"
    );
}

/// `reads` sequential calls of each read, one histogram per read.
async fn measure(client: &LifecycleClient, ids: &[String], reads: usize) -> [Histogram<u64>; 3] {
    let (mut list, mut get, mut cycles) = (histogram(), histogram(), histogram());
    for i in 0..reads {
        let began = tokio::time::Instant::now();
        let page = client
            .clone()
            .list_workspaces(pb::ListWorkspacesRequest {
                page_size: ids.len() as u32,
                page_token: String::new(),
                include_deleted: false,
            })
            .await
            .expect("ListWorkspaces")
            .into_inner();
        record(&mut list, began.elapsed());
        assert_eq!(page.workspaces.len(), ids.len());

        let id = &ids[i % ids.len()];
        let began = tokio::time::Instant::now();
        workspace::get(client, id).await;
        record(&mut get, began.elapsed());

        let began = tokio::time::Instant::now();
        client
            .clone()
            .list_cycles(pb::ListCyclesRequest {
                workspace_id: id.clone(),
                page_size: 20,
                page_token: String::new(),
            })
            .await
            .expect("ListCycles");
        record(&mut cycles, began.elapsed());
    }
    [list, get, cycles]
}

/// Least-squares slope of p50 (ms) per 1,000 generations.
fn slope(points: &[(usize, f64)]) -> f64 {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0 as f64).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = points.iter().map(|p| (p.0 as f64 - mx) * (p.1 - my)).sum();
    let den: f64 = points.iter().map(|p| (p.0 as f64 - mx).powi(2)).sum();
    if den == 0.0 { 0.0 } else { num / den * 1000.0 }
}

#[tokio::main]
async fn main() {
    let history = env("HISTORY", 3_600);
    let count = env("WORKSPACES", 20);
    let reads = env("READS", 300);
    println!("# read_history: {}", support::machine());
    println!("# {}", support::command("read_history"));

    let admin = support::admin_url(40).await;
    let url = support::fresh_database(&admin).await;
    let dir = tempfile::tempdir().unwrap();
    let args = support::args(&url, dir.path());
    let fake = FakeBackend::new(BackendKind::Process);
    let bench = support::serve(
        &args,
        Parts {
            backends: vec![fake.clone()],
            ..Parts::default()
        },
    )
    .await;
    let client = bench.client.clone();
    let mut ids = Vec::new();
    for i in 0..count {
        let request = workspace::create_request(&format!("history-{i}"), pb::BackendKind::Process);
        ids.push(workspace::create(&client, request).await);
    }
    workspace::wait_online(&client, &ids, Duration::from_secs(60)).await;

    let checkpoints = 6;
    let per_checkpoint = history.div_ceil(checkpoints * count).max(1);
    let mut generations = count;
    let mut p50s: [Vec<(usize, f64)>; 3] = Default::default();
    let names = [
        "ListWorkspaces (page of all)",
        "GetWorkspace",
        "ListCycles (first 20)",
    ];
    println!("generations  read                          latency");
    for checkpoint in 0..=checkpoints {
        let measured = measure(&client, &ids, reads).await;
        for (i, h) in measured.iter().enumerate() {
            println!("{generations:>11}  {:<28}  {}", names[i], summary(h));
            p50s[i].push((generations, h.value_at_quantile(0.5) as f64 / 1000.0));
        }
        if checkpoint == checkpoints {
            break;
        }
        let began = tokio::time::Instant::now();
        for _ in 0..per_checkpoint {
            join_all(ids.iter().map(|id| restart(&client, id))).await;
        }
        generations += per_checkpoint * count;
        println!(
            "# {} cycles in {:.1} s",
            per_checkpoint * count,
            began.elapsed().as_secs_f64()
        );
    }
    for (i, points) in p50s.iter().enumerate() {
        let first = points.first().unwrap().1;
        let last = points.last().unwrap().1;
        println!(
            "{:<28}  p50 {first:.2} -> {last:.2} ms over {generations} generations, slope {:+.3} ms per 1,000",
            names[i],
            slope(points)
        );
    }
    bench.running.shutdown().await;
}

//! C16 and operability, judged from outside: the server binary runs as
//! operators run it (configured by `OTEL_*` variables, JSON logs, a
//! Prometheus port), an OTLP collector on loopback receives what it
//! exports, and the tests assert on what arrived — traces, metrics, logs —
//! and that no secret value is anywhere in it.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    time::Duration,
};

use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};
use tonic::Request;
use workspace_lifecycle::{
    auth::client::LifecycleClient,
    proto::{self as pb, report_unreachable_response::Outcome, restart_event::Event},
};

use crate::support::{
    TestDb, bounded, free_port,
    otlp::{Collector, attr, hex},
    server_process::{ServerProcess, slow_agent},
    workspace,
};

/// Known secret values, searched for in everything the service emits.
const SECRETS: [(&str, &str); 2] = [
    ("API_KEY", "sk-live-7Qv9TOPSECRET-c0ffee"),
    ("DB_PASSWORD", "hunter2-Zz8-NEVER-LOGGED"),
];

/// One server process with telemetry configured by the environment.
struct Server {
    process: ServerProcess,
    metrics: String,
}

impl Server {
    async fn start(db: &TestDb, dir: &Path, otel: &[(&str, &str)]) -> Self {
        let metrics = format!("127.0.0.1:{}", free_port());
        let agent = slow_agent(dir);
        let process = ServerProcess::start(dir, "server", |command| {
            command
                .args(["--metrics-listen", &metrics])
                .args(["--database-url", &db.url])
                .args(["--log-format", "json", "--agent-command", &agent])
                .args(["--debounce-window", "5s", "--provision-deadline", "20s"])
                .args(["--sweep-interval", "100ms", "--reconcile-interval", "1h"])
                .args(["--heartbeat-interval", "1s", "--stop-grace", "2s"])
                .env("OTEL_SERVICE_NAME", "wl-telemetry-test")
                .envs(otel.iter().copied());
        })
        .await;
        Self { process, metrics }
    }

    async fn client(&self) -> LifecycleClient {
        self.process.client().await
    }

    /// `GET /metrics`, by hand over a TCP stream (HTTP/1.0, one request).
    async fn scrape(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.metrics).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"));
        text
    }

    /// SIGTERM, then wait for the process to exit; returns its log.
    async fn terminate(mut self) -> String {
        let pid = self.process.child.id().unwrap() as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = bounded("the server exits", self.process.child.wait())
            .await
            .unwrap();
        assert!(status.success(), "{status:?}");
        std::fs::read_to_string(&self.process.log).unwrap()
    }

    fn rss_kib(&self) -> u64 {
        let pid = self.process.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

/// A caller's W3C context: (trace id, span id, traceparent header).
fn caller(n: u8) -> (String, String, String) {
    let trace = format!(
        "{:032x}",
        0xabc0_0000_0000_0000_0000_0000_0000_0000u128 + n as u128
    );
    let span = format!("{:016x}", 0x5150_0000_0000_0000u64 + n as u64);
    let header = format!("00-{trace}-{span}-01");
    (trace, span, header)
}

fn traced<T>(message: T, traceparent: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

async fn create(c: &mut LifecycleClient, name: &str, command: &[&str]) -> String {
    let spec = pb::WorkspaceSpec {
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let request = pb::CreateWorkspaceRequest {
        spec: Some(spec),
        ..workspace::create_request(name, pb::BackendKind::Process)
    };
    workspace::create(c, request).await
}

/// Waits until `ws` is in `status` with no cycle running or pending.
async fn settled(c: &mut LifecycleClient, ws: &str, status: pb::WorkspaceStatus) -> pb::Workspace {
    workspace::settled(c, ws, workspace::idle_in(status)).await
}

async fn first_event(
    c: &mut LifecycleClient,
    ws: &str,
    traceparent: &str,
) -> (Event, tonic::Streaming<pb::RestartEvent>) {
    let mut stream = c
        .restart_workspace(traced(
            pb::RestartWorkspaceRequest {
                workspace_id: ws.into(),
                trigger: pb::Trigger::Manual as i32,
                reason: "telemetry test".into(),
                request_id: String::new(),
            },
            traceparent,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap().event.unwrap();
    (first, stream)
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
        .collect()
}

fn event_names(span: &Span) -> Vec<&str> {
    span.events.iter().map(|e| e.name.as_str()).collect()
}

fn assert_no_secret(what: &str, haystack: &[u8]) {
    for (_, value) in SECRETS {
        assert!(
            !haystack.windows(value.len()).any(|w| w == value.as_bytes()),
            "a secret value appears in {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cycle_is_one_trace_with_phases_events_and_the_callers_context() {
    let collector = Collector::start().await;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    // Nothing is exported before shutdown (a 60 s batch delay): what the
    // collector holds at the end was flushed by the graceful shutdown.
    let server = Server::start(
        &db,
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint().as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "60000"),
        ],
    )
    .await;
    let mut c = server.client().await;
    let mut responses = Vec::<String>::new();

    // A workspace with two secrets, delivered by a CONFIG_CHANGED cycle.
    let ws = create(&mut c, "traced", &[]).await;
    settled(&mut c, &ws, pb::WorkspaceStatus::Online).await;
    for (name, value) in SECRETS {
        let answer = c
            .set_secret(pb::SetSecretRequest {
                workspace_id: ws.clone(),
                name: name.into(),
                value: value.into(),
                request_id: String::new(),
            })
            .await
            .unwrap();
        responses.push(format!("{answer:?}"));
    }
    bounded("the secrets are delivered", async {
        loop {
            let w = settled(&mut c, &ws, pb::WorkspaceStatus::Online).await;
            if w.agent
                .as_ref()
                .is_some_and(|a| a.config_version == w.config_version)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // A restart (accepted: cycle 1), then two more while it runs: both
    // coalesce into one follow-up (cycle 2), opened by the first of them.
    let (a, b, d) = (caller(1), caller(2), caller(3));
    let (accepted, _a_stream) = first_event(&mut c, &ws, &a.2).await;
    let Event::Accepted(accepted) = accepted else {
        panic!("{accepted:?}")
    };
    let (joined_b, _b_stream) = first_event(&mut c, &ws, &b.2).await;
    let (joined_d, _d_stream) = first_event(&mut c, &ws, &d.2).await;
    let (Event::Coalesced(joined_b), Event::Coalesced(joined_d)) = (joined_b, joined_d) else {
        panic!("both join the follow-up")
    };
    assert_eq!(joined_b.cycle_id, joined_d.cycle_id);
    let follow_up = joined_b.cycle_id.clone();

    // A probe while the follow-up runs is dropped; one after it, inside the
    // debounce window, is debounced.
    bounded("the follow-up runs", async {
        loop {
            let w = c
                .get_workspace(pb::GetWorkspaceRequest {
                    workspace_id: ws.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            if w.running_cycle_id == follow_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let probe = |c: &mut LifecycleClient| {
        let mut c = c.clone();
        let ws = ws.clone();
        async move {
            c.report_unreachable(traced(
                pb::ReportUnreachableRequest {
                    workspace_id: ws,
                    detail: "probe".into(),
                },
                &caller(9).2,
            ))
            .await
            .unwrap()
            .into_inner()
        }
    };
    let in_flight = probe(&mut c).await;
    assert_eq!(in_flight.outcome(), Outcome::DroppedCycleInFlight);
    settled(&mut c, &ws, pb::WorkspaceStatus::Online).await;
    let debounced = probe(&mut c).await;
    assert_eq!(
        debounced.outcome(),
        Outcome::DroppedDebounced,
        "{debounced:?}"
    );

    // A workspace whose instance exits at once: its cycle fails.
    let broken = create(&mut c, "broken", &["/bin/false"]).await;
    settled(&mut c, &broken, pb::WorkspaceStatus::Failed).await;

    let prometheus = server.scrape().await;
    let logs = server.terminate().await;

    // --- What the collector received -----------------------------------
    let spans = collector.spans();
    let cycles = named(&spans, "cycle");
    let by_id: HashMap<String, &Span> = cycles
        .iter()
        .map(|s| (attr(&s.attributes, "cycle.id").unwrap(), *s))
        .collect();
    // create, config change, restart, follow-up; the broken create.
    assert_eq!(cycles.len(), 5, "{:?}", by_id.keys());
    // One trace per cycle, and no trace that is not a cycle's.
    let traces: HashSet<&[u8]> = cycles.iter().map(|s| s.trace_id.as_slice()).collect();
    assert_eq!(traces.len(), cycles.len());
    for span in &spans {
        assert!(
            traces.contains(span.trace_id.as_slice()),
            "span {:?} is in no cycle's trace",
            span.name
        );
    }

    // The restart: in the caller's trace, under the caller's span.
    let first = by_id[&accepted.cycle_id];
    assert_eq!(hex(&first.trace_id), a.0);
    assert_eq!(hex(&first.parent_span_id), a.1);
    assert_eq!(attr(&first.attributes, "workspace.id").unwrap(), ws);
    assert_eq!(attr(&first.attributes, "cycle.goal").unwrap(), "provision");
    assert_eq!(
        attr(&first.attributes, "cycle.generation").unwrap(),
        accepted.generation.to_string()
    );
    assert_eq!(attr(&first.attributes, "cycle.triggers").unwrap(), "MANUAL");
    assert_eq!(
        attr(&first.attributes, "cycle.outcome").unwrap(),
        "SUCCEEDED"
    );
    assert!(attr(&first.attributes, "config.version").is_some());
    assert_eq!(
        first.status.as_ref().unwrap().code(),
        StatusCode::Ok,
        "{:?}",
        first.status
    );
    // Its phases, in order, and the backend's calls under them.
    let mut phases: Vec<&Span> = children(&spans, first)
        .into_iter()
        .filter(|s| s.name != "request")
        .collect();
    phases.sort_by_key(|s| s.start_time_unix_nano);
    let names: Vec<&str> = phases.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["gate_wait", "stop", "provision", "wait_for_agent"]);
    for phase in &phases {
        assert!(phase.start_time_unix_nano >= first.start_time_unix_nano);
        assert!(phase.end_time_unix_nano <= first.end_time_unix_nano);
    }
    let stop_calls: Vec<&str> = children(&spans, phases[1])
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(stop_calls, ["stop process"]);
    let start_calls: Vec<&str> = children(&spans, phases[2])
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(start_calls, ["spawn process"]);
    // The request that opened it, linked to its caller.
    let requests = children(&spans, first)
        .into_iter()
        .filter(|s| s.name == "request")
        .collect::<Vec<_>>();
    assert_eq!(requests.len(), 1);
    assert_eq!(event_names(requests[0]), ["accepted"]);
    assert_eq!(hex(&requests[0].links[0].span_id), a.1);

    // The follow-up: opened by B's request (so in B's trace), joined by
    // D's; both appear as `coalesced` events, each linked to its caller.
    let second = by_id[&follow_up];
    assert_eq!(hex(&second.trace_id), b.0);
    assert_eq!(hex(&second.parent_span_id), b.1);
    let second_requests: Vec<&Span> = children(&spans, second)
        .into_iter()
        .filter(|s| s.name == "request")
        .collect();
    let mut coalesced: Vec<String> = second_requests
        .iter()
        .filter(|s| event_names(s) == ["coalesced"])
        .map(|s| hex(&s.links[0].span_id))
        .collect();
    coalesced.sort();
    assert_eq!(coalesced, [b.1.clone(), d.1.clone()]);
    let dropped: Vec<&&Span> = second_requests
        .iter()
        .filter(|s| event_names(s) == ["dropped"])
        .collect();
    assert_eq!(dropped.len(), 1, "the in-flight probe");
    let reason = attr(&dropped[0].events[0].attributes, "reason").unwrap();
    assert!(reason.contains("in flight"), "{reason}");
    assert_eq!(
        second_requests
            .iter()
            .filter(|s| event_names(s) == ["debounced"])
            .count(),
        1,
        "the probe after the follow-up"
    );
    assert_eq!(attr(&second.attributes, "cycle.requests").unwrap(), "2");

    // The failing cycle: an error status with the reason.
    let failed: Vec<&&Span> = cycles
        .iter()
        .filter(|s| attr(&s.attributes, "workspace.id").as_deref() == Some(broken.as_str()))
        .collect();
    assert_eq!(failed.len(), 1);
    let status = failed[0].status.as_ref().unwrap();
    assert_eq!(status.code(), StatusCode::Error);
    assert!(
        status.message.contains("ended before its agent registered"),
        "{status:?}"
    );
    assert_eq!(
        attr(&failed[0].attributes, "cycle.outcome").unwrap(),
        "FAILED"
    );

    // --- Metrics: OTLP (flushed at shutdown) and Prometheus ------------
    let exported: HashSet<String> = collector.metric_names().into_iter().collect();
    for name in [
        "wl.requests",
        "wl.cycles",
        "wl.cycle.duration",
        "wl.cycles.in_flight",
        "wl.gate.wait",
    ] {
        assert!(exported.contains(name), "{name} not exported: {exported:?}");
    }
    // The sum over every series of `name` that has all of `labels`.
    let line = |name: &str, labels: &[&str]| {
        let values: Vec<f64> = prometheus
            .lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter(|l| labels.iter().all(|x| l.contains(x)))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .collect();
        assert!(!values.is_empty(), "no {name} {labels:?} in\n{prometheus}");
        values.iter().sum::<f64>()
    };
    assert_eq!(
        line(
            "wl_requests_total",
            &[r#"handling="coalesced""#, r#"trigger="MANUAL""#]
        ),
        2.0
    );
    assert_eq!(
        line(
            "wl_requests_total",
            &[r#"handling="debounced""#, r#"trigger="HEALTH_PROBE""#]
        ),
        1.0
    );
    assert_eq!(
        line(
            "wl_cycles_total",
            &[r#"outcome="FAILED""#, r#"trigger="CREATE""#]
        ),
        1.0
    );
    assert_eq!(
        line(
            "wl_cycles_total",
            &[r#"outcome="SUCCEEDED""#, r#"trigger="MANUAL""#]
        ),
        2.0
    );
    assert_eq!(line("wl_cycle_duration_seconds_count", &[]), 5.0);
    assert_eq!(line("wl_gate_wait_seconds_count", &[]), 5.0);
    assert_eq!(line("wl_cycles_in_flight", &[]), 0.0);

    // --- Logs: JSON lines, one per cycle outcome -------------------------
    let mut ended = Vec::new();
    for raw in logs.lines().filter(|l| l.starts_with('{')) {
        let line: serde_json::Value = serde_json::from_str(raw).expect("a JSON log line");
        if line["fields"]["message"] == "cycle ended" {
            ended.push(line["fields"]["outcome"].as_str().unwrap().to_owned());
        }
    }
    ended.sort();
    assert_eq!(
        ended,
        ["FAILED", "SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]
    );

    // --- No secret value anywhere ----------------------------------------
    assert_no_secret("the exported spans and metrics", &collector.raw());
    assert_no_secret("the Prometheus metrics", prometheus.as_bytes());
    assert_no_secret("the logs", logs.as_bytes());
    assert_no_secret("the responses", responses.concat().as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_down_restarts_complete_and_memory_stays_bounded() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    // Nobody listens there; the export queue holds at most 64 spans.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let server = Server::start(
        &db,
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", nowhere.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    )
    .await;
    let mut c = server.client().await;
    let ws = create(&mut c, "offline", &[]).await;
    settled(&mut c, &ws, pb::WorkspaceStatus::Online).await;

    // Each dropped probe produces a span the exporter cannot deliver.
    let probes = |n: usize| {
        let c = c.clone();
        let ws = ws.clone();
        async move {
            let sent = futures::future::join_all((0..16).map(|_| {
                let mut c = c.clone();
                let ws = ws.clone();
                async move {
                    for _ in 0..n / 16 {
                        c.report_unreachable(pb::ReportUnreachableRequest {
                            workspace_id: ws.clone(),
                            detail: "probe with a long detail to make each span larger".repeat(4),
                        })
                        .await
                        .unwrap();
                    }
                }
            }));
            bounded("the probes are answered", sent).await;
        }
    };
    probes(320).await;
    let warm = server.rss_kib();
    probes(2_560).await;
    let after = server.rss_kib();
    eprintln!("RSS after 320 probes: {warm} KiB; after 2560 more: {after} KiB");
    assert!(
        after < warm + 8 * 1024,
        "memory grew by {} KiB with the collector down",
        after - warm
    );

    // Restarts still complete (this one may join a cycle a probe started
    // once the debounce window had passed).
    let (first, mut stream) = first_event(&mut c, &ws, &caller(1).2).await;
    assert!(
        matches!(first, Event::Accepted(_) | Event::Coalesced(_)),
        "{first:?}"
    );
    let online = bounded("the restart completes", async {
        while let Some(event) = stream.message().await.unwrap() {
            if let Some(Event::Online(online)) = event.event {
                return online;
            }
        }
        panic!("the stream ended before ONLINE")
    })
    .await;
    assert!(online.generation >= 2, "{online:?}");

    // The queue's bound was what held memory: spans were dropped, and the
    // shutdown says how many.
    let logs = server.terminate().await;
    let dropped: u64 = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|l| l["fields"]["dropped_span_count"].as_u64())
        .sum();
    assert!(dropped > 1_000, "{dropped} spans dropped");
}

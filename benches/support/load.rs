//! Load from outside the process: h2load sending one gRPC unary call over
//! h2c (a framed request body, the gRPC headers), and pgbench running a
//! script — each run with a fixed count, timed by the wall clock from
//! spawning the first process to the last one's exit, bounded in time.

use std::{path::Path, process::Stdio, time::Duration};

use tokio::{process::Command, time::Instant};

/// The gRPC wire framing of one message: not compressed, 4-byte big-endian
/// length, the protobuf bytes.
pub fn grpc_frame(message: &impl prost::Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let mut framed = Vec::with_capacity(bytes.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    framed.extend_from_slice(&bytes);
    framed
}

/// One h2load process: `requests` calls to `url` from `clients`
/// connections, one stream each, posting the body in `body`.
pub struct H2load<'a> {
    pub url: String,
    pub body: &'a Path,
    pub token: &'a str,
    pub clients: usize,
    pub requests: usize,
}

/// What h2load processes reported, summed.
#[derive(Debug, Default, Clone, Copy)]
pub struct H2Outcome {
    pub succeeded: usize,
    pub failed: usize,
    pub status_2xx: usize,
}

/// What a run took and did.
pub struct Run<T> {
    pub took: Duration,
    pub outcome: T,
    pub errors: Vec<String>,
}

impl<T> Run<T> {
    pub fn per_s(&self, n: usize) -> f64 {
        n as f64 / self.took.as_secs_f64()
    }
}

/// The number before `label` in h2load's "requests: 10 total, 10 started,
/// 10 done, 10 succeeded, 0 failed, …" or "status codes: 10 2xx, …".
fn count_before(line: &str, label: &str) -> usize {
    line.split(',')
        .map(str::trim)
        .find_map(|part| {
            let part = part.rsplit(':').next().unwrap_or(part).trim();
            let (n, what) = part.split_once(' ')?;
            (what == label).then(|| n.parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// Runs every h2load at once; the run ends when the last exits (at most
/// `limit`).
pub async fn h2load_all(loads: &[H2load<'_>], limit: Duration) -> Run<H2Outcome> {
    let began = Instant::now();
    let children: Vec<_> = loads
        .iter()
        .map(|load| {
            Command::new("h2load")
                .args(["-n", &load.requests.to_string()])
                .args(["-c", &load.clients.to_string(), "-m", "1", "-t", "1"])
                .arg("-d")
                .arg(load.body)
                .args(["-H", "content-type: application/grpc"])
                .args(["-H", "te: trailers"])
                .args(["-H", &format!("authorization: Bearer {}", load.token)])
                .arg(&load.url)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("h2load runs (apt-get install nghttp2-client)")
        })
        .collect();
    let outputs = tokio::time::timeout(
        limit,
        futures::future::join_all(children.into_iter().map(|c| c.wait_with_output())),
    )
    .await;
    let took = began.elapsed();
    let mut run = Run {
        took,
        outcome: H2Outcome::default(),
        errors: Vec::new(),
    };
    let Ok(outputs) = outputs else {
        run.errors
            .push(format!("h2load did not finish within {limit:?}"));
        return run;
    };
    for output in outputs {
        let output = output.expect("h2load output");
        let text = String::from_utf8_lossy(&output.stdout);
        for line in text.lines() {
            if line.starts_with("requests:") {
                run.outcome.succeeded += count_before(line, "succeeded");
                run.outcome.failed += count_before(line, "failed") + count_before(line, "errored");
            } else if line.starts_with("status codes:") {
                run.outcome.status_2xx += count_before(line, "2xx");
            }
        }
        if !output.status.success() {
            run.errors.push(format!(
                "h2load exited {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    run
}

/// pgbench from `clients` connections, `per_client` transactions each,
/// running `script` (prepared statements, no vacuum). The outcome is the
/// number of transactions it reports processed.
pub async fn pgbench(
    bin: &Path,
    conn: &[String],
    database: &str,
    script: &Path,
    clients: usize,
    per_client: usize,
    limit: Duration,
) -> Run<usize> {
    let began = Instant::now();
    let child = Command::new(bin.join("pgbench"))
        .args(conn)
        .args(["-n", "-M", "prepared", "-j", "1"])
        .args(["-c", &clients.to_string(), "-t", &per_client.to_string()])
        .arg("-f")
        .arg(script)
        .arg(database)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("pgbench runs");
    let output = tokio::time::timeout(limit, child.wait_with_output()).await;
    let took = began.elapsed();
    let mut run = Run {
        took,
        outcome: 0,
        errors: Vec::new(),
    };
    let Ok(output) = output else {
        run.errors
            .push(format!("pgbench did not finish within {limit:?}"));
        return run;
    };
    let output = output.expect("pgbench output");
    let text = String::from_utf8_lossy(&output.stdout);
    // "number of transactions actually processed: 20000/20000"
    run.outcome = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    if !output.status.success() {
        run.errors.push(format!(
            "pgbench exited {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    run
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

//! What the keyed middleware (debounce → coalesce → gate, per-key lanes in
//! `KeyedSlots`) adds to a request, against the bare inner service: one
//! caller, one request at a time, each timed; at 1 key (every request the
//! same workspace), at 1,000,000 distinct keys (each touched once: a lane
//! made and evicted per request), and at 1,000,000 keys resident (a million
//! requests parked in admission, each holding its lane, while the timed
//! requests run on other keys). The Postgres-backed decisions are replaced
//! by fakes that answer at once (see benches/support/stack.rs).
//!
//!   cargo bench --bench keyed_overhead          (KEYED_REQUESTS=1000000 by default)

mod support;

// The server binary's allocator and runtime (services/allocator.rs): the
// stack allocates per request, so the overhead is measured as the server
// would pay it.
workspace_lifecycle::server_allocator!();

use std::time::Duration;

use hdrhistogram::Histogram;
use support::stack::{self, PARK, Svc};
use tokio::time::Instant;
use workspace_lifecycle::domain::WorkspaceId;

/// Per-request latencies in nanoseconds.
fn ns_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
}

struct Run {
    mean_ns: f64,
    hist: Histogram<u64>,
}

impl Run {
    fn line(&self) -> String {
        let us = |ns: u64| ns as f64 / 1000.0;
        format!(
            "mean {:>6.2} µs  p50 {:>6.2} µs  p99 {:>7.2} µs  p99.9 {:>7.2} µs  (n={})",
            self.mean_ns / 1000.0,
            us(self.hist.value_at_quantile(0.5)),
            us(self.hist.value_at_quantile(0.99)),
            us(self.hist.value_at_quantile(0.999)),
            self.hist.len()
        )
    }
}

async fn run(svc: &Svc, n: u64, key: impl Fn(u64) -> WorkspaceId) -> Run {
    for i in 0..10_000 {
        stack::call(svc, key(i), "warm-up").await;
    }
    let mut hist = ns_histogram();
    let began = Instant::now();
    for i in 0..n {
        let k = key(i);
        let t = Instant::now();
        stack::call(svc, k, "bench").await;
        hist.saturating_record(t.elapsed().as_nanos().max(1) as u64);
    }
    Run {
        mean_ns: began.elapsed().as_nanos() as f64 / n as f64,
        hist,
    }
}

fn added(stack: &Run, bare: &Run) -> String {
    format!(
        "added: mean {:+.2} µs, p50 {:+.2} µs, p99 {:+.2} µs",
        (stack.mean_ns - bare.mean_ns) / 1000.0,
        (stack.hist.value_at_quantile(0.5) as f64 - bare.hist.value_at_quantile(0.5) as f64)
            / 1000.0,
        (stack.hist.value_at_quantile(0.99) as f64 - bare.hist.value_at_quantile(0.99) as f64)
            / 1000.0,
    )
}

fn main() {
    workspace_lifecycle::allocator::run_on_workers(measure())
        .expect("the server's runtime runs the benchmark");
}

async fn measure() {
    let n: u64 = std::env::var("KEYED_REQUESTS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1_000_000);
    println!(
        "# keyed middleware overhead — {}",
        support::command("keyed_overhead")
    );
    println!("# machine: {}", support::machine());
    let bare = stack::bare();
    let keyed = stack::keyed();
    let one = stack::key(u64::MAX >> 1);

    println!("\nkeyed stack vs bare inner service, one caller, {n} requests per row");
    let bare_one = run(&bare, n, |_| one).await;
    let keyed_one = run(&keyed.svc, n, |_| one).await;
    println!("  bare, 1 key                      {}", bare_one.line());
    println!("  keyed stack, 1 key               {}", keyed_one.line());
    println!("    {}", added(&keyed_one, &bare_one));

    let bare_many = run(&bare, n, stack::key).await;
    let keyed_many = run(&keyed.svc, n, stack::key).await;
    println!("  bare, 1,000,000 distinct keys    {}", bare_many.line());
    println!("  keyed stack, distinct keys       {}", keyed_many.line());
    println!("    {}", added(&keyed_many, &bare_many));
    println!("    live lanes after: {}", keyed.coalesce.live_lanes());

    // The same on a single-threaded runtime: the admission task the
    // coalesce layer spawns then runs on the caller's thread, so what is
    // left is the middleware's own work without cross-thread wake-ups.
    let (bare_st, keyed_st) = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let bare = stack::bare();
            let keyed = stack::keyed();
            let bare_st = run(&bare, n, stack::key).await;
            let keyed_st = run(&keyed.svc, n, stack::key).await;
            (bare_st, keyed_st)
        })
    })
    .join()
    .unwrap();
    println!("  single-threaded runtime, distinct keys:");
    println!("  bare                             {}", bare_st.line());
    println!("  keyed stack                      {}", keyed_st.line());
    println!("    {}", added(&keyed_st, &bare_st));

    // A million keys resident: requests parked in admission, lanes held.
    const RESIDENT: u64 = 1_000_000;
    let began = Instant::now();
    let parked: Vec<_> = (0..RESIDENT)
        .map(|i| {
            let svc = keyed.svc.clone();
            tokio::spawn(async move { stack::call(&svc, stack::key(10_000_000 + i), PARK).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while (keyed.coalesce.live_lanes() as u64) < RESIDENT && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resident = keyed.coalesce.live_lanes();
    println!(
        "  ({resident} lanes resident after {:.1} s of parking)",
        began.elapsed().as_secs_f64()
    );
    let keyed_resident = run(&keyed.svc, n, |i| stack::key(20_000_000 + i)).await;
    println!(
        "  keyed stack, 1,000,000 resident  {}",
        keyed_resident.line()
    );
    println!("    {}", added(&keyed_resident, &bare_many));
    keyed.parking.release();
    for task in parked {
        task.await.unwrap();
    }
    println!(
        "    live lanes after release: {}",
        keyed.coalesce.live_lanes()
    );
}

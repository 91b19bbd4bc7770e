//! What one request parked in admission holds, allocation by allocation:
//! jemalloc's live regions by size class, per parked request, with the
//! sizes of the types a parked request carries (section 3 of
//! BENCHMARKS.md: the RSS left after a million are evicted is jemalloc's
//! metadata for their peak, so it scales with this footprint).
//!
//!   cargo bench --bench parked_footprint      (FOOTPRINT_REQUESTS=100000)

mod support;

#[allow(dead_code)]
#[path = "support/jemalloc_stats.rs"]
mod jemalloc_stats;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::{collections::HashMap, time::Duration};

use support::stack::{self, PARK};
use workspace_lifecycle::{domain::change, engine::intent::Intent};

fn live_by_size() -> HashMap<usize, usize> {
    jemalloc_stats::size_classes()
        .expect("jemalloc statistics")
        .into_iter()
        .map(|c| (c.size, c.live))
        .collect()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("FOOTPRINT_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    println!(
        "# parked request footprint — {}",
        support::command("parked_footprint")
    );
    println!(
        "  size_of: Intent {} B (Change {} B, Creation {} B, Audited {} B, tracing::Span {} B)",
        size_of::<Intent>(),
        size_of::<change::Change>(),
        size_of::<change::Creation>(),
        size_of::<change::Audited>(),
        size_of::<tracing::Span>(),
    );
    let keyed = stack::keyed();
    for i in 0..1000 {
        stack::call(&keyed.svc, stack::key(i as u64), "warm-up").await;
    }
    let before = live_by_size();
    let parked: Vec<_> = (0..n)
        .map(|i| {
            let svc = keyed.svc.clone();
            tokio::spawn(
                async move { stack::call(&svc, stack::key(10_000_000 + i as u64), PARK).await },
            )
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while keyed.coalesce.live_lanes() < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = live_by_size();
    let mut rows: Vec<(usize, f64)> = after
        .iter()
        .map(|(&size, &live)| {
            let was = before.get(&size).copied().unwrap_or(0);
            (size, (live as f64 - was as f64) / n as f64)
        })
        .filter(|(_, per)| *per >= 0.5)
        .collect();
    rows.sort_by(|a, b| (b.0 as f64 * b.1).total_cmp(&(a.0 as f64 * a.1)));
    println!("  {n} requests parked; live allocations per parked request, by jemalloc size class:");
    let (mut count, mut bytes) = (0.0, 0.0);
    for (size, per) in rows {
        println!("    {size:>6} B  × {per:.2}");
        count += per;
        bytes += per * size as f64;
    }
    println!(
        "  per parked request: {count:.1} allocations, {bytes:.0} B (the spawned caller task included)"
    );
    keyed.parking.release();
    for task in parked {
        task.await.unwrap();
    }
}

//! Resident memory of the process that runs the keyed stack (C15): at the
//! start, after touching 1,000,000 distinct workspace ids, with 1,000,000
//! ids resident at once (requests parked in admission, each holding its
//! lane), and after they complete and their lanes are evicted. Also the
//! event bus, the other per-workspace state (a channel per watched
//! workspace). RSS is read from /proc/self/statm. The Postgres-backed
//! decisions are fakes (benches/support/stack.rs).
//!
//!   cargo bench --bench keyed_memory

mod support;

use std::time::Duration;

use support::stack::{self, PARK};
use tokio::time::Instant;
use workspace_lifecycle::engine::events::EventBus;

const KEYS: u64 = 1_000_000;

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn line(label: &str, rss: u64, start: u64, live: usize) {
    println!(
        "  {label:<44} RSS {:>8.1} MB  ({:>+8.1} MB vs start)  live per-key entries {live}",
        mb(rss),
        mb(rss) - mb(start)
    );
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::main]
async fn main() {
    println!("# keyed memory — {}", support::command("keyed_memory"));
    println!("# machine: {}", support::machine());
    let keyed = stack::keyed();
    let bus = EventBus::new();
    for i in 0..10_000 {
        stack::call(&keyed.svc, stack::key(u64::MAX - i), "warm-up").await;
        drop(bus.subscribe(stack::key(u64::MAX - i)));
    }
    settle().await;
    let start = support::rss_bytes();
    println!("\nresident memory, keyed stack over {KEYS} distinct workspace ids");
    line("start", start, start, keyed.coalesce.live_lanes());

    // The event bus: a channel per watched workspace, made and evicted.
    for i in 0..KEYS {
        drop(bus.subscribe(stack::key(30_000_000 + i)));
    }
    settle().await;
    line(
        "event bus: 1,000,000 ids subscribed, dropped",
        support::rss_bytes(),
        start,
        bus.live_channels(),
    );
    const HELD: u64 = 10_000;
    let before_held = support::rss_bytes();
    let held: Vec<_> = (0..HELD)
        .map(|i| bus.subscribe(stack::key(40_000_000 + i)))
        .collect();
    let with_held = support::rss_bytes();
    line(
        "event bus: 10,000 subscriptions held",
        with_held,
        start,
        bus.live_channels(),
    );
    println!(
        "    ≈ {:.1} KB per live subscription (its broadcast buffer)",
        (with_held.saturating_sub(before_held)) as f64 / HELD as f64 / 1e3
    );
    drop(held);
    settle().await;
    line(
        "event bus: after dropping them",
        support::rss_bytes(),
        start,
        bus.live_channels(),
    );

    // Touch a million ids, eight callers at a time.
    let callers: Vec<_> = (0..8u64)
        .map(|caller| {
            let svc = keyed.svc.clone();
            tokio::spawn(async move {
                for i in (caller..KEYS).step_by(8) {
                    stack::call(&svc, stack::key(i), "touch").await;
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    settle().await;
    line(
        "after touching 1,000,000 ids (8 callers)",
        support::rss_bytes(),
        start,
        keyed.coalesce.live_lanes(),
    );

    // A million ids resident at once, twice: the second round shows whether
    // what stays resident after the first is reused (allocator free lists)
    // or lost (a leak would add as much again).
    for round in 1..=2u64 {
        keyed.parking.park();
        let began = Instant::now();
        let parked: Vec<_> = (0..KEYS)
            .map(|i| {
                let svc = keyed.svc.clone();
                tokio::spawn(async move {
                    stack::call(&svc, stack::key(round * 10_000_000 + i), PARK).await
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while (keyed.coalesce.live_lanes() as u64) < KEYS && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        line(
            &format!(
                "round {round}: 1,000,000 ids resident ({:.1} s)",
                began.elapsed().as_secs_f64()
            ),
            support::rss_bytes(),
            start,
            keyed.coalesce.live_lanes(),
        );
        keyed.parking.release();
        for task in parked {
            task.await.unwrap();
        }
        settle().await;
        line(
            &format!("round {round}: after they completed (evicted)"),
            support::rss_bytes(),
            start,
            keyed.coalesce.live_lanes(),
        );
    }
}

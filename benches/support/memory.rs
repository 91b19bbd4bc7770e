//! The keyed-memory measurement (C15), shared by the bench binaries that
//! run it under different global allocators: resident set size at the
//! start, after touching 1,000,000 distinct workspace ids, with 1,000,000
//! ids resident at once (requests parked in admission, each holding its
//! lane), and after they complete and their lanes are evicted — until RSS
//! is back within 10 MB of the start (at most 20 s). Also the event bus
//! (a channel per watched workspace) and `KeyedSlots`' table alone. RSS is
//! read from /proc/self/statm.

use std::time::Duration;

use tokio::time::Instant;
use workspace_lifecycle::{
    domain::WorkspaceId,
    engine::{events::EventBus, keyed::KeyedSlots},
};

use super::stack::{self, PARK};

const KEYS: u64 = 1_000_000;

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// What the global allocator says it holds, printed under each RSS line
/// (`None` where the bench has nothing to ask it).
pub type AllocatorStats = Option<fn() -> String>;

fn line(label: &str, rss: u64, start: u64, live: usize, stats: AllocatorStats) {
    println!(
        "  {label:<44} RSS {:>8.1} MB  ({:>+8.1} MB vs start)  live per-key entries {live}",
        mb(rss),
        mb(rss) - mb(start)
    );
    if let Some(stats) = stats {
        println!("    {}", stats());
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Waits (at most 20 s) for RSS to come back within [`WITHIN`] of `start`,
/// as an allocator that purges on a timer (jemalloc's decay) gives memory
/// back some seconds after it was freed. Returns how long it took, or
/// `None` if it did not come back.
async fn returned(start: u64) -> (u64, Option<Duration>) {
    let began = Instant::now();
    loop {
        let rss = super::rss_bytes();
        if rss.saturating_sub(start) <= WITHIN {
            return (rss, Some(began.elapsed()));
        }
        if began.elapsed() > Duration::from_secs(20) {
            return (rss, None);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The target: RSS within 10 MB of the start once the keys are evicted.
const WITHIN: u64 = 10_000_000;

/// The whole measurement, in a process whose global allocator is
/// `allocator` (each bench binary declares its own).
pub async fn run(bench: &str, allocator: &str) {
    run_with(bench, allocator, None).await;
}

/// [`run`], printing `stats` (what the allocator says it holds) under each
/// RSS line.
pub async fn run_with(bench: &str, allocator: &str, stats: AllocatorStats) {
    println!("# keyed memory — {}", super::command(bench));
    println!("# machine: {}", super::machine());
    println!("# global allocator: {allocator}");
    let keyed = stack::keyed();
    let bus = EventBus::new();
    for i in 0..10_000 {
        stack::call(&keyed.svc, stack::key(u64::MAX - i), "warm-up").await;
        drop(bus.subscribe(stack::key(u64::MAX - i)));
    }
    settle().await;
    let start = super::rss_bytes();
    println!("\nresident memory, keyed stack over {KEYS} distinct workspace ids");
    line("start", start, start, keyed.coalesce.live_lanes(), stats);

    // The event bus: a channel per watched workspace, made and evicted.
    for i in 0..KEYS {
        drop(bus.subscribe(stack::key(30_000_000 + i)));
    }
    settle().await;
    line(
        "event bus: 1,000,000 ids subscribed, dropped",
        super::rss_bytes(),
        start,
        bus.live_channels(),
        stats,
    );
    const HELD: u64 = 10_000;
    let before_held = super::rss_bytes();
    let held: Vec<_> = (0..HELD)
        .map(|i| bus.subscribe(stack::key(40_000_000 + i)))
        .collect();
    let with_held = super::rss_bytes();
    line(
        "event bus: 10,000 subscriptions held",
        with_held,
        start,
        bus.live_channels(),
        stats,
    );
    println!(
        "    ≈ {:.1} KB per live subscription (its broadcast buffer)",
        (with_held.saturating_sub(before_held)) as f64 / HELD as f64 / 1e3
    );
    drop(held);
    settle().await;
    line(
        "event bus: after dropping them",
        super::rss_bytes(),
        start,
        bus.live_channels(),
        stats,
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
        super::rss_bytes(),
        start,
        keyed.coalesce.live_lanes(),
        stats,
    );

    // A million ids resident at once, twice: the second round shows whether
    // what stays resident after the first is reused (allocator free lists)
    // or lost (a leak would add as much again).
    let mut worst = 0u64;
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
            super::rss_bytes(),
            start,
            keyed.coalesce.live_lanes(),
            stats,
        );
        keyed.parking.release();
        for task in parked {
            task.await.unwrap();
        }
        settle().await;
        line(
            &format!("round {round}: evicted, after 0.5 s"),
            super::rss_bytes(),
            start,
            keyed.coalesce.live_lanes(),
            stats,
        );
        let (rss, took) = returned(start).await;
        line(
            &match took {
                Some(t) => format!(
                    "round {round}: back within 10 MB after {:.1} s",
                    t.as_secs_f64()
                ),
                None => format!("round {round}: NOT back within 10 MB after 20 s"),
            },
            rss,
            start,
            keyed.coalesce.live_lanes(),
            stats,
        );
        worst = worst.max(rss.saturating_sub(start));
    }

    // The per-key table alone: KeyedSlots with a million keys held, then
    // released — its capacity and what RSS does.
    let slots: KeyedSlots<WorkspaceId, ()> = KeyedSlots::new();
    let before = super::rss_bytes();
    let held: Vec<_> = (0..KEYS)
        .map(|i| slots.acquire(&stack::key(50_000_000 + i), || ()))
        .collect();
    let grown = slots.capacity();
    let with = super::rss_bytes();
    drop(held);
    settle().await;
    let (after, _) = returned(before).await;
    println!(
        "  KeyedSlots alone: 1,000,000 keys held: capacity {grown}, RSS +{:.1} MB; released: \
         capacity {}, RSS {:+.1} MB vs before (table entry {} B + 1 control byte)",
        mb(with) - mb(before),
        slots.capacity(),
        mb(after) - mb(before),
        std::mem::size_of::<(WorkspaceId, std::sync::Arc<()>)>()
    );
    println!(
        "\n  1,000,000 resident then evicted: worst {:+.1} MB vs start (target within 10 MB: {})",
        mb(worst),
        if worst <= WITHIN { "met" } else { "missed" }
    );
}

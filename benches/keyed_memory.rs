//! Resident memory of the keyed stack (C15) under the server binary's
//! global allocator, jemalloc with its settings (services/allocator.rs):
//! a million ids resident, evicted, and RSS back within 10 MB of the start.
//! The measurement is benches/support/memory.rs; `keyed_memory_glibc` and
//! `keyed_memory_mimalloc` run it under the other allocators compared.
//!
//!   cargo bench --bench keyed_memory

#[path = "support/jemalloc_stats.rs"]
mod jemalloc_stats;
mod support;

// The server binary's allocator, with its settings (services/allocator.rs).
workspace_lifecycle::server_allocator!();

#[tokio::main]
async fn main() {
    support::memory::run_with(
        "keyed_memory",
        "jemalloc as the server runs it (services/allocator.rs: background purge threads, default decay, slab_sizes:1-4096:16)",
        Some(jemalloc_stats),
    )
    .await;
}

/// jemalloc's own account of what it holds, and the size classes of
/// whatever is live in bulk (at least 1 MB): what a parked request is made
/// of.
fn jemalloc_stats() -> String {
    use jemalloc_stats::{Stats, size_classes};
    let (stats, classes) = match (Stats::read(), size_classes()) {
        (Ok(stats), Ok(classes)) => (stats, classes),
        (Err(err), _) | (_, Err(err)) => return format!("jemalloc statistics unavailable: {err}"),
    };
    let mut out = stats.to_string();
    for class in classes.iter().filter(|c| c.size * c.live >= 1_000_000) {
        out += &format!(
            "\n      size class {:>6} B: {:>8} live ({:.1} MB) in {} extents",
            class.size,
            class.live,
            (class.size * class.live) as f64 / 1e6,
            class.extents
        );
    }
    out
}

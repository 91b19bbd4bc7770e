//! The keyed-memory measurement (benches/support/memory.rs) under jemalloc
//! as the server ran it until mimalloc replaced it (background purge
//! threads, default decay, 16-page slabs for every small size class), with
//! jemalloc's own statistics beside each RSS figure: what it keeps after a
//! million parked requests are freed (its extent headers and page map).
//!
//!   _RJEM_MALLOC_CONF=slab_sizes:1-4096:16 cargo bench --bench keyed_memory_jemalloc
//!
//! (the server's former options; `scripts/bench` passes them).

#[path = "support/jemalloc_stats.rs"]
mod jemalloc_stats;
mod support;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    support::memory::run_with(
        "keyed_memory_jemalloc",
        &format!(
            "jemalloc (background purge threads, default decay, _RJEM_MALLOC_CONF={:?})",
            std::env::var("_RJEM_MALLOC_CONF").unwrap_or_default()
        ),
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

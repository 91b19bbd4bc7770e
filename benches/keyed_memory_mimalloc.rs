//! The keyed-memory measurement (benches/support/memory.rs) under mimalloc,
//! with tokio's default runtime: no worker collects as it parks, unlike
//! the server's (`keyed_memory`).
//!
//!   cargo bench --bench keyed_memory_mimalloc

mod support;

#[global_allocator]
static ALLOC: workspace_allocator::MiMalloc = workspace_allocator::MiMalloc;

#[tokio::main]
async fn main() {
    support::memory::run(
        "keyed_memory_mimalloc",
        "mimalloc 3 (the mimalloc crate's default options), tokio's default runtime (no collection as workers park)",
    )
    .await;
}

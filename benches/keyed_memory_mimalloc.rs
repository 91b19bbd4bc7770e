//! The keyed-memory measurement (benches/support/memory.rs) under mimalloc,
//! for comparison with `keyed_memory` (jemalloc) and `keyed_memory_glibc`.
//!
//!   cargo bench --bench keyed_memory_mimalloc

mod support;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    support::memory::run(
        "keyed_memory_mimalloc",
        "mimalloc 3 (the mimalloc crate's default, default options)",
    )
    .await;
}

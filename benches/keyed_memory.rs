//! Resident memory of the keyed stack (C15) under the server binary's
//! global allocator, jemalloc with background purging (services/main.rs):
//! a million ids resident, evicted, and RSS back within 10 MB of the start.
//! The measurement is benches/support/memory.rs; `keyed_memory_glibc` and
//! `keyed_memory_mimalloc` run it under the other allocators compared.
//!
//!   cargo bench --bench keyed_memory

mod support;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    support::memory::run(
        "keyed_memory",
        "jemalloc (tikv-jemallocator, background purge threads, default decay)",
    )
    .await;
}

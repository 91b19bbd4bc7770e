//! Resident memory of the keyed stack (C15) under the server binary's
//! global allocator and runtime (services/allocator.rs: mimalloc, each
//! worker collecting as it parks): a million ids resident, evicted, and RSS
//! back within 10 MB of the start. The measurement is
//! benches/support/memory.rs; `keyed_memory_glibc`, `keyed_memory_jemalloc`
//! and `keyed_memory_mimalloc` (mimalloc without the collection) run it
//! under the alternatives compared.
//!
//!   cargo bench --bench keyed_memory

mod support;

workspace_lifecycle::server_allocator!();

fn main() {
    workspace_lifecycle::allocator::run_on_workers(support::memory::run(
        "keyed_memory",
        "mimalloc as the server runs it (services/allocator.rs: no transparent huge pages, each runtime worker collects as it parks)",
    ))
    .expect("the server's runtime runs the benchmark");
}

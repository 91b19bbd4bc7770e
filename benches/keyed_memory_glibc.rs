//! The keyed-memory measurement (benches/support/memory.rs) under glibc's
//! malloc, the Rust default: the allocator the server had before, for
//! comparison with `keyed_memory` (jemalloc) and `keyed_memory_mimalloc`.
//!
//!   cargo bench --bench keyed_memory_glibc

mod support;

#[tokio::main]
async fn main() {
    support::memory::run("keyed_memory_glibc", "glibc malloc (the system allocator)").await;
}

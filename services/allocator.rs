//! The server's memory allocator and the runtime that makes it give memory
//! back, in one place so that the memory benchmark
//! (`benches/keyed_memory.rs`) measures exactly what the server binary
//! runs. No contract of its own; serves C15 (memory that comes back after a
//! crowd of keys is evicted).
//!
//! mimalloc, with every runtime worker returning its freed pages as it
//! parks. The allocators compared (BENCHMARKS.md, "memory that comes back")
//! fail in three ways after a million parked requests are freed: glibc's
//! malloc keeps the pages in its free lists; jemalloc purges them but never
//! returns its bookkeeping for the peak (~16 MB of extent headers and
//! page-map leaves for a 2.7 GB peak, however its slabs are sized);
//! mimalloc keeps them in the heap of the thread that owns them until that
//! thread collects, and an idle tokio worker never does. mimalloc's
//! bookkeeping lives in the memory it frees, so the one missing piece is
//! the collection, on every park: a collection skipped on a busy worker's
//! park to save its cost may be the last before the worker sleeps for
//! good (an idle worker is not woken again), and what it skipped would
//! stay. A collection with nothing to return costs under a microsecond.

/// The global allocator type the binaries declare.
pub use workspace_allocator::MiMalloc;

/// The multi-threaded runtime the server runs on: tokio's defaults, with
/// every worker returning freed memory to the OS as it parks.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(workspace_allocator::return_freed_pages)
        .build()
}

/// Runs `work` to its end on [`runtime`]'s workers, not on the calling
/// thread: `block_on` polls its future on the caller's thread, which never
/// parks as a worker and so never returns what it freed — a server whose
/// main future did the work would keep it.
pub fn run_on_workers<F>(work: F) -> std::io::Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let runtime = runtime()?;
    runtime
        .block_on(runtime.spawn(work))
        .map_err(std::io::Error::other)
}

/// Declares mimalloc as the process's global allocator: the server
/// binary's, and the benchmarks' and tests' that measure it. A macro so
/// that the binary itself holds the declaration (one global allocator per
/// binary).
#[macro_export]
macro_rules! server_allocator {
    () => {
        #[global_allocator]
        static ALLOC: $crate::allocator::MiMalloc = $crate::allocator::MiMalloc;
    };
}

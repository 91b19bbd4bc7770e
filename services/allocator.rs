//! The server's memory allocator and its settings, in one place so that
//! the memory benchmark (`benches/keyed_memory.rs`) measures exactly what
//! the server binary runs. No contract of its own; serves C15 (memory that
//! comes back after a crowd of keys is evicted).
//!
//! jemalloc with background purge threads rather than glibc's malloc:
//! memory freed after a crowd of requests goes back to the OS within
//! seconds instead of staying in malloc's free lists. What jemalloc never
//! gives back is its own bookkeeping for the crowd's peak: one 128-byte
//! extent header per slab and one radix-tree entry per page. With the
//! default slab sizes a 512-byte object's slab is a single page, so a
//! million parked requests leave ~33 MB of headers behind; slabs of 16
//! pages for every small size class cut that to ~6 MB (BENCHMARKS.md,
//! "Earlier run: memory after a million evicted keys"), at no cost to an
//! idle server's RSS (21.6 MB either way).

/// The global allocator type the binaries declare.
pub use tikv_jemallocator::Jemalloc;

/// jemalloc's options, as it reads them from the `malloc_conf` symbol at
/// its first allocation (NUL-terminated). Background purge threads are on
/// by the crate's `background_threads` feature.
pub const JEMALLOC_CONF: &[u8; 21] = b"slab_sizes:1-4096:16\0";

/// Declares jemalloc as the process's global allocator with
/// [`JEMALLOC_CONF`]. A macro because jemalloc finds its options through a
/// symbol that must be defined in the binary itself: one in a library's
/// archive would never be linked in over jemalloc's weak default.
#[macro_export]
macro_rules! server_allocator {
    () => {
        #[global_allocator]
        static ALLOC: $crate::allocator::Jemalloc = $crate::allocator::Jemalloc;

        // A thin `&[u8; N]` is laid out as the `const char *` jemalloc
        // declares; its name carries tikv-jemalloc-sys' `_rjem_` prefix.
        #[allow(non_upper_case_globals)]
        #[unsafe(export_name = "_rjem_malloc_conf")]
        static malloc_conf: &[u8; $crate::allocator::JEMALLOC_CONF.len()] =
            $crate::allocator::JEMALLOC_CONF;
    };
}

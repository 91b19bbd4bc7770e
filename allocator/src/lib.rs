//! The server's global allocator, mimalloc, and the one foreign call the
//! server needs from it, behind a safe function: a crate of its own because
//! the rest of the workspace forbids `unsafe` (services/allocator.rs says
//! why mimalloc and when the call is made).

/// The global allocator type the server binary and its benchmarks declare.
pub use mimalloc::MiMalloc;

/// Frees the calling thread's empty pages and returns them, with every
/// freed page mimalloc's shared arenas hold, to the OS at once (mimalloc's
/// `mi_collect(true)`). mimalloc otherwise frees a thread's pages only as
/// that thread allocates again, which an idle runtime worker never does.
/// Costs under a microsecond when nothing was freed; about 70 µs when it
/// returns a few megabytes.
pub fn return_freed_pages() {
    // SAFETY: `mi_collect` takes no pointers, may be called from any thread
    // at any time, and touches only the calling thread's heap and
    // mimalloc's own (internally locked) arenas. If the process's global
    // allocator is not mimalloc, it collects an empty heap.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true)
    };
}

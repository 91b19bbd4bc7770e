//! jemalloc, the server's global allocator until mimalloc replaced it
//! (services/allocator.rs): what it holds, read from its own statistics.
//! `keyed_memory_jemalloc` prints [`Stats`] beside each RSS figure.
//!
//! What these show after a million parked requests (about 2 GB live) are
//! freed: the freed pages are purged within seconds (dirty and muzzy reach
//! 0), but jemalloc's metadata stays — an `edata` header of 128 B for every
//! extent that was live at the peak (a slab or a large allocation) and the
//! radix tree's entries for every page, kept for reuse and never given
//! back; larger slabs (`slab_sizes:1-4096:16`, the options the server ran
//! it with) keep the first small. [`size_classes`] tells what the peak was made of.

use std::fmt;

use tikv_jemalloc_ctl::{Access, AsName, epoch, stats};

/// What jemalloc holds, in bytes, as of one `epoch` advance: enough to tell
/// live data from freed-but-unpurged pages and from jemalloc's own
/// bookkeeping when RSS does not come back.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stats {
    /// Bytes the program has allocated and not freed.
    pub(crate) allocated: usize,
    /// Bytes in pages that hold live allocations.
    pub(crate) active: usize,
    /// Bytes jemalloc has resident: active, dirty, and metadata pages.
    pub(crate) resident: usize,
    /// jemalloc's own bookkeeping (base and internal allocations).
    pub(crate) metadata: usize,
    /// Of `metadata`: the extent headers (`edata_t`), one per extent.
    pub(crate) metadata_edata: usize,
    /// Of `metadata`: the radix tree from pages to extents.
    pub(crate) metadata_rtree: usize,
    /// Virtual memory kept mapped for reuse but purged (not resident).
    pub(crate) retained: usize,
    /// Freed pages not yet purged (dirty, all arenas), in bytes.
    pub(crate) dirty: usize,
    /// Pages purged lazily (muzzy, all arenas), in bytes.
    pub(crate) muzzy: usize,
}

/// `MALLCTL_ARENAS_ALL`: the merged statistics of every arena.
const ALL_ARENAS: &[u8] = b"stats.arenas.4096.";

fn pages(what: &str) -> Result<usize, tikv_jemalloc_ctl::Error> {
    let name = [ALL_ARENAS, what.as_bytes(), b"\0"].concat();
    let pages: usize = name.name().read()?;
    let page: usize = b"arenas.page\0".name().read()?;
    Ok(pages * page)
}

fn read(name: &[u8]) -> Result<usize, tikv_jemalloc_ctl::Error> {
    name.name().read()
}

impl Stats {
    /// Refreshes jemalloc's cached statistics and reads them. Under another
    /// global allocator this reads the (unused) linked-in jemalloc.
    pub(crate) fn read() -> Result<Self, tikv_jemalloc_ctl::Error> {
        epoch::advance()?;
        Ok(Self {
            allocated: stats::allocated::read()?,
            active: stats::active::read()?,
            resident: stats::resident::read()?,
            metadata: stats::metadata::read()?,
            metadata_edata: read(b"stats.metadata_edata\0")?,
            metadata_rtree: read(b"stats.metadata_rtree\0")?,
            retained: stats::retained::read()?,
            dirty: pages("pdirty")?,
            muzzy: pages("pmuzzy")?,
        })
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mb = |b: usize| b as f64 / 1e6;
        write!(
            f,
            "jemalloc: allocated {:.1} MB, active {:.1}, resident {:.1}, dirty {:.1}, \
             muzzy {:.1}, metadata {:.1} (edata {:.1}, rtree {:.1}), retained {:.1}",
            mb(self.allocated),
            mb(self.active),
            mb(self.resident),
            mb(self.dirty),
            mb(self.muzzy),
            mb(self.metadata),
            mb(self.metadata_edata),
            mb(self.metadata_rtree),
            mb(self.retained),
        )
    }
}

/// The live allocations of one size class: what a crowd of requests is made
/// of, and in how many extents (each with an `edata` header that jemalloc
/// keeps, for reuse, after the extent is gone).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SizeClass {
    /// The class's allocation size, in bytes.
    pub(crate) size: usize,
    /// Allocations of this class not yet freed.
    pub(crate) live: usize,
    /// Extents holding them: slabs for small classes, one per large one.
    pub(crate) extents: usize,
}

/// Every size class with live allocations, all arenas merged, largest share
/// of bytes first.
pub(crate) fn size_classes() -> Result<Vec<SizeClass>, tikv_jemalloc_ctl::Error> {
    epoch::advance()?;
    let mut classes = Vec::new();
    let nbins: u32 = b"arenas.nbins\0".name().read()?;
    for bin in 0..nbins {
        let live = read(format!("stats.arenas.4096.bins.{bin}.curregs\0").as_bytes())?;
        if live > 0 {
            classes.push(SizeClass {
                size: read(format!("arenas.bin.{bin}.size\0").as_bytes())?,
                live,
                extents: read(format!("stats.arenas.4096.bins.{bin}.curslabs\0").as_bytes())?,
            });
        }
    }
    let nlextents: u32 = b"arenas.nlextents\0".name().read()?;
    for large in 0..nlextents {
        let live = read(format!("stats.arenas.4096.lextents.{large}.curlextents\0").as_bytes())?;
        if live > 0 {
            classes.push(SizeClass {
                size: read(format!("arenas.lextent.{large}.size\0").as_bytes())?,
                live,
                extents: live,
            });
        }
    }
    classes.sort_by_key(|c| std::cmp::Reverse(c.size * c.live));
    Ok(classes)
}

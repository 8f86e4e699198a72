//! [`MemError`]: what mapping a region or building a pool can fail with.

use std::io;

use super::page::PageSize;

/// Errors from mapping regions and building pools.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// A region or pool of zero bytes or zero buffers was asked for.
    #[error("a zero-sized region or pool was requested")]
    ZeroSize,
    /// `mmap` failed even with base pages.
    #[error("mmap of {len} bytes with {page} pages failed: {source}")]
    Map {
        /// Bytes requested (rounded to the page size).
        len: usize,
        /// The page size that was tried last.
        page: PageSize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Exact hugepages were required (no fallback) and are not available.
    #[error(
        "no {page} hugepages for {len} bytes ({free} free): reserve at least {pages} with \
         `scripts/hugepages.sh {pages}{size_arg}` (as root)",
        pages = .len.div_ceil(.page.bytes()),
        size_arg = .page.script_size_arg()
    )]
    NoHugePages {
        /// The page size requested.
        page: PageSize,
        /// Bytes requested (rounded up to the page size).
        len: usize,
        /// Free hugepages of that size, from `/sys/kernel/mm/hugepages` (0 if unknown).
        free: u64,
    },
    /// The region's slabs were already handed out (it can be split once).
    #[error("the region's slabs were already taken")]
    SlabsTaken,
    /// Creating, sizing or inspecting a shared memory file failed.
    #[error("{op} failed: {source}")]
    SharedFile {
        /// What was tried.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A peer's memory file is shorter than the region it was announced as.
    #[error("the shared memory file holds {file_len} bytes, fewer than the {len} claimed")]
    FileTooShort {
        /// Bytes claimed.
        len: u64,
        /// Bytes the file holds.
        file_len: u64,
    },
    /// A pool buffer layout that cannot work.
    #[error("bad pool layout: {0}")]
    BadLayout(&'static str),
}

//! Packet memory: hugepage regions and the fixed-size buffer pools carved from them.
//!
//! - [`HugeRegion`] maps 2 MiB or 1 GiB pages, or falls back to base pages (with
//!   `MADV_HUGEPAGE` and one warning that names the fix) and reports which it got.
//! - [`BufPool`] splits a region into equal buffers with headroom; a lock-free free list hands
//!   each buffer to exactly one owner ([`PoolBuf`]) at a time. An empty pool is back-pressure
//!   (`None`), never a panic or a heap allocation.
//!
//! This module and `sys` are the only places with `unsafe` code.
#![allow(unsafe_code)]

mod error;
mod page;
mod pool;
mod region;
pub mod shm;

pub use error::MemError;
pub use page::PageSize;
pub use pool::{BufPool, PoolBuf, PoolStats};
pub use region::{HugeRegion, RegionPart};

//! # ustack
//!
//! A kernel-bypass network path for storage servers. Frames move between a packet device and
//! pool memory without the kernel's socket path; [smoltcp](https://docs.rs/smoltcp) runs TCP/IP in
//! user space on top; a chunk protocol lets file servers serve reads and writes through it.
//!
//! Data flows one way through the modules, and nothing points back:
//!
//! ```text
//! sys  (FFI and raw syscalls: the only unsafe, with mem)
//!  -> mem   (hugepage regions, fixed-size buffer pools)
//!  -> dev   (PacketDevice trait and its backends: sim, tap, ...)
//!  -> stack (the only module that knows smoltcp: Stack, TCP connections)
//! ```
//!
//! See `docs/ARCHITECTURE.md` in the repository for the full picture.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod chunk;
pub mod copies;
pub mod dev;
pub mod mem;
pub mod metrics;
pub mod net;
pub mod proto;
pub mod stack;
pub mod sys;
pub mod time;

pub use dev::{Batch, ChecksumCaps, DeviceCaps, Frame, LinkStats, PacketDevice};
pub use mem::{BufPool, HugeRegion, PageSize, PoolBuf, PoolStats};
pub use time::Instant;

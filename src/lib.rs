//! # ustack
//!
//! A kernel-bypass network path for storage servers. Frames move between a packet device and
//! pool memory without the kernel's socket path; [smoltcp](https://docs.rs/smoltcp) runs TCP/IP in
//! user space on top; a chunk protocol lets file servers serve reads and writes through it.
//!
//! The modules form floors, and each imports only from its own floor and those below it:
//!
//! ```text
//! sys         FFI and raw syscalls: the only unsafe, with mem (crate-private; see host)
//!  -> mem     hugepage regions, fixed-size buffer pools, shared memory
//!  -> dev     the PacketDevice trait and its backends: memif, af_xdp, dpdk, tap, sim; auto
//!  -> stack   the only module that knows smoltcp: Stack, TCP connections
//!  -> chunk   ChunkStore and its stores, the chunk server and client on a Stack
//!  -> net     the same chunk server and client over kernel TCP
//!  -> metrics operators' access: snapshots, Prometheus endpoint, admin socket
//!  -> serve   the serving loop: a server polled until SIGINT/SIGTERM, then shut down gracefully
//!  -> s3      an S3-compatible object service on the serving loop (feature s3)
//!
//! leaves, used by any floor, importing nothing:  proto (the wire format, sans-IO),
//!                                                time (Instant), copies (copy counters)
//! facades for users, imported by no module:      host (namespaces, processes, signals,
//!                                                raw sockets: not the data path), prelude,
//!                                                testing (feature `testing`: the store
//!                                                contract, the decoder oracle)
//! ```
//!
//! And no two files import each other, directly or through others. `tests/layering.rs` checks
//! both rules from the source (`cargo test --test layering`) and names the files that break one.
//!
//! See `docs/ARCHITECTURE.md` in the repository for the full picture.
#![deny(unsafe_code)]
#![warn(missing_docs)]

/// Adds `other`'s counters to `self`'s, naming every field of `Type` (the destructuring fails
/// to compile when a field is added and not named here): `add_counters!(Type, self, other;
/// a, b, c)`. For counters of per-core shards summed into one.
macro_rules! add_counters {
    ($ty:ident, $self:ident, $other:expr; $($f:ident),* $(,)?) => {{
        let $ty { $($f),* } = $other;
        $( $self.$f += *$f; )*
    }};
}

pub mod chunk;
pub mod copies;
pub mod dev;
pub mod host;
pub mod mem;
pub mod metrics;
pub mod net;
pub mod proto;
#[cfg(feature = "s3")]
pub mod s3;
pub mod serve;
pub mod stack;
pub(crate) mod sys;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;

pub use dev::{Batch, ChecksumCaps, DeviceCaps, Frame, LinkStats, PacketDevice};

/// What an embedding file server needs, in one `use ustack::prelude::*;`: the stack and its
/// configuration, the devices (any backend, and each backend's configuration), the chunk server
/// and client, the store trait with its two stores and their errors, and the metrics hub.
/// `examples/embed.rs` serves a store of its own with nothing else.
pub mod prelude {
    pub use crate::chunk::{
        ChunkClient, ChunkServer, ChunkStat, ChunkStore, ClientConfig, DirStore, DirStoreConfig,
        MemStore, ReadInfo, ServerConfig, StoreError, SyncPolicy,
    };
    pub use crate::dev::af_xdp::XdpConfig;
    pub use crate::dev::auto::{AnyDevice, BackendConfig};
    #[cfg(feature = "dpdk")]
    pub use crate::dev::dpdk::DpdkConfig;
    pub use crate::dev::memif::{MemifConfig, MemifRole};
    pub use crate::dev::PacketDevice;
    pub use crate::metrics::{AdminServer, Hub, MetricsEndpoint, StackServerView};
    pub use crate::net::KernelServer;
    pub use crate::proto::ChunkId;
    pub use crate::serve::{Event, ServeLoop, Service, StackService, StopHandle};
    pub use crate::stack::{Stack, StackConfig};
    pub use crate::time::Instant;
}
pub use mem::{BufPool, HugeRegion, PageSize, PoolBuf, PoolStats};
pub use time::Instant;

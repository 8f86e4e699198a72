//! [`MemifDevice`]: frames through shared memory between two processes on one host, speaking the
//! memif protocol as DPDK 22.11's `net_memif` and libmemif (VPP) define it — no kernel on the
//! data path, no root, no NIC.
//!
//! ```no_run
//! use ustack::dev::memif::{MemifConfig, MemifDevice, MemifRole};
//! use ustack::stack::{Stack, StackConfig};
//!
//! // The file server: a memif server on a socket its clients can reach (no root needed).
//! let dev = MemifDevice::open(&MemifConfig::new("/run/ustack/memif.sock", MemifRole::Server))?;
//! let mut stack = Stack::new(dev, StackConfig::new("10.77.0.1".parse()?, 24))?;
//! // ... ChunkServer::bind(&mut stack, ..), then poll: the link comes up when a client connects.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The protocol in one paragraph
//!
//! The server (master) listens on a unix `SOCK_SEQPACKET` socket. A client (slave) connects and
//! the two exchange 128-byte control messages ([`proto`]); the client creates all shared memory —
//! memory files (`memfd`) whose descriptors travel with ADD_REGION messages — and lays out
//! descriptor rings in them ([`ring`]), announced with ADD_RING together with an eventfd per
//! ring. Each queue pair has a C2S ring (client to server) and an S2C ring (server to client).
//! Frames then move by writing descriptors and advancing `head`/`tail` counters in the shared
//! rings, polled by both sides; the control socket stays open, and its hang-up tells either side
//! that the peer is gone ([`control`] has the handshake).
//!
//! # ustack's choices
//!
//! - **Roles.** [`MemifRole::Server`] binds the socket (removing a stale socket file left by a
//!   dead server) and serves one client at a time; a second one is told "Already connected".
//!   [`MemifRole::Client`] connects, and retries with exponential backoff while nobody listens,
//!   so either side may start first. After a disconnect (DISCONNECT message, socket hang-up,
//!   peer death, or a protocol violation we detect) the rings are torn down and unmapped and the
//!   client reconnects; the device stays usable throughout: [`PacketDevice::link_up`](crate::dev::PacketDevice::link_up) is false
//!   meanwhile, and frames sent then are dropped and counted (`tx_dropped`).
//! - **Memory and copies.** As a client, ustack owns the memory: region 0 holds the rings,
//!   region 1 is the device's [`BufPool`](crate::mem::BufPool) itself, built on a shared memory
//!   file (2 MiB hugepages when reserved, else base pages), whose buffers each hold a whole
//!   frame. Frames the stack writes are sent by pointing C2S descriptors at them, and frames
//!   received are the very buffers the client posted on S2C — **no copy either way**. As a
//!   server, the memory is the peer's: received frames are copied out of its buffers into a
//!   private pool before anyone looks at them (so a peer cannot change a frame under the stack's
//!   checks) — **one copy**. Sent frames are copied into the buffers the client posted by a
//!   device opened with [`MemifDevice::open`] (frame type [`PoolBuf`](crate::mem::PoolBuf), as
//!   in DPDK's server), and **built in place** in them by one opened with
//!   [`MemifDevice::open_in_place`] (frame type [`MemifFrame`]; see below) — no copy.
//! - **Chains.** A frame longer than a buffer travels as a chain of descriptors flagged
//!   [`DESC_FLAG_NEXT`](ring::DESC_FLAG_NEXT), both ways. A client's
//!   [`MemifConfig::buffer_size`] is the most it puts in one descriptor: with buffers smaller
//!   than a frame it sends a frame's one pool buffer as several descriptors (no copy), and posts
//!   buffers of that size on S2C, gathering a chained frame into its first buffer (a copy of all
//!   but the first piece). A server copies chains into or out of its own buffers, and builds a
//!   frame in place over several posted buffers only when they are adjacent in one region.
//!   Chains are checked like single descriptors, piece by piece; a chain longer than a frame can
//!   need, or one that can never end (it fills the ring), is rejected and counted; one whose end
//!   is not published yet is waited for.
//! - **Trust.** Nothing the peer writes in shared memory is used unchecked: descriptor regions,
//!   offsets and lengths must lie inside a mapped region (else the descriptor is *rejected* and
//!   counted in [`MemifStats::rejected_desc`], and its slot handed back), the client takes
//!   buffers back by its own record of which buffer sits in which slot, every loop is bounded by
//!   the ring size, and a `head`/`tail` that moved further than the protocol allows ends the
//!   connection ([`MemifStats::bad_ring_index`]). Regions a peer sends must really be as long as
//!   claimed, and are sealed against shrinking (a truncated mapping would fault).
//! - **Polling.** Rings are polled (`MASK_INT` set on the rings we receive from). Only when the
//!   caller idles ([`PacketDevice::wait`](crate::dev::PacketDevice::wait)) are interrupts unmasked for the wait, so a peer that
//!   honours the flag wakes us through the ring's eventfd; the wait is bounded by its timeout
//!   either way, so a peer that never signals costs latency, not correctness.
//! - **Checksums.** Shared memory cannot corrupt frames, so by default the device tells the stack
//!   to skip verifying received IPv4/TCP checksums ([`MemifConfig::trust_rx_checksums`]). The
//!   device computes outgoing checksums itself, as a NIC with checksum offload does, and leaves
//!   them out only for a peer that announced it does not verify them: another ustack. The memif
//!   protocol has no feature bits, so the announcement rides in the application name field of
//!   HELLO and INIT, behind the name's terminating NUL, where implementations that read the
//!   name as a C string (libmemif, DPDK's net_memif, VPP) do not look; they get complete
//!   checksums. Between two ustack peers a frame is then read once fewer on each side, as on
//!   kernel loopback; the chunk protocol's CRC32C still covers every payload byte end to end.
//!   A capture taken on such a link shows zero checksums (as one taken under NIC offload does).
//! - **Control channel cost.** The control socket is read at most every
//!   [`MemifConfig::control_poll_interval`] while the link is up (one `recvmsg` per interval),
//!   and at every call while connecting.
//!
//! # In-place transmission and why it is sound
//!
//! A server opened with [`MemifDevice::open_in_place`] answers the stack's
//! [`tx_alloc`](crate::dev::PacketDevice::tx_alloc) with a [`MemifFrame`] over the next buffer
//! its client posted on S2C (or a run of adjacent ones) that holds a whole frame, as libmemif's
//! `memif_buffer_alloc` does; smoltcp writes the segment there and `tx_burst` only writes the
//! descriptor's length and publishes the slot. When no posted buffer fits (none posted yet, or
//! the client's buffers are shorter than a frame and not adjacent, as DPDK's mbufs), the frame
//! is built in a pool buffer and copied, and no buffer is lent until that frame is gone, so the
//! client always sees frames in the order the stack wrote them. In place needs a single S2C
//! ring: with several, the ring depends on the flow, unknown before the frame is written.
//!
//! The stack gets a plain `&mut [u8]` over memory the client maps writable. This is sound on
//! our side because:
//!
//! 1. **The buffer is ours by protocol while lent.** A posted slot belongs to the server until
//!    it publishes `tail` past it. A lent slot lies between the published `tail` and the next
//!    slot to lend, and is published only after its frame was consumed (the lease ended) —
//!    never while the stack can still reach it.
//! 2. **Nothing else in this process reaches those bytes.** Frames hold an
//!    [`ShmLease`](crate::mem::shm::ShmLease); the region's registry refuses a lease that
//!    overlaps another lease or memory served as ring atomics, and refuses atomic views and
//!    byte copies over leased bytes. So a client that posts two overlapping buffers, or a
//!    buffer over its rings, gets the second one back empty (counted in
//!    [`MemifStats::rejected_desc`]), and the server-side copy paths cannot touch a lent
//!    buffer. One memory file announced as two regions (the same bytes at two addresses) ends
//!    the handshake. The lease keeps the mapping alive: a frame that outlives its connection
//!    still writes mapped memory, and is dropped, counted, at `tx_burst`.
//! 3. **What a misbehaving client can do hurts only its own data.** Each descriptor is read
//!    once and checked — inside a mapped region, non-empty, long enough for the lease — and
//!    only our copy of it is used afterwards; lengths are ours. A client writing a buffer it
//!    gave us races our writes like a device writing memory it was not handed: no address,
//!    length or other memory-safety decision of ours is taken from those bytes, so the worst
//!    outcome is a corrupted frame for that client, which the checksums we computed over what
//!    we wrote (TCP, the chunk CRCs) reveal on its side. The one residual edge: while emitting,
//!    smoltcp reads back a few header fields it has just written (IPv4 IHL, TCP data offset) and
//!    slices by them, bounds-checked; a client racing exactly those bytes could at worst trip a
//!    bounds check (a panic), never cause an out-of-bounds access. A server that must stand any
//!    local process at any cost can use [`MemifDevice::open`] instead: it copies into posted
//!    buffers and never holds a reference into peer memory.
//!
//! The client trusts its server more: received frames are its own pool buffers, which the
//! server maps and could still write while the client's stack reads them (a client connects to
//! a server it chose; a server takes any local process that can open its socket).
//!
//! # Compatibility notes
//!
//! DPDK's net_memif uses an *abstract* socket name by default (`socket-abstract=yes`): set
//! [`MemifConfig::socket_abstract`] to talk to it, or start DPDK with `socket-abstract=no`.
//! DPDK's client connects once, at port start: with a DPDK client, start the ustack server first.
//! The ring layout assumes 64-byte cache lines, as on x86-64 (DPDK builds for CPUs with 128-byte
//! lines lay rings out differently).
//!
//! A peer that restarts usually comes back with another MAC address; the stack's neighbour cache
//! may keep the old one for a while, so give restarted peers stable MAC addresses.

pub mod control;
mod device;
mod frame;
pub mod proto;
pub mod ring;
mod share;

pub use control::ControlError;
pub use device::MemifDevice;
pub use frame::MemifFrame;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::dev::LinkStats;
use crate::mem::{MemError, PageSize};

/// Which end of the memif connection this device is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum MemifRole {
    /// Listens on the socket and uses the client's shared memory ("master" in older memif).
    #[doc(alias = "master")]
    Server,
    /// Connects to the socket and owns the shared memory ("slave" in older memif).
    #[doc(alias = "slave")]
    Client,
}

/// How to open a [`MemifDevice`].
#[derive(Clone, Debug)]
pub struct MemifConfig {
    /// The control socket: a filesystem path (the directory must be writable by the server;
    /// clients need write permission on the socket file), or with
    /// [`socket_abstract`](Self::socket_abstract) a name in the abstract namespace. At most 107
    /// bytes.
    pub socket_path: PathBuf,
    /// Use an abstract socket name (DPDK's default) instead of a file.
    pub socket_abstract: bool,
    /// Server or client.
    pub role: MemifRole,
    /// Interface id: the client asks for it, the server answers to it. Default 0.
    pub interface_id: u32,
    /// Shared secret (at most 24 bytes): a server with one refuses clients without it; a client
    /// sends it.
    pub secret: Option<String>,
    /// Ring size as log2 of the number of slots (1..=14). A client proposes it (the server may
    /// lower it); a server takes what the client proposes. Default 10 (1024 slots).
    pub ring_size_log2: u8,
    /// Most bytes per descriptor, for a client: the size of the buffers it posts on S2C and the
    /// most it puts in one C2S descriptor (128..=65535). Frames longer than this travel as
    /// chains; the pool's buffers hold whole frames either way (`max(buffer_size, mtu + 14)`
    /// bytes each). Default 2048.
    pub buffer_size: usize,
    /// Queue pairs (rx/tx ring pairs, 1..=255). A client proposes them, a server takes at most
    /// this many. Default 1.
    pub queues: usize,
    /// IP MTU: frames up to `mtu + 14` bytes. Default 1500.
    pub mtu: usize,
    /// Frame buffers in the device's pool. `None`: enough for every ring slot twice over plus
    /// 1024 for frames the stack holds (client), or 4096 (server).
    pub pool_frames: Option<usize>,
    /// Most buffers a client keeps posted on each receive (S2C) ring. The server writes each
    /// frame into the buffer posted longest ago, so every posted buffer is written once per
    /// lap of the ring: with fewer posted, the server writes into buffers that are still in a
    /// cache. `None`: as many as fill about 2 MiB (232 at MTU 9000), at least 64, at most the
    /// ring's slots. A server that finds no buffer posted waits for the client's next refill
    /// (nothing is lost). On an AMD EPYC VM, 1 MiB READs over MTU 9000 ran 25-40% faster with
    /// 128 or 256 posted than with all 1,024 slots.
    pub rx_posted_max: Option<usize>,
    /// Most frames moved by one `rx_burst` or `tx_burst`. Default 64.
    pub burst_max: usize,
    /// Our application and interface name, sent to the peer (cut to 31 bytes).
    pub name: String,
    /// Page size wanted for the frame pool (falls back to base pages). Default 2 MiB.
    pub page_size: PageSize,
    /// First delay before a client retries connecting; doubles up to
    /// [`reconnect_backoff_max`](Self::reconnect_backoff_max). Default 10 ms.
    pub reconnect_backoff_min: Duration,
    /// Longest delay between a client's connection attempts. Default 500 ms.
    pub reconnect_backoff_max: Duration,
    /// A handshake not finished in this time is abandoned. Default 5 s.
    pub handshake_timeout: Duration,
    /// How often the control socket is read while the link is up. Default 1 ms.
    pub control_poll_interval: Duration,
    /// Tell the stack that received checksums need not be verified (shared memory does not
    /// corrupt), and tell a ustack peer it may leave them out (see
    /// [`elide_tx_checksums`](Self::elide_tx_checksums)). Default true.
    pub trust_rx_checksums: bool,
    /// Leave the IPv4 and TCP checksums out of frames sent to a peer that announced it does not
    /// verify them (a ustack peer with [`trust_rx_checksums`](Self::trust_rx_checksums)); to
    /// any other peer frames carry complete checksums. Default true.
    pub elide_tx_checksums: bool,
    /// Regions a server accepts from one client (1..=256). Default 16.
    pub regions_max: usize,
    /// Longest region a server maps. Default 64 GiB.
    pub region_len_max: u64,
}

impl MemifConfig {
    /// A configuration with defaults for everything but the socket and the role.
    pub fn new(socket_path: impl Into<PathBuf>, role: MemifRole) -> MemifConfig {
        MemifConfig {
            socket_path: socket_path.into(),
            socket_abstract: false,
            role,
            interface_id: 0,
            secret: None,
            ring_size_log2: 10,
            buffer_size: 2048,
            queues: 1,
            mtu: 1500,
            pool_frames: None,
            rx_posted_max: None,
            burst_max: 64,
            name: "ustack".into(),
            page_size: PageSize::Huge2M,
            reconnect_backoff_min: Duration::from_millis(10),
            reconnect_backoff_max: Duration::from_millis(500),
            handshake_timeout: Duration::from_secs(5),
            control_poll_interval: Duration::from_millis(1),
            trust_rx_checksums: true,
            elide_tx_checksums: true,
            regions_max: 16,
            region_len_max: 64 << 30,
        }
    }
}

/// Errors from opening a [`MemifDevice`].
#[derive(Debug, thiserror::Error)]
pub enum MemifError {
    /// A configuration value out of range.
    #[error("invalid memif configuration: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field of [`MemifConfig`].
        field: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        reason: &'static str,
    },
    /// A memif server is already listening on the socket.
    #[error(
        "another process is listening on memif socket {socket}: stop that server, or give this \
         one another socket_path"
    )]
    AddressInUse {
        /// The socket.
        socket: String,
    },
    /// The socket could not be bound.
    #[error(
        "cannot bind memif socket {socket}: {source}; the directory must exist and be writable \
         by this user"
    )]
    Bind {
        /// The socket.
        socket: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The shared frame pool could not be made.
    #[error("memif frame memory: {0}")]
    Memory(#[from] MemError),
}

/// Counters of a [`MemifDevice`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct MemifStats {
    /// Frames and bytes moved, dropped (`tx_dropped` counts frames sent while the link was down)
    /// and broken (runts, oversized frames).
    pub link: LinkStats,
    /// Descriptors the peer wrote that point outside the shared regions (or at another buffer
    /// than the one posted in that slot), or claim an impossible length: rejected, never used.
    pub rejected_desc: u64,
    /// Ring `head`/`tail` values the peer moved beyond what the protocol allows; each ended the
    /// connection.
    pub bad_ring_index: u64,
    /// Frames a server built in place, in buffers its client posted, and sent (no copy).
    pub tx_in_place: u64,
    /// Bytes a server copied from its own buffers into buffers its client posted (frames that
    /// could not be built in place, or every frame of a device opened with
    /// [`MemifDevice::open`]).
    pub tx_copied_bytes: u64,
    /// Frames sent over several descriptors (a chain).
    pub tx_chains: u64,
    /// Frames received over several descriptors (a chain).
    pub rx_chains: u64,
    /// Connections established.
    pub connects: u64,
    /// Connections established after an earlier one ended.
    pub reconnects: u64,
    /// Established connections that ended (peer hang-up, DISCONNECT, detected violation).
    pub disconnects: u64,
    /// Handshakes that failed (refused either way, timed out, or the peer hung up during it).
    pub handshake_failures: u64,
    /// Connection attempts by a client (each `connect` on the socket).
    pub connect_attempts: u64,
    /// Further clients a busy server turned away.
    pub connections_refused: u64,
}

impl MemifStats {
    /// Adds `other`'s counters to these (the devices of per-core shards as one).
    pub fn add(&mut self, other: &MemifStats) {
        self.link.add(&other.link);
        let MemifStats {
            link: _,
            rejected_desc,
            bad_ring_index,
            tx_in_place,
            tx_copied_bytes,
            tx_chains,
            rx_chains,
            connects,
            reconnects,
            disconnects,
            handshake_failures,
            connect_attempts,
            connections_refused,
        } = other;
        self.rejected_desc += *rejected_desc;
        self.bad_ring_index += *bad_ring_index;
        self.tx_in_place += *tx_in_place;
        self.tx_copied_bytes += *tx_copied_bytes;
        self.tx_chains += *tx_chains;
        self.rx_chains += *rx_chains;
        self.connects += *connects;
        self.reconnects += *reconnects;
        self.disconnects += *disconnects;
        self.handshake_failures += *handshake_failures;
        self.connect_attempts += *connect_attempts;
        self.connections_refused += *connections_refused;
    }
}

/// Where the device's connection stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MemifState {
    /// A server with no client, or a client waiting to retry connecting.
    Idle,
    /// The control connection is open and the handshake is under way.
    Handshake,
    /// Rings are mapped and frames move.
    Up,
}

//! [`XdpDevice`]: one queue of a Linux interface through an AF_XDP socket, as a
//! [`PacketDevice`].
//!
//! # How frames move
//!
//! The UMEM (the memory the kernel and ustack exchange frames in) is a [`BufPool`] of 2048- or
//! 4096-byte buffers, in 2 MiB hugepages when there are any (the pool falls back to base pages
//! by itself, with a warning). Every frame is a [`PoolBuf`] while ustack holds it and is *lent*
//! to the kernel ([`BufPool::lend`]) while a ring holds it:
//!
//! ```text
//!   pool --alloc+lend--> fill ring --kernel receives--> RX ring --reclaim--> PoolBuf (stack)
//!   PoolBuf (stack) --lend--> TX ring --kernel sends--> completion ring --reclaim--> pool
//! ```
//!
//! Received frames go to the stack without a copy; frames the stack writes are `PoolBuf`s of
//! the same pool ([`PacketDevice::tx_alloc`]) that go on the TX ring as they are. Every address
//! the kernel hands back goes through [`BufPool::reclaim`], which refuses one that is out of
//! range, misaligned or not lent (counted in [`XdpStats::bad_descriptors`]), so neither a kernel
//! bug nor a ustack bug can make two owners of one frame.
//!
//! The fill ring is topped up on every [`PacketDevice::rx_burst`], from the frames the pool can
//! spare beyond a reserve kept for transmitting (`tx_ring_len + 2 * burst_max`), so receiving
//! can never take the frames the stack needs to answer. Give it 8192 or more frames: on veth a
//! smaller fill ring starves under load ([`XdpStats::fill_starved`] and the kernel's
//! `rx_fill_ring_empty_descs` count it).
//!
//! # System calls
//!
//! With `need_wakeup` (the default), the rings run without system calls unless the kernel asks
//! for one through a ring flag: a busy poll loop that finds nothing to do makes none. In copy
//! mode the kernel only transmits from inside a system call, so every TX burst ends with a
//! `sendto` kick (one per 32 frames: the kernel sends at most 32 per call); in zero-copy mode
//! only when the driver asks. [`PacketDevice::wait`] is `poll()` on the socket.
//!
//! # Busy polling
//!
//! With [`XdpConfig::busy_poll`] ([`BusyPoll::Auto`] or [`BusyPoll::On`]) the socket gets
//! `SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL` ([`XdpConfig::busy_poll_timeout_us`]) and
//! `SO_BUSY_POLL_BUDGET` ([`XdpConfig::busy_poll_budget`]), as the kernel's AF_XDP
//! documentation describes: an `rx_burst` that finds the RX ring empty makes one
//! `recvfrom(MSG_DONTWAIT)`, which runs the queue's NAPI poll (driver receive, XDP program,
//! copy into the UMEM) on this thread, and every TX burst with frames pending is kicked with
//! `sendto`, which busy-polls too. Where the kernel refuses an option (`EPERM` without
//! `CAP_NET_ADMIN`, `ENOPROTOOPT` without `CONFIG_NET_RX_BUSY_POLL`), `Auto` logs one warning
//! and keeps the wakeup path; [`XdpModeInfo::busy_poll`] says which happened and why.
//! Busy polling needs the socket to know the queue's NAPI context ([`XdpStats::napi_id`]
//! non-zero once traffic flowed): native XDP on a real NIC; not generic XDP, and not veth on
//! Linux 6.18 (measured 0: veth registers its XDP queue before the NAPI context is numbered),
//! where the options are harmless and the kicks plain system calls. On a real NIC, preferred busy polling keeps the device's interrupts off only with
//! `/sys/class/net/IFACE/napi_defer_hard_irqs` (e.g. 2) and `gro_flush_timeout` (e.g. 200000
//! ns) set: the kernel then leaves the queue to the application's calls and reschedules its
//! softirq only when they stop for that long. `open` logs when a physical device has them at 0.
//!
//! # Frames larger than a UMEM frame (multi-buffer)
//!
//! A received frame must fit a UMEM frame after the headroom: `frame_len - 256 - headroom`
//! bytes (3840 with 4096-byte frames). When the interface's MTU does not fit (and
//! [`XdpConfig::multi_buffer`] is on), `open` loads the program with `BPF_F_XDP_HAS_FRAGS`
//! and binds with `XDP_USE_SG`: the kernel copies each packet into as many UMEM frames as it
//! needs (the first with the headroom, all but the last full), chained with `XDP_PKT_CONTD`.
//! `rx_burst` copies a chain into one staging buffer of the interface's MTU + 14 bytes (a pool
//! of [`XdpConfig::jumbo_frames`]), checking every link: at most 18 of them, each a frame lent
//! to the kernel, the whole no longer than the MTU allows; a broken chain is dropped to its
//! end (`rx_bad_chains`). A frame that fits one UMEM frame still reaches the stack without a
//! copy. In this mode [`PacketDevice::tx_alloc`] hands out staging buffers (the stack cannot
//! say in advance how long a frame will be), and `tx_burst` copies each frame into whole UMEM
//! frames, one descriptor each, chained with `XDP_PKT_CONTD`. So with the `copy-count` feature,
//! [`crate::copies::Pass::Device`] counts one pass per byte of every received frame longer
//! than a UMEM frame and of every sent frame; without multi-buffer it counts nothing (both
//! directions are zero-copy), except frames of another pool handed to `tx_burst`.
//!
//! Why a larger MTU stalled or was refused before: without multi-buffer, the kernel drops
//! every packet longer than the UMEM frame on its way to the socket (`xsk_rcv_check`,
//! counted only in the socket's `rx_dropped`), so handshakes and ACKs pass and the first
//! full-sized segment never arrives: TCP stalls with nothing logged (hence the MTU check in
//! `open`). Below that limit veth has its own: native XDP with a program not flagged for
//! fragments is refused with `ERANGE` ("Peer MTU is too large to set XDP") once the peer's MTU
//! exceeds `4096 - 256 (XDP headroom) - 320 (skb_shared_info) - 14` = 3506 bytes, since veth
//! gives such a program one page per packet, and `XdpMode::Auto` falls back to generic XDP.
//! With the fragments flag veth takes MTUs up to 64 KiB natively and hands the program the
//! first page with the rest as fragments, so `open` flags the program whenever MTU + 14
//! exceeds those 3520 bytes, even when a frame still fits one UMEM frame (MTUs 3507 to 3826 on
//! 4 KiB frames then stay native, each packet in one descriptor, without multi-buffer). Where
//! the kernel refuses a step (a kernel before 6.6, a zero-copy driver without multi-buffer),
//! `open` fails with [`XdpError::MultiBufferRefused`], naming the MTU, the frame size and what
//! to do.
//!
//! # Modes
//!
//! [`XdpDevice::open`] tries native XDP (in the driver) first and falls back to generic XDP (on
//! socket buffers, any driver), and binds zero-copy first and falls back to copy mode; each
//! choice is logged and kept in [`XdpDevice::mode`]. veth, the test topology, has native and
//! generic XDP but copy mode only.
//!
//! # The XDP program
//!
//! Its instruction listing is in `src/dev/af_xdp/program.rs`, its C source in
//! `pmd/xdp_redirect.c`. With [`XdpConfig::filter_ipv4`] set (the recommended setting), only
//! IPv4 packets to that address and ARP packets asking for or answering to it go to ustack;
//! everything else goes to the kernel (`XDP_PASS`), so the host keeps using the interface for
//! its own addresses. The kernel never answers ARP for an address it does not have: ustack's
//! stack answers ARP for its address itself. Without a filter the queue's whole traffic goes to ustack. The program is
//! attached through a BPF link: when the device is dropped, or the process dies in any way
//! (`SIGKILL` included), the kernel detaches it and the interface works as before.
//!
//! One `XdpDevice` per interface: a second one on another queue of the same interface would
//! find the first one's program attached (`EBUSY`).
//!
//! # Addresses
//!
//! Give the stack the interface's own MAC address ([`XdpDevice::mac`]): a NIC drops unicast
//! frames for other addresses before XDP runs (unless promiscuous), and peers that cached the
//! address in their ARP tables keep reaching a restarted server (a random MAC per process
//! leaves them sending to the old one for tens of seconds). Sharing the MAC with the kernel is
//! fine: the program tells the two apart by IPv4 address.
//!
//! # Checksums
//!
//! Copy-mode AF_XDP offers no checksum offload, so the device claims none and the stack checks
//! every received checksum and computes every transmitted one. Beware of kernel peers on veth:
//! with TX checksum offload on (veth's default), the kernel sends TCP and UDP with only the
//! pseudo-header sum in the checksum field (`CHECKSUM_PARTIAL`), expecting the receiving kernel
//! not to check; AF_XDP hands those frames over as they are and ustack's stack drops them as
//! corrupt (measured: a kernel client's SYNs are dropped and counted in the stack's
//! `rx_bad_checksum`, in native and generic mode, `tests/af_xdp.rs`). Turn offload off on the
//! peer (`ethtool -K PEER tx off`; [`VethPair`](crate::sys::netns::VethPair) does it by
//! default). Turning it off also turns off TSO, so the peer sends no frame larger than the MTU
//! (GSO segments in software before the veth), which generic mode needs.
//!
//! # Restarting
//!
//! A queue stays busy for a few tens of milliseconds after the socket that held it closed;
//! binding returns `EBUSY` meanwhile. `open` retries with backoff for up to 2 s (logged).

mod caps;
mod config;
mod error;
mod mode;
mod program;
mod setup;

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

pub use crate::sys::xdp::{XskStatistics, XskStep};
pub use config::{BusyPoll, XdpConfig};
pub use error::{Attempts, CapList, MemlockLimit, XdpError};
pub use mode::{AttachMode, BindMode, XdpMode, ZeroCopy};

use crate::dev::{Batch, ChecksumCaps, DeviceCaps, LinkStats, PacketDevice, ETH_HEADER_LEN};
use crate::mem::{BufPool, PageSize, PoolBuf};
use crate::sys::bpf;
use crate::sys::xdp::{self as sys, TxPacket, Xsk, XskRings};
use crate::time::Instant;
use setup::{
    attach, bind_sg, check_capabilities, load_program, load_program_frags, lookup, map_error,
    socket_error, MacText, MAP_NAME,
};

/// Longest frame veth (and drivers like it) hands an XDP program that is not flagged for
/// fragments: one 4 KiB page minus the XDP headroom (256) and `skb_shared_info` (320). veth
/// refuses to attach such a program natively when its peer's MTU + 14 exceeds this (`ERANGE`).
const ONE_PAGE_FRAME: usize = 4096 - 256 - 320;

/// Completions reclaimed per ring read.
const COMPLETION_BATCH: u32 = 256;
/// Most `sendto` kicks per TX burst (each sends at most 32 frames in copy mode).
const TX_KICKS_MAX: u32 = 64;

/// What [`XdpDevice::open`] ended up with.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct XdpModeInfo {
    /// Where the program runs.
    pub attach: AttachMode,
    /// Zero-copy (as the kernel reports it after binding) or copy.
    pub bind: BindMode,
    /// Whether need_wakeup is on.
    pub need_wakeup: bool,
    /// What became of [`XdpConfig::busy_poll`].
    pub busy_poll: BusyPollState,
    /// Whether frames larger than a UMEM frame travel in several (multi-buffer, see the
    /// module docs).
    pub multi_buffer: bool,
    /// Whether the program was loaded for multi-buffer packets (`BPF_F_XDP_HAS_FRAGS`): with
    /// multi-buffer, and for MTUs above 3506 (veth's native limit for other programs).
    pub frags: bool,
    /// Page size the UMEM got.
    pub page_size: PageSize,
    /// Whether only the filtered address's traffic comes to the socket.
    pub filtered: bool,
    /// `EBUSY` retries before the bind (or attach) succeeded.
    pub busy_retries: u32,
}

/// What became of [`XdpConfig::busy_poll`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BusyPollState {
    /// Not asked for: the wakeup path.
    Off,
    /// The socket options are set: empty RX polls and TX bursts drive the queue's NAPI.
    On {
        /// `SO_BUSY_POLL`, microseconds.
        timeout_us: u32,
        /// `SO_BUSY_POLL_BUDGET`.
        budget: u32,
    },
    /// Asked for with [`BusyPoll::Auto`] and refused by the kernel: the wakeup path.
    Refused {
        /// The option refused.
        option: &'static str,
        /// Its error number.
        errno: i32,
    },
}

impl BusyPollState {
    /// Whether busy polling is set up.
    pub fn is_on(&self) -> bool {
        matches!(self, BusyPollState::On { .. })
    }
}

impl std::fmt::Display for BusyPollState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            BusyPollState::Off => f.write_str("off"),
            BusyPollState::On { timeout_us, budget } => {
                write!(f, "on ({timeout_us} us, budget {budget})")
            }
            BusyPollState::Refused { option, errno } => write!(
                f,
                "refused ({option}: {}), wakeup path",
                io::Error::from_raw_os_error(errno)
            ),
        }
    }
}

/// Counters of an [`XdpDevice`], beyond [`LinkStats`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct XdpStats {
    /// The link counters (kernel drops included in `rx_dropped`, invalid TX descriptors in
    /// `tx_errors`).
    pub link: LinkStats,
    /// `rx_burst` calls that found the RX ring empty.
    pub rx_empty_polls: u64,
    /// Refills after which the fill ring held less than a quarter of its entries because the
    /// pool had no frame to spare (the kernel then drops frames: see `kernel`).
    pub fill_starved: u64,
    /// `tx_burst` calls that left frames behind because the TX ring was full.
    pub tx_ring_full: u64,
    /// `sendto` kicks to make the kernel transmit.
    pub tx_kicks: u64,
    /// Kicks that failed with something other than "try later".
    pub tx_kick_errors: u64,
    /// `recvfrom` kicks (need_wakeup on the fill ring, or busy polling).
    pub rx_kicks: u64,
    /// Addresses from the RX or completion ring that were not a frame lent to the kernel
    /// (refused by `BufPool::reclaim`; the frame, if any, is not reused).
    pub bad_descriptors: u64,
    /// Received frames that came in several UMEM frames (multi-buffer) and were put together
    /// (copied into a staging buffer).
    pub rx_multi_buffer_frames: u64,
    /// Bytes in those frames.
    pub rx_multi_buffer_bytes: u64,
    /// Multi-buffer chains dropped as broken: too many links, longer than the MTU allows, an
    /// unknown option, a link that was not a lent frame, or a chain without multi-buffer on
    /// (also counted in `link.rx_errors`).
    pub rx_bad_chains: u64,
    /// Multi-buffer frames dropped for want of a staging buffer (also in `link.rx_dropped`).
    pub rx_no_staging: u64,
    /// Frames sent in several UMEM frames (multi-buffer).
    pub tx_multi_buffer_frames: u64,
    /// Frames copied into UMEM frames to be sent (staging buffers, other pools' frames).
    pub tx_copied_frames: u64,
    /// `tx_burst` calls that stopped because the pool had no UMEM frame to copy into.
    pub tx_no_frame: u64,
    /// The socket's NAPI context (`SO_INCOMING_NAPI_ID`), 0 for none yet: busy polling drives
    /// it when set.
    pub napi_id: u32,
    /// The kernel's own counters for the socket (zero if they could not be read).
    pub kernel: XskStatistics,
}

impl XdpStats {
    /// Adds `other`'s counters to these (the sockets of per-core shards as one); `napi_id` is
    /// kept if set, else taken from `other`.
    pub fn add(&mut self, other: &XdpStats) {
        self.link.add(&other.link);
        self.kernel.add(&other.kernel);
        if self.napi_id == 0 {
            self.napi_id = other.napi_id;
        }
        let XdpStats {
            link: _,
            kernel: _,
            napi_id: _,
            rx_empty_polls,
            fill_starved,
            tx_ring_full,
            tx_kicks,
            tx_kick_errors,
            rx_kicks,
            bad_descriptors,
            rx_multi_buffer_frames,
            rx_multi_buffer_bytes,
            rx_bad_chains,
            rx_no_staging,
            tx_multi_buffer_frames,
            tx_copied_frames,
            tx_no_frame,
        } = other;
        self.rx_empty_polls += *rx_empty_polls;
        self.fill_starved += *fill_starved;
        self.tx_ring_full += *tx_ring_full;
        self.tx_kicks += *tx_kicks;
        self.tx_kick_errors += *tx_kick_errors;
        self.rx_kicks += *rx_kicks;
        self.bad_descriptors += *bad_descriptors;
        self.rx_multi_buffer_frames += *rx_multi_buffer_frames;
        self.rx_multi_buffer_bytes += *rx_multi_buffer_bytes;
        self.rx_bad_chains += *rx_bad_chains;
        self.rx_no_staging += *rx_no_staging;
        self.tx_multi_buffer_frames += *tx_multi_buffer_frames;
        self.tx_copied_frames += *tx_copied_frames;
        self.tx_no_frame += *tx_no_frame;
    }
}

/// One queue of a network interface through AF_XDP. See the [module docs](self).
///
/// Dropping it detaches the program (closing the BPF link) and closes the socket.
pub struct XdpDevice {
    // Field order is drop order: detach the program first (when this is the last socket
    // behind it), then the socket and its rings.
    attached: Arc<Attached>,
    xsk: Xsk,
    pool: BufPool,
    ifname: String,
    ifindex: u32,
    queue_id: u32,
    mac: [u8; 6],
    caps: DeviceCaps,
    mode: XdpModeInfo,
    fill_ring_len: u32,
    tx_reserve: usize,
    counters: XdpStats,
    bad_desc_warned: bool,
    /// Multi-buffer frames being put together (and the staging pool).
    rx_chain: RxChain,
    /// The staging pool `tx_alloc` hands out with multi-buffer on.
    staging: Option<BufPool>,
}

impl XdpDevice {
    /// Opens queue `config.queue_id` of interface `config.ifname` (looked up in the calling
    /// thread's network namespace): builds the UMEM, attaches the program (native, else
    /// generic, as `config.mode` allows), binds the socket (zero-copy, else copy, as
    /// `config.zero_copy` allows; retrying `EBUSY` for up to 2 s) and fills the fill ring.
    ///
    /// Every choice is logged (`tracing`, target `ustack::dev::af_xdp`) and kept in
    /// [`XdpDevice::mode`].
    pub fn open(config: &XdpConfig) -> Result<XdpDevice, XdpError> {
        let p = Prepared::new(config)?;
        let attached = Arc::new(p.attach(config, config.queue_id + 1)?);
        p.socket(config, attached)
    }

    /// Opens queues `0..queues` of interface `config.ifname`, one socket each, for per-core
    /// shards: one program and one XSKMAP (a slot per queue) attached once, each socket with
    /// its own UMEM and rings, bound to its queue; device `i` is queue `i`. The interface's
    /// receive steering (RSS on a NIC; on a veth, the queue the sending side picked) decides
    /// which device gets a flow. The program stays attached until the last device is
    /// dropped. `config.queue_id` is ignored. Fails naming the limit when the interface has
    /// fewer queues.
    pub fn open_queues(config: &XdpConfig, queues: u32) -> Result<Vec<XdpDevice>, XdpError> {
        if queues == 0 || queues > config::QUEUE_ID_MAX + 1 {
            return Err(XdpError::InvalidConfig {
                field: "queues",
                value: u64::from(queues),
                reason: "must be within 1..=1024",
            });
        }
        let p = Prepared::new(config)?;
        let attached = Arc::new(p.attach(config, queues)?);
        (0..queues)
            .map(|q| {
                let mut c = config.clone();
                c.queue_id = q;
                p.socket(&c, Arc::clone(&attached)).map_err(|e| match e {
                    XdpError::Bind { .. } | XdpError::Socket { .. } if q > 0 => {
                        XdpError::TooFewQueues {
                            ifname: config.ifname.clone(),
                            queue_id: q,
                            wanted: queues,
                            source: Box::new(e),
                        }
                    }
                    e => e,
                })
            })
            .collect()
    }

    /// Checks, cheaply and without attaching or binding anything, whether AF_XDP could be
    /// opened on `ifname` (in the calling thread's network namespace): the interface exists,
    /// the process has the capabilities, the kernel has AF_XDP sockets and accepts the program
    /// (loaded and closed again), and the default UMEM can be locked. Whether the driver
    /// accepts native XDP is only known when attaching (`open` falls back to generic).
    pub fn probe(ifname: &str) -> Result<(), XdpError> {
        lookup(ifname)?;
        let caps = check_capabilities(ifname)?;
        sys::probe_socket().map_err(|source| match source.raw_os_error() {
            Some(libc::EAFNOSUPPORT) => XdpError::NotSupported {
                op: "creating an AF_XDP socket",
                config: "AF_XDP sockets (CONFIG_XDP_SOCKETS)",
                source,
            },
            Some(libc::EPERM | libc::EACCES) => XdpError::PermissionDenied {
                ifname: ifname.to_string(),
                op: "creating an AF_XDP socket",
                source,
            },
            _ => XdpError::Io {
                ifname: ifname.to_string(),
                op: "creating an AF_XDP socket",
                source,
            },
        })?;
        let map = bpf::create_xskmap(1, MAP_NAME)
            .map_err(|source| map_error(ifname, "creating the XSKMAP", source))?;
        let insns = program::instructions(map.as_raw_fd(), Some(Ipv4Addr::new(192, 0, 2, 1)));
        drop(load_program(ifname, &insns, false)?);
        if !caps::has(caps, caps::CAP_IPC_LOCK) {
            let defaults = XdpConfig::new(ifname);
            let umem_len = defaults.frames * defaults.frame_len;
            let limit = sys::memlock_limit().unwrap_or(Some(0));
            if limit.is_some_and(|l| (l as usize) < umem_len) {
                return Err(XdpError::LockedMemory {
                    umem_len,
                    limit: MemlockLimit(limit),
                    source: io::Error::new(
                        io::ErrorKind::OutOfMemory,
                        "probe: the default UMEM would exceed the locked-memory limit",
                    ),
                });
            }
        }
        Ok(())
    }

    /// How the device was set up: native or generic XDP, zero-copy or copy, and the rest.
    pub fn mode(&self) -> XdpModeInfo {
        self.mode
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface index (in the namespace it was opened in).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The interface's MAC address. Give it to the stack (`StackConfig::mac`): a NIC drops
    /// unicast frames to any other address before XDP sees them (unless promiscuous), and peers
    /// that cached the address keep reaching a restarted process.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The bound queue.
    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    /// The UMEM pool (shared by receive and transmit).
    pub fn pool(&self) -> &BufPool {
        &self.pool
    }

    /// All counters, the kernel's included (one `getsockopt`).
    pub fn xdp_stats(&self) -> XdpStats {
        let mut s = self.counters;
        if let Ok(k) = self.xsk.statistics() {
            s.kernel = k;
            s.link.rx_dropped += k.rx_dropped + k.rx_ring_full + k.rx_fill_ring_empty_descs;
            s.link.tx_errors += k.tx_invalid_descs;
        }
        s.napi_id = self.xsk.napi_id().unwrap_or(0);
        s
    }

    /// Tops the fill ring up from the frames the pool can spare.
    fn refill(&mut self) {
        let Self {
            xsk,
            pool,
            counters,
            ..
        } = self;
        let spare = pool.available().saturating_sub(self.tx_reserve);
        let budget = spare.min(self.fill_ring_len as usize) as u32;
        if budget > 0 {
            xsk.fill_push(budget, || {
                let buf = pool.alloc()?;
                let idx = pool.lend(buf);
                Some(pool.buf_offset(idx) as u64)
            });
        }
        if xsk.fill_pending() < self.fill_ring_len / 4 && spare < self.fill_ring_len as usize {
            counters.fill_starved += 1;
        }
        if self.mode.need_wakeup && xsk.fill_needs_wakeup() {
            counters.rx_kicks += 1;
            let _ = xsk.kick_rx();
        }
    }

    /// Takes transmitted frames off the completion ring and returns them to the pool.
    fn reap_completions(&mut self) {
        let Self { xsk, pool, .. } = self;
        let stride = xsk.frame_len();
        let mut bad = 0;
        loop {
            let n = xsk.complete_pop(COMPLETION_BATCH, |addr| {
                match reclaim(pool, stride, addr, 0) {
                    // Back to the pool.
                    Some(buf) => drop(buf),
                    None => bad += 1,
                }
            });
            if n < COMPLETION_BATCH {
                break;
            }
        }
        if bad > 0 {
            self.note_bad_descriptors(bad, "completion");
        }
    }

    fn note_bad_descriptors(&mut self, n: u64, ring: &'static str) {
        self.counters.bad_descriptors += n;
        if !self.bad_desc_warned {
            self.bad_desc_warned = true;
            tracing::warn!(
                iface = %self.ifname,
                ring,
                "the kernel returned {n} address(es) that are not frames lent to it; ignored \
                 (counted in bad_descriptors; further ones are not logged)"
            );
        }
    }

    /// Makes the kernel transmit what is on the TX ring, if it needs a system call for that.
    fn kick_tx(&mut self) {
        let mut kicks = 0;
        while kicks < TX_KICKS_MAX {
            let before = self.xsk.tx_pending();
            // Busy polling kicks every burst: the kick is also what drives the queue's NAPI.
            if before == 0
                || (self.mode.need_wakeup
                    && !self.mode.busy_poll.is_on()
                    && !self.xsk.tx_needs_wakeup())
            {
                break;
            }
            kicks += 1;
            self.counters.tx_kicks += 1;
            if let Err(e) = self.xsk.kick_tx() {
                match e.raw_os_error() {
                    // More left (copy mode sends 32 per call), or "later".
                    Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS) => {}
                    _ => {
                        self.counters.tx_kick_errors += 1;
                        tracing::debug!(iface = %self.ifname, "sendto kick failed: {e}");
                        break;
                    }
                }
            }
            // In zero-copy mode the driver sends later, so nothing moved yet: one kick is it.
            if self.xsk.tx_pending() >= before {
                break;
            }
        }
    }
}

/// Sets the busy-poll options `config` asks for; see [`BusyPoll`].
fn setup_busy_poll(
    xsk: &Xsk,
    config: &XdpConfig,
    attach: AttachMode,
) -> Result<BusyPollState, XdpError> {
    if config.busy_poll == BusyPoll::Off {
        return Ok(BusyPollState::Off);
    }
    let result = xsk.set_busy_poll(config.busy_poll_timeout_us, config.busy_poll_budget);
    let state = busy_poll_outcome(config, result)?;
    if state.is_on() {
        if attach == AttachMode::Generic {
            tracing::info!(
                iface = %config.ifname,
                "busy polling set, but generic XDP has no NAPI context to drive: it changes \
                 nothing here (native XDP on a real NIC has one)"
            );
        }
        note_napi_deferral(&config.ifname);
    }
    Ok(state)
}

/// What `config.busy_poll` makes of the kernel's answer to the socket options: `Auto` falls
/// back (one warning), `On` fails.
fn busy_poll_outcome(
    config: &XdpConfig,
    result: Result<(), (&'static str, io::Error)>,
) -> Result<BusyPollState, XdpError> {
    match result {
        Ok(()) => Ok(BusyPollState::On {
            timeout_us: config.busy_poll_timeout_us,
            budget: config.busy_poll_budget,
        }),
        Err((option, source)) if config.busy_poll == BusyPoll::On => {
            Err(XdpError::BusyPollRefused {
                ifname: config.ifname.clone(),
                option,
                source,
            })
        }
        Err((option, source)) => {
            tracing::warn!(
                iface = %config.ifname,
                "busy polling refused ({option}: {source}); using the wakeup path (need_wakeup \
                 flags and poll())"
            );
            Ok(BusyPollState::Refused {
                option,
                errno: source.raw_os_error().unwrap_or(0),
            })
        }
    }
}

/// Logs when a physical device (one with `/sys/class/net/IFACE/device`) leaves its interrupts
/// undeferred, which preferred busy polling needs to keep them off. Read only; the sysfs seen
/// is the one of the namespace it was mounted in, so in another namespace nothing is found
/// and nothing is said.
fn note_napi_deferral(ifname: &str) {
    let dir = std::path::Path::new("/sys/class/net").join(ifname);
    if !dir.join("device").exists() {
        return;
    }
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    if read("napi_defer_hard_irqs") == Some(0) || read("gro_flush_timeout") == Some(0) {
        tracing::info!(
            iface = %ifname,
            "napi_defer_hard_irqs or gro_flush_timeout is 0: the NIC's interrupts stay on while \
             ustack busy-polls; for preferred busy polling set them, e.g. `echo 2 > \
             /sys/class/net/{ifname}/napi_defer_hard_irqs; echo 200000 > \
             /sys/class/net/{ifname}/gro_flush_timeout`"
        );
    }
}

/// What one descriptor did to the frame being put together ([`RxChain::push`]).
#[derive(Debug)]
enum Link {
    /// Taken (copied, or skipped as the rest of a dropped chain); the frame is not complete.
    Taken,
    /// The last link: the whole frame.
    Frame(PoolBuf),
    /// The chain was dropped here (broken, or no staging buffer); later links up to its end
    /// are skipped.
    Dropped(ChainDrop),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum ChainDrop {
    /// Too many links, too long, an unknown option, a bad descriptor, or multi-buffer off.
    Broken,
    /// No staging buffer free.
    NoStaging,
}

/// Puts frames that come in several descriptors (`XDP_PKT_CONTD` on all but the last) back
/// together in a staging buffer: at most [`sys::TX_FRAGS_MAX`] links and `frame_len_max`
/// bytes; a chain that breaks a rule is dropped and skipped to its end. State is kept between
/// `rx_burst` calls (a burst may end inside a chain). Never allocates: the staging buffers are
/// a pool made at `open`.
#[derive(Debug)]
struct RxChain {
    staging: Option<BufPool>,
    frame_len_max: usize,
    buf: Option<PoolBuf>,
    links: usize,
    skipping: bool,
}

impl RxChain {
    fn new(staging: Option<BufPool>, frame_len_max: usize) -> RxChain {
        RxChain {
            staging,
            frame_len_max,
            buf: None,
            links: 0,
            skipping: false,
        }
    }

    /// Whether a chain is under way (the next descriptor belongs to it).
    #[inline]
    fn active(&self) -> bool {
        self.buf.is_some() || self.skipping
    }

    /// Ends the current chain as dropped: skip to its end if more links follow.
    fn drop_chain(&mut self, more: bool, why: ChainDrop) -> Link {
        self.buf = None;
        self.links = 0;
        self.skipping = more;
        Link::Dropped(why)
    }

    /// One link of a chain: `data` (`None` for a descriptor that was not a frame lent to the
    /// kernel), `options` as the descriptor had them.
    fn push(&mut self, data: Option<&[u8]>, options: u32) -> Link {
        let more = options & sys::XDP_PKT_CONTD != 0;
        if self.skipping {
            self.skipping = more;
            return Link::Taken;
        }
        let Some(data) = data.filter(|_| options & !sys::XDP_PKT_CONTD == 0) else {
            return self.drop_chain(more, ChainDrop::Broken);
        };
        if self.buf.is_none() {
            let Some(staging) = &self.staging else {
                return self.drop_chain(more, ChainDrop::Broken);
            };
            let Some(mut buf) = staging.alloc() else {
                return self.drop_chain(more, ChainDrop::NoStaging);
            };
            buf.reset();
            self.buf = Some(buf);
            self.links = 0;
        }
        let buf = self.buf.as_mut().expect("chain buffer");
        let at = buf.len();
        self.links += 1;
        if self.links > sys::TX_FRAGS_MAX
            || at + data.len() > self.frame_len_max
            || !buf.set_len(at + data.len())
        {
            return self.drop_chain(more, ChainDrop::Broken);
        }
        buf.as_mut_slice()[at..].copy_from_slice(data);
        crate::copies::count(crate::copies::Pass::Device, data.len());
        if more {
            return Link::Taken;
        }
        self.links = 0;
        let frame = self.buf.take().expect("chain buffer");
        if frame.len() < ETH_HEADER_LEN {
            return Link::Dropped(ChainDrop::Broken);
        }
        Link::Frame(frame)
    }
}

/// Copies `frame` into as many whole UMEM frames of `pool` as it needs (`stride` bytes each,
/// from the frame's start: no headroom on transmit) and adds one descriptor per frame to
/// `packet`, lending them to the kernel. `false` (nothing taken) when the pool has too few
/// frames free. The caller checked that the pieces fit the ring and `TX_FRAGS_MAX`.
fn copy_to_umem(pool: &BufPool, frame: &PoolBuf, stride: usize, packet: &mut TxPacket) -> bool {
    let data = frame.as_slice();
    let pieces = data.len().div_ceil(stride);
    let mut bufs: [Option<PoolBuf>; sys::TX_FRAGS_MAX] = Default::default();
    for slot in bufs.iter_mut().take(pieces) {
        match pool.alloc() {
            Some(b) => *slot = Some(b),
            // The ones taken go back to the pool as `bufs` drops.
            None => return false,
        }
    }
    for (chunk, slot) in data.chunks(stride).zip(bufs.iter_mut()) {
        let mut buf = slot.take().expect("allocated above");
        let head = buf.headroom();
        let ok = buf.prepend(head).is_some() && buf.set_len(chunk.len());
        debug_assert!(ok, "a UMEM frame holds `stride` bytes from its start");
        buf.as_mut_slice().copy_from_slice(chunk);
        let idx = pool.lend(buf);
        let pushed = packet.push(pool.buf_offset(idx) as u64, chunk.len() as u32);
        debug_assert!(pushed, "at most TX_FRAGS_MAX pieces");
    }
    crate::copies::count(crate::copies::Pass::Device, data.len());
    true
}

/// Whether `buf` lies in `pool`'s memory (a buffer of that pool).
#[inline]
fn owns(pool: &BufPool, buf: &PoolBuf) -> bool {
    let (base, len) = pool.memory();
    let at = buf.as_slice().as_ptr() as usize;
    (base as usize..base as usize + len).contains(&at)
}

/// Pool buffer for UMEM address `addr` holding `len` bytes, if the address is one of a frame
/// lent to the kernel.
#[inline]
fn reclaim(pool: &BufPool, stride: u64, addr: u64, len: u32) -> Option<PoolBuf> {
    let idx = u32::try_from(addr / stride).ok()?;
    pool.reclaim(idx, (addr % stride) as usize, len as usize)
}

impl std::fmt::Debug for XdpDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpDevice")
            .field("ifname", &self.ifname)
            .field("queue_id", &self.queue_id)
            .field("mode", &self.mode)
            .field("caps", &self.caps)
            .field("link_fd", &self.attached.link.as_raw_fd())
            .field("stats", &self.counters)
            .finish()
    }
}

impl AsFd for XdpDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.xsk.as_fd()
    }
}

impl AsRawFd for XdpDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.xsk.as_raw_fd()
    }
}

impl PacketDevice for XdpDevice {
    type Frame = PoolBuf;

    fn mac_addr(&self) -> Option<[u8; 6]> {
        Some(self.mac())
    }

    fn caps(&self) -> DeviceCaps {
        self.caps
    }

    fn rx_burst(&mut self, _now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
        let want = batch.free().min(self.caps.burst_max) as u32;
        let frame_len_max = self.caps.frame_len_max();
        let mut got = 0;
        let mut bad = 0;
        let mut popped = 0;
        if want > 0 {
            let Self {
                xsk,
                pool,
                counters,
                rx_chain,
                ..
            } = self;
            let stride = xsk.frame_len();
            // At most `want` descriptors, so at most `want` frames: batch.push cannot fail.
            popped = xsk.rx_pop(want, |addr, len, options| {
                let buf = reclaim(pool, stride, addr, len);
                if buf.is_none() {
                    bad += 1;
                    // A lent frame with an impossible length: take the frame back anyway.
                    drop(reclaim(pool, stride, addr - addr % stride, 0));
                }
                let link = if options == 0 && !rx_chain.active() {
                    // One descriptor, one frame: to the stack as it is, without a copy.
                    let Some(buf) = buf else { return };
                    let len = buf.len();
                    if !(ETH_HEADER_LEN..=frame_len_max).contains(&len) {
                        counters.link.rx_errors += 1;
                        return;
                    }
                    Link::Frame(buf)
                } else {
                    // A link of a multi-buffer chain: copied into a staging buffer; the UMEM
                    // frame goes back to the pool (and the fill ring) at the end of this call.
                    match rx_chain.push(buf.as_ref().map(|b| b.as_slice()), options) {
                        Link::Frame(frame) => {
                            counters.rx_multi_buffer_frames += 1;
                            counters.rx_multi_buffer_bytes += frame.len() as u64;
                            Link::Frame(frame)
                        }
                        other => other,
                    }
                };
                match link {
                    Link::Taken => {}
                    Link::Frame(frame) => {
                        counters.link.rx_packets += 1;
                        counters.link.rx_bytes += frame.len() as u64;
                        if batch.push(frame).is_err() {
                            counters.link.rx_dropped += 1;
                        } else {
                            got += 1;
                        }
                    }
                    Link::Dropped(ChainDrop::Broken) => {
                        counters.rx_bad_chains += 1;
                        counters.link.rx_errors += 1;
                    }
                    Link::Dropped(ChainDrop::NoStaging) => {
                        counters.rx_no_staging += 1;
                        counters.link.rx_dropped += 1;
                    }
                }
            });
            if popped == 0 {
                counters.rx_empty_polls += 1;
                if self.mode.busy_poll.is_on() {
                    // Runs the queue's NAPI poll on this thread (preferred busy polling).
                    counters.rx_kicks += 1;
                    let _ = xsk.kick_rx();
                }
            }
        }
        if bad > 0 {
            self.note_bad_descriptors(bad, "RX");
        }
        if popped > 0 || self.xsk.fill_pending() < self.fill_ring_len / 2 {
            self.refill();
        }
        if self.xsk.complete_available() > 0 {
            self.reap_completions();
        }
        got
    }

    fn tx_alloc(&mut self) -> Option<PoolBuf> {
        // With multi-buffer a frame may be longer than a UMEM frame: a staging buffer, copied
        // into UMEM frames by tx_burst.
        if let Some(staging) = &self.staging {
            return staging.alloc();
        }
        if let Some(buf) = self.pool.alloc() {
            return Some(buf);
        }
        self.reap_completions();
        self.pool.alloc()
    }

    fn tx_burst(&mut self, _now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
        if self.xsk.complete_available() > 0 {
            self.reap_completions();
        }
        let frames_max = batch.len().min(self.caps.burst_max);
        let frame_len_max = self.caps.frame_len_max();
        // Descriptors: one per frame, or as many as the longest frame takes.
        let max = (frames_max * frame_len_max.div_ceil(self.xsk.frame_len() as usize)) as u32;
        let multi_buffer = self.mode.multi_buffer;
        let mut taken = 0;
        let mut no_frame = false;
        let mut ring_full = false;
        {
            let Self {
                xsk,
                pool,
                counters,
                ..
            } = self;
            let stride = xsk.frame_len() as usize;
            xsk.tx_push(max, |free, packet| {
                while taken < frames_max {
                    let Some(len) = batch.front().map(|f| f.len()) else {
                        return false;
                    };
                    if !(ETH_HEADER_LEN..=frame_len_max).contains(&len) {
                        drop(batch.pop());
                        taken += 1;
                        counters.link.tx_errors += 1;
                        continue;
                    }
                    if batch.front().is_some_and(|f| owns(pool, f)) {
                        // A UMEM frame (from tx_alloc without multi-buffer): lent as it is.
                        let frame = batch.pop().expect("front");
                        taken += 1;
                        let head = frame.headroom();
                        let idx = pool.lend(frame);
                        packet.push((pool.buf_offset(idx) + head) as u64, len as u32);
                        counters.link.tx_packets += 1;
                        counters.link.tx_bytes += len as u64;
                        return true;
                    }
                    // A staging buffer or another pool's frame: copied into whole UMEM
                    // frames, one descriptor each (several only with multi-buffer).
                    let pieces = len.div_ceil(stride);
                    if pieces > 1 && !multi_buffer {
                        drop(batch.pop());
                        taken += 1;
                        counters.link.tx_errors += 1;
                        continue;
                    }
                    if pieces as u32 > free {
                        ring_full = true;
                        return false;
                    }
                    if !copy_to_umem(pool, batch.front().expect("front"), stride, packet) {
                        no_frame = true;
                        return false;
                    }
                    drop(batch.pop());
                    taken += 1;
                    counters.link.tx_packets += 1;
                    counters.link.tx_bytes += len as u64;
                    counters.tx_copied_frames += 1;
                    if pieces > 1 {
                        counters.tx_multi_buffer_frames += 1;
                    }
                    return true;
                }
                false
            });
        }
        if no_frame {
            self.counters.tx_no_frame += 1;
        } else if ring_full || (!batch.is_empty() && taken < frames_max) {
            self.counters.tx_ring_full += 1;
        }
        self.kick_tx();
        taken
    }

    fn stats(&self) -> LinkStats {
        self.xdp_stats().link
    }

    fn wait(&mut self, timeout: Duration) {
        if self.xsk.rx_available() > 0 {
            return;
        }
        if self.xsk.tx_pending() > 0 {
            self.kick_tx();
        }
        if let Err(e) = self.xsk.poll_readable(timeout) {
            tracing::debug!(iface = %self.ifname, "poll on the AF_XDP socket failed: {e}");
        }
    }
}

/// The XDP program, its XSKMAP and its attachment to the interface, shared by the sockets of
/// one or several queues ([`XdpDevice::open_queues`]); detached when the last is dropped.
struct Attached {
    // Field order is drop order: detach first.
    link: OwnedFd,
    _prog: OwnedFd,
    map: OwnedFd,
    attach: AttachMode,
    frags: bool,
    retries: u32,
}

/// What `open` learns of the interface before attaching anything.
struct Prepared {
    ifname: String,
    ifindex: u32,
    mtu: usize,
    mac: [u8; 6],
    plan: config::FramePlan,
}

impl Prepared {
    fn new(config: &XdpConfig) -> Result<Prepared, XdpError> {
        config.validate()?;
        let ifname = config.ifname.clone();
        let ifindex = lookup(&ifname)?;
        check_capabilities(&ifname)?;
        let mtu = crate::sys::tap::mtu(&ifname).map_err(|source| XdpError::Io {
            ifname: ifname.clone(),
            op: "reading the interface's MTU (SIOCGIFMTU)",
            source,
        })?;
        let mac = sys::hw_addr(&ifname).map_err(|source| XdpError::Io {
            ifname: ifname.clone(),
            op: "reading the interface's MAC address (SIOCGIFHWADDR; AF_XDP here needs Ethernet)",
            source,
        })?;
        // A received frame must fit a UMEM frame after its headroom (frame_len - 256 -
        // headroom bytes), or the kernel drops it on its way to the socket without a trace
        // but the socket's rx_dropped: TCP then stalls on its first full-sized segment. veth
        // adds its own limit below that: native XDP refuses (ERANGE) a program that is not
        // multi-buffer capable once the peer's MTU exceeds 4096 - 256 - 320 - 14 = 3506
        // (one page per packet, minus XDP headroom and skb_shared_info). Larger MTUs need
        // multi-buffer: the program flagged BPF_F_XDP_HAS_FRAGS, the socket bound with
        // XDP_USE_SG, chains of descriptors. See "Frames larger than a UMEM frame" above.
        let plan = config
            .frame_plan(mtu)
            .map_err(|why| XdpError::MtuTooLarge {
                ifname: ifname.clone(),
                mtu,
                frame_len: config.frame_len,
                capacity: config.frame_capacity(),
                why,
            })?;
        Ok(Prepared {
            ifname,
            ifindex,
            mtu,
            mac,
            plan,
        })
    }

    fn mb_refused(&self, config: &XdpConfig) -> impl Fn(&'static str, io::Error) -> XdpError {
        let (ifname, mtu) = (self.ifname.clone(), self.mtu);
        let (frame_len, capacity) = (config.frame_len, config.frame_capacity());
        move |step, source| XdpError::MultiBufferRefused {
            ifname: ifname.clone(),
            mtu,
            frame_len,
            capacity,
            step,
            source,
        }
    }

    /// The map (with `slots` queue slots) first (the program refers to it), then the
    /// program, then the attachment: until a socket is in the map, the program passes the
    /// frames of its queue to the kernel.
    fn attach(&self, config: &XdpConfig, slots: u32) -> Result<Attached, XdpError> {
        let ifname = &self.ifname;
        let map = bpf::create_xskmap(slots, MAP_NAME)
            .map_err(|source| map_error(ifname, "creating the XSKMAP", source))?;
        let insns = program::instructions(map.as_raw_fd(), config.filter_ipv4);
        // Flagged for fragments when frames may be longer than one page's worth: needed for
        // multi-buffer, and it lets veth attach natively above MTU 3506 even when a frame still
        // fits one UMEM frame (the kernel then copies the fragments into one descriptor).
        let frame_len_max = self.mtu + ETH_HEADER_LEN;
        let frags = self.plan.multi_buffer || frame_len_max > ONE_PAGE_FRAME;
        let mb_refused = self.mb_refused(config);
        let (prog, frags) =
            load_program_frags(ifname, &insns, frags, self.plan.multi_buffer, &mb_refused)?;
        let (link, attach, retries) = attach(ifname, self.ifindex, prog.as_fd(), config.mode)?;
        Ok(Attached {
            link,
            _prog: prog,
            map,
            attach,
            frags,
            retries,
        })
    }

    /// A socket on `config.queue_id` behind `attached`: its UMEM, rings, bind, busy poll; in
    /// the map last.
    fn socket(&self, config: &XdpConfig, attached: Arc<Attached>) -> Result<XdpDevice, XdpError> {
        let (ifname, ifindex, mtu, mac, plan) = (
            self.ifname.clone(),
            self.ifindex,
            self.mtu,
            self.mac,
            self.plan,
        );
        let frame_len_max = mtu + ETH_HEADER_LEN;
        let mb_refused = self.mb_refused(config);
        let attach = attached.attach;
        let frags = attached.frags;
        let attach_retries = attached.retries;
        let pool = BufPool::with_capacity(
            config.frames,
            config.frame_len,
            sys::XDP_PACKET_HEADROOM + config.headroom,
            config.page_size,
        )?;
        debug_assert_eq!(pool.stride(), config.frame_len);
        // Staging buffers for frames larger than a UMEM frame (allocated once, here).
        let staging = if plan.multi_buffer {
            Some(BufPool::with_capacity(
                config.jumbo_frames,
                frame_len_max.next_multiple_of(64),
                0,
                config.page_size,
            )?)
        } else {
            None
        };

        let rings = XskRings {
            fill_len: config.fill_ring_len,
            completion_len: config.completion_ring_len,
            rx_len: config.rx_ring_len,
            tx_len: config.tx_ring_len,
        };
        let xsk = Xsk::new(
            &pool,
            config.headroom as u32,
            ifindex,
            config.queue_id,
            &rings,
        )
        .map_err(|e| socket_error(config, pool.memory().1, e))?;
        // Zero-copy under generic XDP cannot work: go straight to copy mode there.
        let zc = match (config.zero_copy, attach) {
            (ZeroCopy::Auto, AttachMode::Generic) => {
                tracing::info!(iface = %ifname, "generic XDP: binding in copy mode");
                ZeroCopy::Off
            }
            (z, _) => z,
        };
        let (bind, bind_retries) = bind_sg(&xsk, config, zc, plan.multi_buffer, &mb_refused)?;
        let zero_copy = xsk.zero_copy().unwrap_or(bind == BindMode::ZeroCopy);
        let bind = if zero_copy {
            BindMode::ZeroCopy
        } else {
            BindMode::Copy
        };

        let busy_poll = setup_busy_poll(&xsk, config, attach)?;

        let mode = XdpModeInfo {
            attach,
            bind,
            need_wakeup: config.need_wakeup,
            busy_poll,
            multi_buffer: plan.multi_buffer,
            frags,
            page_size: pool.page_size(),
            filtered: config.filter_ipv4.is_some(),
            busy_retries: attach_retries + bind_retries,
        };
        let mut dev = XdpDevice {
            attached,
            xsk,
            pool,
            ifname: ifname.clone(),
            ifindex,
            queue_id: config.queue_id,
            mac,
            caps: DeviceCaps {
                mtu,
                burst_max: config.burst_max,
                // Copy mode: no offload, and a kernel peer's partial checksums must be refused,
                // so the stack verifies everything (see the module docs).
                checksum: ChecksumCaps::default(),
            },
            mode,
            fill_ring_len: config.fill_ring_len,
            tx_reserve: config.tx_reserve(),
            counters: XdpStats::default(),
            bad_desc_warned: false,
            rx_chain: RxChain::new(staging.clone(), frame_len_max),
            staging,
        };
        dev.refill();
        // Last: from here on the program sends the queue's frames to the socket.
        bpf::map_update_u32(
            dev.attached.map.as_fd(),
            config.queue_id,
            dev.xsk.as_raw_fd() as u32,
        )
        .map_err(|source| map_error(&ifname, "putting the socket into the XSKMAP", source))?;
        tracing::info!(
            iface = %ifname,
            queue = config.queue_id,
            xdp = %attach,
            bind = %bind,
            need_wakeup = config.need_wakeup,
            busy_poll = %busy_poll,
            multi_buffer = plan.multi_buffer,
            frags_max = plan.frags,
            program_frags = frags,
            umem_frames = dev.pool.capacity(),
            frame_len = config.frame_len,
            page = %dev.pool.page_size(),
            filter = ?config.filter_ipv4,
            mtu,
            mac = %MacText(mac),
            "opened AF_XDP device"
        );
        Ok(dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_interface_is_a_clear_error() {
        let e = XdpDevice::open(&XdpConfig::new("ust-nonexist0")).unwrap_err();
        assert!(matches!(e, XdpError::NoSuchInterface { .. }), "{e:?}");
        assert!(e.to_string().contains("ust-nonexist0"), "{e}");
        let e = XdpDevice::probe("ust-nonexist0").unwrap_err();
        assert!(matches!(e, XdpError::NoSuchInterface { .. }), "{e:?}");
    }

    #[test]
    fn device_moves_between_threads() {
        fn send<T: Send>() {}
        send::<XdpDevice>();
        assert_eq!(
            MacText([2, 0, 0x5e, 0x10, 0x20, 0xff]).to_string(),
            "02:00:5e:10:20:ff"
        );
    }

    #[test]
    fn ownership_is_by_memory_range() {
        let a = BufPool::with_capacity(2, 2048, 256, PageSize::Base4K).unwrap();
        let b = BufPool::with_capacity(2, 2048, 256, PageSize::Base4K).unwrap();
        let (x, y) = (a.alloc().unwrap(), b.alloc().unwrap());
        assert!(owns(&a, &x) && !owns(&a, &y) && owns(&b, &y));
    }

    #[test]
    fn reclaim_checks_addresses() {
        let pool = BufPool::with_capacity(4, 2048, 256, PageSize::Base4K).unwrap();
        let b = pool.alloc().unwrap();
        let idx = pool.lend(b);
        let addr = pool.buf_offset(idx) as u64 + 256;
        assert!(
            reclaim(&pool, 2048, u64::MAX, 0).is_none(),
            "index past u32"
        );
        assert!(reclaim(&pool, 2048, addr + 2048, 10).is_none(), "not lent");
        let back = reclaim(&pool, 2048, addr, 60).expect("lent frame");
        assert_eq!((back.headroom(), back.len()), (256, 60));
        assert!(reclaim(&pool, 2048, addr, 60).is_none(), "only once");
    }

    const CONTD: u32 = sys::XDP_PKT_CONTD;

    fn frame(link: Link) -> PoolBuf {
        match link {
            Link::Frame(f) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chains_are_put_together_and_counted() {
        let staging = BufPool::with_capacity(2, 9024, 0, PageSize::Base4K).unwrap();
        let mut c = RxChain::new(Some(staging.clone()), 9014);
        let data: Vec<u8> = (0..9014u32).map(|i| (i * 7) as u8).collect();
        let before = crate::copies::snapshot();
        assert!(matches!(c.push(Some(&data[..3840]), CONTD), Link::Taken));
        assert!(c.active());
        assert!(matches!(
            c.push(Some(&data[3840..7680]), CONTD),
            Link::Taken
        ));
        let f = frame(c.push(Some(&data[7680..]), 0));
        assert_eq!(f.as_slice(), &data[..]);
        assert!(!c.active());
        let copied = crate::copies::snapshot().since(&before);
        if crate::copies::ENABLED {
            assert_eq!(copied.get(crate::copies::Pass::Device), 9014);
        }
        // The staging buffer goes back to its pool with the frame.
        assert_eq!(staging.available(), 1);
        drop(f);
        assert_eq!(staging.available(), 2);
    }

    #[test]
    fn broken_chains_are_dropped_to_their_end() {
        let staging = BufPool::with_capacity(1, 4096, 0, PageSize::Base4K).unwrap();
        let mut c = RxChain::new(Some(staging.clone()), 4000);
        let piece = [0u8; 1000];
        // Longer than the MTU allows: dropped at the fifth link, the sixth skipped.
        for _ in 0..4 {
            assert!(matches!(c.push(Some(&piece), CONTD), Link::Taken));
        }
        assert!(matches!(
            c.push(Some(&piece), CONTD),
            Link::Dropped(ChainDrop::Broken)
        ));
        assert!(c.active());
        assert!(matches!(c.push(Some(&piece), 0), Link::Taken));
        assert!(!c.active());
        assert_eq!(staging.available(), 1, "staging buffer back");
        // More than 18 links, however short.
        for _ in 0..18 {
            assert!(matches!(c.push(Some(&piece[..10]), CONTD), Link::Taken));
        }
        assert!(matches!(
            c.push(Some(&piece[..10]), 0),
            Link::Dropped(ChainDrop::Broken)
        ));
        assert!(!c.active(), "the last link ends the skipping at once");
        // A descriptor that was not a lent frame, and an unknown option bit.
        assert!(matches!(c.push(Some(&piece), CONTD), Link::Taken));
        assert!(matches!(
            c.push(None, CONTD),
            Link::Dropped(ChainDrop::Broken)
        ));
        assert!(matches!(c.push(Some(&piece), 0), Link::Taken));
        assert!(matches!(
            c.push(Some(&piece), CONTD | 2),
            Link::Dropped(ChainDrop::Broken)
        ));
        assert!(matches!(c.push(Some(&piece), 0), Link::Taken));
        // A frame shorter than an Ethernet header.
        assert!(matches!(c.push(Some(&piece[..4]), CONTD), Link::Taken));
        assert!(matches!(
            c.push(Some(&piece[..4]), 0),
            Link::Dropped(ChainDrop::Broken)
        ));
        // A good one still works after all that.
        assert!(matches!(c.push(Some(&piece), CONTD), Link::Taken));
        assert_eq!(frame(c.push(Some(&piece[..60]), 0)).len(), 1060);
    }

    #[test]
    fn chains_without_staging_buffers() {
        let staging = BufPool::with_capacity(1, 4096, 0, PageSize::Base4K).unwrap();
        let mut c = RxChain::new(Some(staging.clone()), 4000);
        let held = staging.alloc().unwrap();
        assert!(matches!(
            c.push(Some(&[0; 100]), CONTD),
            Link::Dropped(ChainDrop::NoStaging)
        ));
        assert!(matches!(c.push(Some(&[0; 100]), 0), Link::Taken));
        drop(held);
        // Multi-buffer off: a chain is broken.
        let mut off = RxChain::new(None, 1514);
        assert!(matches!(
            off.push(Some(&[0; 100]), CONTD),
            Link::Dropped(ChainDrop::Broken)
        ));
        assert!(matches!(off.push(Some(&[0; 100]), CONTD), Link::Taken));
        assert!(matches!(off.push(Some(&[0; 100]), 0), Link::Taken));
        assert!(!off.active());
    }

    #[test]
    fn frames_are_split_into_whole_umem_frames() {
        let umem = BufPool::with_capacity(4, 4096, 256, PageSize::Base4K).unwrap();
        let staging = BufPool::with_capacity(1, 9024, 0, PageSize::Base4K).unwrap();
        let mut f = staging.alloc().unwrap();
        assert!(f.set_len(9014));
        for (i, b) in f.as_mut_slice().iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut packet = TxPacket::default();
        assert!(copy_to_umem(&umem, &f, 4096, &mut packet));
        let lens: Vec<u32> = packet.descs().iter().map(|d| d.1).collect();
        assert_eq!(lens, [4096, 4096, 822]);
        assert_eq!(umem.available(), 1);
        let mut back = Vec::new();
        for &(addr, len) in packet.descs() {
            assert_eq!(addr % 4096, 0, "whole frames, from their start");
            let b = reclaim(&umem, 4096, addr, len).expect("lent");
            back.extend_from_slice(b.as_slice());
        }
        assert_eq!(back, f.as_slice());
        // Too few UMEM frames: nothing taken.
        let held: Vec<_> = (0..3).map(|_| umem.alloc().unwrap()).collect();
        let mut packet = TxPacket::default();
        assert!(!copy_to_umem(&umem, &f, 4096, &mut packet));
        assert!(packet.is_empty());
        assert_eq!(umem.available(), 1);
        drop(held);
    }

    #[test]
    fn busy_poll_falls_back_or_fails_as_asked() {
        let eperm = || {
            Err((
                "SO_PREFER_BUSY_POLL",
                io::Error::from_raw_os_error(libc::EPERM),
            ))
        };
        let auto = XdpConfig {
            busy_poll: BusyPoll::Auto,
            ..XdpConfig::new("eth0")
        };
        assert_eq!(
            busy_poll_outcome(&auto, eperm()).unwrap(),
            BusyPollState::Refused {
                option: "SO_PREFER_BUSY_POLL",
                errno: libc::EPERM
            }
        );
        assert_eq!(
            busy_poll_outcome(&auto, Ok(())).unwrap(),
            BusyPollState::On {
                timeout_us: 20,
                budget: 64
            }
        );
        let on = XdpConfig {
            busy_poll: BusyPoll::On,
            ..auto
        };
        let e = busy_poll_outcome(&on, eperm()).unwrap_err();
        assert!(matches!(e, XdpError::BusyPollRefused { .. }), "{e:?}");
        let s = e.to_string();
        assert!(
            s.contains("SO_PREFER_BUSY_POLL") && s.contains("CAP_NET_ADMIN") && s.contains("Auto"),
            "{s}"
        );
    }

    #[test]
    fn busy_poll_states_read_well() {
        assert_eq!(BusyPollState::Off.to_string(), "off");
        let on = BusyPollState::On {
            timeout_us: 20,
            budget: 64,
        };
        assert!(on.is_on());
        assert_eq!(on.to_string(), "on (20 us, budget 64)");
        let refused = BusyPollState::Refused {
            option: "SO_PREFER_BUSY_POLL",
            errno: libc::EPERM,
        };
        assert!(!refused.is_on());
        let s = refused.to_string();
        assert!(
            s.contains("SO_PREFER_BUSY_POLL") && s.contains("wakeup path"),
            "{s}"
        );
    }
}

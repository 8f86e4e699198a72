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
//! only when the driver asks. [`PacketDevice::wait`] is `poll()` on the socket. With
//! [`XdpConfig::busy_poll`], the socket asks the kernel to busy-poll the device queue and an
//! empty `rx_burst` makes one `recvfrom` to drive it.
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
mod program;
mod setup;

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

pub use config::{AttachMode, BindMode, BusyPoll, XdpConfig, XdpMode, ZeroCopy};
pub use error::{Attempts, CapList, MemlockLimit, XdpError};

use crate::dev::{Batch, ChecksumCaps, DeviceCaps, LinkStats, PacketDevice, ETH_HEADER_LEN};
use crate::mem::{BufPool, PageSize, PoolBuf};
use crate::sys::bpf;
use crate::sys::xdp::{self as sys, Xsk, XskRings, XskStatistics};
use crate::time::Instant;
use setup::{
    attach, bind, check_capabilities, load_program, lookup, map_error, socket_error, MacText,
    MAP_NAME,
};

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
    /// Whether busy polling was set up.
    pub busy_poll: bool,
    /// Page size the UMEM got.
    pub page_size: PageSize,
    /// Whether only the filtered address's traffic comes to the socket.
    pub filtered: bool,
    /// `EBUSY` retries before the bind (or attach) succeeded.
    pub busy_retries: u32,
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
    /// The kernel's own counters for the socket (zero if they could not be read).
    pub kernel: XskStatistics,
}

/// One queue of a network interface through AF_XDP. See the [module docs](self).
///
/// Dropping it detaches the program (closing the BPF link) and closes the socket.
pub struct XdpDevice {
    // Field order is drop order: detach the program first, then the socket and its rings.
    link: OwnedFd,
    _prog: OwnedFd,
    map: OwnedFd,
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
        let capacity = config.frame_capacity();
        if mtu + ETH_HEADER_LEN > capacity {
            return Err(XdpError::MtuTooLarge {
                ifname,
                mtu,
                frame_len: config.frame_len,
                capacity,
            });
        }

        let pool = BufPool::with_capacity(
            config.frames,
            config.frame_len,
            sys::XDP_PACKET_HEADROOM + config.headroom,
            config.page_size,
        )?;
        debug_assert_eq!(pool.stride(), config.frame_len);

        // The map first (the program refers to it), then the program, then the attachment:
        // until the socket is in the map, the program passes our frames to the kernel.
        let map = bpf::create_xskmap(config.queue_id + 1, MAP_NAME)
            .map_err(|source| map_error(&ifname, "creating the XSKMAP", source))?;
        let insns = program::instructions(map.as_raw_fd(), config.filter_ipv4);
        let prog = load_program(&ifname, &insns)?;
        let (link, attach, attach_retries) = attach(&ifname, ifindex, prog.as_fd(), config.mode)?;

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
        let (bind, bind_retries) = bind(&xsk, config, zc)?;
        let zero_copy = xsk.zero_copy().unwrap_or(bind == BindMode::ZeroCopy);
        let bind = if zero_copy {
            BindMode::ZeroCopy
        } else {
            BindMode::Copy
        };

        let busy_poll = match config.busy_poll {
            None => false,
            Some(bp) => match xsk.set_busy_poll(bp.timeout_us, bp.budget) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(iface = %ifname, "busy polling not available, polling normally: {e}");
                    false
                }
            },
        };

        let mode = XdpModeInfo {
            attach,
            bind,
            need_wakeup: config.need_wakeup,
            busy_poll,
            page_size: pool.page_size(),
            filtered: config.filter_ipv4.is_some(),
            busy_retries: attach_retries + bind_retries,
        };
        let mut dev = XdpDevice {
            link,
            _prog: prog,
            map,
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
        };
        dev.refill();
        // Last: from here on the program sends the queue's frames to the socket.
        bpf::map_update_u32(dev.map.as_fd(), config.queue_id, dev.xsk.as_raw_fd() as u32)
            .map_err(|source| map_error(&ifname, "putting the socket into the XSKMAP", source))?;
        tracing::info!(
            iface = %ifname,
            queue = config.queue_id,
            xdp = %attach,
            bind = %bind,
            need_wakeup = config.need_wakeup,
            busy_poll,
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
        drop(load_program(ifname, &insns)?);
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
            if before == 0 || (self.mode.need_wakeup && !self.xsk.tx_needs_wakeup()) {
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
            .field("link_fd", &self.link.as_raw_fd())
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
                ..
            } = self;
            let stride = xsk.frame_len();
            popped = xsk.rx_pop(want, |addr, len, options| {
                let Some(buf) = reclaim(pool, stride, addr, len) else {
                    bad += 1;
                    // A lent frame with an impossible length: take the frame back anyway.
                    drop(reclaim(pool, stride, addr - addr % stride, 0));
                    return;
                };
                let len = len as usize;
                // Multi-buffer frames (options != 0) are never asked for; treat one as broken.
                if options != 0 || len < ETH_HEADER_LEN || len > frame_len_max {
                    counters.link.rx_errors += 1;
                    return;
                }
                counters.link.rx_packets += 1;
                counters.link.rx_bytes += len as u64;
                // Cannot fail: at most batch.free() descriptors are taken.
                if batch.push(buf).is_err() {
                    counters.link.rx_dropped += 1;
                } else {
                    got += 1;
                }
            });
            if popped == 0 {
                counters.rx_empty_polls += 1;
                if self.mode.busy_poll {
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
        let max = batch.len().min(self.caps.burst_max) as u32;
        let frame_len_max = self.caps.frame_len_max();
        let mut taken = 0;
        {
            let Self {
                xsk,
                pool,
                counters,
                ..
            } = self;
            xsk.tx_push(max, || {
                while let Some(frame) = batch.pop() {
                    taken += 1;
                    let len = frame.len();
                    if !(ETH_HEADER_LEN..=frame_len_max).contains(&len) {
                        counters.link.tx_errors += 1;
                        continue;
                    }
                    // A frame of another pool (not from tx_alloc) cannot be lent: copy it.
                    let frame = if owns(pool, &frame) {
                        frame
                    } else {
                        let copy = pool.alloc().and_then(|mut own| {
                            own.set_len(len).then_some(())?;
                            own.as_mut_slice().copy_from_slice(frame.as_slice());
                            Some(own)
                        });
                        let Some(own) = copy else {
                            counters.link.tx_dropped += 1;
                            continue;
                        };
                        own
                    };
                    let head = frame.headroom();
                    let idx = pool.lend(frame);
                    counters.link.tx_packets += 1;
                    counters.link.tx_bytes += len as u64;
                    return Some(((pool.buf_offset(idx) + head) as u64, len as u32));
                }
                None
            });
        }
        if !batch.is_empty() && taken < max as usize {
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
}

//! memif descriptor rings in shared memory, and the four ways ustack drives them.
//!
//! # Layout (DPDK 22.11 `memif_ring_t`, 64-byte cache lines as on x86-64)
//!
//! ```text
//! offset   0  cookie u32 (0x3E31F20)   4  flags u16 (bit 0: MASK_INT)   6  head u16
//! offset  64  tail u16
//! offset 128  desc[1 << log2_ring_size], 16 bytes each:
//!             flags u16 (bit 0: NEXT) | region u16 | length u32 | offset u32 | metadata u32
//! ```
//!
//! `head` and `tail` are free-running 16-bit counters; slot `i` is `desc[i & (size - 1)]`.
//!
//! # Who writes what
//!
//! The client (slave) owns all shared memory and both rings of a queue pair.
//!
//! - **C2S** (client → server): the client fills descriptors (buffer, length) and advances
//!   `head`; the server copies the frames out and advances `tail` to hand the slots back.
//! - **S2C** (server → client): the client posts empty buffers (offset, capacity in `length`) and
//!   advances `head`; the server writes a frame into each — in place (`ServerTx::lend`) or by
//!   copying (`ServerTx::copy_in`) — then the length (and `NEXT` for a frame spread over
//!   several buffers) and advances `tail`.
//!
//! The receiver of a ring sets `MASK_INT` in its `flags` when it polls; otherwise the sender
//! writes 1 to the ring's eventfd after moving frames.
//!
//! # Trust
//!
//! Every index and descriptor field is read from memory the peer can write at any time. The
//! functions here never use a peer's value to address memory without checking it: ring indexes
//! must stay within what the protocol allows (else [`RingFault`], and the device drops the
//! connection), descriptor offsets and lengths must lie inside a mapped region (else the
//! descriptor is rejected and counted), and the client takes buffers back by its own record of
//! which buffer it put in which slot, never by a peer-written offset. Every loop is bounded by
//! the ring size.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::copies::{self, Pass};
use crate::dev::{Batch, Frame, ETH_HEADER_LEN};
use crate::mem::shm::{SharedRegion, ShmLease};
use crate::mem::{BufPool, PoolBuf};
use crate::sys::unix_ipc as sys;

use super::proto::{COOKIE, LOG2_RING_SIZE_MAX};
use super::MemifStats;

/// Bytes of the ring header before the first descriptor.
pub const RING_HEADER_LEN: usize = 128;
/// Bytes per descriptor.
pub const DESC_LEN: usize = 16;
/// Ring flag: the receiver polls; do not signal its eventfd.
pub const RING_FLAG_MASK_INT: u16 = 1;
/// Descriptor flag: the frame continues in the next slot.
pub const DESC_FLAG_NEXT: u16 = 1;

/// Region index of a ustack client's rings.
pub(crate) const RING_REGION: u16 = 0;
/// Region index of a ustack client's buffers.
pub(crate) const BUFFER_REGION: u16 = 1;
/// Slot record meaning "no buffer here".
const NO_BUF: u32 = u32::MAX;
/// Most descriptors one in-place frame spans (posted buffers that happen to be adjacent).
const LEND_CHAIN_MAX: u16 = 128;

/// Bytes one ring of `2^log2` slots takes in its region.
pub const fn ring_len(log2: u8) -> usize {
    RING_HEADER_LEN + (DESC_LEN << log2)
}

// Positions of the header fields, in u16 units.
const H_COOKIE_LO: usize = 0;
const H_COOKIE_HI: usize = 1;
const H_FLAGS: usize = 2;
const H_HEAD: usize = 3;
const H_TAIL: usize = 32;

/// One descriptor.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// [`DESC_FLAG_NEXT`] or 0.
    pub flags: u16,
    /// Region holding the buffer.
    pub region: u16,
    /// Bytes of data (or, for a posted S2C buffer, its capacity).
    pub length: u32,
    /// Offset of the buffer in its region.
    pub offset: u32,
    /// Unused by Ethernet mode.
    pub metadata: u32,
}

/// A ring's indexes could not have been written by a correct peer: the connection must go.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RingFault {
    /// `head` or `tail` moved further than the ring allows.
    BadIndex {
        /// The value read.
        index: u16,
        /// Where we were.
        ours: u16,
    },
    /// The ring no longer fits its region (cannot happen after the checks at connect time).
    Unmapped,
}

/// A view of one ring in a mapped region: every access goes through atomics on memory the
/// region checked to be inside its mapping.
pub struct RingView<'a> {
    hdr: &'a [AtomicU16],
    desc: &'a [AtomicU32],
    mask: u16,
}

impl<'a> RingView<'a> {
    /// The ring of `2^log2` slots at byte `offset` of `region`; `None` if it does not fit, the
    /// offset is not 4-byte aligned, or `log2` exceeds [`LOG2_RING_SIZE_MAX`].
    pub fn new(region: &'a SharedRegion, offset: usize, log2: u8) -> Option<RingView<'a>> {
        if log2 > LOG2_RING_SIZE_MAX {
            return None;
        }
        let hdr = region.atomic_u16s(offset, RING_HEADER_LEN / 2)?;
        let desc = region.atomic_u32s(offset.checked_add(RING_HEADER_LEN)?, 4 << log2)?;
        Some(RingView {
            hdr,
            desc,
            mask: ((1u32 << log2) - 1) as u16,
        })
    }

    /// Slots in the ring.
    #[inline]
    pub fn size(&self) -> u16 {
        // Cannot overflow: log2 <= 14.
        self.mask + 1
    }

    /// The cookie word.
    pub fn cookie(&self) -> u32 {
        let lo = u32::from(self.hdr[H_COOKIE_LO].load(Ordering::Relaxed));
        let hi = u32::from(self.hdr[H_COOKIE_HI].load(Ordering::Relaxed));
        if cfg!(target_endian = "little") {
            lo | (hi << 16)
        } else {
            (lo << 16) | hi
        }
    }

    /// Writes the cookie word.
    pub fn set_cookie(&self, v: u32) {
        let (lo, hi) = if cfg!(target_endian = "little") {
            (v as u16, (v >> 16) as u16)
        } else {
            ((v >> 16) as u16, v as u16)
        };
        self.hdr[H_COOKIE_LO].store(lo, Ordering::Relaxed);
        self.hdr[H_COOKIE_HI].store(hi, Ordering::Relaxed);
    }

    /// The ring flags.
    #[inline]
    pub fn flags(&self) -> u16 {
        self.hdr[H_FLAGS].load(Ordering::Relaxed)
    }

    /// Writes the ring flags.
    #[inline]
    pub fn set_flags(&self, v: u16) {
        self.hdr[H_FLAGS].store(v, Ordering::SeqCst);
    }

    /// The head counter.
    #[inline]
    pub fn head(&self, order: Ordering) -> u16 {
        self.hdr[H_HEAD].load(order)
    }

    /// Writes the head counter.
    #[inline]
    pub fn set_head(&self, v: u16, order: Ordering) {
        self.hdr[H_HEAD].store(v, order);
    }

    /// The tail counter.
    #[inline]
    pub fn tail(&self, order: Ordering) -> u16 {
        self.hdr[H_TAIL].load(order)
    }

    /// Writes the tail counter.
    #[inline]
    pub fn set_tail(&self, v: u16, order: Ordering) {
        self.hdr[H_TAIL].store(v, order);
    }

    #[inline]
    fn words(&self, slot: u16) -> &[AtomicU32] {
        let i = usize::from(slot & self.mask) * 4;
        &self.desc[i..i + 4]
    }

    /// Reads the descriptor of `slot` (taken modulo the ring size).
    #[inline]
    pub fn desc(&self, slot: u16) -> Desc {
        let w = self.words(slot);
        let w0 = w[0].load(Ordering::Relaxed);
        Desc {
            flags: desc_lo(w0),
            region: desc_hi(w0),
            length: w[1].load(Ordering::Relaxed),
            offset: w[2].load(Ordering::Relaxed),
            metadata: w[3].load(Ordering::Relaxed),
        }
    }

    /// Writes the descriptor of `slot`.
    #[inline]
    pub fn set_desc(&self, slot: u16, d: &Desc) {
        let w = self.words(slot);
        w[0].store(desc_w0(d.flags, d.region), Ordering::Relaxed);
        w[1].store(d.length, Ordering::Relaxed);
        w[2].store(d.offset, Ordering::Relaxed);
        w[3].store(d.metadata, Ordering::Relaxed);
    }

    /// Writes only the length and flags of `slot`, keeping its region and offset (what a
    /// server does to a posted S2C buffer).
    #[inline]
    pub fn set_desc_length(&self, slot: u16, length: u32, flags: u16) {
        let w = self.words(slot);
        let region = desc_hi(w[0].load(Ordering::Relaxed));
        w[0].store(desc_w0(flags, region), Ordering::Relaxed);
        w[1].store(length, Ordering::Relaxed);
    }

    /// Resets the header for a new connection: cookie, flags, head and tail.
    pub fn init(&self, flags: u16) {
        self.set_cookie(COOKIE);
        self.set_flags(flags);
        self.set_head(0, Ordering::Relaxed);
        self.set_tail(0, Ordering::Relaxed);
    }
}

// The first descriptor word holds `flags` in its first two bytes and `region` in the next two.
#[inline]
fn desc_w0(flags: u16, region: u16) -> u32 {
    if cfg!(target_endian = "little") {
        u32::from(flags) | (u32::from(region) << 16)
    } else {
        (u32::from(flags) << 16) | u32::from(region)
    }
}

#[inline]
fn desc_lo(w0: u32) -> u16 {
    if cfg!(target_endian = "little") {
        w0 as u16
    } else {
        (w0 >> 16) as u16
    }
}

#[inline]
fn desc_hi(w0: u32) -> u16 {
    if cfg!(target_endian = "little") {
        (w0 >> 16) as u16
    } else {
        w0 as u16
    }
}

/// Writes 1 to the ring's eventfd if its receiver asked for interrupts.
fn kick(ring: &RingView<'_>, eventfd: &OwnedFd) {
    if ring.flags() & RING_FLAG_MASK_INT == 0 {
        if let Err(e) = sys::eventfd_signal(eventfd.as_fd()) {
            tracing::debug!("memif: signalling the peer's eventfd failed: {e}");
        }
    }
}

/// True if the ring at `offset` of `region` has frames for its receiver: `head != last` for a
/// C2S ring read by the server, `tail != last` for an S2C ring read by the client.
pub(crate) fn has_input(
    region: &SharedRegion,
    offset: usize,
    log2: u8,
    c2s: bool,
    last: u16,
) -> bool {
    match RingView::new(region, offset, log2) {
        Some(r) if c2s => r.head(Ordering::Acquire) != last,
        Some(r) => r.tail(Ordering::Acquire) != last,
        None => false,
    }
}

/// Where a ring lives, and its eventfd.
#[derive(Debug)]
pub(crate) struct RingLoc {
    pub(crate) region: u16,
    pub(crate) offset: usize,
    pub(crate) log2: u8,
    pub(crate) eventfd: OwnedFd,
}

impl RingLoc {
    pub(crate) fn view<'a>(&self, regions: &'a [Arc<SharedRegion>]) -> Option<RingView<'a>> {
        RingView::new(
            regions.get(usize::from(self.region))?,
            self.offset,
            self.log2,
        )
    }
}

/// A client's C2S ring: sends frames straight from the shared buffer pool (zero copy).
#[derive(Debug)]
pub(crate) struct ClientTx {
    pub(crate) loc: RingLoc,
    /// Next slot we fill (our copy of `head`).
    head: u16,
    /// Oldest slot the server has not handed back (our copy of `tail`).
    tail: u16,
    /// Pool buffer index lent in each slot.
    slots: Box<[u32]>,
}

impl ClientTx {
    pub(crate) fn new(loc: RingLoc) -> ClientTx {
        let size = 1usize << loc.log2;
        ClientTx {
            loc,
            head: 0,
            tail: 0,
            slots: vec![NO_BUF; size].into_boxed_slice(),
        }
    }

    /// Takes back the buffers the server has consumed.
    pub(crate) fn reclaim(&mut self, ring: &RingView<'_>, pool: &BufPool) -> Result<(), RingFault> {
        let tail = ring.tail(Ordering::Acquire);
        let done = tail.wrapping_sub(self.tail);
        if done > self.head.wrapping_sub(self.tail) {
            return Err(RingFault::BadIndex {
                index: tail,
                ours: self.tail,
            });
        }
        while self.tail != tail {
            let s = usize::from(self.tail & ring.mask);
            let idx = std::mem::replace(&mut self.slots[s], NO_BUF);
            drop(pool.reclaim(idx, 0, 0));
            self.tail = self.tail.wrapping_add(1);
        }
        Ok(())
    }

    /// Free slots.
    #[inline]
    pub(crate) fn room(&self, ring: &RingView<'_>) -> u16 {
        ring.size() - self.head.wrapping_sub(self.tail)
    }

    /// Slots `frame_len` bytes take when no descriptor may hold more than `piece` bytes.
    #[inline]
    pub(crate) fn pieces(frame_len: usize, piece: usize) -> u16 {
        // frame_len <= 65535 and piece >= 128 (the configuration's minimum): at most 512.
        frame_len.div_ceil(piece).max(1) as u16
    }

    /// Puts `frame` (a buffer of `pool`, whose memory is region 1) in the next slots: one
    /// descriptor per `piece` bytes, chained with [`DESC_FLAG_NEXT`], all pointing into the
    /// frame's own buffer (no copy). The caller checked there is room for
    /// [`pieces`](Self::pieces) slots. Visible to the server after [`ClientTx::publish`].
    pub(crate) fn push(
        &mut self,
        ring: &RingView<'_>,
        pool: &BufPool,
        frame: PoolBuf,
        piece: usize,
    ) {
        let (head, len) = (frame.headroom(), frame.len());
        let n = Self::pieces(len, piece);
        let idx = pool.lend(frame);
        let base = pool.buf_offset(idx) + head;
        for i in 0..n {
            let at = usize::from(i) * piece;
            let last = i + 1 == n;
            ring.set_desc(
                self.head,
                &Desc {
                    flags: if last { 0 } else { DESC_FLAG_NEXT },
                    region: BUFFER_REGION,
                    length: piece.min(len - at) as u32,
                    offset: (base + at) as u32,
                    metadata: 0,
                },
            );
            // The buffer comes back when the server has passed the chain's last slot.
            self.slots[usize::from(self.head & ring.mask)] = if last { idx } else { NO_BUF };
            self.head = self.head.wrapping_add(1);
        }
    }

    /// Publishes the slots filled since the last call, and signals the server if it wants.
    pub(crate) fn publish(&mut self, ring: &RingView<'_>) {
        if ring.head(Ordering::Relaxed) != self.head {
            ring.set_head(self.head, Ordering::Release);
            kick(ring, &self.loc.eventfd);
        }
    }

    /// Returns every lent buffer to the pool (at disconnect).
    pub(crate) fn release_all(&mut self, pool: &BufPool) {
        for idx in self.slots.iter_mut() {
            drop(pool.reclaim(std::mem::replace(idx, NO_BUF), 0, 0));
        }
        self.tail = self.head;
    }

    /// Buffers lent to the ring.
    pub(crate) fn lent(&self) -> usize {
        self.slots.iter().filter(|&&i| i != NO_BUF).count()
    }
}

/// A client's S2C ring: the server fills buffers of the shared pool, which are handed up as
/// they are (zero copy) and replaced by fresh ones.
#[derive(Debug)]
pub(crate) struct ClientRx {
    pub(crate) loc: RingLoc,
    /// Next slot we post a buffer in (our copy of `head`).
    head: u16,
    /// Oldest posted slot not yet received (the server's `tail` as far as we consumed it).
    tail: u16,
    slots: Box<[u32]>,
}

impl ClientRx {
    pub(crate) fn new(loc: RingLoc) -> ClientRx {
        let size = 1usize << loc.log2;
        ClientRx {
            loc,
            head: 0,
            tail: 0,
            slots: vec![NO_BUF; size].into_boxed_slice(),
        }
    }

    /// Our consumer position, for the idle check.
    pub(crate) fn last(&self) -> u16 {
        self.tail
    }

    /// Hands up to `want` received frames to `batch`. Buffers were posted `piece` bytes long;
    /// a frame the server chained over several of them is gathered into its first buffer (which,
    /// like every buffer of the pool, holds a whole frame): the later pieces are copied.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn receive<F: Carry>(
        &mut self,
        ring: &RingView<'_>,
        pool: &BufPool,
        batch: &mut Batch<F>,
        want: usize,
        frame_len_max: usize,
        piece: usize,
        stats: &mut MemifStats,
    ) -> Result<usize, RingFault> {
        let tail = ring.tail(Ordering::Acquire);
        let filled = tail.wrapping_sub(self.tail);
        let posted = self.head.wrapping_sub(self.tail);
        if filled > posted {
            return Err(RingFault::BadIndex {
                index: tail,
                ours: self.tail,
            });
        }
        let post_len = piece.min(pool.buf_len() - pool.headroom());
        // The longest chain a frame of at most frame_len_max bytes needs.
        let chain_max = frame_len_max.div_ceil(post_len) as u16;
        let mut got = 0;
        while self.tail != tail && got < want {
            // How many slots the frame takes: up to the first descriptor without NEXT.
            let avail = tail.wrapping_sub(self.tail);
            let mut n = 0u16;
            let mut complete = false;
            while n < avail {
                let flags = ring.desc(self.tail.wrapping_add(n)).flags;
                n += 1;
                if flags & DESC_FLAG_NEXT == 0 {
                    complete = true;
                    break;
                }
            }
            let too_long = n > chain_max;
            if !complete && !too_long && avail < ring.size() {
                break; // the rest of the chain may still come
            }
            // `n` slots (a whole chain, or as much of a hopeless one as is there), read once
            // more each below; flags are not looked at again.
            let mut frame: Option<PoolBuf> = None;
            let mut len = 0usize;
            let mut bad = !complete || too_long;
            for _ in 0..n {
                let d = ring.desc(self.tail);
                let Some(mut buf) = self.take_slot(ring, pool) else {
                    bad = true;
                    continue;
                };
                let expected = pool.buf_offset(buf.index() as u32) + pool.headroom();
                let seg = d.length as usize;
                if bad
                    || d.region != BUFFER_REGION
                    || d.offset as usize != expected
                    || seg > post_len
                {
                    bad = true;
                    continue;
                }
                match &mut frame {
                    None => {
                        let _ = buf.set_len(seg);
                        len = seg;
                        frame = Some(buf);
                    }
                    Some(f) => {
                        // Our own buffers: the bytes the server wrote in the piece, appended.
                        let _ = buf.set_len(seg);
                        if len + seg <= f.capacity() && f.set_len(len + seg) {
                            f.as_mut_slice()[len..].copy_from_slice(buf.as_slice());
                            copies::count(Pass::Device, seg);
                        }
                        len += seg;
                    }
                }
            }
            let Some(buf) = frame.filter(|_| !bad) else {
                stats.rejected_desc += 1;
                continue;
            };
            if !(ETH_HEADER_LEN..=frame_len_max).contains(&len) || buf.len() != len {
                stats.link.rx_errors += 1;
                continue;
            }
            if n > 1 {
                stats.rx_chains += 1;
            }
            match batch.push(F::from_pool(buf)) {
                Ok(()) => {
                    got += 1;
                    stats.link.rx_packets += 1;
                    stats.link.rx_bytes += len as u64;
                }
                Err(_) => stats.link.rx_dropped += 1,
            }
        }
        Ok(got)
    }

    /// Takes the buffer of the oldest filled slot back from the ring.
    fn take_slot(&mut self, ring: &RingView<'_>, pool: &BufPool) -> Option<PoolBuf> {
        let s = usize::from(self.tail & ring.mask);
        let idx = std::mem::replace(&mut self.slots[s], NO_BUF);
        self.tail = self.tail.wrapping_add(1);
        pool.reclaim(idx, pool.headroom(), 0)
    }

    /// Posts fresh buffers in free slots until `posted_max` are posted (or every slot is, or
    /// the pool runs dry), each offered to the server for at most `piece` bytes, and publishes
    /// them.
    pub(crate) fn refill(
        &mut self,
        ring: &RingView<'_>,
        pool: &BufPool,
        piece: usize,
        posted_max: u16,
    ) {
        let cap = piece.min(pool.buf_len() - pool.headroom()) as u32;
        let start = self.head;
        let posted_max = posted_max.min(ring.size());
        while self.head.wrapping_sub(self.tail) < posted_max {
            let Some(buf) = pool.alloc() else { break };
            let idx = pool.lend(buf);
            ring.set_desc(
                self.head,
                &Desc {
                    flags: 0,
                    region: BUFFER_REGION,
                    length: cap,
                    offset: (pool.buf_offset(idx) + pool.headroom()) as u32,
                    metadata: 0,
                },
            );
            self.slots[usize::from(self.head & ring.mask)] = idx;
            self.head = self.head.wrapping_add(1);
        }
        if self.head != start {
            ring.set_head(self.head, Ordering::Release);
        }
    }

    /// Returns every lent buffer to the pool (at disconnect).
    pub(crate) fn release_all(&mut self, pool: &BufPool) {
        for idx in self.slots.iter_mut() {
            drop(pool.reclaim(std::mem::replace(idx, NO_BUF), 0, 0));
        }
        self.tail = self.head;
    }

    /// Buffers lent to the ring.
    pub(crate) fn lent(&self) -> usize {
        self.slots.iter().filter(|&&i| i != NO_BUF).count()
    }
}

/// Checks a descriptor's buffer against the mapped regions.
#[inline]
fn buffer_ok(regions: &[Arc<SharedRegion>], d: &Desc) -> bool {
    regions
        .get(usize::from(d.region))
        .is_some_and(|r| r.contains(u64::from(d.offset), u64::from(d.length)))
}

/// A server's C2S ring: frames are copied out of the client's buffers into our own pool.
#[derive(Debug)]
pub(crate) struct ServerRx {
    pub(crate) loc: RingLoc,
    /// Next slot to read (our copy of `tail`).
    last: u16,
}

impl ServerRx {
    pub(crate) fn new(loc: RingLoc) -> ServerRx {
        ServerRx { loc, last: 0 }
    }

    /// Our consumer position, for the idle check.
    pub(crate) fn last(&self) -> u16 {
        self.last
    }

    /// Hands up to `want` received frames (copies in `pool` buffers) to `batch`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn receive<F: Carry>(
        &mut self,
        ring: &RingView<'_>,
        regions: &[Arc<SharedRegion>],
        pool: &BufPool,
        batch: &mut Batch<F>,
        want: usize,
        frame_len_max: usize,
        stats: &mut MemifStats,
    ) -> Result<usize, RingFault> {
        let head = ring.head(Ordering::Acquire);
        let avail = head.wrapping_sub(self.last);
        if avail > ring.size() {
            return Err(RingFault::BadIndex {
                index: head,
                ours: self.last,
            });
        }
        let mut cur = self.last;
        let mut got = 0;
        while cur != head && got < want {
            let Some(mut buf) = pool.alloc() else { break };
            let _ = buf.set_len(buf.capacity());
            let limit = frame_len_max.min(buf.capacity());
            let start = cur;
            let (mut len, mut rejected, mut oversize, mut complete) = (0usize, false, false, false);
            while cur != head {
                let d = ring.desc(cur);
                cur = cur.wrapping_add(1);
                let seg = d.length as usize;
                if !rejected && !oversize {
                    if !buffer_ok(regions, &d) || seg > frame_len_max {
                        rejected = true;
                    } else if len + seg > limit {
                        oversize = true;
                    } else if regions[usize::from(d.region)]
                        .read(d.offset as usize, &mut buf.as_mut_slice()[len..len + seg])
                    {
                        // (In range: checked by buffer_ok and len + seg <= limit; a read fails
                        // only for a buffer we hold leased, one the client also posted to us.)
                        copies::count(Pass::Device, seg);
                        len += seg;
                    } else {
                        rejected = true;
                    }
                }
                if d.flags & DESC_FLAG_NEXT == 0 {
                    complete = true;
                    break;
                }
            }
            if !complete {
                if head.wrapping_sub(start) < ring.size() {
                    cur = start; // wait for the rest of the chain
                    break;
                }
                // The whole ring is one unfinished frame: it can never end.
                rejected = true;
            }
            if rejected {
                stats.rejected_desc += 1;
            } else if oversize || len < ETH_HEADER_LEN {
                stats.link.rx_errors += 1;
            } else {
                if cur.wrapping_sub(start) > 1 {
                    stats.rx_chains += 1;
                }
                let _ = buf.set_len(len);
                match batch.push(F::from_pool(buf)) {
                    Ok(()) => {
                        got += 1;
                        stats.link.rx_packets += 1;
                        stats.link.rx_bytes += len as u64;
                    }
                    Err(_) => stats.link.rx_dropped += 1,
                }
            }
        }
        if cur != self.last {
            ring.set_tail(cur, Ordering::Release);
            self.last = cur;
        }
        Ok(got)
    }
}

/// Slot record of [`TxSlots::done`]: the slot's frame is written.
const DONE: u32 = 1 << 31;
/// Slot record of [`TxSlots::done`]: the frame continues in the next slot.
const DONE_NEXT: u32 = 1 << 16;

/// The state of a server's S2C ring that the frames it lent in place share with it.
///
/// Slots from the published `tail` to `alloc` are ours (the client posted them and has not got
/// them back): each is lent to a frame being built, or written and waiting for the slots before
/// it. A slot is published (its length written, `tail` moved past it) once it and every slot
/// before it are written, so the client sees frames in the order they were allocated.
#[derive(Debug)]
pub(crate) struct TxSlots {
    /// Per slot: 0, or [`DONE`] with the length written (low 16 bits) and [`DONE_NEXT`].
    done: Box<[AtomicU32]>,
    /// Per slot: the posted buffer's length, read once when the slot was lent (our copy).
    cap: Box<[AtomicU32]>,
    mask: u16,
    /// The next slot to lend or fill.
    alloc: AtomicU16,
    /// Frames built in private buffers while no posted buffer could be lent, not yet sent or
    /// dropped: while there are any, nothing is lent, so those frames keep their place in line.
    copies_pending: AtomicUsize,
}

impl TxSlots {
    fn new(log2: u8) -> TxSlots {
        let size = 1usize << log2;
        TxSlots {
            done: (0..size).map(|_| AtomicU32::new(0)).collect(),
            cap: (0..size).map(|_| AtomicU32::new(0)).collect(),
            mask: (size - 1) as u16,
            alloc: AtomicU16::new(0),
            copies_pending: AtomicUsize::new(0),
        }
    }

    #[inline]
    fn at(&self, slot: u16) -> usize {
        usize::from(slot & self.mask)
    }

    #[inline]
    fn mark(&self, slot: u16, len: usize, next: bool) {
        let v = DONE | (len as u32 & 0xffff) | if next { DONE_NEXT } else { 0 };
        self.done[self.at(slot)].store(v, Ordering::Release);
    }
}

/// A frame being built in place, in buffers the client posted on S2C (see the module
/// documentation of [`super`] for why this is sound).
pub(crate) struct SlotFrame {
    slots: Arc<TxSlots>,
    /// The posted buffers' bytes, leased: adjacent buffers of one region, `start..start+count`.
    lease: ShmLease,
    start: u16,
    count: u16,
    len: usize,
    /// Written into the slots' records (sent or abandoned).
    finished: bool,
}

impl std::fmt::Debug for SlotFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotFrame")
            .field("start", &self.start)
            .field("count", &self.count)
            .field("len", &self.len)
            .finish()
    }
}

impl SlotFrame {
    pub(crate) fn data(&self) -> &[u8] {
        &self.lease.as_slice()[..self.len]
    }

    pub(crate) fn data_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.lease.as_mut_slice()[..len]
    }

    pub(crate) fn capacity(&self) -> usize {
        self.lease.len()
    }

    /// Sets the length, and gives back the slots past the ones it needs when no slot was lent
    /// after this frame (the usual case: the stack sets the length right after allocating).
    pub(crate) fn set_len(&mut self, len: usize) -> bool {
        if len > self.lease.len() {
            return false;
        }
        self.len = len;
        let (mut need, mut bytes) = (0u16, 0usize);
        while need < self.count && (need == 0 || bytes < len) {
            bytes += self.slots.cap[self.slots.at(self.start.wrapping_add(need))]
                .load(Ordering::Relaxed) as usize;
            need += 1;
        }
        if need < self.count {
            let end = self.start.wrapping_add(self.count);
            let back = self.start.wrapping_add(need);
            if self
                .slots
                .alloc
                .compare_exchange(end, back, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.count = need;
                self.lease.shrink(bytes.min(self.lease.len()));
            }
        }
        true
    }

    /// Whether the frame's slots are on the ring whose state is `slots` (not a frame of an
    /// earlier connection).
    pub(crate) fn is_of(&self, slots: &Arc<TxSlots>) -> bool {
        Arc::ptr_eq(&self.slots, slots)
    }

    /// Descriptors the frame takes.
    pub(crate) fn pieces(&self) -> u16 {
        self.count
    }

    /// Records the frame's length in its slots (a chain when it spans several). The lease ends
    /// when this returns, before the slots can be published.
    pub(crate) fn finish(mut self) {
        let mut left = self.len;
        for i in 0..self.count {
            let slot = self.start.wrapping_add(i);
            let cap = self.slots.cap[self.slots.at(slot)].load(Ordering::Relaxed) as usize;
            let n = cap.min(left);
            left -= n;
            self.slots.mark(slot, n, left > 0);
        }
        self.finished = true;
    }
}

impl Drop for SlotFrame {
    fn drop(&mut self) {
        if !self.finished {
            // Never sent: the buffers go back to the client empty.
            for i in 0..self.count {
                self.slots.mark(self.start.wrapping_add(i), 0, false);
            }
        }
    }
}

/// Marks a private-buffer frame built while the ring lent nothing (see
/// [`TxSlots::copies_pending`]); dropping it ends the mark.
pub(crate) struct PendingCopy(Arc<TxSlots>);

impl PendingCopy {
    pub(crate) fn new(slots: &Arc<TxSlots>) -> PendingCopy {
        slots.copies_pending.fetch_add(1, Ordering::AcqRel);
        PendingCopy(Arc::clone(slots))
    }
}

impl Drop for PendingCopy {
    fn drop(&mut self) {
        self.0.copies_pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for PendingCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingCopy")
    }
}

/// A frame taken apart by the device.
pub(crate) enum Parts {
    Pool(PoolBuf),
    Slot(SlotFrame),
}

/// What the device needs of its frame type: [`PoolBuf`] (frames always in the device's pool)
/// or [`MemifFrame`](super::MemifFrame) (a server's outgoing frames may be built in place).
pub(crate) trait Carry: Frame + Sized {
    /// Whether frames can be lent in place.
    const IN_PLACE: bool;
    fn from_pool(buf: PoolBuf) -> Self;
    /// A pool buffer standing in for a posted buffer (`None` if the type cannot say so).
    fn pending(buf: PoolBuf, mark: PendingCopy) -> Self;
    /// A frame lent in place (`None` if the type cannot hold one).
    fn from_slot(f: SlotFrame) -> Option<Self>;
    fn is_slot(&self) -> bool;
    fn into_parts(self) -> Parts;
}

impl Carry for PoolBuf {
    const IN_PLACE: bool = false;
    fn from_pool(buf: PoolBuf) -> Self {
        buf
    }
    fn pending(buf: PoolBuf, _mark: PendingCopy) -> Self {
        buf
    }
    fn from_slot(_f: SlotFrame) -> Option<Self> {
        None
    }
    fn is_slot(&self) -> bool {
        false
    }
    fn into_parts(self) -> Parts {
        Parts::Pool(self)
    }
}

/// What [`ServerTx::copy_in`] did with a frame.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum CopyIn {
    /// Written whole.
    Sent,
    /// Written cut short (a bad buffer in the middle): the frame is gone, counted.
    Cut,
    /// Not enough posted buffers: try again later.
    NoRoom,
}

/// A server's S2C ring: frames are built in place in the buffers the client posted
/// ([`ServerTx::lend`]), or copied into them from private buffers ([`ServerTx::copy_in`]).
#[derive(Debug)]
pub(crate) struct ServerTx {
    pub(crate) loc: RingLoc,
    /// The last `tail` we published.
    tail: u16,
    slots: Arc<TxSlots>,
}

impl ServerTx {
    pub(crate) fn new(loc: RingLoc) -> ServerTx {
        let slots = Arc::new(TxSlots::new(loc.log2));
        ServerTx {
            loc,
            tail: 0,
            slots,
        }
    }

    /// The state frames lent by this ring share.
    pub(crate) fn slots(&self) -> &Arc<TxSlots> {
        &self.slots
    }

    /// The client's `head`, checked: at most a ring ahead of what we published.
    fn head(&self, ring: &RingView<'_>) -> Result<u16, RingFault> {
        let head = ring.head(Ordering::Acquire);
        if head.wrapping_sub(self.tail) > ring.size() {
            return Err(RingFault::BadIndex {
                index: head,
                ours: self.tail,
            });
        }
        Ok(head)
    }

    /// Lends the next posted buffer (or run of adjacent posted buffers of one region) that
    /// holds `frame_len_max` bytes, for a frame to be built in place. `None` when there is
    /// none, when the next posted buffers are too short and not adjacent, or while frames
    /// built in private buffers wait (they go first). Unusable posted buffers met on the way
    /// (outside a region, empty, or overlapping memory that is lent or holds rings) are handed
    /// back empty and counted.
    pub(crate) fn lend(
        &mut self,
        ring: &RingView<'_>,
        regions: &[Arc<SharedRegion>],
        frame_len_max: usize,
        stats: &mut MemifStats,
    ) -> Result<Option<SlotFrame>, RingFault> {
        if self.slots.copies_pending.load(Ordering::Acquire) > 0 {
            return Ok(None);
        }
        let head = self.head(ring)?;
        let s = &self.slots;
        let mut a = s.alloc.load(Ordering::Acquire);
        while a != head {
            let d = ring.desc(a);
            if d.length == 0 || !buffer_ok(regions, &d) {
                stats.rejected_desc += 1;
                s.mark(a, 0, false);
                a = a.wrapping_add(1);
                s.alloc.store(a, Ordering::Release);
                continue;
            }
            // Each descriptor is read once; what we use below is our copy of it.
            s.cap[s.at(a)].store(d.length, Ordering::Relaxed);
            let (mut count, mut bytes) = (1u16, d.length as usize);
            while bytes < frame_len_max && count < LEND_CHAIN_MAX {
                let b = a.wrapping_add(count);
                if b == head {
                    break;
                }
                let e = ring.desc(b);
                let adjacent = e.region == d.region
                    && e.length != 0
                    && u64::from(e.offset) == u64::from(d.offset) + bytes as u64
                    && buffer_ok(regions, &e);
                if !adjacent {
                    break;
                }
                s.cap[s.at(b)].store(e.length, Ordering::Relaxed);
                bytes += e.length as usize;
                count += 1;
            }
            if bytes < frame_len_max {
                return Ok(None); // a frame may not fit: built in a private buffer and copied
            }
            let region = &regions[usize::from(d.region)];
            let Some(lease) = region.lease(d.offset as usize, frame_len_max) else {
                // Overlaps a buffer lent now or a ring: not a buffer we can use.
                stats.rejected_desc += 1;
                s.mark(a, 0, false);
                a = a.wrapping_add(1);
                s.alloc.store(a, Ordering::Release);
                continue;
            };
            s.alloc.store(a.wrapping_add(count), Ordering::Release);
            return Ok(Some(SlotFrame {
                slots: Arc::clone(s),
                lease,
                start: a,
                count,
                len: 0,
                finished: false,
            }));
        }
        Ok(None)
    }

    /// Copies `data` into the next posted buffers (chained over several when one is too
    /// short), skipping and counting unusable ones.
    pub(crate) fn copy_in(
        &mut self,
        ring: &RingView<'_>,
        regions: &[Arc<SharedRegion>],
        data: &[u8],
        stats: &mut MemifStats,
    ) -> Result<CopyIn, RingFault> {
        let head = self.head(ring)?;
        let s = &self.slots;
        let mut start = s.alloc.load(Ordering::Acquire);
        let mut slot = start;
        let mut off = 0;
        loop {
            if slot == head {
                // The frame waits for more buffers; what it wrote so far is forgotten (its
                // slots are not ours to publish yet). Unusable buffers met before it are
                // handed back.
                let mut t = start;
                while t != slot {
                    s.done[s.at(t)].store(0, Ordering::Relaxed);
                    t = t.wrapping_add(1);
                }
                s.alloc.store(start, Ordering::Release);
                return Ok(CopyIn::NoRoom);
            }
            let d = ring.desc(slot);
            let region = regions.get(usize::from(d.region));
            let n = (d.length as usize).min(data.len() - off);
            let ok = d.length != 0
                && buffer_ok(regions, &d)
                && region.is_some_and(|r| r.write(d.offset as usize, &data[off..off + n]));
            slot = slot.wrapping_add(1);
            if !ok {
                stats.rejected_desc += 1;
                s.mark(slot.wrapping_sub(1), 0, false);
                if off == 0 {
                    start = slot;
                    continue;
                }
                // The empty slot ends the chain: the frame is cut short.
                s.alloc.store(slot, Ordering::Release);
                stats.link.tx_errors += 1;
                return Ok(CopyIn::Cut);
            }
            copies::count(Pass::Device, n);
            off += n;
            let more = off < data.len();
            s.mark(slot.wrapping_sub(1), n, more);
            if !more {
                break;
            }
        }
        if slot.wrapping_sub(start) > 1 {
            stats.tx_chains += 1;
        }
        s.alloc.store(slot, Ordering::Release);
        stats.link.tx_packets += 1;
        stats.link.tx_bytes += data.len() as u64;
        stats.tx_copied_bytes += data.len() as u64;
        Ok(CopyIn::Sent)
    }

    /// Publishes every written slot from the last published `tail` on, up to the first one
    /// still lent, and signals the client if it wants.
    pub(crate) fn publish(&mut self, ring: &RingView<'_>) {
        let s = &self.slots;
        let end = s.alloc.load(Ordering::Acquire);
        let mut t = self.tail;
        while t != end {
            let v = s.done[s.at(t)].load(Ordering::Acquire);
            if v & DONE == 0 {
                break;
            }
            let flags = if v & DONE_NEXT != 0 {
                DESC_FLAG_NEXT
            } else {
                0
            };
            ring.set_desc_length(t, v & 0xffff, flags);
            s.done[s.at(t)].store(0, Ordering::Relaxed);
            t = t.wrapping_add(1);
        }
        if t != self.tail {
            ring.set_tail(t, Ordering::Release);
            self.tail = t;
            kick(ring, &self.loc.eventfd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{HugeRegion, PageSize};

    fn region(len: usize) -> SharedRegion {
        SharedRegion::create(len, PageSize::Base4K, "ustack-ring-test").unwrap()
    }

    #[test]
    fn layout_matches_dpdk() {
        assert_eq!(ring_len(10), 128 + 16 * 1024);
        let r = region(ring_len(2));
        let v = RingView::new(&r, 0, 2).unwrap();
        v.init(RING_FLAG_MASK_INT);
        v.set_head(0x1234, Ordering::Relaxed);
        v.set_tail(0x5678, Ordering::Relaxed);
        v.set_desc(
            1,
            &Desc {
                flags: 1,
                region: 2,
                length: 3,
                offset: 4,
                metadata: 5,
            },
        );
        let mut b = vec![0u8; ring_len(2)];
        assert!(r.read(0, &mut b));
        if cfg!(target_endian = "little") {
            assert_eq!(&b[0..8], &[0x20, 0x1F, 0xE3, 0x03, 1, 0, 0x34, 0x12]);
            assert_eq!(&b[64..66], &[0x78, 0x56]);
            assert_eq!(
                &b[144..160],
                &[1, 0, 2, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0]
            );
        }
        assert_eq!(v.cookie(), COOKIE);
        assert_eq!(v.desc(5).region, 2, "slots wrap around");
        v.set_desc_length(1, 99, 0);
        assert_eq!(
            v.desc(1),
            Desc {
                flags: 0,
                region: 2,
                length: 99,
                offset: 4,
                metadata: 5
            }
        );
    }

    #[test]
    fn views_that_do_not_fit_are_refused() {
        let r = region(4096);
        assert!(RingView::new(&r, 0, 7).is_some()); // 128 + 2048
        assert!(RingView::new(&r, 0, 8).is_none()); // 128 + 4096
        assert!(RingView::new(&r, 2, 1).is_none(), "misaligned");
        assert!(RingView::new(&r, 4096 - 64, 0).is_none());
        assert!(RingView::new(&r, usize::MAX - 100, 0).is_none());
        assert!(RingView::new(&r, 0, 15).is_none());
    }

    fn eventfd() -> OwnedFd {
        sys::eventfd().unwrap()
    }

    /// A client's pool of `buf_len`-byte buffers on a memory file, and the server's mapping.
    fn shared_pool(buf_len: usize) -> (BufPool, Arc<SharedRegion>) {
        let (hr, fd) =
            HugeRegion::map_memfd(64 * buf_len, PageSize::Base4K, "ustack-ring-pool").unwrap();
        let len = hr.len();
        (
            BufPool::new(hr, buf_len, 0).unwrap(),
            Arc::new(SharedRegion::map_fd(fd, len).unwrap()),
        )
    }

    fn frame(pool: &BufPool, fill: u8, len: usize) -> PoolBuf {
        let mut b = pool.alloc().unwrap();
        assert!(b.set_len(len));
        for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
            *x = fill ^ (i as u8);
        }
        b
    }

    fn is_frame(data: &[u8], fill: u8, len: usize) -> bool {
        data.len() == len && data.iter().enumerate().all(|(i, &x)| x == fill ^ (i as u8))
    }

    /// A ustack client and a ustack server on the same two 8-slot rings, in one process.
    struct Pair {
        cpool: BufPool,
        spool: BufPool,
        /// The client's ring region, and the server's mapping of the client's regions.
        cregions: Vec<Arc<SharedRegion>>,
        sregions: Vec<Arc<SharedRegion>>,
        ctx: ClientTx,
        crx: ClientRx,
        srx: ServerRx,
        stx: ServerTx,
        stats: MemifStats,
    }

    impl Pair {
        fn new(buf_len: usize) -> Pair {
            let (cpool, peer_view_of_pool) = shared_pool(buf_len);
            let rings = region(2 * ring_len(3));
            let sring = SharedRegion::map_fd(
                rings.fd().unwrap().try_clone_to_owned().unwrap(),
                rings.len(),
            )
            .unwrap();
            let sregions = vec![Arc::new(sring), peer_view_of_pool];
            for r in &sregions {
                r.prepare_leases(8);
            }
            let loc = |off, fd| RingLoc {
                region: 0,
                offset: off,
                log2: 3,
                eventfd: fd,
            };
            let c2s_fd = eventfd();
            let s2c_fd = eventfd();
            let p = Pair {
                cpool,
                spool: BufPool::with_capacity(64, 65536, 0, PageSize::Base4K).unwrap(),
                cregions: vec![Arc::new(rings)],
                sregions,
                ctx: ClientTx::new(loc(0, c2s_fd.try_clone().unwrap())),
                crx: ClientRx::new(loc(ring_len(3), s2c_fd.try_clone().unwrap())),
                srx: ServerRx::new(loc(0, c2s_fd)),
                stx: ServerTx::new(loc(ring_len(3), s2c_fd)),
                stats: MemifStats::default(),
            };
            p.ctx.loc.view(&p.cregions).unwrap().init(0);
            p.crx
                .loc
                .view(&p.cregions)
                .unwrap()
                .init(RING_FLAG_MASK_INT);
            p
        }

        fn s2c(&self) -> RingView<'_> {
            self.stx.loc.view(&self.sregions).unwrap()
        }

        fn refill(&mut self, piece: usize) {
            self.refill_up_to(piece, u16::MAX);
        }

        fn refill_up_to(&mut self, piece: usize, posted_max: u16) {
            let ring = self.crx.loc.view(&self.cregions).unwrap();
            self.crx.refill(&ring, &self.cpool, piece, posted_max);
        }

        fn client_receive(&mut self, frame_len_max: usize, piece: usize) -> Batch<PoolBuf> {
            let ring = self.crx.loc.view(&self.cregions).unwrap();
            let mut rx = Batch::with_capacity(8);
            self.crx
                .receive(
                    &ring,
                    &self.cpool,
                    &mut rx,
                    8,
                    frame_len_max,
                    piece,
                    &mut self.stats,
                )
                .unwrap();
            rx
        }

        fn server_send_copies(&mut self, frames: &[PoolBuf]) -> Vec<CopyIn> {
            let ring = self.stx.loc.view(&self.sregions).unwrap();
            let out = frames
                .iter()
                .map(|f| {
                    self.stx
                        .copy_in(&ring, &self.sregions, f.as_slice(), &mut self.stats)
                        .unwrap()
                })
                .collect();
            self.stx.publish(&ring);
            out
        }

        fn lend(&mut self, frame_len_max: usize) -> Option<SlotFrame> {
            let ring = self.stx.loc.view(&self.sregions).unwrap();
            self.stx
                .lend(&ring, &self.sregions, frame_len_max, &mut self.stats)
                .unwrap()
        }

        fn publish(&mut self) {
            let ring = self.stx.loc.view(&self.sregions).unwrap();
            self.stx.publish(&ring);
        }
    }

    #[test]
    fn client_and_server_move_frames_both_ways() {
        let mut p = Pair::new(2048);
        // Client -> server: 20 frames through an 8-slot ring.
        let mut sent = 0;
        let mut got: Batch<PoolBuf> = Batch::with_capacity(64);
        for _ in 0..10 {
            let ring = p.ctx.loc.view(&p.cregions).unwrap();
            p.ctx.reclaim(&ring, &p.cpool).unwrap();
            while p.ctx.room(&ring) > 0 && sent < 20 {
                p.ctx.push(
                    &ring,
                    &p.cpool,
                    frame(&p.cpool, sent as u8, 60 + sent),
                    2048,
                );
                sent += 1;
            }
            p.ctx.publish(&ring);
            let sview = p.srx.loc.view(&p.sregions).unwrap();
            p.srx
                .receive(
                    &sview,
                    &p.sregions,
                    &p.spool,
                    &mut got,
                    64,
                    1514,
                    &mut p.stats,
                )
                .unwrap();
        }
        let ring = p.ctx.loc.view(&p.cregions).unwrap();
        p.ctx.reclaim(&ring, &p.cpool).unwrap();
        assert_eq!(got.len(), 20);
        for (i, f) in got.iter().enumerate() {
            assert!(is_frame(f.as_slice(), i as u8, 60 + i));
        }
        assert_eq!(p.ctx.lent(), 0);
        // The C2S ring wanted interrupts (flags 0): the client signalled.
        assert!(sys::eventfd_drain(p.ctx.loc.eventfd.as_fd()).unwrap() > 0);

        // Server -> client, copied.
        p.refill(2048);
        assert_eq!(p.crx.lent(), 8);
        let out: Vec<PoolBuf> = (0..5u8).map(|i| frame(&p.spool, 0xA0 + i, 100)).collect();
        assert_eq!(p.server_send_copies(&out), vec![CopyIn::Sent; 5]);
        let rx = p.client_receive(1514, 2048);
        assert_eq!(rx.len(), 5);
        for (i, f) in rx.iter().enumerate() {
            assert!(is_frame(f.as_slice(), 0xA0 + i as u8, 100));
        }
        p.refill(2048);
        assert_eq!(p.crx.lent(), 8);
        assert_eq!(p.stats.rejected_desc, 0);
        p.crx.release_all(&p.cpool);
        assert_eq!(p.crx.lent(), 0);
        drop(rx);
        assert_eq!(p.cpool.stats().in_use, 0);
    }

    /// A client posts at most `posted_max` buffers however many slots are free; the server
    /// waits for the next refill for the rest, and nothing is lost.
    #[test]
    fn a_client_keeps_no_more_buffers_posted_than_it_is_told() {
        let mut p = Pair::new(2048);
        p.refill_up_to(2048, 3);
        assert_eq!(p.crx.lent(), 3, "3 of the ring's 8 slots");
        let out: Vec<PoolBuf> = (0..5u8).map(|i| frame(&p.spool, 0xB0 + i, 100)).collect();
        let sent = p.server_send_copies(&out);
        assert_eq!(sent[..3], [CopyIn::Sent; 3]);
        assert_eq!(sent[3..], [CopyIn::NoRoom; 2]);
        let rx = p.client_receive(1514, 2048);
        assert_eq!(rx.len(), 3);
        p.refill_up_to(2048, 3);
        assert_eq!(p.crx.lent(), 3);
        assert_eq!(p.server_send_copies(&out[3..]), vec![CopyIn::Sent; 2]);
        let rx2 = p.client_receive(1514, 2048);
        for (i, f) in rx.iter().chain(rx2.iter()).enumerate() {
            assert!(is_frame(f.as_slice(), 0xB0 + i as u8, 100));
        }
        // A limit above the ring's size posts every slot.
        p.refill_up_to(2048, 100);
        assert_eq!(p.crx.lent(), 8);
        p.crx.release_all(&p.cpool);
        assert_eq!(p.stats.rejected_desc, 0);
    }

    /// Frames longer than a descriptor: the client sends one buffer as a chain, the server
    /// gathers it; the server copies into a chain of posted buffers, the client gathers it.
    #[test]
    fn frames_longer_than_a_buffer_travel_as_chains() {
        const FRAME_MAX: usize = 9014;
        const PIECE: usize = 2048;
        let mut p = Pair::new(FRAME_MAX.next_multiple_of(64));
        let ring = p.ctx.loc.view(&p.cregions).unwrap();
        assert_eq!(ClientTx::pieces(FRAME_MAX, PIECE), 5);
        assert_eq!(ClientTx::pieces(60, PIECE), 1);
        p.ctx.push(&ring, &p.cpool, frame(&p.cpool, 1, 5000), PIECE);
        p.ctx.push(&ring, &p.cpool, frame(&p.cpool, 2, 60), PIECE);
        p.ctx.publish(&ring);
        assert_eq!(ring.desc(0).flags, DESC_FLAG_NEXT);
        assert_eq!(ring.desc(2).flags, 0);
        assert_eq!(ring.desc(2).length, 5000 - 2 * 2048);
        let before = crate::copies::snapshot();
        let mut got: Batch<PoolBuf> = Batch::with_capacity(8);
        let sview = p.srx.loc.view(&p.sregions).unwrap();
        assert_eq!(
            p.srx
                .receive(
                    &sview,
                    &p.sregions,
                    &p.spool,
                    &mut got,
                    8,
                    FRAME_MAX,
                    &mut p.stats
                )
                .unwrap(),
            2
        );
        if crate::copies::ENABLED {
            let d = crate::copies::snapshot().since(&before);
            assert_eq!(
                d.get(Pass::Device),
                5060,
                "the server copies every byte it takes in"
            );
        }
        assert!(is_frame(got.pop().unwrap().as_slice(), 1, 5000));
        assert!(is_frame(got.pop().unwrap().as_slice(), 2, 60));
        p.ctx.reclaim(&ring, &p.cpool).unwrap();
        assert_eq!(p.ctx.lent(), 0, "the chain's buffer came back once");

        // Server -> client over 2048-byte posted buffers.
        p.refill(PIECE);
        let out = [frame(&p.spool, 3, FRAME_MAX), frame(&p.spool, 4, 100)];
        assert_eq!(p.server_send_copies(&out), vec![CopyIn::Sent; 2]);
        let before = crate::copies::snapshot();
        let rx = p.client_receive(FRAME_MAX, PIECE);
        assert_eq!(rx.len(), 2);
        assert!(is_frame(rx.iter().next().unwrap().as_slice(), 3, FRAME_MAX));
        assert!(is_frame(rx.iter().nth(1).unwrap().as_slice(), 4, 100));
        if crate::copies::ENABLED {
            let d = crate::copies::snapshot().since(&before);
            assert_eq!(
                d.get(Pass::Device),
                (FRAME_MAX - PIECE) as u64,
                "the client copies the pieces after the first, nothing of a one-piece frame"
            );
        }
        // A frame needing more buffers than are posted waits, whole.
        p.refill(PIECE);
        let big = [frame(&p.spool, 5, FRAME_MAX), frame(&p.spool, 6, FRAME_MAX)];
        assert_eq!(
            p.server_send_copies(&big),
            vec![CopyIn::Sent, CopyIn::NoRoom]
        );
        assert_eq!(p.stats.rejected_desc, 0);
        assert_eq!(p.stats.link.rx_errors, 0);
    }

    /// A client's S2C ring in which a hostile server writes broken chains.
    #[test]
    fn a_client_rejects_broken_chains() {
        const PIECE: usize = 1024;
        let mut p = Pair::new(4096);
        p.refill(PIECE);
        let view = p.s2c();
        let d = |s: u16| view.desc(s);
        // Slot 0-1: a chain whose second piece points at another buffer than the one posted.
        let mut d1 = d(1);
        view.set_desc_length(0, 1024, DESC_FLAG_NEXT);
        d1.offset = d(0).offset;
        d1.length = 100;
        view.set_desc(1, &d1);
        // Slot 2-3: a piece claiming more than was posted.
        view.set_desc_length(2, 1024, DESC_FLAG_NEXT);
        view.set_desc_length(3, 2000, 0);
        // Slot 4-7: a chain of four 1024-byte pieces (4096 > 1514 + ...): longer than a frame.
        for s in 4..8 {
            view.set_desc_length(s, 1024, if s < 7 { DESC_FLAG_NEXT } else { 0 });
        }
        view.set_tail(8, Ordering::Release);
        let rx = p.client_receive(1514, PIECE);
        assert_eq!(rx.len(), 0);
        // A foreign buffer, a piece too long, and four pieces where a 1514-byte frame takes at
        // most two.
        assert_eq!(p.stats.rejected_desc, 3);
        assert_eq!(p.crx.lent(), 0, "every buffer taken back");
        // A chain without its end waits, unless it fills the whole ring.
        p.refill(PIECE);
        let view = p.s2c();
        view.set_desc_length(8, 1024, DESC_FLAG_NEXT);
        view.set_tail(9, Ordering::Release);
        assert_eq!(p.client_receive(1514, PIECE).len(), 0);
        assert_eq!(p.crx.lent(), 8, "the half chain is waited for");
        let view = p.s2c();
        view.set_desc_length(9, 200, 0);
        view.set_tail(10, Ordering::Release);
        let rx = p.client_receive(1514, PIECE);
        assert_eq!(rx.iter().map(|f| f.len()).collect::<Vec<_>>(), vec![1224]);
    }

    /// Frames built in place: one posted buffer, a run of adjacent ones, shrinking to what is
    /// used, order kept with copies, unusable buffers handed back empty.
    #[test]
    fn a_server_lends_posted_buffers_in_place() {
        const FRAME_MAX: usize = 9014;
        let mut p = Pair::new(9024);
        p.refill(9024);
        let mut a = p.lend(FRAME_MAX).expect("a posted buffer holds a frame");
        assert_eq!(a.capacity(), FRAME_MAX);
        assert!(a.set_len(100));
        a.data_mut()
            .copy_from_slice(frame(&p.spool, 7, 100).as_slice());
        // The region refuses copies into the lent bytes.
        let lent_at = p.s2c().desc(0).offset as usize;
        assert!(!p.sregions[1].write(lent_at + 10, b"x"));
        let mut mid = [0u8; 4];
        assert!(!p.sregions[1].read(lent_at, &mut mid));
        let mut b = p.lend(FRAME_MAX).unwrap();
        assert!(b.set_len(60));
        b.data_mut().fill(9);
        // Finished out of order: nothing is published until the first is done.
        b.finish();
        p.publish();
        assert_eq!(p.s2c().tail(Ordering::Acquire), 0);
        a.finish();
        p.publish();
        assert_eq!(p.s2c().tail(Ordering::Acquire), 2);
        assert_eq!(p.sregions[1].leases(), 0);
        let rx = p.client_receive(FRAME_MAX, 9024);
        assert_eq!(rx.len(), 2);
        assert!(is_frame(rx.iter().next().unwrap().as_slice(), 7, 100));
        assert_eq!(rx.iter().nth(1).unwrap().as_slice(), &[9u8; 60][..]);
        drop(rx);

        // A frame dropped unsent goes back empty (the client counts a runt), and the next one
        // comes after it.
        let c = p.lend(FRAME_MAX).unwrap();
        let mut d = p.lend(FRAME_MAX).unwrap();
        drop(c);
        assert!(d.set_len(64));
        d.finish();
        p.publish();
        let rx = p.client_receive(FRAME_MAX, 9024);
        assert_eq!(rx.iter().map(|f| f.len()).collect::<Vec<_>>(), vec![64]);
        assert_eq!(p.stats.link.rx_errors, 1);
        drop(rx);

        // Private-buffer frames waiting to be copied go first: nothing is lent meanwhile.
        let mark = PendingCopy::new(p.stx.slots());
        assert!(p.lend(FRAME_MAX).is_none());
        drop(mark);
        assert!(p.lend(FRAME_MAX).is_some());
    }

    #[test]
    fn a_server_lends_a_run_of_adjacent_buffers_and_gives_back_the_rest() {
        const FRAME_MAX: usize = 9014;
        let mut p = Pair::new(2048);
        // A hostile or libmemif-like client: eight 2048-byte buffers back to back.
        let view = p.s2c();
        let base = 8192u32;
        for s in 0..8u16 {
            view.set_desc(
                s,
                &Desc {
                    flags: 0,
                    region: 1,
                    length: 2048,
                    offset: base + u32::from(s) * 2048,
                    metadata: 0,
                },
            );
        }
        view.set_head(8, Ordering::Release);
        let mut a = p
            .lend(FRAME_MAX)
            .expect("five adjacent buffers hold a frame");
        assert_eq!(a.capacity(), FRAME_MAX);
        // Only two are needed: the other three go back to the ring at once.
        assert!(a.set_len(3000));
        assert_eq!(a.capacity(), 4096);
        a.data_mut().fill(0x5A);
        let mut b = p.lend(FRAME_MAX).expect("buffers 2..7");
        assert!(b.set_len(100));
        b.data_mut().fill(0x5B);
        a.finish();
        b.finish();
        p.publish();
        let view = p.s2c();
        assert_eq!(view.tail(Ordering::Acquire), 3);
        assert_eq!(
            (view.desc(0).length, view.desc(0).flags),
            (2048, DESC_FLAG_NEXT)
        );
        assert_eq!((view.desc(1).length, view.desc(1).flags), (952, 0));
        assert_eq!((view.desc(2).length, view.desc(2).flags), (100, 0));
        let mut got = vec![0u8; 3000];
        assert!(p.sregions[1].read(base as usize, &mut got));
        assert!(got.iter().all(|&x| x == 0x5A));
        // 3..7 hold a frame again; once they are taken, nothing is posted.
        let c = p.lend(FRAME_MAX).expect("buffers 3..7");
        assert!(p.lend(FRAME_MAX).is_none());
        drop(c);
        p.publish();
        assert_eq!(p.s2c().tail(Ordering::Acquire), 8);
        // A run broken by a gap is too short for a frame: nothing lent (the frame is copied).
        let view = p.s2c();
        for s in 8..16u16 {
            let gap = if s == 10 { 64 } else { 0 };
            view.set_desc(
                s,
                &Desc {
                    flags: 0,
                    region: 1,
                    length: 2048,
                    offset: base + u32::from(s - 8) * 2048 + gap,
                    metadata: 0,
                },
            );
        }
        view.set_head(16, Ordering::Release);
        assert!(p.lend(FRAME_MAX).is_none());
        assert_eq!(p.stats.rejected_desc, 0);
    }

    #[test]
    fn a_server_never_lends_overlapping_or_ring_memory() {
        const FRAME_MAX: usize = 1514;
        let mut p = Pair::new(2048);
        let view = p.s2c();
        let desc = |region, offset, length| Desc {
            flags: 0,
            region,
            length,
            offset,
            metadata: 0,
        };
        let posted = [
            desc(1, 4096, 2048),          // good
            desc(1, 4096 + 1000, 2048),   // overlaps the first
            desc(0, 0, 2048),             // the rings themselves
            desc(1, u32::MAX - 10, 2048), // outside the region
            desc(1, 8192, 0),             // empty
            desc(1, 16384, 1000),         // shorter than a frame, nothing adjacent: copied instead
        ];
        for (s, d) in posted.iter().enumerate() {
            view.set_desc(s as u16, d);
        }
        view.set_head(posted.len() as u16, Ordering::Release);
        let mut a = p.lend(FRAME_MAX).unwrap();
        assert!(p.lend(FRAME_MAX).is_none());
        assert_eq!(p.stats.rejected_desc, 4);
        assert!(a.set_len(60));
        a.finish();
        p.publish();
        // The bad buffers went back empty; the short one is still ours to fill.
        assert_eq!(p.s2c().tail(Ordering::Acquire), 5);
        assert_eq!(p.s2c().desc(0).length, 60);
        for s in 1..5 {
            assert_eq!(p.s2c().desc(s).length, 0);
        }
        let small = frame(&p.spool, 1, 900);
        assert_eq!(p.server_send_copies(&[small]), vec![CopyIn::Sent]);
        assert_eq!(p.s2c().tail(Ordering::Acquire), 6);
    }

    #[test]
    fn server_rejects_descriptors_outside_the_regions() {
        let rings = region(ring_len(2));
        let data = region(4096);
        let regions = vec![Arc::new(rings), Arc::new(data)];
        let view = RingView::new(&regions[0], 0, 2).unwrap();
        view.init(0);
        let pool = BufPool::with_capacity(16, 2048, 0, PageSize::Base4K).unwrap();
        let mut rx = ServerRx::new(RingLoc {
            region: 0,
            offset: 0,
            log2: 2,
            eventfd: eventfd(),
        });
        let mut stats = MemifStats::default();
        let mut batch: Batch<PoolBuf> = Batch::with_capacity(16);
        let descs = [
            (1, 4000, 200), // past the region's end
            (1, 0, 60_000), // longer than any frame
            (7, 0, 64),     // no such region
            (1, 100, 64),   // good
        ];
        for (i, &(region, offset, length)) in descs.iter().enumerate() {
            view.set_desc(
                i as u16,
                &Desc {
                    flags: 0,
                    region,
                    length,
                    offset,
                    metadata: 0,
                },
            );
        }
        view.set_head(4, Ordering::Release);
        assert_eq!(
            rx.receive(&view, &regions, &pool, &mut batch, 16, 1514, &mut stats)
                .unwrap(),
            1
        );
        assert_eq!(stats.rejected_desc, 3);
        assert_eq!(view.tail(Ordering::Acquire), 4, "every slot handed back");
        // A head that jumped past the ring size is a fault, and nothing is consumed.
        view.set_head(4 + 5, Ordering::Release);
        assert!(matches!(
            rx.receive(&view, &regions, &pool, &mut batch, 16, 1514, &mut stats),
            Err(RingFault::BadIndex { .. })
        ));
        // A chain filling the whole ring without an end is rejected, not waited for forever.
        for s in 4..8u16 {
            view.set_desc(
                s,
                &Desc {
                    flags: DESC_FLAG_NEXT,
                    region: 1,
                    length: 10,
                    offset: 0,
                    metadata: 0,
                },
            );
        }
        view.set_head(8, Ordering::Release);
        assert_eq!(
            rx.receive(&view, &regions, &pool, &mut batch, 16, 1514, &mut stats)
                .unwrap(),
            0
        );
        assert_eq!(stats.rejected_desc, 4);
        assert_eq!(view.tail(Ordering::Acquire), 8);
        drop(batch);
        assert_eq!(pool.stats().in_use, 0);
    }
}

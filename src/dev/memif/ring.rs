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
//!   advances `head`; the server copies a frame into each, writes the length (and `NEXT` for a
//!   frame spread over several buffers) and advances `tail`.
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
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use crate::dev::{Batch, ETH_HEADER_LEN};
use crate::mem::shm::SharedRegion;
use crate::mem::{BufPool, PoolBuf};
use crate::sys::memif as sys;

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
    pub(crate) fn view<'a>(&self, regions: &'a [SharedRegion]) -> Option<RingView<'a>> {
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

    /// Puts `frame` (a buffer of `pool`, whose memory is region 1) in the next slot; the caller
    /// checked there is room. Visible to the server after [`ClientTx::publish`].
    pub(crate) fn push(&mut self, ring: &RingView<'_>, pool: &BufPool, frame: PoolBuf) {
        let (head, len) = (frame.headroom(), frame.len());
        let idx = pool.lend(frame);
        let offset = pool.buf_offset(idx) + head;
        ring.set_desc(
            self.head,
            &Desc {
                flags: 0,
                region: BUFFER_REGION,
                length: len as u32,
                offset: offset as u32,
                metadata: 0,
            },
        );
        self.slots[usize::from(self.head & ring.mask)] = idx;
        self.head = self.head.wrapping_add(1);
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

    /// Hands up to `want` received frames to `batch`.
    pub(crate) fn receive(
        &mut self,
        ring: &RingView<'_>,
        pool: &BufPool,
        batch: &mut Batch<PoolBuf>,
        want: usize,
        frame_len_max: usize,
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
        let cap = pool.buf_len() - pool.headroom();
        let mut got = 0;
        while self.tail != tail && got < want {
            let d = ring.desc(self.tail);
            if d.flags & DESC_FLAG_NEXT != 0 {
                // A frame longer than one of our buffers, which hold a whole MTU: drop it all.
                let mut end = self.tail;
                let mut complete = false;
                while end != tail {
                    let flags = ring.desc(end).flags;
                    end = end.wrapping_add(1);
                    if flags & DESC_FLAG_NEXT == 0 {
                        complete = true;
                        break;
                    }
                }
                if !complete && tail.wrapping_sub(self.tail) < ring.size() {
                    break; // the rest of the chain may still come
                }
                while self.tail != end {
                    self.take_slot(ring, pool);
                }
                if complete {
                    stats.link.rx_errors += 1;
                } else {
                    // Every slot holds one unfinished frame: it can never end.
                    stats.rejected_desc += 1;
                }
                continue;
            }
            let Some(mut buf) = self.take_slot(ring, pool) else {
                stats.rejected_desc += 1;
                continue;
            };
            let expected = pool.buf_offset(buf.index() as u32) + pool.headroom();
            let len = d.length as usize;
            if d.region != BUFFER_REGION || d.offset as usize != expected || len > cap {
                stats.rejected_desc += 1;
                continue;
            }
            if !(ETH_HEADER_LEN..=frame_len_max).contains(&len) {
                stats.link.rx_errors += 1;
                continue;
            }
            let _ = buf.set_len(len);
            match batch.push(buf) {
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

    /// Posts fresh buffers in every free slot (as many as the pool gives) and publishes them.
    pub(crate) fn refill(&mut self, ring: &RingView<'_>, pool: &BufPool) {
        let cap = (pool.buf_len() - pool.headroom()) as u32;
        let start = self.head;
        while self.head.wrapping_sub(self.tail) < ring.size() {
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
fn buffer_ok(regions: &[SharedRegion], d: &Desc) -> bool {
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
    pub(crate) fn receive(
        &mut self,
        ring: &RingView<'_>,
        regions: &[SharedRegion],
        pool: &BufPool,
        batch: &mut Batch<PoolBuf>,
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
                    } else {
                        // In range: checked by buffer_ok and len + seg <= limit.
                        let ok = regions[usize::from(d.region)]
                            .read(d.offset as usize, &mut buf.as_mut_slice()[len..len + seg]);
                        debug_assert!(ok);
                        len += seg;
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
                let _ = buf.set_len(len);
                match batch.push(buf) {
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

/// A server's S2C ring: frames are copied into the buffers the client posted.
#[derive(Debug)]
pub(crate) struct ServerTx {
    pub(crate) loc: RingLoc,
    /// Next slot to fill (our copy of `tail`).
    tail: u16,
}

impl ServerTx {
    pub(crate) fn new(loc: RingLoc) -> ServerTx {
        ServerTx { loc, tail: 0 }
    }

    /// Copies up to `max` frames from the front of `batch` into posted buffers, removing the
    /// ones sent (and frames that could not be sent whole); returns how many were taken.
    pub(crate) fn send(
        &mut self,
        ring: &RingView<'_>,
        regions: &[SharedRegion],
        batch: &mut Batch<PoolBuf>,
        max: usize,
        stats: &mut MemifStats,
    ) -> Result<usize, RingFault> {
        let head = ring.head(Ordering::Acquire);
        if head.wrapping_sub(self.tail) > ring.size() {
            return Err(RingFault::BadIndex {
                index: head,
                ours: self.tail,
            });
        }
        let mut slot = self.tail;
        let mut taken = 0;
        'frames: while taken < max {
            let Some(frame) = batch.front() else { break };
            let data = frame.as_slice();
            let mut start = slot;
            let mut off = 0;
            let mut cut = false;
            loop {
                if slot == head {
                    // No room for the whole frame: it waits for more posted buffers.
                    slot = start;
                    break 'frames;
                }
                let d = ring.desc(slot);
                if d.length == 0 || !buffer_ok(regions, &d) {
                    // A buffer we cannot use: hand it back empty.
                    stats.rejected_desc += 1;
                    ring.set_desc_length(slot, 0, 0);
                    slot = slot.wrapping_add(1);
                    if off == 0 {
                        start = slot;
                        continue;
                    }
                    cut = true; // the empty slot ends the chain: the frame is cut short
                    break;
                }
                let n = (d.length as usize).min(data.len() - off);
                let ok =
                    regions[usize::from(d.region)].write(d.offset as usize, &data[off..off + n]);
                debug_assert!(ok);
                off += n;
                let more = off < data.len();
                ring.set_desc_length(slot, n as u32, if more { DESC_FLAG_NEXT } else { 0 });
                slot = slot.wrapping_add(1);
                if !more {
                    break;
                }
            }
            if cut {
                stats.link.tx_errors += 1;
            } else {
                stats.link.tx_packets += 1;
                stats.link.tx_bytes += data.len() as u64;
            }
            drop(batch.pop());
            taken += 1;
        }
        if slot != self.tail {
            ring.set_tail(slot, Ordering::Release);
            self.tail = slot;
            kick(ring, &self.loc.eventfd);
        }
        Ok(taken)
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

    fn shared_pool() -> (BufPool, SharedRegion) {
        let (hr, fd) =
            HugeRegion::map_memfd(64 * 2048, PageSize::Base4K, "ustack-ring-pool").unwrap();
        let len = hr.len();
        (
            BufPool::new(hr, 2048, 0).unwrap(),
            SharedRegion::map_fd(fd, len).unwrap(),
        )
    }

    fn frame(pool: &BufPool, fill: u8, len: usize) -> PoolBuf {
        let mut b = pool.alloc().unwrap();
        assert!(b.set_len(len));
        b.as_mut_slice().fill(fill);
        b
    }

    /// A ustack client and a ustack server drive the same two rings, in one process.
    #[test]
    fn client_and_server_move_frames_both_ways() {
        let (cpool, peer_view_of_pool) = shared_pool();
        let rings = region(2 * ring_len(3));
        let spool = BufPool::with_capacity(64, 2048, 0, PageSize::Base4K).unwrap();
        // The server's view of the client's regions.
        let sring = SharedRegion::map_fd(
            rings.fd().unwrap().try_clone_to_owned().unwrap(),
            rings.len(),
        )
        .unwrap();
        let sregions = vec![sring, peer_view_of_pool];
        let cregions = std::slice::from_ref(&rings);

        let loc = |off, fd| RingLoc {
            region: 0,
            offset: off,
            log2: 3,
            eventfd: fd,
        };
        let c2s_fd = eventfd();
        let s2c_fd = eventfd();
        let mut ctx = ClientTx::new(loc(0, c2s_fd.try_clone().unwrap()));
        let mut crx = ClientRx::new(loc(ring_len(3), s2c_fd.try_clone().unwrap()));
        let mut srx = ServerRx::new(loc(0, c2s_fd));
        let mut stx = ServerTx::new(loc(ring_len(3), s2c_fd));
        ctx.loc.view(cregions).unwrap().init(0);
        crx.loc.view(cregions).unwrap().init(RING_FLAG_MASK_INT);
        let mut stats = MemifStats::default();

        // Client -> server: 20 frames through an 8-slot ring.
        let mut sent = 0;
        let mut got = Batch::with_capacity(64);
        for round in 0..10 {
            let ring = ctx.loc.view(cregions).unwrap();
            ctx.reclaim(&ring, &cpool).unwrap();
            while ctx.room(&ring) > 0 && sent < 20 {
                ctx.push(&ring, &cpool, frame(&cpool, sent as u8, 60 + sent));
                sent += 1;
            }
            ctx.publish(&ring);
            let sview = srx.loc.view(&sregions).unwrap();
            srx.receive(&sview, &sregions, &spool, &mut got, 64, 1514, &mut stats)
                .unwrap();
            let _ = round;
        }
        let ring = ctx.loc.view(cregions).unwrap();
        ctx.reclaim(&ring, &cpool).unwrap();
        assert_eq!(got.len(), 20);
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.len(), 60 + i);
            assert!(f.as_slice().iter().all(|&b| b == i as u8));
        }
        assert_eq!(ctx.lent(), 0);
        // The C2S ring wanted interrupts (flags 0): the client signalled.
        assert!(sys::eventfd_drain(ctx.loc.eventfd.as_fd()).unwrap() > 0);
        got.clear();

        // Server -> client, including a frame larger than a posted buffer (two slots).
        let cring = crx.loc.view(cregions).unwrap();
        crx.refill(&cring, &cpool);
        assert_eq!(crx.lent(), 8);
        let mut out = Batch::with_capacity(8);
        for i in 0..5u8 {
            out.push(frame(&spool, 0xA0 + i, 100)).ok().unwrap();
        }
        let sview = stx.loc.view(&sregions).unwrap();
        assert_eq!(
            stx.send(&sview, &sregions, &mut out, 32, &mut stats)
                .unwrap(),
            5
        );
        let mut rx = Batch::with_capacity(8);
        assert_eq!(
            crx.receive(&cring, &cpool, &mut rx, 8, 1514, &mut stats)
                .unwrap(),
            5
        );
        for (i, f) in rx.iter().enumerate() {
            assert_eq!(f.len(), 100);
            assert!(f.as_slice().iter().all(|&b| b == 0xA0 + i as u8));
        }
        crx.refill(&cring, &cpool);
        assert_eq!(crx.lent(), 8);
        assert_eq!(stats.rejected_desc, 0);
        crx.release_all(&cpool);
        assert_eq!(crx.lent(), 0);
        drop(rx);
        assert_eq!(cpool.stats().in_use, 0);
    }

    #[test]
    fn server_rejects_descriptors_outside_the_regions() {
        let rings = region(ring_len(2));
        let data = region(4096);
        let regions = vec![rings, data];
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
        let mut batch = Batch::with_capacity(16);
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

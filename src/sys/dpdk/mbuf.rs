//! [`Mbuf`]: one packet buffer, owned; [`MbufBurst`]: a fixed array of them for one burst.

use std::fmt;
use std::ptr::NonNull;

use super::{ffi, BURST_MAX};

/// One DPDK packet buffer (`rte_mbuf`), owned: dropping it returns it to its pool.
///
/// Only one-segment mbufs are made here (received multi-segment frames are refused by the
/// device); [`Mbuf::data`] is the first segment's data.
pub struct Mbuf {
    ptr: NonNull<ffi::rte_mbuf>,
}

// SAFETY: an Mbuf is the only handle to its rte_mbuf; freeing it from any thread is allowed
// (mempools are multi-producer; threads without an lcore id bypass the per-lcore caches).
unsafe impl Send for Mbuf {}
// SAFETY: shared references only read the mbuf's header and data.
unsafe impl Sync for Mbuf {}

impl Mbuf {
    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `ptr` must be a valid one-owner mbuf (from a pool or a driver's RX burst) that nothing
    /// else frees or uses afterwards, and its pool must be alive.
    pub(super) unsafe fn from_raw(ptr: NonNull<ffi::rte_mbuf>) -> Mbuf {
        Mbuf { ptr }
    }

    /// Gives up ownership (to a driver's TX burst).
    pub(super) fn into_raw(self) -> NonNull<ffi::rte_mbuf> {
        let p = self.ptr;
        std::mem::forget(self);
        p
    }

    /// The frame bytes (the first segment's data).
    #[inline]
    pub fn data(&self) -> &[u8] {
        // SAFETY: self owns a valid mbuf; mtod points to data_len initialised bytes inside its
        // buffer, which stays valid and unaliased by writers while &self is held.
        unsafe {
            let p = ffi::ustack_pktmbuf_mtod(self.ptr.as_ptr());
            let n = ffi::ustack_pktmbuf_data_len(self.ptr.as_ptr()) as usize;
            std::slice::from_raw_parts(p, n)
        }
    }

    /// The frame bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in data(); &mut self makes this the only access to the bytes.
        unsafe {
            let p = ffi::ustack_pktmbuf_mtod(self.ptr.as_ptr());
            let n = ffi::ustack_pktmbuf_data_len(self.ptr.as_ptr()) as usize;
            std::slice::from_raw_parts_mut(p, n)
        }
    }

    /// Frame length (first segment).
    #[inline]
    pub fn len(&self) -> usize {
        // SAFETY: reads a field of the owned, valid mbuf.
        unsafe { ffi::ustack_pktmbuf_data_len(self.ptr.as_ptr()) as usize }
    }

    /// True for an empty frame.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total length of all segments.
    pub fn pkt_len(&self) -> usize {
        // SAFETY: reads a field of the owned, valid mbuf.
        unsafe { ffi::ustack_pktmbuf_pkt_len(self.ptr.as_ptr()) as usize }
    }

    /// Segments in the chain.
    pub fn segments(&self) -> u16 {
        // SAFETY: reads a field of the owned, valid mbuf.
        unsafe { ffi::ustack_pktmbuf_nb_segs(self.ptr.as_ptr()) }
    }

    /// Free bytes in front of the data.
    #[inline]
    pub fn headroom(&self) -> usize {
        // SAFETY: reads fields of the owned, valid mbuf.
        unsafe { ffi::ustack_pktmbuf_headroom(self.ptr.as_ptr()) as usize }
    }

    /// Free bytes after the data.
    #[inline]
    pub fn tailroom(&self) -> usize {
        // SAFETY: reads fields of the owned, valid mbuf.
        unsafe { ffi::ustack_pktmbuf_tailroom(self.ptr.as_ptr()) as usize }
    }

    /// The longest frame this mbuf can hold from where its data starts.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.len() + self.tailroom()
    }

    /// Sets the frame length (growing into the tailroom or shrinking from the end); `false`
    /// and no change if it does not fit or the mbuf has more than one segment.
    #[inline]
    #[must_use]
    pub fn set_len(&mut self, len: usize) -> bool {
        let Ok(len) = u16::try_from(len) else {
            return false;
        };
        // SAFETY: the shim checks nb_segs and room (append/trim) before changing anything;
        // the mbuf is owned and valid.
        unsafe { ffi::ustack_pktmbuf_set_len(self.ptr.as_ptr(), len) == 0 }
    }

    /// Grows the frame by `n` bytes at the end; the new (uninitialised-by-us, stale) bytes.
    pub fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        let n16 = u16::try_from(n).ok()?;
        // SAFETY: append checks the tailroom and returns NULL when n does not fit; on success
        // the returned pointer is n bytes inside the owned buffer.
        unsafe {
            let p = ffi::ustack_pktmbuf_append(self.ptr.as_ptr(), n16);
            (!p.is_null()).then(|| std::slice::from_raw_parts_mut(p, n))
        }
    }

    /// Grows the frame by `n` bytes in front (into the headroom); the new bytes.
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        let n16 = u16::try_from(n).ok()?;
        // SAFETY: prepend checks the headroom and returns NULL when n does not fit; on success
        // the returned pointer is the new data start, n bytes before the old one.
        unsafe {
            let p = ffi::ustack_pktmbuf_prepend(self.ptr.as_ptr(), n16);
            (!p.is_null()).then(|| std::slice::from_raw_parts_mut(p, n))
        }
    }

    /// Removes `n` bytes from the front (e.g. a header); `false` if the frame is shorter.
    pub fn adj(&mut self, n: usize) -> bool {
        let Ok(n) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: adj checks n against data_len and returns NULL without change otherwise.
        unsafe { !ffi::ustack_pktmbuf_adj(self.ptr.as_ptr(), n).is_null() }
    }

    /// Removes `n` bytes from the end; `false` if the frame is shorter.
    pub fn trim(&mut self, n: usize) -> bool {
        let Ok(n) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: trim checks n against the last segment's length and fails without change.
        unsafe { ffi::ustack_pktmbuf_trim(self.ptr.as_ptr(), n) == 0 }
    }

    /// Requests transmit offloads for this frame: `flags` from `mbuf_flags`, the Ethernet
    /// header length and the IPv4 header length.
    pub fn set_tx_offload(&mut self, flags: u64, l2_len: u8, l3_len: u16) {
        // SAFETY: writes header fields of the owned, valid mbuf.
        unsafe { ffi::ustack_pktmbuf_tx_offload(self.ptr.as_ptr(), flags, l2_len, l3_len) }
    }

    /// The mbuf's offload flags.
    pub fn ol_flags(&self) -> u64 {
        // SAFETY: reads a field of the owned, valid mbuf.
        unsafe { ffi::ustack_pktmbuf_ol_flags(self.ptr.as_ptr()) }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: self owns the mbuf, whose pool is alive (pools with mbufs out are never
        // freed, see Mempool's Drop); after this nothing refers to it.
        unsafe { ffi::ustack_pktmbuf_free(self.ptr.as_ptr()) }
    }
}

impl fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mbuf")
            .field("len", &self.len())
            .field("headroom", &self.headroom())
            .field("tailroom", &self.tailroom())
            .finish()
    }
}

/// A bounded FIFO of mbufs in the pointer-array form DPDK's burst calls take. Frees what it
/// still holds when dropped.
pub struct MbufBurst {
    pub(super) ptrs: [*mut ffi::rte_mbuf; BURST_MAX],
    pub(super) start: usize,
    pub(super) end: usize,
}

// SAFETY: it holds owned mbufs only (like a Vec<Mbuf>), which may move between threads.
unsafe impl Send for MbufBurst {}

impl Default for MbufBurst {
    fn default() -> MbufBurst {
        MbufBurst::new()
    }
}

impl MbufBurst {
    /// An empty burst (room for [`BURST_MAX`] mbufs).
    pub fn new() -> MbufBurst {
        MbufBurst {
            ptrs: [std::ptr::null_mut(); BURST_MAX],
            start: 0,
            end: 0,
        }
    }

    /// Mbufs held.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Room left.
    pub fn free(&self) -> usize {
        BURST_MAX - self.len()
    }

    /// Moves the held pointers to the front of the array.
    pub(super) fn compact(&mut self) {
        if self.start > 0 {
            self.ptrs.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Appends an mbuf, or gives it back when full.
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.end == BURST_MAX {
            self.compact();
        }
        if self.end == BURST_MAX {
            return Err(m);
        }
        self.ptrs[self.end] = m.into_raw().as_ptr();
        self.end += 1;
        Ok(())
    }

    /// Takes the oldest mbuf.
    pub fn pop(&mut self) -> Option<Mbuf> {
        if self.start == self.end {
            return None;
        }
        let p = self.ptrs[self.start];
        self.start += 1;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        // SAFETY: every pointer between start and end is an owned, valid mbuf (put there by
        // push or by a driver's RX burst) and is handed out once, here.
        Some(unsafe { Mbuf::from_raw(NonNull::new_unchecked(p)) })
    }

    /// Takes the newest mbuf.
    pub fn pop_back(&mut self) -> Option<Mbuf> {
        if self.start == self.end {
            return None;
        }
        self.end -= 1;
        let p = self.ptrs[self.end];
        // SAFETY: as in pop().
        Some(unsafe { Mbuf::from_raw(NonNull::new_unchecked(p)) })
    }
}

impl Drop for MbufBurst {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

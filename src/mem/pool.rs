//! [`BufPool`]: fixed-size packet buffers carved from a [`HugeRegion`].

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::{HugeRegion, MemError, PageSize};

/// Buffers are laid out on cache-line boundaries.
const BUF_ALIGN: usize = 64;

/// Counters of a pool, read with relaxed atomics (a consistent snapshot is not guaranteed while
/// other threads allocate).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Number of buffers in the pool.
    pub capacity: usize,
    /// Buffers handed out and not yet returned.
    pub in_use: usize,
    /// The most buffers ever in use at once.
    pub high_water: usize,
    /// Successful allocations.
    pub allocs: u64,
    /// Allocations that found the pool empty.
    pub alloc_failed: u64,
}

struct Shared {
    region: HugeRegion,
    stride: usize,
    buf_len: usize,
    headroom: usize,
    count: usize,
    free: ArrayQueue<u32>,
    in_use: AtomicUsize,
    high_water: AtomicUsize,
    allocs: AtomicU64,
    alloc_failed: AtomicU64,
}

/// A bounded pool of equal-sized packet buffers in one memory region.
///
/// Cloning the handle is cheap and shares the pool. Buffers ([`PoolBuf`]) return to the pool
/// when dropped, from any thread.
#[derive(Clone)]
pub struct BufPool {
    shared: Arc<Shared>,
}

impl BufPool {
    /// Splits `region` into buffers of `buf_len` bytes (rounded up to 64-byte slots), each handed
    /// out with `headroom` bytes reserved in front of the data for headers to be prepended.
    pub fn new(region: HugeRegion, buf_len: usize, headroom: usize) -> Result<BufPool, MemError> {
        if buf_len == 0 {
            return Err(MemError::ZeroSize);
        }
        if headroom >= buf_len {
            return Err(MemError::BadLayout(
                "headroom must be smaller than the buffer",
            ));
        }
        if buf_len > u32::MAX as usize {
            return Err(MemError::BadLayout("buffer longer than 4 GiB"));
        }
        let stride = buf_len.next_multiple_of(BUF_ALIGN);
        let count = (region.len() / stride).min(u32::MAX as usize);
        if count == 0 {
            return Err(MemError::BadLayout("region smaller than one buffer"));
        }
        let free = ArrayQueue::new(count);
        for i in 0..count {
            // Cannot fail: the queue holds exactly `count` entries.
            let _ = free.push(i as u32);
        }
        Ok(BufPool {
            shared: Arc::new(Shared {
                region,
                stride,
                buf_len,
                headroom,
                count,
                free,
                in_use: AtomicUsize::new(0),
                high_water: AtomicUsize::new(0),
                allocs: AtomicU64::new(0),
                alloc_failed: AtomicU64::new(0),
            }),
        })
    }

    /// Maps a region for `count` buffers (hugepages preferred, see [`HugeRegion::map`]) and
    /// builds the pool on it. The pool may hold a few more buffers than asked for, since the
    /// region is rounded up to whole pages.
    pub fn with_capacity(
        count: usize,
        buf_len: usize,
        headroom: usize,
        page: PageSize,
    ) -> Result<BufPool, MemError> {
        if count == 0 {
            return Err(MemError::ZeroSize);
        }
        let stride = buf_len.next_multiple_of(BUF_ALIGN);
        let bytes = count
            .checked_mul(stride)
            .ok_or(MemError::BadLayout("pool size overflows"))?;
        BufPool::new(HugeRegion::map(bytes, page)?, buf_len, headroom)
    }

    /// Takes a buffer, or `None` when all are in use (back-pressure: try again after some are
    /// returned). Never allocates heap memory.
    #[inline]
    pub fn alloc(&self) -> Option<PoolBuf> {
        let s = &*self.shared;
        match s.free.pop() {
            Some(idx) => {
                let in_use = s.in_use.fetch_add(1, Ordering::Relaxed) + 1;
                s.high_water.fetch_max(in_use, Ordering::Relaxed);
                s.allocs.fetch_add(1, Ordering::Relaxed);
                Some(PoolBuf {
                    shared: Arc::clone(&self.shared),
                    idx,
                    head: s.headroom as u32,
                    len: 0,
                })
            }
            None => {
                s.alloc_failed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Number of buffers in the pool.
    pub fn capacity(&self) -> usize {
        self.shared.count
    }

    /// Buffers currently free.
    pub fn available(&self) -> usize {
        self.shared.free.len()
    }

    /// Bytes per buffer, headroom included.
    pub fn buf_len(&self) -> usize {
        self.shared.buf_len
    }

    /// Headroom reserved in front of the data of a fresh buffer.
    pub fn headroom(&self) -> usize {
        self.shared.headroom
    }

    /// Page size of the pool's region.
    pub fn page_size(&self) -> PageSize {
        self.shared.region.page_size()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PoolStats {
        let s = &*self.shared;
        PoolStats {
            capacity: s.count,
            in_use: s.in_use.load(Ordering::Relaxed),
            high_water: s.high_water.load(Ordering::Relaxed),
            allocs: s.allocs.load(Ordering::Relaxed),
            alloc_failed: s.alloc_failed.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("buf_len", &self.shared.buf_len)
            .field("headroom", &self.shared.headroom)
            .field("page_size", &self.page_size())
            .field("stats", &self.stats())
            .finish()
    }
}

/// One buffer of a [`BufPool`], owned exclusively; it returns to its pool when dropped.
///
/// The buffer holds `len` bytes of data starting `headroom()` bytes into it; the data can grow
/// up to the end of the buffer ([`PoolBuf::set_len`]) and into the headroom
/// ([`PoolBuf::prepend`]).
pub struct PoolBuf {
    shared: Arc<Shared>,
    idx: u32,
    head: u32,
    len: u32,
}

impl PoolBuf {
    #[inline]
    fn base(&self) -> *mut u8 {
        let s = &*self.shared;
        // SAFETY: idx < count and count * stride <= region length, so the offset stays inside
        // the mapping.
        unsafe { s.region.as_mut_ptr().add(self.idx as usize * s.stride) }
    }

    /// The data bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: [head, head+len) lies inside this buffer's slot (head + len <= buf_len <= stride,
        // kept by every method that changes them). The slot is owned by this PoolBuf alone: the
        // free list holds each index once and hands it out to one PoolBuf until that is dropped.
        // The memory is initialised (zero-filled at map time, then only written with bytes).
        unsafe {
            std::slice::from_raw_parts(self.base().add(self.head as usize), self.len as usize)
        }
    }

    /// The data bytes, writable.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice; &mut self makes this the only live reference to the slot.
        unsafe {
            std::slice::from_raw_parts_mut(self.base().add(self.head as usize), self.len as usize)
        }
    }

    /// Length of the data.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when the buffer holds no data.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most data the buffer can hold from its current start.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.shared.buf_len - self.head as usize
    }

    /// Bytes free in front of the data.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head as usize
    }

    /// Sets the data length; bytes that come into view keep whatever the buffer held (its memory
    /// is always initialised). Returns `false` and changes nothing if `len > capacity()`.
    #[inline]
    #[must_use]
    pub fn set_len(&mut self, len: usize) -> bool {
        if len > self.capacity() {
            return false;
        }
        self.len = len as u32;
        true
    }

    /// Grows the data by `n` bytes at the front, into the headroom, and returns the new front
    /// bytes; `None` if the headroom is smaller than `n`.
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.head as usize {
            return None;
        }
        self.head -= n as u32;
        self.len += n as u32;
        Some(&mut self.as_mut_slice()[..n])
    }

    /// Removes `n` bytes from the front of the data (they become headroom); `false` if the
    /// data is shorter than `n`.
    #[must_use]
    pub fn strip_front(&mut self, n: usize) -> bool {
        if n > self.len as usize {
            return false;
        }
        self.head += n as u32;
        self.len -= n as u32;
        true
    }

    /// Resets the buffer to empty data at the pool's default headroom.
    pub fn reset(&mut self) {
        self.head = self.shared.headroom as u32;
        self.len = 0;
    }

    /// Index of the buffer within its pool (stable while the buffer is held).
    pub fn index(&self) -> usize {
        self.idx as usize
    }

    /// A new buffer from the same pool holding a copy of this one's data (and headroom offset);
    /// `None` if the pool is empty.
    pub fn try_clone(&self) -> Option<PoolBuf> {
        let mut copy = BufPool {
            shared: Arc::clone(&self.shared),
        }
        .alloc()?;
        copy.head = self.head;
        copy.len = self.len;
        copy.as_mut_slice().copy_from_slice(self.as_slice());
        Some(copy)
    }
}

impl Drop for PoolBuf {
    #[inline]
    fn drop(&mut self) {
        let s = &*self.shared;
        s.in_use.fetch_sub(1, Ordering::Relaxed);
        let returned = s.free.push(self.idx);
        debug_assert!(
            returned.is_ok(),
            "pool free list overflow: buffer returned twice"
        );
    }
}

impl fmt::Debug for PoolBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuf")
            .field("index", &self.idx)
            .field("headroom", &self.head)
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: Shared owns its region; all mutable state is atomics or the lock-free queue, and buffer
// memory is only reached through a PoolBuf, which is the unique owner of its slot.
unsafe impl Send for Shared {}
// SAFETY: see Send; &Shared gives no access to buffer memory by itself.
unsafe impl Sync for Shared {}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> BufPool {
        BufPool::with_capacity(n, 2048, 128, PageSize::Base4K).unwrap()
    }

    #[test]
    fn layout_and_counters() {
        let p = pool(4);
        assert_eq!(p.capacity(), 4);
        let mut a = p.alloc().unwrap();
        assert_eq!(a.headroom(), 128);
        assert_eq!(a.capacity(), 2048 - 128);
        assert!(a.set_len(100));
        assert!(!a.set_len(2048));
        a.as_mut_slice().fill(7);
        assert_eq!(p.stats().in_use, 1);
        drop(a);
        let s = p.stats();
        assert_eq!((s.in_use, s.high_water, s.allocs), (0, 1, 1));
    }

    #[test]
    fn exhaustion_is_none_and_counted() {
        let p = pool(2);
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        assert_ne!(a.index(), b.index());
        assert!(p.alloc().is_none());
        assert_eq!(p.stats().alloc_failed, 1);
        drop(a);
        assert!(p.alloc().is_some());
        drop(b);
    }

    #[test]
    fn headroom_prepend_and_strip() {
        let p = pool(1);
        let mut b = p.alloc().unwrap();
        assert!(b.set_len(4));
        b.as_mut_slice().copy_from_slice(b"data");
        b.prepend(3).unwrap().copy_from_slice(b"hdr");
        assert_eq!(b.as_slice(), b"hdrdata");
        assert!(b.prepend(126).is_none());
        assert!(b.strip_front(3));
        assert_eq!(b.as_slice(), b"data");
        assert!(!b.strip_front(5));
        // A 4 KiB page holds two 2 KiB buffers.
        let c = b.try_clone().unwrap();
        assert_eq!(c.as_slice(), b"data");
        assert_ne!(c.index(), b.index());
        assert!(b.try_clone().is_none(), "pool of two is exhausted");
    }
}

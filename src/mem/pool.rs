//! [`BufPool`]: fixed-size packet buffers carved from a [`HugeRegion`].
//!
//! # Hot path
//!
//! Free buffers are kept in two places: a small LIFO cache of the most recently returned ones
//! (at most 512), and a lock-free bounded FIFO queue of the rest. `alloc` takes the
//! cache's top if it can, else pops the queue (one CAS); dropping a buffer pushes it on the
//! cache, or on the queue when the cache is full or another thread holds it. Either way that is
//! one atomic swap or CAS, one `Arc` reference-count change (so a buffer keeps its pool's memory
//! alive wherever it is dropped), and one relaxed counter increment.
//!
//! Why the cache: a FIFO hands out every buffer of the pool in turn, so the bytes a packet
//! touches are always the pool's coldest, and a pool of thousands of 9 KiB buffers (tens of
//! MiB) goes through the caches at the speed of memory. The cache hands back the buffer just
//! returned, whose lines are still in a cache, and the rest of the pool stays untouched until
//! a burst needs more buffers than the cache holds (a DPDK mempool's per-core cache is LIFO for
//! the same reason). On a 2-vCPU AMD EPYC VM, copying 9000-byte frames written by the other
//! core into 1 MiB staging buffers ran at 44 GB/s over 256 buffers and 17-24 GB/s over 2,560.
//!
//! The cache is guarded by a flag taken with one swap, never waited on while the queue has
//! buffers: a thread that finds it taken uses the queue. There is no `in_use` counter to keep
//! in step: the number in use is `capacity - queue length - cache length`, and the high-water
//! mark is updated from it with a plain load and compare (an atomic read-modify-write only
//! when the mark actually rises).
//!
//! Handing a buffer from one thread to another goes through the cache's flag (released by the
//! thread that returned it, acquired by the one that takes it) or the queue, whose push
//! (release) and pop (acquire) order the previous owner's writes before the next owner's reads.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::{HugeRegion, MemError, PageSize};
use crate::sys::xdp::UmemArea;

/// Buffers are laid out on cache-line boundaries.
const BUF_ALIGN: usize = 64;

/// The most free buffers a pool keeps in its LIFO cache of recently returned ones (the rest wait
/// in its FIFO queue). A burst of a few hundred frames, a ring's refill, fits.
const HOT_MAX: usize = 512;

/// The LIFO cache of recently returned buffer indices, owned by whoever holds `taken`.
#[repr(align(128))]
struct HotCache {
    taken: AtomicBool,
    /// Entries in `slots`; written only by the holder of `taken`, read by anyone for the counts.
    len: AtomicUsize,
    /// Indices, `slots[..len]` valid. Atomics so that no `unsafe` is needed; the holder of
    /// `taken` is the only thread that touches them, with relaxed loads and stores.
    slots: Box<[AtomicU32]>,
}

impl HotCache {
    fn new(cap: usize) -> HotCache {
        HotCache {
            taken: AtomicBool::new(false),
            len: AtomicUsize::new(0),
            slots: (0..cap).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Runs `f` on (slots, len) if the cache is free, else returns `None` without waiting.
    #[inline]
    fn try_with<R>(&self, f: impl FnOnce(&[AtomicU32], &AtomicUsize) -> R) -> Option<R> {
        if self.taken.swap(true, Ordering::Acquire) {
            return None;
        }
        let r = f(&self.slots, &self.len);
        self.taken.store(false, Ordering::Release);
        Some(r)
    }

    /// The most recently returned index, if the cache is free and holds one.
    #[inline]
    fn pop(&self) -> Option<u32> {
        // Unlocked peek: an empty cache costs no swap.
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.try_with(Self::take_top).flatten()
    }

    /// Removes and returns the top entry (the caller holds `taken`).
    #[inline]
    fn take_top(slots: &[AtomicU32], len: &AtomicUsize) -> Option<u32> {
        let n = len.load(Ordering::Relaxed).checked_sub(1)?;
        len.store(n, Ordering::Relaxed);
        Some(slots[n].load(Ordering::Relaxed))
    }

    /// Like `pop`, but waits for a holder to let go: for when the queue is empty and the cache
    /// may hold the last free buffers.
    fn pop_waiting(&self) -> Option<u32> {
        loop {
            if self.len.load(Ordering::Relaxed) == 0 {
                return None;
            }
            if let Some(got) = self.try_with(Self::take_top) {
                return got;
            }
            std::hint::spin_loop();
        }
    }

    /// Keeps `idx` if the cache is free and has room; `false` otherwise.
    #[inline]
    fn push(&self, idx: u32) -> bool {
        if self.len.load(Ordering::Relaxed) >= self.slots.len() {
            return false;
        }
        self.try_with(|slots, len| {
            let n = len.load(Ordering::Relaxed);
            if n >= slots.len() {
                return false;
            }
            slots[n].store(idx, Ordering::Relaxed);
            len.store(n + 1, Ordering::Relaxed);
            true
        })
        .unwrap_or(false)
    }
}

/// Counters of a pool, read with relaxed atomics (a consistent snapshot is not guaranteed while
/// other threads allocate).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Number of buffers in the pool.
    pub capacity: usize,
    /// Buffers handed out and not yet returned.
    pub in_use: usize,
    /// The most buffers ever in use at once (as seen by `alloc`; exact when one thread allocates).
    pub high_water: usize,
    /// Successful allocations (`try_clone` included). Buffers returned so far are
    /// `allocs - in_use`.
    pub allocs: u64,
    /// Allocations that found the pool empty.
    pub alloc_failed: u64,
}

impl PoolStats {
    /// Adds `other`'s counters to these: several pools as one (per-core shards). The high
    /// waters are summed, an upper bound of the most in use at once.
    pub fn add(&mut self, other: &PoolStats) {
        add_counters!(PoolStats, self, other; capacity, in_use, high_water, allocs, alloc_failed);
    }
}

/// Counters written on the hot path, on their own cache lines so that updating them does not
/// evict the read-mostly layout fields from other cores' caches.
#[repr(align(128))]
struct Counters {
    high_water: AtomicUsize,
    allocs: AtomicU64,
    alloc_failed: AtomicU64,
}

struct Shared {
    region: HugeRegion,
    stride: usize,
    buf_len: usize,
    headroom: usize,
    count: usize,
    /// Indices of the free buffers not in `hot`; each index is either in one of the two once,
    /// owned by one PoolBuf, or lent out (see `lent`).
    free: ArrayQueue<u32>,
    /// The most recently returned free buffers, handed out first.
    hot: HotCache,
    /// One bit per buffer: set while the buffer is lent to an outside owner (a kernel ring, a
    /// peer process) with [`BufPool::lend`].
    lent: Box<[AtomicU64]>,
    counters: Counters,
}

impl Shared {
    #[inline]
    fn in_use(&self) -> usize {
        self.count
            .saturating_sub(self.free.len() + self.hot.len.load(Ordering::Relaxed))
    }

    #[inline]
    fn take_free(&self) -> Option<u32> {
        self.hot
            .pop()
            .or_else(|| self.free.pop())
            .or_else(|| self.hot.pop_waiting())
    }

    #[inline]
    fn give_back(&self, idx: u32) {
        if !self.hot.push(idx) {
            let returned = self.free.push(idx);
            debug_assert!(
                returned.is_ok(),
                "pool free list overflow: buffer returned twice"
            );
        }
    }
}

/// Takes a free buffer of the pool `shared`, or counts the failure.
#[inline]
fn alloc_from(shared: &Arc<Shared>) -> Option<PoolBuf> {
    let s = &**shared;
    match s.take_free() {
        Some(idx) => {
            s.counters.allocs.fetch_add(1, Ordering::Relaxed);
            let in_use = s.in_use();
            if in_use > s.counters.high_water.load(Ordering::Relaxed) {
                s.counters.high_water.fetch_max(in_use, Ordering::Relaxed);
            }
            Some(PoolBuf {
                shared: Arc::clone(shared),
                idx,
                head: s.headroom as u32,
                len: 0,
            })
        }
        None => {
            s.counters.alloc_failed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// A bounded pool of equal-sized packet buffers in one memory region.
///
/// Cloning the handle is cheap and shares the pool. Buffers ([`PoolBuf`]) return to the pool
/// when dropped, from any thread; the pool's memory lives until the last handle and the last
/// buffer are gone.
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
                hot: HotCache::new(count.min(HOT_MAX)),
                lent: (0..count.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
                counters: Counters {
                    high_water: AtomicUsize::new(0),
                    allocs: AtomicU64::new(0),
                    alloc_failed: AtomicU64::new(0),
                },
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
        if count == 0 || buf_len == 0 {
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
        alloc_from(&self.shared)
    }

    /// Hands `buf` to an outside owner (a kernel ring, a peer) and returns its index. The buffer
    /// stays out of the free list, counted as in use, until [`BufPool::reclaim`] takes it back.
    /// Panics if `buf` belongs to another pool.
    pub fn lend(&self, buf: PoolBuf) -> u32 {
        assert!(
            Arc::ptr_eq(&self.shared, &buf.shared),
            "lend: buffer of another pool"
        );
        let idx = buf.idx;
        let (word, bit) = (idx as usize / 64, 1u64 << (idx % 64));
        let before = self.shared.lent[word].fetch_or(bit, Ordering::AcqRel);
        debug_assert_eq!(before & bit, 0, "buffer {idx} lent twice");
        // The slot must not go back to the free list (PoolBuf's Drop), but the pool reference the
        // buffer held must be released.
        let buf = std::mem::ManuallyDrop::new(buf);
        // SAFETY: `buf` is never used again and its Drop never runs, so moving its Arc out
        // leaves no second owner of that reference; dropping it releases the reference.
        drop(unsafe { std::ptr::read(&buf.shared) });
        idx
    }

    /// Takes back buffer `idx` lent with [`BufPool::lend`], holding `len` bytes of data that
    /// start `offset` bytes into its slot. `None` (and nothing changes) if `idx` is not a buffer
    /// of this pool, is not lent, or the range does not fit the buffer: an index that came back
    /// from an untrusted ring cannot make two owners of one buffer or reach outside it.
    pub fn reclaim(&self, idx: u32, offset: usize, len: usize) -> Option<PoolBuf> {
        let s = &*self.shared;
        if idx as usize >= s.count || offset.checked_add(len)? > s.buf_len {
            return None;
        }
        let (word, bit) = (idx as usize / 64, 1u64 << (idx % 64));
        let before = s.lent[word].fetch_and(!bit, Ordering::AcqRel);
        if before & bit == 0 {
            return None;
        }
        Some(PoolBuf {
            shared: Arc::clone(&self.shared),
            idx,
            head: offset as u32,
            len: len as u32,
        })
    }

    /// Distance in bytes from the start of the pool's memory to buffer `idx`'s slot.
    pub fn buf_offset(&self, idx: u32) -> usize {
        idx as usize * self.shared.stride
    }

    /// Bytes between the starts of two consecutive buffers (`buf_len` rounded up to 64).
    pub fn stride(&self) -> usize {
        self.shared.stride
    }

    /// The pool's memory as (start, length), for registering it with a kernel or device (an
    /// AF_XDP UMEM, a DMA mapping). Writing through it is the caller's business.
    pub fn memory(&self) -> (*mut u8, usize) {
        (self.shared.region.as_mut_ptr(), self.shared.region.len())
    }

    /// Number of buffers in the pool.
    pub fn capacity(&self) -> usize {
        self.shared.count
    }

    /// Buffers currently free.
    pub fn available(&self) -> usize {
        self.shared.free.len() + self.shared.hot.len.load(Ordering::Relaxed)
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
            in_use: s.in_use(),
            high_water: s.counters.high_water.load(Ordering::Relaxed),
            allocs: s.counters.allocs.load(Ordering::Relaxed),
            alloc_failed: s.counters.alloc_failed.load(Ordering::Relaxed),
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

// SAFETY: a pool's memory is its region's one mapping (page aligned, read-write, `len` bytes),
// and every clone of the pool holds the `Arc` that owns the region, so the mapping stays valid
// while any clone lives. Its UMEM frames are the pool's buffer slots (`stride` apart); the
// AF_XDP device lends the kernel only buffers it took out of the pool (`lend`).
unsafe impl UmemArea for BufPool {
    fn memory(&self) -> (*mut u8, usize) {
        BufPool::memory(self)
    }
    fn frame_len(&self) -> usize {
        self.stride()
    }
}

/// One buffer of a [`BufPool`], owned exclusively; it returns to its pool when dropped.
///
/// The buffer holds `len` bytes of data starting `headroom()` bytes into it; the data can grow
/// up to the end of the buffer ([`PoolBuf::set_len`]) and into the headroom
/// ([`PoolBuf::prepend`]).
///
/// Invariant kept by every method: `head + len <= buf_len`.
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
        // The memory is initialised (zero-filled at map time, then only written with bytes) and
        // lives as long as the region, which our Arc keeps alive.
        unsafe {
            std::slice::from_raw_parts(self.base().add(self.head as usize), self.len as usize)
        }
    }

    /// The data bytes, writable.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice; &mut self makes this the only live reference to the slot, and
        // the region's pointer allows writes.
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
    #[inline]
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
    #[inline]
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
    #[inline]
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
        let mut copy = alloc_from(&self.shared)?;
        copy.head = self.head;
        copy.len = self.len;
        copy.as_mut_slice().copy_from_slice(self.as_slice());
        Some(copy)
    }
}

impl Drop for PoolBuf {
    #[inline]
    fn drop(&mut self) {
        self.shared.give_back(self.idx);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> BufPool {
        BufPool::with_capacity(n, 2048, 128, PageSize::Base4K).unwrap()
    }

    #[test]
    fn handles_and_buffers_cross_threads() {
        fn send_sync_clone<T: Send + Sync + Clone>() {}
        fn send_sync<T: Send + Sync>() {}
        send_sync_clone::<BufPool>();
        send_sync::<PoolBuf>();
    }

    #[test]
    fn bad_layouts_are_errors() {
        let region = || HugeRegion::map_exact(4096, PageSize::Base4K).unwrap();
        assert!(matches!(
            BufPool::new(region(), 0, 0),
            Err(MemError::ZeroSize)
        ));
        assert!(matches!(
            BufPool::new(region(), 64, 64),
            Err(MemError::BadLayout(_))
        ));
        assert!(matches!(
            BufPool::new(region(), 4097, 0),
            Err(MemError::BadLayout(_))
        ));
        assert!(matches!(
            BufPool::with_capacity(0, 2048, 0, PageSize::Base4K),
            Err(MemError::ZeroSize)
        ));
        assert!(matches!(
            BufPool::with_capacity(usize::MAX, 2048, 0, PageSize::Base4K),
            Err(MemError::BadLayout(_))
        ));
        // Exactly one buffer fits.
        assert_eq!(BufPool::new(region(), 4096, 0).unwrap().capacity(), 1);
    }

    #[test]
    fn layout_and_counters() {
        let p = pool(4);
        assert_eq!(p.capacity(), 4);
        assert_eq!(
            (p.buf_len(), p.headroom(), p.page_size()),
            (2048, 128, PageSize::Base4K)
        );
        let mut a = p.alloc().unwrap();
        assert_eq!(a.headroom(), 128);
        assert_eq!(a.capacity(), 2048 - 128);
        assert!(a.is_empty());
        assert!(a.set_len(100));
        assert!(!a.set_len(2048));
        assert_eq!(a.len(), 100, "a refused set_len changes nothing");
        a.as_mut_slice().fill(7);
        assert_eq!(p.stats().in_use, 1);
        assert_eq!(p.available(), 3);
        drop(a);
        let s = p.stats();
        assert_eq!((s.in_use, s.high_water, s.allocs), (0, 1, 1));
        assert_eq!(p.available(), 4);
    }

    #[test]
    fn lend_and_reclaim_check_everything() {
        let p = pool(4);
        let other = pool(1);
        let mut b = p.alloc().unwrap();
        assert!(b.set_len(3));
        b.as_mut_slice().copy_from_slice(b"abc");
        let idx = p.lend(b);
        assert_eq!(p.stats().in_use, 1, "a lent buffer counts as in use");
        assert!(
            other.reclaim(idx, 0, 1).is_none(),
            "another pool's lent bits are its own"
        );
        assert_eq!(
            Arc::strong_count(&p.shared),
            1,
            "lending released the buffer's pool reference"
        );
        assert!(p.reclaim(99, 0, 1).is_none(), "index out of range");
        assert!(p.reclaim(idx, 2040, 100).is_none(), "range past the buffer");
        assert!(p.reclaim(idx, usize::MAX, 2).is_none(), "overflowing range");
        let back = p.reclaim(idx, 128, 3).expect("lent buffer comes back");
        assert_eq!(back.as_slice(), b"abc");
        assert!(
            p.reclaim(idx, 128, 3).is_none(),
            "a buffer comes back only once"
        );
        let free_idx = p.alloc().unwrap();
        let i = free_idx.index() as u32;
        drop(free_idx);
        assert!(
            p.reclaim(i, 0, 1).is_none(),
            "a buffer never lent cannot be reclaimed"
        );
        drop(back);
        assert_eq!(p.stats().in_use, 0);
        assert_eq!(p.buf_offset(2), 2 * p.stride());
        assert!(p.memory().1 >= p.capacity() * p.stride());
    }

    #[test]
    fn the_buffer_returned_last_is_handed_out_first() {
        let p = pool(8);
        let (a, b) = (p.alloc().unwrap(), p.alloc().unwrap());
        let (ia, ib) = (a.index(), b.index());
        drop(a);
        drop(b);
        let (x, y) = (p.alloc().unwrap(), p.alloc().unwrap());
        assert_eq!(
            (x.index(), y.index()),
            (ib, ia),
            "LIFO: the warmest buffer first"
        );
        assert_eq!(p.available(), 6);
    }

    #[test]
    fn more_free_buffers_than_the_cache_holds_all_come_back() {
        let p = BufPool::with_capacity(HOT_MAX + 100, 64, 0, PageSize::Base4K).unwrap();
        let cap = p.capacity();
        assert!(cap > HOT_MAX);
        for _ in 0..2 {
            let all: Vec<PoolBuf> = std::iter::from_fn(|| p.alloc()).collect();
            assert_eq!(
                all.len(),
                cap,
                "every buffer, cached or queued, is handed out"
            );
            let mut seen = vec![false; cap];
            for b in &all {
                assert!(
                    !std::mem::replace(&mut seen[b.index()], true),
                    "handed out twice"
                );
            }
            assert_eq!((p.available(), p.stats().in_use), (0, cap));
            drop(all);
            assert_eq!((p.available(), p.stats().in_use), (cap, 0));
        }
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
        b.reset();
        assert_eq!((b.headroom(), b.len()), (128, 0));
    }

    #[test]
    fn buffers_outlive_the_pool_handle() {
        let p = pool(2);
        let mut b = p.alloc().unwrap();
        let q = p.clone();
        drop(p);
        drop(q);
        // The buffer keeps the region mapped: writing and reading it is fine (Miri checks this).
        assert!(b.set_len(b.capacity()));
        b.as_mut_slice().fill(0x5A);
        assert!(b.as_slice().iter().all(|&x| x == 0x5A));
    }

    /// The model test: random operation sequences on a small pool, checked step by step against
    /// a plain model of which buffers are held, their head/len, and every slot's bytes.
    mod model {
        use std::collections::HashSet;

        use proptest::prelude::*;

        use super::super::*;

        #[derive(Clone, Debug)]
        enum Op {
            Alloc,
            /// Drop the held buffer at this position (modulo the number held).
            Drop(usize),
            SetLen(usize, usize),
            Prepend(usize, usize, u8),
            StripFront(usize, usize),
            TryClone(usize),
            /// Fill the data with a pattern made from this seed, the slot and the offset.
            Write(usize, u8),
            Reset(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => Just(Op::Alloc),
                3 => any::<usize>().prop_map(Op::Drop),
                2 => (any::<usize>(), 0usize..2200).prop_map(|(i, n)| Op::SetLen(i, n)),
                2 => (any::<usize>(), 0usize..300, any::<u8>()).prop_map(|(i, n, b)| Op::Prepend(i, n, b)),
                2 => (any::<usize>(), 0usize..300).prop_map(|(i, n)| Op::StripFront(i, n)),
                2 => any::<usize>().prop_map(Op::TryClone),
                3 => (any::<usize>(), any::<u8>()).prop_map(|(i, s)| Op::Write(i, s)),
                1 => any::<usize>().prop_map(Op::Reset),
            ]
        }

        fn pattern(seed: u8, slot: usize, offset: usize) -> u8 {
            seed.wrapping_add((slot as u8).wrapping_mul(31))
                .wrapping_add((offset as u8).wrapping_mul(7))
                ^ (offset >> 8) as u8
        }

        struct Held {
            buf: PoolBuf,
            idx: usize,
            head: usize,
            len: usize,
        }

        #[derive(Default)]
        struct Model {
            held: Vec<Held>,
            /// Expected bytes of every slot (buf_len each); they persist across free and alloc.
            slots: Vec<Vec<u8>>,
            high_water: usize,
            allocs: u64,
            alloc_failed: u64,
        }

        impl Model {
            fn pick(&self, i: usize) -> Option<usize> {
                (!self.held.is_empty()).then(|| i % self.held.len())
            }

            /// Records the result of an alloc or try_clone against the model's expectation.
            fn took(
                &mut self,
                got: Option<PoolBuf>,
                capacity: usize,
                head: usize,
                len: usize,
            ) -> Result<Option<usize>, TestCaseError> {
                let expect_some = self.held.len() < capacity;
                prop_assert_eq!(
                    got.is_some(),
                    expect_some,
                    "held {} of {}",
                    self.held.len(),
                    capacity
                );
                let Some(buf) = got else {
                    self.alloc_failed += 1;
                    return Ok(None);
                };
                let idx = buf.index();
                prop_assert!(idx < capacity);
                prop_assert!(
                    self.held.iter().all(|h| h.idx != idx),
                    "index {} handed out while held",
                    idx
                );
                self.allocs += 1;
                self.held.push(Held {
                    buf,
                    idx,
                    head,
                    len,
                });
                self.high_water = self.high_water.max(self.held.len());
                Ok(Some(idx))
            }
        }

        fn run(buf_len: usize, headroom: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
            let region = HugeRegion::map_exact(4096, PageSize::Base4K).unwrap();
            let pool = BufPool::new(region, buf_len, headroom).unwrap();
            let cap = pool.capacity();
            prop_assert_eq!(cap, 4096 / buf_len.next_multiple_of(BUF_ALIGN));
            let mut m = Model {
                slots: vec![vec![0; buf_len]; cap],
                ..Model::default()
            };
            for op in ops {
                match op {
                    Op::Alloc => {
                        let got = pool.alloc();
                        if let Some(b) = &got {
                            prop_assert_eq!((b.headroom(), b.len()), (headroom, 0));
                        }
                        m.took(got, cap, headroom, 0)?;
                    }
                    Op::Drop(i) => {
                        if let Some(i) = m.pick(i) {
                            drop(m.held.swap_remove(i));
                        }
                    }
                    Op::SetLen(i, n) => {
                        if let Some(i) = m.pick(i) {
                            let h = &mut m.held[i];
                            let ok = h.buf.set_len(n);
                            prop_assert_eq!(ok, n <= buf_len - h.head);
                            if ok {
                                h.len = n;
                            }
                        }
                    }
                    Op::Prepend(i, n, byte) => {
                        if let Some(i) = m.pick(i) {
                            let h = &mut m.held[i];
                            match h.buf.prepend(n) {
                                Some(front) => {
                                    prop_assert!(n <= h.head);
                                    prop_assert_eq!(front.len(), n);
                                    front.fill(byte);
                                    h.head -= n;
                                    h.len += n;
                                    m.slots[h.idx][h.head..h.head + n].fill(byte);
                                }
                                None => prop_assert!(n > h.head),
                            }
                        }
                    }
                    Op::StripFront(i, n) => {
                        if let Some(i) = m.pick(i) {
                            let h = &mut m.held[i];
                            let ok = h.buf.strip_front(n);
                            prop_assert_eq!(ok, n <= h.len);
                            if ok {
                                h.head += n;
                                h.len -= n;
                            }
                        }
                    }
                    Op::TryClone(i) => {
                        if let Some(i) = m.pick(i) {
                            let (src, head, len) = (m.held[i].idx, m.held[i].head, m.held[i].len);
                            let got = m.held[i].buf.try_clone();
                            if let Some(dst) = m.took(got, cap, head, len)? {
                                let data = m.slots[src][head..head + len].to_vec();
                                m.slots[dst][head..head + len].copy_from_slice(&data);
                            }
                        }
                    }
                    Op::Write(i, seed) => {
                        if let Some(i) = m.pick(i) {
                            let h = &mut m.held[i];
                            for (k, b) in h.buf.as_mut_slice().iter_mut().enumerate() {
                                *b = pattern(seed, h.idx, k);
                            }
                            for k in 0..h.len {
                                m.slots[h.idx][h.head + k] = pattern(seed, h.idx, k);
                            }
                        }
                    }
                    Op::Reset(i) => {
                        if let Some(i) = m.pick(i) {
                            let h = &mut m.held[i];
                            h.buf.reset();
                            h.head = headroom;
                            h.len = 0;
                        }
                    }
                }
                // Every held buffer matches the model, byte for byte.
                let mut seen = HashSet::new();
                for h in &m.held {
                    prop_assert!(seen.insert(h.idx), "index {} held twice", h.idx);
                    prop_assert_eq!(h.buf.index(), h.idx);
                    prop_assert_eq!(h.buf.headroom(), h.head);
                    prop_assert_eq!(h.buf.len(), h.len);
                    prop_assert_eq!(h.buf.is_empty(), h.len == 0);
                    prop_assert_eq!(h.buf.capacity(), buf_len - h.head);
                    prop_assert!(h.buf.as_slice() == &m.slots[h.idx][h.head..h.head + h.len]);
                }
                let expected = PoolStats {
                    capacity: cap,
                    in_use: m.held.len(),
                    high_water: m.high_water,
                    allocs: m.allocs,
                    alloc_failed: m.alloc_failed,
                };
                prop_assert_eq!(pool.stats(), expected);
                prop_assert_eq!(pool.available(), cap - m.held.len());
            }
            drop(m.held);
            prop_assert_eq!(pool.stats().in_use, 0);
            prop_assert_eq!(pool.available(), cap);
            Ok(())
        }

        fn config() -> ProptestConfig {
            if cfg!(miri) {
                // Miri is ~1000x slower; a few cases still cover every operation. No regression
                // files: Miri's isolation forbids file access.
                ProptestConfig {
                    cases: 6,
                    failure_persistence: None,
                    ..ProptestConfig::default()
                }
            } else {
                ProptestConfig::with_cases(512)
            }
        }

        fn max_ops() -> usize {
            if cfg!(miri) {
                40
            } else {
                160
            }
        }

        proptest! {
            #![proptest_config(config())]
            #[test]
            fn pool_matches_model(
                (buf_len, headroom) in (100usize..=2100).prop_flat_map(|l| (Just(l), 0..l)),
                ops in proptest::collection::vec(op(), 1..max_ops()),
            ) {
                run(buf_len, headroom, ops)?;
            }
        }
    }

    /// Threads allocate, stamp, verify and free buffers of one pool at once, and pass some to a
    /// neighbour to be verified and freed there. A buffer handed to two owners at once shows up
    /// as a set ownership flag or a foreign stamp.
    #[test]
    fn concurrent_alloc_free_hands_out_each_buffer_once() {
        use std::sync::atomic::AtomicBool;
        use std::sync::mpsc::{self, TrySendError};
        use std::sync::{Barrier, Mutex};

        const THREADS: usize = 4;
        let (rounds, burst) = if cfg!(miri) { (12, 3) } else { (50_000, 8) };
        // 32 buffers for 4 threads taking up to 8 each, plus up to 8 each in flight to a neighbour:
        // the pool runs dry now and then.
        let region = HugeRegion::map_exact(8192, PageSize::Base4K).unwrap();
        let pool = BufPool::new(region, 256, 32).unwrap();
        let cap = pool.capacity();
        assert_eq!(cap, 32);
        let owned: Arc<Vec<AtomicBool>> =
            Arc::new((0..cap).map(|_| AtomicBool::new(false)).collect());

        fn stamp(buf: &mut PoolBuf, tag: u64) {
            assert!(buf.set_len(buf.capacity()));
            for chunk in buf.as_mut_slice().chunks_mut(8) {
                chunk.copy_from_slice(&tag.to_le_bytes()[..chunk.len()]);
            }
        }
        fn verify_and_free(buf: PoolBuf, tag: u64, owned: &[AtomicBool]) {
            for chunk in buf.as_slice().chunks(8) {
                assert_eq!(
                    chunk,
                    &tag.to_le_bytes()[..chunk.len()],
                    "buffer {} overwritten",
                    buf.index()
                );
            }
            assert!(
                owned[buf.index()].swap(false, Ordering::AcqRel),
                "buffer {} freed twice",
                buf.index()
            );
            drop(buf);
        }

        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..THREADS {
            let (tx, rx) = mpsc::sync_channel::<(PoolBuf, u64)>(burst);
            senders.push(tx);
            receivers.push(Mutex::new(Some(rx)));
        }
        let barrier = Barrier::new(THREADS);
        // Per thread: (successful allocs, failed allocs, frees, frees of a neighbour's buffers).
        let totals: Vec<(u64, u64, u64, u64)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (pool, owned, barrier) = (pool.clone(), Arc::clone(&owned), &barrier);
                    let next = senders[(t + 1) % THREADS].clone();
                    let rx = receivers[t].lock().unwrap().take().unwrap();
                    scope.spawn(move || {
                        let (mut ok, mut failed, mut freed, mut foreign) = (0u64, 0u64, 0u64, 0u64);
                        let mut mine = Vec::with_capacity(burst);
                        for round in 0..rounds {
                            for k in 0..burst {
                                match pool.alloc() {
                                    Some(mut buf) => {
                                        assert!(
                                            !owned[buf.index()].swap(true, Ordering::AcqRel),
                                            "buffer {} handed out twice",
                                            buf.index()
                                        );
                                        let tag =
                                            ((t as u64) << 48) | ((round as u64) << 8) | k as u64;
                                        stamp(&mut buf, tag);
                                        mine.push((buf, tag));
                                        ok += 1;
                                    }
                                    None => failed += 1,
                                }
                            }
                            while let Ok((buf, tag)) = rx.try_recv() {
                                verify_and_free(buf, tag, &owned);
                                freed += 1;
                                foreign += 1;
                            }
                            // Every other buffer goes to the neighbour, the rest is freed here.
                            for (n, (buf, tag)) in mine.drain(..).enumerate() {
                                let item = if n % 2 == 0 {
                                    match next.try_send((buf, tag)) {
                                        Ok(()) => continue,
                                        Err(
                                            TrySendError::Full(item)
                                            | TrySendError::Disconnected(item),
                                        ) => item,
                                    }
                                } else {
                                    (buf, tag)
                                };
                                verify_and_free(item.0, item.1, &owned);
                                freed += 1;
                            }
                        }
                        drop(next);
                        // Nobody sends after everyone has passed the barrier.
                        barrier.wait();
                        while let Ok((buf, tag)) = rx.try_recv() {
                            verify_and_free(buf, tag, &owned);
                            freed += 1;
                            foreign += 1;
                        }
                        (ok, failed, freed, foreign)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok: u64 = totals.iter().map(|t| t.0).sum();
        let failed: u64 = totals.iter().map(|t| t.1).sum();
        let freed: u64 = totals.iter().map(|t| t.2).sum();
        let foreign: u64 = totals.iter().map(|t| t.3).sum();
        eprintln!(
            "ok {ok} failed {failed} freed {freed} foreign {foreign} hw {}",
            pool.stats().high_water
        );
        assert!(foreign > 0, "some buffers were freed on another thread");
        assert_eq!(ok, freed, "every buffer taken was freed once");
        let s = pool.stats();
        assert_eq!(s.in_use, 0);
        assert_eq!(s.allocs, ok);
        assert_eq!(s.alloc_failed, failed);
        assert!(s.high_water <= cap && s.high_water > 0);
        assert_eq!(pool.available(), cap);
        assert!(owned.iter().all(|o| !o.load(Ordering::Relaxed)));
    }
}

//! The four rings of an AF_XDP socket, written for ustack (no third-party ring code).
//!
//! # The kernel's ring ABI
//!
//! Each ring is a memory area shared with the kernel: a `u32` producer index, a `u32` consumer
//! index, a `u32` flags word (from Linux 5.4; `XDP_RING_NEED_WAKEUP`), and an array of
//! `size` entries (a power of two). The kernel says where each of these lies in the area
//! through `getsockopt(XDP_MMAP_OFFSETS)` (see [`super::xdp`]). Entries are frame addresses
//! (`u64`) on the fill and completion rings and descriptors ([`XdpDesc`]) on the RX and TX
//! rings.
//!
//! The indices are free-running `u32` counters that wrap: slot `i` is entry `i & (size - 1)`,
//! and `producer - consumer` (wrapping) is the number of entries in the ring. Each side writes
//! only its own index:
//!
//! - the producer writes entries into free slots, then publishes them by storing its index
//!   with release ordering; it learns of freed slots by loading the consumer index with
//!   acquire ordering;
//! - the consumer loads the producer index with acquire ordering, reads the entries, then
//!   gives the slots back by storing its index with release ordering (so its reads are done
//!   before the producer may overwrite the slots).
//!
//! Each side keeps a cached copy of the other side's index and reloads it only when the cache
//! shows too little, as the kernel's own documentation recommends: the shared cache line is
//! touched once per batch, not once per entry.
//!
//! # The API
//!
//! [`ProducerRing`]: [`reserve`](ProducerRing::reserve) `n` slots (fewer when the ring has
//! fewer free), [`write`](ProducerRing::write) each, [`submit`](ProducerRing::submit) them.
//! [`ConsumerRing`]: [`peek`](ConsumerRing::peek) up to `n` entries, [`read`](ConsumerRing::read)
//! each, [`release`](ConsumerRing::release) them. Both sides work over any [`RingArea`]: the
//! kernel's mapping of a ring, or (for tests) plain heap memory where one of our producers and
//! one of our consumers share a ring.

#[cfg(test)]
use std::alloc::Layout;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// A descriptor of the RX and TX rings: `struct xdp_desc` of `<linux/if_xdp.h>`.
pub type XdpDesc = libc::xdp_desc;

/// What a ring may hold: plain data of the kernel's layout, copied in and out.
pub trait RingEntry: Copy {}
impl RingEntry for u64 {}
impl RingEntry for XdpDesc {}

/// Where a ring's parts lie in its area, in bytes from the start (`struct xdp_ring_offset`).
/// `flags` is `None` on kernels older than 5.4, which have no flags word.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RingOffsets {
    /// Offset of the producer index.
    pub producer: u64,
    /// Offset of the consumer index.
    pub consumer: u64,
    /// Offset of the entry array.
    pub desc: u64,
    /// Offset of the flags word.
    pub flags: Option<u64>,
}

/// How a [`RingArea`] came to be, so it is given back the same way.
#[derive(Debug)]
enum Backing {
    /// `mmap` of an AF_XDP socket: `munmap` on drop.
    Mmap,
    /// `std::alloc` (tests and models): `dealloc` with this layout on drop.
    #[cfg(test)]
    Heap(Layout),
}

/// The memory of one ring, kept alive by every ring view over it.
#[derive(Debug)]
pub struct RingArea {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
}

// SAFETY: the area is plain memory reached only through the atomics and raw entry copies of the
// ring views (never through references to its bytes), so moving or sharing its handle between
// threads is sound; each ring view (which is not Sync) is used by one thread at a time.
unsafe impl Send for RingArea {}
// SAFETY: as above: `&RingArea` gives access to nothing but the pointer and length.
unsafe impl Sync for RingArea {}

impl RingArea {
    /// Takes ownership of a ring mapping: it is unmapped when the last view over it goes.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` must be one live `mmap` mapping, readable and writable, owned by no one
    /// else (nothing else unmaps it).
    pub unsafe fn from_mmap(ptr: NonNull<u8>, len: usize) -> RingArea {
        RingArea {
            ptr,
            len,
            backing: Backing::Mmap,
        }
    }

    /// A zeroed heap area of `len` bytes, aligned to 64 bytes (a cache line), for rings whose
    /// two sides are both in this process (tests).
    #[cfg(test)]
    pub fn heap(len: usize) -> RingArea {
        let layout = Layout::from_size_align(len.max(1), 64).expect("ring area layout");
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        RingArea {
            ptr,
            len,
            backing: Backing::Heap(layout),
        }
    }

    /// Start of the area.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the area in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The `u32` at `offset` as an atomic; panics unless it lies in the area, aligned.
    fn word(&self, offset: u64) -> NonNull<AtomicU32> {
        let off = usize::try_from(offset).expect("ring offset");
        assert!(
            off.checked_add(4).is_some_and(|end| end <= self.len) && off % 4 == 0,
            "ring word at {off} outside a {}-byte area or unaligned",
            self.len
        );
        // SAFETY: `off + 4 <= len`, so the result is inside the area (and not null).
        unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(off).cast::<AtomicU32>()) }
    }
}

impl Drop for RingArea {
    fn drop(&mut self) {
        match self.backing {
            Backing::Mmap => {
                // SAFETY: the mapping is ours alone (from_mmap's contract) and no view over it
                // is left (this is the last handle).
                unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
            }
            #[cfg(test)]
            Backing::Heap(layout) => {
                // SAFETY: allocated in `heap` with this very layout, freed once.
                unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
            }
        }
    }
}

/// The parts of one ring, checked against its area.
#[derive(Debug)]
struct RingParts<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: Option<NonNull<AtomicU32>>,
    entries: NonNull<T>,
    mask: u32,
    size: u32,
    /// Keeps the memory the pointers above point into alive; never read.
    #[allow(dead_code)]
    area: Arc<RingArea>,
    _entry: PhantomData<T>,
}

impl<T: RingEntry> RingParts<T> {
    fn new(area: Arc<RingArea>, off: &RingOffsets, size: u32) -> RingParts<T> {
        assert!(
            size.is_power_of_two(),
            "ring size {size} is not a power of two"
        );
        let producer = area.word(off.producer);
        let consumer = area.word(off.consumer);
        let flags = off.flags.map(|f| area.word(f));
        let desc = usize::try_from(off.desc).expect("ring offset");
        let bytes = (size as usize)
            .checked_mul(std::mem::size_of::<T>())
            .and_then(|b| b.checked_add(desc));
        assert!(
            bytes.is_some_and(|end| end <= area.len()) && desc % std::mem::align_of::<T>() == 0,
            "ring entries at {desc} ({size} of them) outside a {}-byte area or unaligned",
            area.len()
        );
        // SAFETY: `desc + size * size_of::<T>() <= len`: the array lies inside the area.
        let entries = unsafe { NonNull::new_unchecked(area.as_ptr().add(desc).cast::<T>()) };
        RingParts {
            producer,
            consumer,
            flags,
            entries,
            mask: size - 1,
            size,
            area,
            _entry: PhantomData,
        }
    }

    #[inline]
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: an aligned u32 inside the area (checked in `new`), which `self.area` keeps
        // alive; it is only ever accessed atomically (by us and by the kernel).
        unsafe { self.producer.as_ref() }
    }

    #[inline]
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    #[inline]
    fn flags(&self) -> Option<&AtomicU32> {
        // SAFETY: as for `producer`.
        self.flags.map(|f| unsafe { f.as_ref() })
    }

    #[inline]
    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: `index & mask < size`, and the array of `size` entries lies in the area.
        unsafe { self.entries.as_ptr().add((index & self.mask) as usize) }
    }
}

/// Our side of a ring we produce into (fill, TX).
#[derive(Debug)]
pub struct ProducerRing<T: RingEntry> {
    parts: RingParts<T>,
    /// Our producer index: submitted entries end here (what the shared index holds).
    prod: u32,
    /// Slots reserved past `prod` and not submitted yet.
    reserved: u32,
    /// The consumer index last seen, plus the ring size: slots below it are free.
    cached_end: u32,
}

// SAFETY: the view owns its indices; the shared memory is reached only through atomics and
// entry copies, and the area handle is Send.
unsafe impl<T: RingEntry + Send> Send for ProducerRing<T> {}

impl<T: RingEntry> ProducerRing<T> {
    /// The producer view of a ring of `size` entries laid out in `area` as `off` says. Our
    /// indices start from those in memory (0 for a new socket).
    ///
    /// # Safety
    ///
    /// No other producer view over this ring may exist (only the consumer side, the kernel or
    /// one [`ConsumerRing`], uses it besides), and the words at `off` must be a ring's producer
    /// and consumer indices and flags, only ever accessed atomically.
    pub unsafe fn new(area: Arc<RingArea>, off: &RingOffsets, size: u32) -> ProducerRing<T> {
        let parts = RingParts::new(area, off, size);
        let prod = parts.producer().load(Ordering::Relaxed);
        let cached_end = parts.consumer().load(Ordering::Acquire).wrapping_add(size);
        ProducerRing {
            parts,
            prod,
            reserved: 0,
            cached_end,
        }
    }

    /// Free slots, up to `want`: the cached count, refreshed from the consumer index when it
    /// shows fewer than `want`. Reserved slots do not count as free.
    #[inline]
    pub fn free(&mut self, want: u32) -> u32 {
        let start = self.prod.wrapping_add(self.reserved);
        let mut free = self.cached_end.wrapping_sub(start);
        if free < want {
            self.cached_end = self
                .parts
                .consumer()
                .load(Ordering::Acquire)
                .wrapping_add(self.parts.size);
            free = self.cached_end.wrapping_sub(start);
        }
        free.min(want)
    }

    /// Reserves up to `n` more slots (after any reserved before); returns how many. Write them
    /// with [`write`](Self::write), publish them with [`submit`](Self::submit).
    #[inline]
    pub fn reserve(&mut self, n: u32) -> u32 {
        let got = self.free(n);
        self.reserved += got;
        got
    }

    /// Slots reserved and not submitted yet.
    #[cfg(test)]
    #[inline]
    pub fn reserved(&self) -> u32 {
        self.reserved
    }

    /// Writes `entry` into reserved slot `i` (0 is the first not submitted). Panics unless
    /// `i < reserved()`.
    #[inline]
    pub fn write(&mut self, i: u32, entry: T) {
        assert!(
            i < self.reserved,
            "ring slot {i} of {} reserved",
            self.reserved
        );
        let p = self.parts.slot(self.prod.wrapping_add(i));
        // SAFETY: the slot lies in the area (RingParts::slot) and is reserved: the consumer
        // gave it back (it is below the consumer index + size) and will not read it before we
        // publish it, so nothing else touches it now. Entries are plain data.
        unsafe { p.write_volatile(entry) };
    }

    /// Publishes the first `n` reserved slots (written beforehand) to the consumer; the rest of
    /// the reservation stays. Panics unless `n <= reserved()`.
    #[inline]
    pub fn submit(&mut self, n: u32) {
        assert!(
            n <= self.reserved,
            "submitting {n} of {} reserved",
            self.reserved
        );
        if n == 0 {
            return;
        }
        self.reserved -= n;
        self.prod = self.prod.wrapping_add(n);
        // Release: the entries written above are visible before the index that publishes them.
        self.parts.producer().store(self.prod, Ordering::Release);
    }

    /// Gives back reserved slots that were not submitted.
    #[inline]
    pub fn cancel(&mut self) {
        self.reserved = 0;
    }

    /// Entries submitted and not yet taken by the consumer (a fresh read of its index).
    #[inline]
    pub fn pending(&self) -> u32 {
        self.prod
            .wrapping_sub(self.parts.consumer().load(Ordering::Acquire))
    }

    /// Whether the consumer asks for a wake-up (`XDP_RING_NEED_WAKEUP`). Always `true` on a
    /// ring without a flags word: a kernel that old wants a system call every time.
    #[inline]
    pub fn needs_wakeup(&self) -> bool {
        match self.parts.flags() {
            Some(f) => f.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0,
            None => true,
        }
    }
}

/// Our side of a ring we consume from (RX, completion).
#[derive(Debug)]
pub struct ConsumerRing<T: RingEntry> {
    parts: RingParts<T>,
    /// Our consumer index: entries below it were released.
    cons: u32,
    /// Entries past `cons` peeked and not released.
    peeked: u32,
    /// The producer index last seen: entries below it are ready.
    cached_prod: u32,
}

// SAFETY: as for ProducerRing.
unsafe impl<T: RingEntry + Send> Send for ConsumerRing<T> {}

impl<T: RingEntry> ConsumerRing<T> {
    /// The consumer view of a ring of `size` entries laid out in `area` as `off` says.
    ///
    /// # Safety
    ///
    /// No other consumer view over this ring may exist, and the words at `off` must be a
    /// ring's indices and flags, only ever accessed atomically.
    pub unsafe fn new(area: Arc<RingArea>, off: &RingOffsets, size: u32) -> ConsumerRing<T> {
        let parts = RingParts::new(area, off, size);
        let cons = parts.consumer().load(Ordering::Relaxed);
        let cached_prod = parts.producer().load(Ordering::Acquire);
        ConsumerRing {
            parts,
            cons,
            peeked: 0,
            cached_prod,
        }
    }

    /// Entries ready and not released (a fresh, relaxed read of the producer index: advisory,
    /// to decide whether to come back; [`peek`](Self::peek) is what makes entries readable).
    #[inline]
    pub fn available(&self) -> u32 {
        self.parts
            .producer()
            .load(Ordering::Relaxed)
            .wrapping_sub(self.cons)
    }

    /// Makes up to `n` more entries (after any peeked before) readable; returns how many.
    /// Refreshes the producer index when the cached one shows fewer than `n`.
    #[inline]
    pub fn peek(&mut self, n: u32) -> u32 {
        let start = self.cons.wrapping_add(self.peeked);
        let mut ready = self.cached_prod.wrapping_sub(start);
        if ready < n {
            // Acquire: the entries the producer wrote are visible once we see its index.
            self.cached_prod = self.parts.producer().load(Ordering::Acquire);
            ready = self.cached_prod.wrapping_sub(start);
        }
        let got = ready.min(n);
        self.peeked += got;
        got
    }

    /// Entries peeked and not released.
    #[cfg(test)]
    #[inline]
    pub fn peeked(&self) -> u32 {
        self.peeked
    }

    /// Entry `i` of those peeked (0 is the oldest not released). Panics unless
    /// `i < peeked()`.
    #[inline]
    pub fn read(&self, i: u32) -> T {
        assert!(i < self.peeked, "ring entry {i} of {} peeked", self.peeked);
        let p = self.parts.slot(self.cons.wrapping_add(i));
        // SAFETY: the slot lies in the area and holds an entry the producer published (below
        // the producer index we loaded with acquire ordering) and will not overwrite before we
        // release it. Entries are plain data of any bit pattern.
        unsafe { p.read_volatile() }
    }

    /// Gives the first `n` peeked slots back to the producer. Panics unless `n <= peeked()`.
    #[inline]
    pub fn release(&mut self, n: u32) {
        assert!(n <= self.peeked, "releasing {n} of {} peeked", self.peeked);
        if n == 0 {
            return;
        }
        self.peeked -= n;
        self.cons = self.cons.wrapping_add(n);
        // Release: our reads of these slots are done before the producer may reuse them.
        self.parts.consumer().store(self.cons, Ordering::Release);
    }

    /// Whether the producer asks for a wake-up (`XDP_RING_NEED_WAKEUP`); `true` without a
    /// flags word.
    #[cfg(test)]
    #[inline]
    pub fn needs_wakeup(&self) -> bool {
        match self.parts.flags() {
            Some(f) => f.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0,
            None => true,
        }
    }
}

/// A ring laid out in heap memory, as the kernel lays one out (indices and flags on their own
/// cache lines, then the entries), for tests of both sides.
#[cfg(test)]
pub fn heap_ring<T: RingEntry>(size: u32) -> (Arc<RingArea>, RingOffsets) {
    let off = RingOffsets {
        producer: 0,
        consumer: 64,
        flags: Some(128),
        desc: 192,
    };
    let len = 192 + size as usize * std::mem::size_of::<T>();
    (Arc::new(RingArea::heap(len)), off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn pair<T: RingEntry>(
        size: u32,
        start: u32,
    ) -> (ProducerRing<T>, ConsumerRing<T>, Arc<RingArea>) {
        let (area, off) = heap_ring::<T>(size);
        // Indices start where the test says (the kernel starts at 0; any value must work).
        // SAFETY: the words are inside the area, aligned, and nothing else uses them yet.
        unsafe {
            (*area.word(off.producer).as_ptr()).store(start, Ordering::Relaxed);
            (*area.word(off.consumer).as_ptr()).store(start, Ordering::Relaxed);
        }
        // SAFETY: one producer and one consumer view over a fresh heap ring.
        let p = unsafe { ProducerRing::new(area.clone(), &off, size) };
        // SAFETY: as above.
        let c = unsafe { ConsumerRing::new(area.clone(), &off, size) };
        (p, c, area)
    }

    fn push(p: &mut ProducerRing<u64>, vals: &[u64]) -> u32 {
        let n = p.reserve(vals.len() as u32);
        for i in 0..n {
            p.write(i, vals[i as usize]);
        }
        p.submit(n);
        n
    }

    fn pop(c: &mut ConsumerRing<u64>, max: u32) -> Vec<u64> {
        let n = c.peek(max);
        let v = (0..n).map(|i| c.read(i)).collect();
        c.release(n);
        v
    }

    #[test]
    fn empty_and_full() {
        let (mut p, mut c, _a) = pair::<u64>(8, 0);
        assert_eq!(c.peek(4), 0);
        assert_eq!(c.available(), 0);
        assert_eq!(p.free(100), 8);
        assert_eq!(push(&mut p, &[1, 2, 3, 4, 5, 6, 7, 8, 9]), 8);
        assert_eq!(p.reserve(1), 0, "full");
        assert_eq!(p.pending(), 8);
        assert_eq!(c.available(), 8);
        assert_eq!(pop(&mut c, 3), vec![1, 2, 3]);
        assert_eq!(p.pending(), 5);
        assert_eq!(push(&mut p, &[10, 11, 12, 13]), 3);
        assert_eq!(pop(&mut c, 100), vec![4, 5, 6, 7, 8, 10, 11, 12]);
        assert_eq!(c.peek(1), 0, "empty");
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn indices_wrap_past_u32_max() {
        for start in [u32::MAX - 2, u32::MAX, u32::MAX - 7, 0x8000_0000 - 3] {
            let (mut p, mut c, _a) = pair::<u64>(4, start);
            let mut next = 0u64;
            let mut expect = 0u64;
            for round in 0..40 {
                let want = (round % 5) as u64;
                let vals: Vec<u64> = (next..next + want).collect();
                next += u64::from(push(&mut p, &vals));
                for v in pop(&mut c, (round % 3 + 1) as u32) {
                    assert_eq!(v, expect, "start {start:#x} round {round}");
                    expect += 1;
                }
            }
            assert!(expect > 20, "the ring moved: {expect}");
        }
    }

    #[test]
    fn batches_and_partial_submit() {
        let (mut p, mut c, _a) = pair::<XdpDesc>(16, u32::MAX - 5);
        assert_eq!(p.reserve(10), 10);
        assert_eq!(p.reserve(10), 6, "only 16 slots");
        for i in 0..16 {
            p.write(
                i,
                XdpDesc {
                    addr: u64::from(i) * 2048,
                    len: 60 + i,
                    options: i % 2,
                },
            );
        }
        p.submit(12);
        assert_eq!(p.reserved(), 4);
        assert_eq!(c.peek(16), 12, "the last 4 are not published");
        assert_eq!(c.read(11).len, 71);
        c.release(5);
        assert_eq!(c.peeked(), 7);
        assert_eq!(c.read(0).addr, 5 * 2048);
        p.submit(4);
        assert_eq!(c.peek(16), 4);
        let all: Vec<u32> = (0..c.peeked()).map(|i| c.read(i).len).collect();
        assert_eq!(all, (65..76).collect::<Vec<_>>());
        c.release(11);
        assert_eq!(p.reserve(16), 16);
        p.cancel();
        assert_eq!(p.reserved(), 0);
        assert_eq!(c.peek(1), 0);
    }

    #[test]
    #[should_panic(expected = "reserved")]
    fn writing_past_the_reservation_panics() {
        let (mut p, _c, _a) = pair::<u64>(4, 0);
        p.reserve(2);
        p.write(2, 0);
    }

    #[test]
    fn need_wakeup_flag() {
        let (area, off) = heap_ring::<u64>(4);
        // SAFETY: one view of each side over a fresh heap ring.
        let (p, c) = unsafe {
            (
                ProducerRing::<u64>::new(area.clone(), &off, 4),
                ConsumerRing::<u64>::new(area.clone(), &off, 4),
            )
        };
        assert!(!p.needs_wakeup() && !c.needs_wakeup());
        let flags = area.word(off.flags.unwrap());
        // SAFETY: an aligned word inside the live area, accessed atomically.
        unsafe { flags.as_ref() }.store(libc::XDP_RING_NEED_WAKEUP, Ordering::Relaxed);
        assert!(p.needs_wakeup() && c.needs_wakeup());
        // SAFETY: as above.
        unsafe { flags.as_ref() }.store(0, Ordering::Relaxed);
        assert!(!p.needs_wakeup());
        // A kernel without the flags word: always wake it.
        let old = RingOffsets { flags: None, ..off };
        // SAFETY: a second producer view, never used to produce (only its flags are read).
        let p = unsafe { ProducerRing::<u64>::new(area, &old, 4) };
        assert!(p.needs_wakeup());
    }

    #[test]
    #[cfg_attr(miri, ignore)] // a million entries: too slow interpreted
    fn threads_move_a_million_entries() {
        let (mut p, mut c, _a) = pair::<u64>(64, u32::MAX - 1000);
        let n = 1_000_000u64;
        let t = std::thread::spawn(move || {
            let mut next = 0;
            while next < n {
                let k = p.reserve(((n - next) as u32).min(17));
                for i in 0..k {
                    p.write(i, next + u64::from(i));
                }
                p.submit(k);
                next += u64::from(k);
                if k == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let mut expect = 0;
        while expect < n {
            let k = c.peek(23);
            for i in 0..k {
                assert_eq!(c.read(i), expect);
                expect += 1;
            }
            c.release(k);
            if k == 0 {
                std::thread::yield_now();
            }
        }
        t.join().unwrap();
    }

    #[derive(Clone, Debug)]
    enum Op {
        Reserve(u32),
        Write,
        Submit(u32),
        Cancel,
        Peek(u32),
        Release(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..12).prop_map(Op::Reserve),
            Just(Op::Write),
            (0u32..12).prop_map(Op::Submit),
            Just(Op::Cancel),
            (0u32..12).prop_map(Op::Peek),
            (0u32..12).prop_map(Op::Release),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 4 } else { 256 },
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        /// Random operations on both sides against a VecDeque model of the ring's contents.
        #[test]
        fn matches_a_queue_model(
            size_log in 0u32..4,
            start in prop_oneof![Just(0u32), Just(u32::MAX - 3), any::<u32>()],
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let size = 1u32 << size_log;
            let (mut p, mut c, _a) = pair::<u64>(size, start);
            // Model: submitted entries not released, and those not yet peeked among them.
            let mut queue: VecDeque<u64> = VecDeque::new();
            let mut reserved = 0u32;
            let mut peeked = 0u32;
            let mut next = 1u64;
            for o in ops {
                match o {
                    Op::Reserve(n) => {
                        let free = size - queue.len() as u32 - reserved;
                        let got = p.reserve(n);
                        prop_assert_eq!(got, n.min(free));
                        reserved += got;
                        for i in 0..reserved {
                            p.write(i, next + u64::from(i));
                        }
                    }
                    Op::Write => {
                        for i in 0..reserved {
                            p.write(i, next + u64::from(i));
                        }
                    }
                    Op::Submit(n) => {
                        let n = n.min(reserved);
                        for i in 0..reserved {
                            p.write(i, next + u64::from(i));
                        }
                        p.submit(n);
                        for i in 0..n {
                            queue.push_back(next + u64::from(i));
                        }
                        next += u64::from(n);
                        reserved -= n;
                    }
                    Op::Cancel => {
                        p.cancel();
                        reserved = 0;
                    }
                    Op::Peek(n) => {
                        let got = c.peek(n);
                        prop_assert_eq!(got, n.min(queue.len() as u32 - peeked));
                        peeked += got;
                        for i in 0..peeked {
                            prop_assert_eq!(c.read(i), queue[i as usize]);
                        }
                    }
                    Op::Release(n) => {
                        let n = n.min(peeked);
                        c.release(n);
                        queue.drain(..n as usize);
                        peeked -= n;
                    }
                }
                prop_assert_eq!(p.reserved(), reserved);
                prop_assert_eq!(c.peeked(), peeked);
                prop_assert_eq!(p.pending(), queue.len() as u32);
                prop_assert_eq!(c.available(), queue.len() as u32);
            }
        }
    }
}

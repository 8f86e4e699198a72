//! Shared memory between processes: memory files (`memfd`) mapped `MAP_SHARED`.
//!
//! - [`SharedRegion::create`] makes a new memory file (on hugepages when available) that a peer
//!   process can map after receiving its descriptor; [`HugeRegion::map_memfd`] does the same for
//!   a region that a [`BufPool`](super::BufPool) is then built on.
//! - [`SharedRegion::map_fd`] maps a descriptor received from a peer, after checking that the
//!   file really is as long as the peer claims (a mapping past the end of a file faults with
//!   `SIGBUS` on access) and sealing it against shrinking where it allows.
//!
//! A shared region is memory another process can write at any time, so by default it hands out
//! no plain references (`&[u8]`) to its bytes: it offers bounds-checked copies in and out and
//! atomic views (`&[AtomicU16]`, `&[AtomicU32]`) for indexes and descriptors. Every offset is
//! checked against the mapping; nothing a peer writes can make these methods touch memory
//! outside it.
//!
//! # Leases: plain bytes the protocol gives us for a while
//!
//! Some protocols hand a range of shared memory to one side for a while (a memif server owns a
//! buffer its client posted until it hands the slot back). For that time, a [`ShmLease`] gives
//! `&[u8]`/`&mut [u8]` over the range, so a frame can be built in place. The region keeps a
//! registry of its leases and of the ranges it ever served as atomics (*reserved*), and
//! guarantees that **no two things in this process ever reach the same bytes of a mapping at
//! once**: a lease is refused if it overlaps another lease or a reserved range; an atomic view
//! is refused if it overlaps a lease (and reserves its range for good); a copy in or out is
//! refused if it touches a lease. So within this process a lease's slice is aliased by nothing,
//! whichever thread holds it.
//!
//! What a registry cannot stop is the *other process* writing the bytes while we hold them (it
//! maps them read-write). That is the peer breaking the protocol, like a device writing memory
//! it was not given, and the user of a lease must make it harmless: never derive an address,
//! length or any other memory-safety decision from bytes of a leased range (read them back only
//! as data), so whatever the peer writes can at worst change the data it receives. The memif
//! device's module documentation (`crate::dev::memif`) states the argument for its use.
//!
//! Miri has no `memfd_create` or `mmap`: this compiles under Miri, but its tests are skipped there.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{HugeRegion, MemError, PageSize};
use crate::sys::unix_ipc as sys;

/// Creates a memory file of at least `len` bytes on `page`-sized pages, sized, sealed against
/// shrinking and growing, and maps it shared. Returns the mapping, the file and the mapped length
/// (rounded up to the page size).
fn memfd_mapping(
    len: usize,
    page: PageSize,
    name: &str,
    populate: bool,
) -> Result<(memmap2::MmapRaw, OwnedFd, usize), MemError> {
    if len == 0 {
        return Err(MemError::ZeroSize);
    }
    let len = len
        .checked_next_multiple_of(page.bytes())
        .filter(|&l| l <= isize::MAX as usize)
        .ok_or(MemError::BadLayout("region length overflows"))?;
    let shift = page.is_huge().then(|| page.bytes().trailing_zeros() as u8);
    let fd = sys::memfd_create(name, shift).map_err(|source| MemError::SharedFile {
        op: "memfd_create",
        source,
    })?;
    let file = std::fs::File::from(fd.try_clone().map_err(|source| MemError::SharedFile {
        op: "dup of a memfd",
        source,
    })?);
    file.set_len(len as u64)
        .map_err(|source| MemError::SharedFile {
            op: "ftruncate of a memfd",
            source,
        })?;
    // The peer must not be able to truncate the file under our mapping (SIGBUS) or grow it.
    if let Err(e) = sys::add_seals(fd.as_fd(), sys::SEAL_SHRINK | sys::SEAL_GROW) {
        tracing::debug!("sealing a {page} memfd failed: {e}");
    }
    let mut opts = memmap2::MmapOptions::new();
    opts.len(len);
    if populate {
        opts.populate();
    }
    let map = match opts.map_raw(&file) {
        Ok(map) => map,
        Err(e) if page.is_huge() => {
            tracing::debug!("mapping a {page} memfd of {len} bytes failed: {e}");
            return Err(MemError::NoHugePages {
                page,
                len,
                free: super::page::hugepages_free(page),
            });
        }
        Err(source) => return Err(MemError::Map { len, page, source }),
    };
    if !page.is_huge() {
        // Transparent hugepages for shared memory, where the kernel allows them.
        let _ = map.advise(memmap2::Advice::HugePage);
    }
    Ok((map, fd, len))
}

/// Tries `preferred`, then smaller pages, down to base pages.
pub(crate) fn memfd_mapping_fallback(
    len: usize,
    preferred: PageSize,
    name: &str,
    populate: bool,
) -> Result<(memmap2::MmapRaw, OwnedFd, usize, PageSize), MemError> {
    let tries: &[PageSize] = match preferred {
        PageSize::Huge1G => &[PageSize::Huge1G, PageSize::Huge2M, PageSize::Base4K],
        PageSize::Huge2M => &[PageSize::Huge2M, PageSize::Base4K],
        PageSize::Base4K => &[PageSize::Base4K],
    };
    let mut last = None;
    for &page in tries {
        match memfd_mapping(len, page, name, populate) {
            Ok((map, fd, len)) => {
                if page != preferred {
                    tracing::debug!(
                        "no {preferred} pages for a {len}-byte shared region; using {page} pages"
                    );
                }
                return Ok((map, fd, len, page));
            }
            Err(e @ (MemError::ZeroSize | MemError::BadLayout(_))) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(MemError::ZeroSize))
}

/// Most ranges a region reserves for atomic views (two per ring: header and descriptors; a
/// memif connection has at most 2 x 255 rings).
const RESERVED_MAX: usize = 1024;

/// Byte ranges `[start, end)` of a mapping that are leased out or reserved for atomics.
#[derive(Debug, Default)]
struct Claims {
    /// Leased ranges, sorted by start; they never overlap each other.
    leased: Vec<(usize, usize)>,
    /// Most leases at once (room in `leased`, allocated by [`SharedRegion::prepare_leases`]).
    lease_max: usize,
    /// Ranges served as atomics, for good.
    reserved: Vec<(usize, usize)>,
}

impl Claims {
    /// Index of the first lease ending after `start`, and whether `[start, end)` overlaps a lease.
    fn find(&self, start: usize, end: usize) -> (usize, bool) {
        // Leases are disjoint and sorted by start, hence also by end.
        let i = self.leased.partition_point(|&(_, e)| e <= start);
        (i, self.leased.get(i).is_some_and(|&(s, _)| s < end))
    }

    fn leased_overlaps(&self, start: usize, end: usize) -> bool {
        start < end && self.find(start, end).1
    }

    fn reserved_overlaps(&self, start: usize, end: usize) -> bool {
        self.reserved.iter().any(|&(s, e)| s < end && start < e)
    }
}

/// A memory mapping shared with another process through a memory file.
pub struct SharedRegion {
    map: memmap2::MmapRaw,
    /// Bytes that may be accessed (the mapping may be longer, rounded to pages).
    len: usize,
    page_size: PageSize,
    /// The file, kept for regions we created (to send to peers); `None` for a peer's region.
    fd: Option<OwnedFd>,
    /// The file's device and inode (two regions of one file share their bytes).
    file_id: (u64, u64),
    /// What is leased and reserved (see the module documentation).
    claims: Mutex<Claims>,
    /// Set once [`prepare_leases`](Self::prepare_leases) was called: until then no lease can
    /// exist, so byte copies need not look at the registry (no lock: a region several threads
    /// copy through, as a memif server's per-core queue pairs do, shares no lock then).
    leasable: AtomicBool,
    /// Ranges recently confirmed as reserved, `start << 32 | end` (0: empty), looked at
    /// without the lock: a reservation is for good and no lease ever overlaps one, so a hit
    /// stays true. Ring views are made on every poll; this keeps them off the mutex.
    reserved_hot: [AtomicU64; RESERVED_HOT],
    reserved_hot_next: AtomicUsize,
}

/// Reserved ranges remembered lock-free: a memif connection polls two rings per queue pair,
/// each a header and a descriptor range, so 32 hold eight queue pairs (per-core shards)
/// without turning over.
const RESERVED_HOT: usize = 32;

impl SharedRegion {
    /// Creates a zero-filled memory file of at least `len` bytes (rounded up to the page size),
    /// trying `preferred` pages first, then smaller ones, and maps it. Its descriptor
    /// ([`SharedRegion::fd`]) can be sent to a peer, which then shares the memory.
    pub fn create(len: usize, preferred: PageSize, name: &str) -> Result<SharedRegion, MemError> {
        let (map, fd, len, page_size) = memfd_mapping_fallback(len, preferred, name, true)?;
        let file_id =
            std::fs::File::from(fd.try_clone().map_err(|source| MemError::SharedFile {
                op: "dup of a memfd",
                source,
            })?)
            .metadata()
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or((0, 0));
        Ok(SharedRegion {
            map,
            len,
            page_size,
            fd: Some(fd),
            file_id,
            claims: Mutex::new(Claims::default()),
            leasable: AtomicBool::new(false),
            reserved_hot: Default::default(),
            reserved_hot_next: AtomicUsize::new(0),
        })
    }

    /// Maps the first `len` bytes of a memory file a peer sent. Fails if the file is shorter
    /// than `len` (touching a mapping past the end of its file would raise `SIGBUS`). The file is
    /// sealed against shrinking if it is not already and allows it; if it can be neither, a
    /// warning says that a peer truncating it could crash this process.
    pub fn map_fd(fd: OwnedFd, len: usize) -> Result<SharedRegion, MemError> {
        if len == 0 {
            return Err(MemError::ZeroSize);
        }
        if len > isize::MAX as usize {
            return Err(MemError::BadLayout("region length overflows"));
        }
        let (file_len, block) =
            sys::file_size(fd.as_fd()).map_err(|source| MemError::SharedFile {
                op: "fstat of a peer's region",
                source,
            })?;
        if file_len < len as u64 {
            return Err(MemError::FileTooShort {
                len: len as u64,
                file_len,
            });
        }
        let seals = sys::seals(fd.as_fd()).unwrap_or(0);
        if seals & sys::SEAL_SHRINK == 0 {
            if let Err(e) = sys::add_seals(fd.as_fd(), sys::SEAL_SHRINK) {
                tracing::warn!(
                    "the peer's memory region ({len} bytes) is not sealed against shrinking and \
                     cannot be sealed ({e}): a peer that truncates it can crash this process"
                );
            }
        }
        // hugetlbfs files map in whole pages; their block size is the page size.
        let page_size = match block {
            b if b == PageSize::Huge2M.bytes() as u64 => PageSize::Huge2M,
            b if b == PageSize::Huge1G.bytes() as u64 => PageSize::Huge1G,
            _ => PageSize::Base4K,
        };
        let map_len = if page_size.is_huge() {
            len.next_multiple_of(page_size.bytes())
                .min(file_len as usize)
        } else {
            len
        };
        let file = std::fs::File::from(fd);
        let file_id = file
            .metadata()
            .map(|m| (m.dev(), m.ino()))
            .map_err(|source| MemError::SharedFile {
                op: "fstat of a peer's region",
                source,
            })?;
        let map = memmap2::MmapOptions::new()
            .len(map_len)
            .map_raw(&file)
            .map_err(|source| MemError::Map {
                len: map_len,
                page: page_size,
                source,
            })?;
        Ok(SharedRegion {
            map,
            len,
            page_size,
            fd: None,
            file_id,
            claims: Mutex::new(Claims::default()),
            leasable: AtomicBool::new(false),
            reserved_hot: Default::default(),
            reserved_hot_next: AtomicUsize::new(0),
        })
    }

    /// The memory file's device and inode numbers: two regions with the same are one file
    /// mapped twice, whose bytes are shared.
    pub fn file_id(&self) -> (u64, u64) {
        self.file_id
    }

    fn claims(&self) -> MutexGuard<'_, Claims> {
        // A panic while holding the lock leaves the registry consistent (every update is a
        // single Vec operation), so a poisoned lock is still good.
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes room for `n` leases at once (allocating here, so taking and returning leases never
    /// does). Leases beyond it are refused. Returns false if leases are held now (the room is
    /// then left as it is).
    pub fn prepare_leases(&self, n: usize) -> bool {
        let mut c = self.claims();
        if !c.leased.is_empty() {
            return false;
        }
        c.leased = Vec::with_capacity(n);
        c.lease_max = n;
        // Before any lease can be taken (leases are taken under the lock, after this).
        self.leasable.store(true, Ordering::SeqCst);
        true
    }

    /// Whether any lease can exist (see `leasable`).
    #[inline]
    fn may_be_leased(&self) -> bool {
        self.leasable.load(Ordering::Acquire)
    }

    /// Leases `[offset, offset + len)`: plain bytes for the holder alone (see the module
    /// documentation). `None` if the range is empty, not inside the region, overlaps another
    /// lease or a range served as atomics, or [`prepare_leases`](Self::prepare_leases) left no
    /// room.
    pub fn lease(self: &Arc<Self>, offset: usize, len: usize) -> Option<ShmLease> {
        let end = offset.checked_add(len)?;
        if len == 0 || end > self.len {
            return None;
        }
        let mut c = self.claims();
        if c.leased.len() >= c.lease_max || c.reserved_overlaps(offset, end) {
            return None;
        }
        let (i, overlaps) = c.find(offset, end);
        if overlaps {
            return None;
        }
        c.leased.insert(i, (offset, end));
        drop(c);
        Some(ShmLease {
            region: Arc::clone(self),
            offset,
            len,
        })
    }

    /// Leases held now.
    pub fn leases(&self) -> usize {
        self.claims().leased.len()
    }

    /// Ends the lease starting at `offset` or moves its end to `offset + len`.
    fn release(&self, offset: usize, len: Option<usize>) {
        let mut c = self.claims();
        if let Ok(i) = c.leased.binary_search_by_key(&offset, |&(s, _)| s) {
            match len {
                Some(l) => c.leased[i].1 = offset + l,
                None => {
                    c.leased.remove(i);
                }
            }
        }
    }

    /// Bytes that may be accessed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a region has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The page size backing the region.
    pub fn page_size(&self) -> PageSize {
        self.page_size
    }

    /// The memory file's descriptor, for regions this process created.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    /// True if `[offset, offset + len)` lies inside the region.
    #[inline]
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.len as u64)
    }

    #[inline]
    fn range_ptr(&self, offset: usize, len: usize, align: usize) -> Option<*mut u8> {
        if !self.contains(offset as u64, len as u64) || !offset.is_multiple_of(align) {
            return None;
        }
        // SAFETY: offset + len <= self.len <= the mapping's length, so the pointer stays inside
        // the mapping (or one past its end when len == 0).
        Some(unsafe { self.map.as_mut_ptr().add(offset) })
    }

    /// Checks that `[offset, offset + bytes)` may be served as atomics (it touches no lease)
    /// and reserves it for good, so no lease will ever cover it.
    fn reserve(&self, offset: usize, bytes: usize) -> bool {
        let end = offset + bytes; // no overflow: range_ptr checked it is inside the region
        let key = match (u32::try_from(offset), u32::try_from(end)) {
            (Ok(s), Ok(e)) => Some((u64::from(s) << 32) | u64::from(e)),
            _ => None,
        };
        if let Some(k) = key {
            if self
                .reserved_hot
                .iter()
                .any(|h| h.load(Ordering::Relaxed) == k)
            {
                return true;
            }
        }
        let ok = self.reserve_locked(offset, end);
        if let (true, Some(k)) = (ok, key) {
            let i = self.reserved_hot_next.fetch_add(1, Ordering::Relaxed) % RESERVED_HOT;
            self.reserved_hot[i].store(k, Ordering::Relaxed);
        }
        ok
    }

    fn reserve_locked(&self, offset: usize, end: usize) -> bool {
        let mut c = self.claims();
        if c.leased_overlaps(offset, end) {
            return false;
        }
        if !c.reserved.iter().any(|&(s, e)| s <= offset && end <= e) {
            if c.reserved.len() >= RESERVED_MAX {
                return false;
            }
            if c.reserved.capacity() == 0 {
                c.reserved.reserve_exact(RESERVED_MAX);
            }
            c.reserved.push((offset, end));
        }
        true
    }

    /// `count` 16-bit atomics starting `offset` bytes into the region (which must be 2-byte
    /// aligned), or `None` if they do not fit or touch a lease. The range is reserved: it will
    /// never be leased.
    #[inline]
    pub fn atomic_u16s(&self, offset: usize, count: usize) -> Option<&[AtomicU16]> {
        let bytes = count.checked_mul(2)?;
        let p = self.range_ptr(offset, bytes, 2)?;
        if !self.reserve(offset, bytes) {
            return None;
        }
        // SAFETY: the range is inside the mapping (checked above) and 2-byte aligned (the mapping
        // is page-aligned and offset is even). AtomicU16 has the size and alignment of u16 and
        // any bit pattern is valid; the memory is initialised (file pages read as zero until
        // written). Other processes may modify it concurrently, which atomics allow. The slice
        // borrows `self`, so it cannot outlive the mapping.
        Some(unsafe { std::slice::from_raw_parts(p.cast::<AtomicU16>(), count) })
    }

    /// `count` 32-bit atomics starting `offset` bytes into the region (which must be 4-byte
    /// aligned), or `None` if they do not fit or touch a lease. The range is reserved: it will
    /// never be leased.
    #[inline]
    pub fn atomic_u32s(&self, offset: usize, count: usize) -> Option<&[AtomicU32]> {
        let bytes = count.checked_mul(4)?;
        let p = self.range_ptr(offset, bytes, 4)?;
        if !self.reserve(offset, bytes) {
            return None;
        }
        // SAFETY: as in atomic_u16s, with 4-byte alignment checked above.
        Some(unsafe { std::slice::from_raw_parts(p.cast::<AtomicU32>(), count) })
    }

    /// Copies `dst.len()` bytes starting at `offset` out of the region; `false` (and nothing
    /// copied) if that range is not inside the region or touches a lease.
    #[inline]
    #[must_use]
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> bool {
        let Some(p) = self.range_ptr(offset, dst.len(), 1) else {
            return false;
        };
        if self.may_be_leased() && self.claims().leased_overlaps(offset, offset + dst.len()) {
            return false;
        }
        // SAFETY: the source range is inside the mapping (checked) and initialised, and no
        // lease's slice covers it (checked); `dst` is a distinct exclusive buffer of the same
        // length, so they do not overlap. No reference to the shared bytes is created: if the peer writes them meanwhile, we copy whatever bytes
        // are there, which the caller treats as untrusted data.
        unsafe { std::ptr::copy_nonoverlapping(p.cast_const(), dst.as_mut_ptr(), dst.len()) };
        true
    }

    /// Copies `src` into the region at `offset`; `false` (and nothing written) if that range is
    /// not inside the region or touches a lease.
    #[inline]
    #[must_use]
    pub fn write(&self, offset: usize, src: &[u8]) -> bool {
        let Some(p) = self.range_ptr(offset, src.len(), 1) else {
            return false;
        };
        if self.may_be_leased() && self.claims().leased_overlaps(offset, offset + src.len()) {
            return false;
        }
        // SAFETY: the destination range is inside the mapping (checked), which is writable
        // (mapped read-write), and no lease's slice covers it (checked); `src` is a separate
        // buffer, so they do not overlap. No reference to the shared bytes is created.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        true
    }
}

/// A range of a [`SharedRegion`] lent to its holder alone (see the module documentation):
/// plain `&[u8]`/`&mut [u8]` access, until dropped. It keeps the mapping alive.
pub struct ShmLease {
    region: Arc<SharedRegion>,
    offset: usize,
    len: usize,
}

impl ShmLease {
    /// The region the lease is in.
    pub fn region(&self) -> &Arc<SharedRegion> {
        &self.region
    }

    /// Offset of the range in the region.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Bytes leased.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a lease has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Gives back all but the first `len` bytes (at least 1); a larger `len` changes nothing.
    pub fn shrink(&mut self, len: usize) {
        if len >= 1 && len < self.len {
            self.len = len;
            self.region.release(self.offset, Some(len));
        }
    }

    /// The leased bytes. They are data only: a peer breaking its protocol may change them at
    /// any time, so never base a memory-safety decision on them.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `[offset, offset + len)` is inside the mapping (checked when leased; `len`
        // only shrinks), which `self.region` keeps mapped. No other lease, atomic view or copy of
        // this process reaches these bytes while the lease lives (the region's registry refuses
        // them), and `&mut` access needs `&mut self`, so nothing in this process writes them
        // while this slice lives. The bytes are initialised (file pages read as zero until
        // written). Writes by the peer process are outside this process's control: the lease's
        // contract (module documentation) is that they are treated as data only.
        unsafe {
            std::slice::from_raw_parts(
                self.region.map.as_mut_ptr().add(self.offset).cast_const(),
                self.len,
            )
        }
    }

    /// The leased bytes, writable (see [`as_slice`](Self::as_slice)).
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only reference this process has
        // to the range, and the mapping is read-write.
        unsafe {
            std::slice::from_raw_parts_mut(self.region.map.as_mut_ptr().add(self.offset), self.len)
        }
    }
}

impl Drop for ShmLease {
    fn drop(&mut self) {
        self.region.release(self.offset, None);
    }
}

impl fmt::Debug for ShmLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmLease")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl fmt::Debug for SharedRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRegion")
            .field("len", &self.len)
            .field("page_size", &self.page_size)
            .field("own", &self.fd.is_some())
            .finish()
    }
}

// SAFETY: the region owns its mapping (unmapped when dropped) and exposes the memory only
// through bounds-checked copies, atomics and leases, which are safe from any thread (the
// registry is behind a mutex).
unsafe impl Send for SharedRegion {}
// SAFETY: as above: every access through `&SharedRegion` is a copy, an atomic operation or a
// lease, and the registry keeps those from reaching the same bytes at once.
unsafe impl Sync for SharedRegion {}

impl HugeRegion {
    /// Like [`HugeRegion::map`], but the memory is a new memory file mapped `MAP_SHARED`
    /// (`memfd_create`, with `MFD_HUGETLB` for hugepages): returns the region and the file's
    /// descriptor, which a peer process can map (for example after receiving it over a unix
    /// socket) to share the memory, e.g. the buffers of a [`BufPool`](super::BufPool).
    ///
    /// The file is sealed against shrinking and growing, so a peer cannot truncate it under this
    /// mapping.
    pub fn map_memfd(
        len: usize,
        preferred: PageSize,
        name: &str,
    ) -> Result<(HugeRegion, OwnedFd), MemError> {
        let (map, fd, len, page) = memfd_mapping_fallback(len, preferred, name, true)?;
        if page.is_huge() != preferred.is_huge() {
            tracing::info!(
                "no {preferred} hugepages for a {len}-byte shared region: using {page} pages \
                 (reserve hugepages with `scripts/hugepages.sh`)"
            );
        }
        Ok((HugeRegion::from_shared_map(map, len, page)?, fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    #[cfg_attr(miri, ignore = "no memfd or mmap under Miri")]
    fn create_share_and_bounds() {
        let a = SharedRegion::create(10_000, PageSize::Base4K, "ustack-shm-test").unwrap();
        assert_eq!(a.len(), 12288);
        assert_eq!(a.page_size(), PageSize::Base4K);
        let fd = a.fd().unwrap().try_clone_to_owned().unwrap();
        let b = SharedRegion::map_fd(fd, 12288).unwrap();
        assert!(b.fd().is_none());
        // Writes through one mapping are seen through the other.
        assert!(a.write(100, b"shared"));
        let mut got = [0u8; 6];
        assert!(b.read(100, &mut got));
        assert_eq!(&got, b"shared");
        a.atomic_u16s(6, 1).unwrap()[0].store(0xBEEF, Ordering::Release);
        assert_eq!(
            b.atomic_u16s(6, 1).unwrap()[0].load(Ordering::Acquire),
            0xBEEF
        );
        a.atomic_u32s(128, 2).unwrap()[1].store(7, Ordering::Relaxed);
        assert_eq!(b.atomic_u32s(132, 1).unwrap()[0].load(Ordering::Relaxed), 7);
        // Out of range, misaligned or overflowing requests are refused.
        assert!(!b.read(12288 - 3, &mut got));
        assert!(!b.write(usize::MAX - 2, b"abc"));
        assert!(b.atomic_u16s(1, 1).is_none());
        assert!(b.atomic_u32s(2, 1).is_none());
        assert!(b.atomic_u32s(12284, 2).is_none());
        assert!(b.atomic_u32s(0, usize::MAX / 2).is_none());
        assert!(b.contains(0, 12288));
        assert!(!b.contains(1, 12288));
        assert!(!b.contains(u64::MAX, 2));
        // Empty accesses at the very end are fine.
        assert!(b.read(12288, &mut []));
    }

    #[test]
    #[cfg_attr(miri, ignore = "no memfd or mmap under Miri")]
    fn leases_atomics_and_copies_never_share_bytes() {
        let a = SharedRegion::create(16384, PageSize::Base4K, "ustack-shm-lease").unwrap();
        let fd = a.fd().unwrap().try_clone_to_owned().unwrap();
        let b = Arc::new(SharedRegion::map_fd(fd, 16384).unwrap());
        assert_eq!(a.file_id(), b.file_id(), "one file");
        assert!(b.lease(0, 100).is_none(), "no room prepared");
        assert!(b.prepare_leases(4));
        // Atomics reserve their bytes for good.
        assert!(b.atomic_u32s(0, 32).is_some());
        assert!(b.lease(64, 100).is_none(), "over ring atomics");
        let mut l = b.lease(4096, 1000).unwrap();
        assert!(b.lease(4096 + 999, 10).is_none(), "overlaps a lease");
        assert!(b.lease(4000, 97).is_none());
        let l2 = b.lease(4096 + 1000, 10).expect("adjacent is fine");
        assert!(
            b.atomic_u16s(4096 + 10, 1).is_none(),
            "atomics over a lease"
        );
        assert!(!b.write(4096 + 500, b"x"), "copies over a lease");
        let mut x = [0u8; 2];
        assert!(!b.read(4095, &mut x));
        assert!(b.read(4094, &mut x), "next to it");
        assert!(b.lease(16384 - 10, 11).is_none(), "past the end");
        assert!(b.lease(usize::MAX, 2).is_none());
        assert!(!b.prepare_leases(8), "not while leases are held");
        l.as_mut_slice().fill(7);
        let mut got = [0u8; 3];
        assert!(
            a.read(4096 + 997, &mut got),
            "the other mapping has no leases"
        );
        assert_eq!(got, [7; 3]);
        // Shrinking frees the tail; dropping frees the rest.
        l.shrink(10);
        assert_eq!(l.as_slice().len(), 10);
        assert!(b.write(4096 + 500, b"y"));
        assert_eq!(b.leases(), 2);
        drop((l, l2));
        assert_eq!(b.leases(), 0);
        assert!(b.write(4096, b"z"));
        // Room is bounded.
        let held: Vec<ShmLease> = (0..4)
            .map(|i| b.lease(8192 + i * 100, 100).unwrap())
            .collect();
        assert!(b.lease(12000, 100).is_none(), "four leases at most");
        drop(held);
        assert!(b.lease(12000, 100).is_some());
    }

    #[test]
    #[cfg_attr(miri, ignore = "no memfd or mmap under Miri")]
    fn a_peer_cannot_claim_more_than_the_file_holds() {
        let a = SharedRegion::create(4096, PageSize::Base4K, "ustack-shm-short").unwrap();
        let fd = a.fd().unwrap().try_clone_to_owned().unwrap();
        assert!(matches!(
            SharedRegion::map_fd(fd, 8192),
            Err(MemError::FileTooShort {
                len: 8192,
                file_len: 4096
            })
        ));
        let fd = a.fd().unwrap().try_clone_to_owned().unwrap();
        assert!(matches!(
            SharedRegion::map_fd(fd, 0),
            Err(MemError::ZeroSize)
        ));
    }

    #[test]
    #[cfg_attr(miri, ignore = "no memfd or mmap under Miri")]
    fn a_file_we_made_cannot_be_truncated_by_the_peer() {
        let a = SharedRegion::create(4096, PageSize::Base4K, "ustack-shm-seal").unwrap();
        let file = std::fs::File::from(a.fd().unwrap().try_clone_to_owned().unwrap());
        assert!(file.set_len(0).is_err());
    }

    #[test]
    #[cfg_attr(miri, ignore = "no memfd or mmap under Miri")]
    fn an_unsealed_peer_file_gets_sealed() {
        let fd = sys::memfd_create("ustack-unsealed", None).unwrap();
        std::fs::File::from(fd.try_clone().unwrap())
            .set_len(4096)
            .unwrap();
        let check = fd.try_clone().unwrap();
        let r = SharedRegion::map_fd(fd, 4096).unwrap();
        assert_ne!(sys::seals(check.as_fd()).unwrap() & sys::SEAL_SHRINK, 0);
        drop(r);
    }

    #[test]
    #[cfg_attr(miri, ignore = "no memfd or mmap under Miri")]
    fn pool_on_a_memfd_is_shared() {
        let (region, fd) =
            HugeRegion::map_memfd(64 << 10, PageSize::Huge2M, "ustack-pool-test").unwrap();
        let len = region.len();
        let pool = super::super::BufPool::new(region, 2048, 0).unwrap();
        let peer = SharedRegion::map_fd(fd, len).unwrap();
        let mut b = pool.alloc().unwrap();
        assert!(b.set_len(5));
        b.as_mut_slice().copy_from_slice(b"12345");
        let mut got = [0u8; 5];
        assert!(peer.read(pool.buf_offset(b.index() as u32), &mut got));
        assert_eq!(&got, b"12345");
    }
}

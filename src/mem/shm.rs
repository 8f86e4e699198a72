//! Shared memory between processes: memory files (`memfd`) mapped `MAP_SHARED`.
//!
//! - [`SharedRegion::create`] makes a new memory file (on hugepages when available) that a peer
//!   process can map after receiving its descriptor; [`HugeRegion::map_memfd`] does the same for
//!   a region that a [`BufPool`](super::BufPool) is then built on.
//! - [`SharedRegion::map_fd`] maps a descriptor received from a peer, after checking that the
//!   file really is as long as the peer claims (a mapping past the end of a file faults with
//!   `SIGBUS` on access) and sealing it against shrinking where it allows.
//!
//! A shared region is memory another process writes at any time, so it never hands out plain
//! references (`&[u8]`) to its bytes: it offers bounds-checked copies in and out and atomic views
//! (`&[AtomicU16]`, `&[AtomicU32]`) for indexes and descriptors. Every offset is checked against
//! the mapping; nothing a peer writes can make these methods touch memory outside it.
//!
//! Miri has no `memfd_create` or `mmap`: this compiles under Miri, but its tests are skipped there.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU16, AtomicU32};

use super::{HugeRegion, MemError, PageSize};
use crate::sys::memif as sys;

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
                free: super::region::hugepages_free(page),
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

/// A memory mapping shared with another process through a memory file.
pub struct SharedRegion {
    map: memmap2::MmapRaw,
    /// Bytes that may be accessed (the mapping may be longer, rounded to pages).
    len: usize,
    page_size: PageSize,
    /// The file, kept for regions we created (to send to peers); `None` for a peer's region.
    fd: Option<OwnedFd>,
}

impl SharedRegion {
    /// Creates a zero-filled memory file of at least `len` bytes (rounded up to the page size),
    /// trying `preferred` pages first, then smaller ones, and maps it. Its descriptor
    /// ([`SharedRegion::fd`]) can be sent to a peer, which then shares the memory.
    pub fn create(len: usize, preferred: PageSize, name: &str) -> Result<SharedRegion, MemError> {
        let (map, fd, len, page_size) = memfd_mapping_fallback(len, preferred, name, true)?;
        Ok(SharedRegion {
            map,
            len,
            page_size,
            fd: Some(fd),
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
        })
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

    /// `count` 16-bit atomics starting `offset` bytes into the region (which must be 2-byte
    /// aligned), or `None` if they do not fit.
    #[inline]
    pub fn atomic_u16s(&self, offset: usize, count: usize) -> Option<&[AtomicU16]> {
        let bytes = count.checked_mul(2)?;
        let p = self.range_ptr(offset, bytes, 2)?;
        // SAFETY: the range is inside the mapping (checked above) and 2-byte aligned (the mapping
        // is page-aligned and offset is even). AtomicU16 has the size and alignment of u16 and
        // any bit pattern is valid; the memory is initialised (file pages read as zero until
        // written). Other processes may modify it concurrently, which atomics allow. The slice
        // borrows `self`, so it cannot outlive the mapping.
        Some(unsafe { std::slice::from_raw_parts(p.cast::<AtomicU16>(), count) })
    }

    /// `count` 32-bit atomics starting `offset` bytes into the region (which must be 4-byte
    /// aligned), or `None` if they do not fit.
    #[inline]
    pub fn atomic_u32s(&self, offset: usize, count: usize) -> Option<&[AtomicU32]> {
        let bytes = count.checked_mul(4)?;
        let p = self.range_ptr(offset, bytes, 4)?;
        // SAFETY: as in atomic_u16s, with 4-byte alignment checked above.
        Some(unsafe { std::slice::from_raw_parts(p.cast::<AtomicU32>(), count) })
    }

    /// Copies `dst.len()` bytes starting at `offset` out of the region; `false` (and nothing
    /// copied) if that range is not inside the region.
    #[inline]
    #[must_use]
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> bool {
        let Some(p) = self.range_ptr(offset, dst.len(), 1) else {
            return false;
        };
        // SAFETY: the source range is inside the mapping (checked) and initialised; `dst` is a
        // distinct exclusive buffer of the same length, so they do not overlap. No reference to
        // the shared bytes is created: if the peer writes them meanwhile, we copy whatever bytes
        // are there, which the caller treats as untrusted data.
        unsafe { std::ptr::copy_nonoverlapping(p.cast_const(), dst.as_mut_ptr(), dst.len()) };
        true
    }

    /// Copies `src` into the region at `offset`; `false` (and nothing written) if that range is
    /// not inside the region.
    #[inline]
    #[must_use]
    pub fn write(&self, offset: usize, src: &[u8]) -> bool {
        let Some(p) = self.range_ptr(offset, src.len(), 1) else {
            return false;
        };
        // SAFETY: the destination range is inside the mapping (checked), which is writable
        // (mapped read-write); `src` is a separate buffer, so they do not overlap. No reference
        // to the shared bytes is created.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        true
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
// through bounds-checked copies and atomics, which are safe from any thread.
unsafe impl Send for SharedRegion {}
// SAFETY: as above: every access through `&SharedRegion` is a copy or an atomic operation.
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

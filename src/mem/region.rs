//! [`HugeRegion`]: an anonymous memory mapping on hugepages, with a fallback to base pages.
//!
//! Under Miri there is no `mmap`: a zeroed, page-aligned heap allocation stands in for base
//! pages, and hugepages are reported as unavailable (so [`HugeRegion::map`] takes its fallback
//! path and [`HugeRegion::map_exact`] returns [`MemError::NoHugePages`]), which lets the pool
//! code above it run under Miri unchanged.

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use super::error::MemError;
use super::page::{hugepages_free, PageSize};

/// Set by the first fallback to base pages: the warning is logged once per process (later
/// fallbacks log the same text at debug level), so a program that maps many regions does not
/// flood its log with one misconfiguration.
static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

/// An anonymous, private, pre-faulted memory mapping, preferably on hugepages.
///
/// Dropping it unmaps the memory. The region gives out raw pointers ([`HugeRegion::as_mut_ptr`])
/// to the pool that owns it, or disjoint slabs, once ([`HugeRegion::take_slabs`]).
pub struct HugeRegion {
    /// Start of the memory, taken once from the backing with mutable access, so writes through it
    /// are allowed for the region's whole life. Never null, `len` bytes, initialised.
    ptr: NonNull<u8>,
    len: usize,
    page_size: PageSize,
    slabs_taken: AtomicBool,
    /// Owns the memory; it is only touched again when the region is dropped.
    _backing: Backing,
}

enum Backing {
    #[cfg(not(miri))]
    Mmap(#[allow(dead_code)] memmap2::MmapMut),
    /// A shared mapping of a memory file (see `HugeRegion::map_memfd` in `shm.rs`).
    Shared(#[allow(dead_code)] memmap2::MmapRaw),
    #[cfg(miri)]
    Heap(std::alloc::Layout),
}

impl HugeRegion {
    /// Maps at least `len` bytes (rounded up to the page size), trying `preferred` first, then
    /// smaller hugepages, then base pages with `MADV_HUGEPAGE`.
    ///
    /// Falling back from hugepages to base pages logs a warning that names the fix
    /// (`scripts/hugepages.sh N`). It is logged at `WARN` once per process, for the first such
    /// fallback; later ones log the same text at `DEBUG`.
    pub fn map(len: usize, preferred: PageSize) -> Result<HugeRegion, MemError> {
        let tries: &[PageSize] = match preferred {
            PageSize::Huge1G => &[PageSize::Huge1G, PageSize::Huge2M, PageSize::Base4K],
            PageSize::Huge2M => &[PageSize::Huge2M, PageSize::Base4K],
            PageSize::Base4K => &[PageSize::Base4K],
        };
        let mut last_err = None;
        for &page in tries {
            match Self::map_exact(len, page) {
                Ok(region) => {
                    if page != preferred {
                        Self::log_fallback(region.len(), preferred, page);
                    }
                    return Ok(region);
                }
                // Nothing will work for these; do not try smaller pages.
                Err(e @ (MemError::ZeroSize | MemError::BadLayout(_))) => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or(MemError::ZeroSize))
    }

    fn log_fallback(len: usize, preferred: PageSize, got: PageSize) {
        if got.is_huge() {
            tracing::info!(
                "no {preferred} hugepages for a {len}-byte region; using {got} hugepages instead"
            );
            return;
        }
        let free = hugepages_free(preferred);
        let pages = len.div_ceil(PageSize::Huge2M.bytes());
        let msg = format!(
            "no {preferred} hugepages available for a {len}-byte region ({free} free); using \
             4 KiB pages with MADV_HUGEPAGE, which costs TLB misses. Fix: run \
             `scripts/hugepages.sh {pages}` as root to reserve {pages} pages of 2 MiB"
        );
        if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!("{msg}");
        } else {
            tracing::debug!("{msg}");
        }
    }

    /// Maps at least `len` bytes with exactly this page size: no fallback.
    ///
    /// Hugepages must have been reserved (`scripts/hugepages.sh N`); if too few are free this
    /// returns [`MemError::NoHugePages`].
    pub fn map_exact(len: usize, page: PageSize) -> Result<HugeRegion, MemError> {
        if len == 0 {
            return Err(MemError::ZeroSize);
        }
        let len = len
            .checked_next_multiple_of(page.bytes())
            .filter(|&l| l <= isize::MAX as usize)
            .ok_or(MemError::BadLayout("region length overflows"))?;
        let (ptr, backing) = Self::map_backing(len, page)?;
        Ok(HugeRegion {
            ptr,
            len,
            page_size: page,
            slabs_taken: AtomicBool::new(false),
            _backing: backing,
        })
    }

    #[cfg(not(miri))]
    fn map_backing(len: usize, page: PageSize) -> Result<(NonNull<u8>, Backing), MemError> {
        let mut opts = memmap2::MmapOptions::new();
        opts.len(len).populate();
        if page.is_huge() {
            opts.huge(Some(page.shift()));
        }
        match opts.map_anon() {
            Ok(mut map) => {
                if !page.is_huge() {
                    // Transparent hugepages, where the kernel allows them; a refusal changes nothing.
                    let _ = map.advise(memmap2::Advice::HugePage);
                }
                // The pointer comes from a mutable borrow, so it may be written through. Moving
                // the MmapMut afterwards does not move the mapping it points to.
                let ptr = NonNull::new(map.as_mut_ptr()).ok_or(MemError::Map {
                    len,
                    page,
                    source: std::io::Error::other("mmap returned a null mapping"),
                })?;
                Ok((ptr, Backing::Mmap(map)))
            }
            Err(e) if page.is_huge() => {
                tracing::debug!("MAP_HUGETLB with {page} pages for {len} bytes failed: {e}");
                Err(MemError::NoHugePages {
                    page,
                    len,
                    free: hugepages_free(page),
                })
            }
            Err(source) => Err(MemError::Map { len, page, source }),
        }
    }

    /// A region over a shared mapping of `len` bytes (a multiple of `page`'s size) made by
    /// `shm.rs`.
    pub(crate) fn from_shared_map(
        map: memmap2::MmapRaw,
        len: usize,
        page: PageSize,
    ) -> Result<HugeRegion, MemError> {
        let ptr = NonNull::new(map.as_mut_ptr()).ok_or(MemError::Map {
            len,
            page,
            source: std::io::Error::other("mmap returned a null mapping"),
        })?;
        debug_assert!(map.len() >= len);
        Ok(HugeRegion {
            ptr,
            len,
            page_size: page,
            slabs_taken: AtomicBool::new(false),
            _backing: Backing::Shared(map),
        })
    }

    /// Under Miri there is no mmap: a zeroed heap allocation stands in for base pages, and
    /// hugepages are never available.
    #[cfg(miri)]
    fn map_backing(len: usize, page: PageSize) -> Result<(NonNull<u8>, Backing), MemError> {
        if page.is_huge() {
            return Err(MemError::NoHugePages { page, len, free: 0 });
        }
        let layout = std::alloc::Layout::from_size_align(len, PageSize::Base4K.bytes())
            .map_err(|_| MemError::BadLayout("region layout"))?;
        // SAFETY: the layout has a non-zero size (map_exact checked len > 0).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or(MemError::Map {
            len,
            page,
            source: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
        })?;
        Ok((ptr, Backing::Heap(layout)))
    }

    /// Length in bytes (a multiple of the page size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The page size the kernel gave.
    pub fn page_size(&self) -> PageSize {
        self.page_size
    }

    /// Start of the mapping, valid for reads and writes of [`len`](Self::len) bytes while the
    /// region lives; the memory is always initialised. Writing through it is the caller's business
    /// (see `BufPool`): the region does not track who accesses what, except that it gives no
    /// references of its own to the memory other than [`take_slabs`](Self::take_slabs).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Splits the region into as many disjoint `slab_len`-byte mutable slabs as fit, once.
    ///
    /// The slabs borrow the region, so they cannot outlive it. A second call returns
    /// [`MemError::SlabsTaken`]: this is what makes handing out `&mut` from `&self` sound.
    // The lint assumes `&mut` from `&self` aliases; the once-only `slabs_taken` flag prevents that.
    #[allow(clippy::mut_from_ref)]
    pub fn take_slabs(&self, slab_len: usize) -> Result<Vec<&mut [u8]>, MemError> {
        if slab_len == 0 {
            return Err(MemError::ZeroSize);
        }
        if self.slabs_taken.swap(true, Ordering::AcqRel) {
            return Err(MemError::SlabsTaken);
        }
        let base = self.as_mut_ptr();
        let count = self.len / slab_len;
        Ok((0..count)
            .map(|i| {
                // SAFETY: slab i covers [i*slab_len, (i+1)*slab_len), inside the mapping (count*slab_len
                // <= len) and disjoint from every other slab. The mapping is initialised (zero-filled
                // by the kernel or alloc_zeroed), writable through `ptr`, and lives as long as `self`,
                // which the returned lifetime ties the slabs to. `slabs_taken` guarantees no second
                // set of slabs aliases these, and the region hands out no other references to its
                // memory.
                unsafe { std::slice::from_raw_parts_mut(base.add(i * slab_len), slab_len) }
            })
            .collect())
    }
}

/// One of the disjoint parts of a region made by [`HugeRegion::split`]. Each part hands out its
/// own slabs, once; the region stays mapped while any part lives.
pub struct RegionPart {
    region: std::sync::Arc<HugeRegion>,
    offset: usize,
    len: usize,
    slabs_taken: AtomicBool,
}

impl HugeRegion {
    /// Splits the region into `parts` disjoint parts of `part_len` bytes each (from the start),
    /// for owners that each carve their own slabs: one mapping, one page-size decision, no
    /// rounding of every part up to a hugepage. Fails if they do not fit.
    pub fn split(self, part_len: usize, parts: usize) -> Result<Vec<RegionPart>, MemError> {
        if part_len == 0 || parts == 0 {
            return Err(MemError::ZeroSize);
        }
        match part_len.checked_mul(parts) {
            Some(total) if total <= self.len => {}
            _ => return Err(MemError::BadLayout("parts larger than the region")),
        }
        let region = std::sync::Arc::new(self);
        Ok((0..parts)
            .map(|i| RegionPart {
                region: std::sync::Arc::clone(&region),
                offset: i * part_len,
                len: part_len,
                slabs_taken: AtomicBool::new(false),
            })
            .collect())
    }
}

impl RegionPart {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: parts are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The page size of the region the part belongs to.
    pub fn page_size(&self) -> PageSize {
        self.region.page_size
    }

    /// Like [`HugeRegion::take_slabs`], within this part.
    // The lint assumes `&mut` from `&self` aliases; the once-only flag and the disjoint parts
    // prevent that.
    #[allow(clippy::mut_from_ref)]
    pub fn take_slabs(&self, slab_len: usize) -> Result<Vec<&mut [u8]>, MemError> {
        if slab_len == 0 {
            return Err(MemError::ZeroSize);
        }
        if self.slabs_taken.swap(true, Ordering::AcqRel) {
            return Err(MemError::SlabsTaken);
        }
        // SAFETY: offset + len <= region length (checked by split).
        let base = unsafe { self.region.as_mut_ptr().add(self.offset) };
        let count = self.len / slab_len;
        Ok((0..count)
            .map(|i| {
                // SAFETY: slab i lies inside this part, [offset, offset+len) of the mapping, and is
                // disjoint from the other slabs of the part; parts made by `split` are disjoint,
                // and the region itself, moved into the Arc by `split`, can no longer hand out
                // slabs. The mapping lives as long as the Arc, which `self` holds, and the
                // returned lifetime ties the slabs to `self`; `slabs_taken` makes it once only.
                unsafe { std::slice::from_raw_parts_mut(base.add(i * slab_len), slab_len) }
            })
            .collect())
    }
}

#[cfg(miri)]
impl Drop for HugeRegion {
    fn drop(&mut self) {
        if let Backing::Heap(layout) = &self._backing {
            // SAFETY: `ptr` was allocated in map_backing with exactly this layout and is freed
            // only here; the slabs borrowed from the region are gone since we have `&mut self`.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), *layout) };
        }
    }
}

// SAFETY: the region owns its memory (the mapping or heap block lives exactly as long as the
// value), and the pointer is only a view of it, so moving the region to another thread is like
// moving a Box<[u8]>.
unsafe impl Send for HugeRegion {}
// SAFETY: `&HugeRegion` gives out only a raw pointer (any access through it is the caller's
// unsafe business) and the slabs, which the atomic `slabs_taken` hands out at most once.
unsafe impl Sync for HugeRegion {}

impl fmt::Debug for HugeRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HugeRegion")
            .field("len", &self.len)
            .field("page_size", &self.page_size)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_pages_always_work() {
        let r = HugeRegion::map_exact(5000, PageSize::Base4K).unwrap();
        assert_eq!(r.len(), 8192);
        assert_eq!(r.page_size(), PageSize::Base4K);
        assert!(!r.is_empty());
        assert_eq!(r.as_mut_ptr() as usize % PageSize::Base4K.bytes(), 0);
    }

    #[test]
    fn zero_is_an_error() {
        assert!(matches!(
            HugeRegion::map(0, PageSize::Huge2M),
            Err(MemError::ZeroSize)
        ));
        assert!(matches!(
            HugeRegion::map_exact(0, PageSize::Base4K),
            Err(MemError::ZeroSize)
        ));
    }

    #[test]
    fn overflowing_length_is_a_layout_error() {
        assert!(matches!(
            HugeRegion::map(usize::MAX - 10, PageSize::Huge2M),
            Err(MemError::BadLayout(_))
        ));
    }

    #[test]
    fn fallback_never_returns_fewer_bytes() {
        // Whatever page size the machine gives, the region covers the request.
        let want = 3 * 4096 + 1;
        let r = HugeRegion::map(want, PageSize::Huge1G).unwrap();
        assert!(r.len() >= want);
        assert_eq!(r.len() % r.page_size().bytes(), 0);
    }

    #[test]
    fn memory_starts_zeroed_and_is_writable() {
        let r = HugeRegion::map_exact(4096, PageSize::Base4K).unwrap();
        let mut slabs = r.take_slabs(4096).unwrap();
        assert!(slabs[0].iter().all(|&b| b == 0));
        slabs[0][4095] = 0xAB;
        assert_eq!(slabs[0][4095], 0xAB);
    }

    #[test]
    fn slabs_are_disjoint_and_taken_once() {
        let r = HugeRegion::map(3 * 4096, PageSize::Base4K).unwrap();
        assert!(matches!(r.take_slabs(0), Err(MemError::ZeroSize)));
        let mut slabs = r.take_slabs(4096).unwrap();
        assert_eq!(slabs.len(), 3);
        for (i, s) in slabs.iter_mut().enumerate() {
            s.fill(i as u8 + 1);
        }
        for (i, s) in slabs.iter().enumerate() {
            assert!(s.iter().all(|&b| b == i as u8 + 1));
        }
        assert!(matches!(r.take_slabs(4096), Err(MemError::SlabsTaken)));
    }

    #[test]
    fn region_moves_between_threads() {
        let r = HugeRegion::map_exact(4096, PageSize::Base4K).unwrap();
        let r = std::thread::spawn(move || {
            r.take_slabs(4096).unwrap()[0].fill(9);
            r
        })
        .join()
        .unwrap();
        // SAFETY: the slabs taken on the other thread are gone; nothing else refers to the memory.
        let first = unsafe { r.as_mut_ptr().read() };
        assert_eq!(first, 9);
    }

    #[test]
    fn no_hugepages_error_names_the_script() {
        let e = MemError::NoHugePages {
            page: PageSize::Huge2M,
            len: 1 << 21,
            free: 0,
        };
        assert!(e.to_string().contains("scripts/hugepages.sh"), "{e}");
    }

    #[test]
    fn split_parts_are_disjoint_and_each_carved_once() {
        let r = HugeRegion::map(4 * 4096, PageSize::Base4K).unwrap();
        let parts = r.split(8192, 2).unwrap();
        let mut a = parts[0].take_slabs(4096).unwrap();
        let mut b = parts[1].take_slabs(4096).unwrap();
        for s in a.iter_mut() {
            s.fill(1);
        }
        for s in b.iter_mut() {
            s.fill(2);
        }
        assert!(a.iter().all(|s| s.iter().all(|&x| x == 1)));
        assert!(b.iter().all(|s| s.iter().all(|&x| x == 2)));
        assert!(matches!(
            parts[0].take_slabs(4096),
            Err(MemError::SlabsTaken)
        ));
        let too_big = HugeRegion::map(4096, PageSize::Base4K)
            .unwrap()
            .split(4096, 2);
        assert!(matches!(too_big, Err(MemError::BadLayout(_))));
    }
}

//! [`HugeRegion`]: an anonymous memory mapping on hugepages, with a fallback to base pages.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::MemError;

/// The page size backing a region.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// Ordinary 4 KiB pages (the fallback; `MADV_HUGEPAGE` asks for transparent hugepages).
    Base4K,
    /// 2 MiB hugepages (`MAP_HUGETLB | MAP_HUGE_2MB`).
    Huge2M,
    /// 1 GiB hugepages (`MAP_HUGETLB | MAP_HUGE_1GB`).
    Huge1G,
}

impl PageSize {
    /// The page size in bytes.
    pub const fn bytes(self) -> usize {
        1 << self.shift()
    }

    const fn shift(self) -> u8 {
        match self {
            PageSize::Base4K => 12,
            PageSize::Huge2M => 21,
            PageSize::Huge1G => 30,
        }
    }

    /// True for 2 MiB and 1 GiB pages.
    pub const fn is_huge(self) -> bool {
        !matches!(self, PageSize::Base4K)
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PageSize::Base4K => "4 KiB",
            PageSize::Huge2M => "2 MiB",
            PageSize::Huge1G => "1 GiB",
        })
    }
}

/// Free hugepages of the default size, from `/proc/meminfo` (0 when unknown).
pub(crate) fn hugepages_free() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("HugePages_Free:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

/// An anonymous, private, pre-faulted memory mapping, preferably on hugepages.
///
/// Dropping it unmaps the memory. The region gives out raw pointers ([`HugeRegion::as_mut_ptr`])
/// to the pool that owns it, or disjoint slabs, once ([`HugeRegion::take_slabs`]).
pub struct HugeRegion {
    backing: Backing,
    len: usize,
    page_size: PageSize,
    slabs_taken: AtomicBool,
}

enum Backing {
    #[cfg(not(miri))]
    Mmap(memmap2::MmapMut),
    #[cfg(miri)]
    Heap(std::ptr::NonNull<u8>, std::alloc::Layout),
}

impl HugeRegion {
    /// Maps at least `len` bytes (rounded up to the page size), trying `preferred` first, then
    /// smaller hugepages, then base pages with `MADV_HUGEPAGE`. Falling back to base pages logs
    /// one warning per process that names the fix (`scripts/hugepages.sh N`).
    pub fn map(len: usize, preferred: PageSize) -> Result<HugeRegion, MemError> {
        let mut tries: &[PageSize] = match preferred {
            PageSize::Huge1G => &[PageSize::Huge1G, PageSize::Huge2M, PageSize::Base4K],
            PageSize::Huge2M => &[PageSize::Huge2M, PageSize::Base4K],
            PageSize::Base4K => &[PageSize::Base4K],
        };
        if cfg!(miri) {
            tries = &[PageSize::Base4K];
        }
        let mut last_err = None;
        for &page in tries {
            match Self::map_exact(len, page) {
                Ok(region) => {
                    if preferred.is_huge() && !page.is_huge() {
                        let free = hugepages_free();
                        let msg = format!(
                            "no {preferred} hugepages available for a {len}-byte region \
                             (HugePages_Free: {free}); using 4 KiB pages with MADV_HUGEPAGE, \
                             which costs TLB misses. Fix: run `scripts/hugepages.sh N` as root \
                             (reserves N 2 MiB pages)"
                        );
                        if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                            tracing::warn!("{msg}");
                        } else {
                            tracing::debug!("{msg}");
                        }
                    }
                    return Ok(region);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or(MemError::ZeroSize))
    }

    /// Maps at least `len` bytes with exactly this page size: no fallback.
    pub fn map_exact(len: usize, page: PageSize) -> Result<HugeRegion, MemError> {
        if len == 0 {
            return Err(MemError::ZeroSize);
        }
        let len = len
            .checked_next_multiple_of(page.bytes())
            .ok_or(MemError::BadLayout("region length overflows"))?;
        let backing = Self::map_backing(len, page)?;
        Ok(HugeRegion {
            backing,
            len,
            page_size: page,
            slabs_taken: AtomicBool::new(false),
        })
    }

    #[cfg(not(miri))]
    fn map_backing(len: usize, page: PageSize) -> Result<Backing, MemError> {
        let mut opts = memmap2::MmapOptions::new();
        opts.len(len).populate();
        if page.is_huge() {
            opts.huge(Some(page.shift()));
        }
        match opts.map_anon() {
            Ok(map) => {
                if !page.is_huge() {
                    // Transparent hugepages, where the kernel allows them; a refusal changes nothing.
                    let _ = map.advise(memmap2::Advice::HugePage);
                }
                Ok(Backing::Mmap(map))
            }
            Err(e) if page.is_huge() => {
                tracing::debug!("MAP_HUGETLB with {page} pages for {len} bytes failed: {e}");
                Err(MemError::NoHugePages {
                    page,
                    len,
                    free: hugepages_free(),
                })
            }
            Err(source) => Err(MemError::Map { len, page, source }),
        }
    }

    /// Under Miri there is no mmap: a zeroed heap allocation stands in, page-aligned.
    #[cfg(miri)]
    fn map_backing(len: usize, page: PageSize) -> Result<Backing, MemError> {
        let layout = std::alloc::Layout::from_size_align(len, 4096)
            .map_err(|_| MemError::BadLayout("region layout"))?;
        // SAFETY: the layout has a non-zero size (len > 0 was checked by the caller).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(ptr).ok_or(MemError::Map {
            len,
            page,
            source: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
        })?;
        Ok(Backing::Heap(ptr, layout))
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

    /// Start of the mapping. Writing through it is the caller's business (see `BufPool`).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        match &self.backing {
            #[cfg(not(miri))]
            Backing::Mmap(m) => m.as_ptr() as *mut u8,
            #[cfg(miri)]
            Backing::Heap(p, _) => p.as_ptr(),
        }
    }

    /// Splits the region into as many disjoint `slab_len`-byte mutable slabs as fit, once.
    ///
    /// The slabs borrow the region, so they cannot outlive it. A second call returns
    /// [`MemError::SlabsTaken`]: this is what makes handing out `&mut` from `&self` sound.
    #[allow(
        clippy::mut_from_ref,
        reason = "sound: the slabs are disjoint and handed out once"
    )]
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
                // by the kernel or alloc_zeroed) and lives as long as `self`, which the returned
                // lifetime ties the slabs to. `slabs_taken` guarantees no second set of slabs
                // aliases these, and the region hands out no other references to its memory.
                unsafe { std::slice::from_raw_parts_mut(base.add(i * slab_len), slab_len) }
            })
            .collect())
    }
}

#[cfg(miri)]
impl Drop for HugeRegion {
    fn drop(&mut self) {
        let Backing::Heap(p, layout) = &self.backing;
        // SAFETY: allocated in map_backing with this exact layout and freed only here.
        unsafe { std::alloc::dealloc(p.as_ptr(), *layout) };
    }
}

// SAFETY: the region is plain memory owned by this value; the raw pointer in the Miri backing is
// uniquely owned. Access discipline across threads is the business of the users of as_mut_ptr.
#[cfg(miri)]
unsafe impl Send for HugeRegion {}
// SAFETY: as above; &HugeRegion only exposes the raw pointer and the once-only take_slabs.
#[cfg(miri)]
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
    }

    #[test]
    fn zero_is_an_error() {
        assert!(matches!(
            HugeRegion::map(0, PageSize::Huge2M),
            Err(MemError::ZeroSize)
        ));
    }

    #[test]
    fn slabs_are_disjoint_and_taken_once() {
        let r = HugeRegion::map(3 * 4096, PageSize::Base4K).unwrap();
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
}

//! [`PageSize`]: the size of the pages backing a region (base pages or hugepages), and how many
//! hugepages of a size are free.

use std::fmt;

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

    pub(super) const fn shift(self) -> u8 {
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

    /// The argument of `scripts/hugepages.sh` that reserves pages of this size after the count
    /// (empty for 2 MiB, the script's default).
    pub(crate) const fn script_size_arg(self) -> &'static str {
        match self {
            PageSize::Huge1G => " 1G",
            PageSize::Base4K | PageSize::Huge2M => "",
        }
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

/// Free hugepages of this size, from `/sys/kernel/mm/hugepages` (0 when unknown, for base
/// pages, and under Miri, which has no such files).
pub(crate) fn hugepages_free(page: PageSize) -> u64 {
    if cfg!(miri) || !page.is_huge() {
        return 0;
    }
    let path = format!(
        "/sys/kernel/mm/hugepages/hugepages-{}kB/free_hugepages",
        page.bytes() / 1024
    );
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

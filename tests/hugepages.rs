//! `HugeRegion` on real hugepages: it reports 2 MiB pages when `vm.nr_hugepages` is set, and
//! falls back to base pages with a warning that names `scripts/hugepages.sh` when it is 0.
//!
//! These tests change host state (the sizes of the 2 MiB and 1 GiB pools in sysfs, which is
//! `vm.nr_hugepages` for 2 MiB, and `vm.nr_overcommit_hugepages`), so:
//! - they need root, and print `SKIPPED: needs root to change nr_hugepages` and pass without it
//!   (under `scripts/test.sh` as root a skip is a failure);
//! - every change is undone by a Drop guard on every path, panics included;
//! - the cases take one mutex, so they never see each other's settings.
//!
//! Other processes on the machine may hold hugepages meanwhile (a file server, another test
//! binary). So a case sizes the pool *on top of* the pages others hold ([`reserve_2m`]: `n` pages
//! free for it, no more), and checks what its own mappings got from `/proc/self/smaps` (page
//! size and hugetlb pages of the mapping), never the machine's free count before and after.
//!
//! The fallback warning is logged at WARN once per process (later fallbacks log at DEBUG).
//! `fallback_warns_once_naming_the_script` is the only case in this binary that lets
//! `HugeRegion::map` fall back, so its first fallback is the first in the process; the others
//! map with `map_exact` first, which never falls back, and only use `map` once pages are there.

mod common;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::field::{Field, Visit};
use tracing::Level;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use ustack::mem::{BufPool, HugeRegion, MemError, PageSize};

const NR_OVERCOMMIT: &str = "/proc/sys/vm/nr_overcommit_hugepages";
const SYSFS_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";
const SYSFS_1G: &str = "/sys/kernel/mm/hugepages/hugepages-1048576kB";
const MIB: usize = 1 << 20;

/// Serializes the cases: they all change the same host settings.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed case poisons the mutex; its guard has restored the settings, so go on.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prints the skip reason and returns true when the test cannot change nr_hugepages.
fn skip_unless_root() -> bool {
    !common::root_or_skip("change nr_hugepages")
}

fn read_u64(path: impl AsRef<Path>) -> u64 {
    let path = path.as_ref();
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("parse {} ({text:?}): {e}", path.display()))
}

/// A field of `/proc/meminfo`, such as `HugePages_Free`.
fn meminfo(field: &str) -> u64 {
    let text = fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/meminfo"))
}

/// Sets a hugepage sysctl/sysfs knob and puts the old value back when dropped.
struct Knob {
    path: PathBuf,
    old: u64,
}

impl Knob {
    /// Writes `value` to `path` and returns the guard and what the kernel then reports.
    fn set(path: impl Into<PathBuf>, value: u64) -> (Knob, u64) {
        let path = path.into();
        let old = read_u64(&path);
        let knob = Knob { path, old };
        fs::write(&knob.path, value.to_string())
            .unwrap_or_else(|e| panic!("write {value} to {}: {e}", knob.path.display()));
        let now = read_u64(&knob.path);
        (knob, now)
    }
}

impl Drop for Knob {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.path, self.old.to_string()) {
            eprintln!(
                "could not restore {} to {}: {e}",
                self.path.display(),
                self.old
            );
        }
    }
}

/// One size's hugepage pool as the kernel counts it (`/sys/kernel/mm/hugepages/hugepages-*`).
struct Pool(&'static str);

impl Pool {
    fn count(&self, name: &str) -> u64 {
        read_u64(format!("{}/{name}", self.0))
    }

    /// Pages that others hold: in use, or reserved by a mapping and not yet touched (those still
    /// count as free).
    fn held(&self) -> u64 {
        let total = self.count("nr_hugepages") + self.count("surplus_hugepages");
        total - self.count("free_hugepages") + self.count("resv_hugepages")
    }

    /// Pages a new mapping can get: free and not reserved by another mapping.
    fn available(&self) -> u64 {
        self.count("free_hugepages")
            .saturating_sub(self.count("resv_hugepages"))
    }

    /// Sizes the pool so that `n` pages are available beyond those others hold; the old size
    /// comes back when the guard drops. Fails when the kernel cannot find `n` more.
    ///
    /// For `n == 0` it asks for a pool of 0: the kernel keeps the pages others use or reserved
    /// (as surplus), and those they free meanwhile leave the pool, so none becomes available.
    /// For more, it asks for the pages others hold plus `n` (so pages others free meanwhile
    /// add to the `n`, which the cases allow).
    fn reserve(&self, n: u64) -> Knob {
        let want = if n == 0 { 0 } else { self.held() + n };
        let (knob, _) = Knob::set(format!("{}/nr_hugepages", self.0), want);
        let got = self.available();
        if n == 0 {
            assert_eq!(got, 0, "pages available in {} after a pool of 0", self.0);
        }
        assert!(
            got >= n,
            "asked the kernel for {n} more pages in {}, {got} are available (memory too \
             fragmented?)",
            self.0
        );
        knob
    }
}

const POOL_2M: Pool = Pool(SYSFS_2M);
const POOL_1G: Pool = Pool(SYSFS_1G);

/// Makes `n` 2 MiB pages available to this test, on top of those other processes hold, with no
/// overcommit (so nothing beyond the pool can be allocated; with `n == 0`, nothing at all):
/// see [`Pool::reserve`]. Both settings come back on drop. Fields drop in order: pages, then
/// overcommit.
struct HugePages2M {
    _pages: Knob,
    _overcommit: Knob,
}

fn reserve_2m(n: u64) -> HugePages2M {
    assert_eq!(
        meminfo("Hugepagesize"),
        2048,
        "these tests assume 2 MiB is the default hugepage size"
    );
    let (overcommit, _) = Knob::set(NR_OVERCOMMIT, 0);
    let pages = POOL_2M.reserve(n);
    HugePages2M {
        _pages: pages,
        _overcommit: overcommit,
    }
}

/// What `/proc/self/smaps` says of the mapping that holds an address.
#[derive(Debug, PartialEq)]
struct Mapping {
    /// `KernelPageSize`, in KiB.
    page_kib: u64,
    /// Hugetlb pages in it (`Private_Hugetlb` + `Shared_Hugetlb`), in KiB.
    hugetlb_kib: u64,
}

/// This process's mapping that holds `addr`; `None` when nothing is mapped there.
fn own_mapping(addr: *const u8) -> Option<Mapping> {
    let addr = addr as u64;
    let smaps = fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let mut lines = smaps.lines();
    while let Some(line) = lines.next() {
        let Some((range, _)) = line.split_once(' ') else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        if !(start..end).contains(&addr) {
            continue;
        }
        let mut m = Mapping {
            page_kib: 0,
            hugetlb_kib: 0,
        };
        // The fields of this mapping, up to the next header line (which has no `:` key).
        for field in lines.by_ref() {
            let Some((key, value)) = field.split_once(':') else {
                break;
            };
            let kib = || -> u64 {
                let v = value.trim().trim_end_matches(" kB");
                v.parse().unwrap_or(0)
            };
            match key {
                "KernelPageSize" => m.page_kib = kib(),
                "Private_Hugetlb" | "Shared_Hugetlb" => m.hugetlb_kib += kib(),
                "VmFlags" => break,
                _ => {}
            }
        }
        return Some(m);
    }
    None
}

/// Records every tracing event (level and message) seen while it is the default subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(Level, String)>>>);

impl Captured {
    fn events(&self) -> Vec<(Level, String)> {
        self.0.lock().unwrap().clone()
    }

    /// Runs `f` with this capture as the thread's subscriber.
    fn during<T>(&self, f: impl FnOnce() -> T) -> T {
        let subscriber = tracing_subscriber::registry().with(self.clone());
        tracing::subscriber::with_default(subscriber, f)
    }
}

impl<S: tracing::Subscriber> Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        struct Message(String);
        impl Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), message.0));
    }
}

/// Writes a pattern over the whole region and reads it back.
fn touch_all(region: &HugeRegion) {
    let slabs = region.take_slabs(region.len()).expect("slabs");
    let slab = slabs.into_iter().next().expect("one slab");
    for (i, b) in slab.iter_mut().enumerate().step_by(4096) {
        *b = i as u8 ^ 0x5A;
    }
    for (i, b) in slab.iter().enumerate().step_by(4096) {
        assert_eq!(*b, i as u8 ^ 0x5A);
    }
}

#[test]
fn reports_2m_pages_when_nr_hugepages_is_set() {
    let _serial = serial();
    if skip_unless_root() {
        return;
    }
    let _pages = reserve_2m(4);

    // 3 MiB rounds up to two 2 MiB pages; map_exact cannot fall back.
    let region =
        HugeRegion::map_exact(3 * MIB, PageSize::Huge2M).expect("2 MiB pages are reserved");
    assert_eq!(region.page_size(), PageSize::Huge2M);
    assert_eq!(region.len(), 4 * MIB);
    let addr = region.as_mut_ptr().cast_const();
    assert_eq!(addr as usize % (2 * MIB), 0, "hugepage-aligned");
    assert_eq!(
        own_mapping(addr),
        Some(Mapping {
            page_kib: 2048,
            hugetlb_kib: 4096
        }),
        "the pre-faulted region holds its two 2 MiB pages"
    );
    touch_all(&region);
    drop(region);
    assert_eq!(own_mapping(addr), None, "unmapping gives the pages back");

    // With pages there, the falling-back map() and the pool on top of it get them too.
    let region = HugeRegion::map(MIB, PageSize::Huge2M).expect("map");
    assert_eq!(region.page_size(), PageSize::Huge2M);
    assert_eq!(region.len(), 2 * MIB);
    drop(region);
    let pool = BufPool::with_capacity(1024, 2048, 128, PageSize::Huge2M).expect("pool");
    assert_eq!(pool.page_size(), PageSize::Huge2M);
    assert_eq!(
        pool.capacity(),
        1024,
        "2 MiB holds exactly 1024 buffers of 2 KiB"
    );
    assert_eq!(
        own_mapping(pool.memory().0),
        Some(Mapping {
            page_kib: 2048,
            hugetlb_kib: 2048
        }),
        "the pool's memory is one 2 MiB page"
    );
    let mut buf = pool.alloc().expect("buffer");
    assert!(buf.set_len(100));
    buf.as_mut_slice().fill(1);
}

#[test]
fn fallback_warns_once_naming_the_script() {
    let _serial = serial();
    if skip_unless_root() {
        return;
    }
    let _pages = reserve_2m(0);

    let capture = Captured::default();
    let (first, second) = capture.during(|| {
        let first = HugeRegion::map(3 * MIB, PageSize::Huge2M).expect("base pages always work");
        let second = HugeRegion::map(MIB, PageSize::Huge2M).expect("base pages always work");
        (first, second)
    });
    assert_eq!(first.page_size(), PageSize::Base4K);
    assert_eq!(first.len(), 3 * MIB, "rounded to 4 KiB pages only");
    assert_eq!(second.page_size(), PageSize::Base4K);
    touch_all(&first);

    let events = capture.events();
    let warnings: Vec<_> = events.iter().filter(|(l, _)| *l == Level::WARN).collect();
    assert_eq!(
        warnings.len(),
        1,
        "exactly one WARN for two fallbacks (once per process; if there is none, an earlier \
         fallback in this binary used it up: only this test may fall back). Events: {events:?}"
    );
    let text = &warnings[0].1;
    assert!(
        text.contains("scripts/hugepages.sh"),
        "the warning names the fix: {text}"
    );
    assert!(
        text.contains("scripts/hugepages.sh 2"),
        "and how many pages 3 MiB needs: {text}"
    );
    assert!(text.contains("2 MiB"), "and the page size: {text}");
    // The second fallback is still logged, quietly.
    assert!(
        events
            .iter()
            .any(|(l, m)| *l == Level::DEBUG && m.contains("scripts/hugepages.sh 1")),
        "the second fallback logs at DEBUG: {events:?}"
    );
}

#[test]
fn map_exact_without_free_pages_is_no_hugepages() {
    let _serial = serial();
    if skip_unless_root() {
        return;
    }
    let _pages = reserve_2m(0);
    match HugeRegion::map_exact(2 * MIB, PageSize::Huge2M) {
        Err(e @ MemError::NoHugePages { .. }) => {
            let MemError::NoHugePages { page, len, free } = &e else {
                unreachable!()
            };
            // The free count the kernel reports: pages others reserved and have not touched yet
            // count as free, and are not ours to map.
            assert_eq!(
                (*page, *len, *free),
                (PageSize::Huge2M, 2 * MIB, POOL_2M.count("free_hugepages"))
            );
            let text = e.to_string();
            assert!(
                text.contains("scripts/hugepages.sh 1"),
                "names the fix: {text}"
            );
        }
        other => panic!("expected NoHugePages with nr_hugepages = 0, got {other:?}"),
    }
}

#[test]
fn reports_1g_pages_when_available() {
    let _serial = serial();
    if !Path::new(SYSFS_1G).exists() {
        common::skip(&format!(
            "this kernel has no 1 GiB hugepages ({SYSFS_1G} does not exist)"
        ));
        return;
    }
    if skip_unless_root() {
        return;
    }
    // No 2 MiB page is available, so that a 1 GiB request cannot be served by them by mistake.
    let _pages_2m = reserve_2m(0);
    let persistent_2m = POOL_2M.count("nr_hugepages");

    let pages_1g = POOL_1G.reserve(0);
    assert_eq!(POOL_1G.available(), 0);
    match HugeRegion::map_exact(MIB, PageSize::Huge1G) {
        Err(e @ MemError::NoHugePages { .. }) => {
            assert!(e.to_string().contains("scripts/hugepages.sh 1 1G"), "{e}");
        }
        other => panic!("expected NoHugePages without 1 GiB pages, got {other:?}"),
    }
    drop(pages_1g);

    let (_pages_1g, _) = Knob::set(format!("{SYSFS_1G}/nr_hugepages"), POOL_1G.held() + 1);
    if POOL_1G.available() < 1 {
        common::skip(
            "the kernel could not reserve a 1 GiB page (no contiguous gigabyte of free memory); \
             the 1 GiB mapping was not tested",
        );
        return;
    }
    let region = HugeRegion::map(MIB, PageSize::Huge1G).expect("a 1 GiB page is reserved");
    assert_eq!(region.page_size(), PageSize::Huge1G);
    assert_eq!(region.len(), 1 << 30);
    let addr = region.as_mut_ptr().cast_const();
    assert_eq!(addr as usize % (1 << 30), 0, "gigabyte-aligned");
    assert_eq!(
        own_mapping(addr),
        Some(Mapping {
            page_kib: 1 << 20,
            hugetlb_kib: 1 << 20
        }),
        "the region took a 1 GiB page"
    );
    touch_all(&region);
    drop(region);
    assert_eq!(own_mapping(addr), None, "unmapping gives the page back");
    // The 2 MiB pool is untouched by all this.
    assert_eq!(POOL_2M.count("nr_hugepages"), persistent_2m);
    assert_eq!(POOL_2M.available(), 0);
}

//! [`Mempool`]: a pool of mbufs, freed only once every mbuf is back (parked until then).

use std::ffi::{c_int, CString};
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use super::eal::Eal;
use super::error::CallError;
use super::ffi;
use super::mbuf::Mbuf;

/// A mempool pointer parked until its mbufs are back.
struct ParkedPool(NonNull<ffi::rte_mempool>);
// SAFETY: a mempool may be inspected and freed from any thread.
unsafe impl Send for ParkedPool {}

/// Pools dropped while mbufs from them were still out.
static PARKED_POOLS: Mutex<Vec<ParkedPool>> = Mutex::new(Vec::new());
/// Makes mempool names unique in the process.
static POOL_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Frees every parked pool whose mbufs are all back.
fn sweep_parked_pools() {
    let mut parked = PARKED_POOLS.lock().unwrap_or_else(|p| p.into_inner());
    parked.retain(|p| {
        // SAFETY: parked pools are valid (never freed while parked).
        let in_use = unsafe { ffi::rte_mempool_in_use_count(p.0.as_ptr()) };
        if in_use == 0 {
            // SAFETY: no mbuf of the pool is out, and no Mempool handle refers to it any more,
            // so nothing can use it after this; it is removed from the list here.
            unsafe { ffi::rte_mempool_free(p.0.as_ptr()) };
            false
        } else {
            true
        }
    });
}

/// A pool of packet mbufs (`rte_pktmbuf_pool_create`), in EAL memory (hugepages unless the EAL
/// runs with `--no-huge`).
pub struct Mempool {
    pub(super) ptr: NonNull<ffi::rte_mempool>,
    name: String,
    mbufs: u32,
    data_room: u16,
}

// SAFETY: DPDK mempools (ring_mp_mc, the default ops) are safe for concurrent get and put
// from any thread; the handle itself is only a pointer.
unsafe impl Send for Mempool {}
// SAFETY: as above: alloc through &Mempool is a thread-safe mempool get.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `mbufs` mbufs, each with `data_room` bytes of buffer (headroom
    /// included), a per-lcore cache of `cache` and memory on NUMA `socket` (any if `None`).
    pub fn create(
        _eal: &Eal,
        mbufs: u32,
        cache: u32,
        data_room: u16,
        socket: Option<u32>,
    ) -> Result<Mempool, CallError> {
        sweep_parked_pools();
        let name = format!(
            "ust{}_{}",
            std::process::id(),
            POOL_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let cname = CString::new(name.as_str()).expect("no NUL in a formatted name");
        let socket = socket.map_or(ffi::SOCKET_ID_ANY, |s| s as c_int);
        // SAFETY: the EAL runs; the name is NUL-terminated and copied by DPDK.
        let p = unsafe {
            ffi::rte_pktmbuf_pool_create(cname.as_ptr(), mbufs, cache, 0, data_room, socket)
        };
        let Some(ptr) = NonNull::new(p) else {
            return Err(CallError::from_rte_errno("rte_pktmbuf_pool_create"));
        };
        tracing::debug!(pool = %name, mbufs, data_room, "created mbuf pool");
        Ok(Mempool {
            ptr,
            name,
            mbufs,
            data_room,
        })
    }

    /// One mbuf, or `None` when the pool is empty.
    #[inline]
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is valid for self's lifetime; a returned mbuf is fresh and ours.
        let p = unsafe { ffi::ustack_pktmbuf_alloc(self.ptr.as_ptr()) };
        // SAFETY: a non-null mbuf from the pool is owned by nobody else.
        NonNull::new(p).map(|p| unsafe { Mbuf::from_raw(p) })
    }

    /// Mbufs in the pool now (not handed out).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is valid; a read-only count.
        unsafe { ffi::rte_mempool_avail_count(self.ptr.as_ptr()) }
    }

    /// Mbufs handed out (to drivers' rings, to the stack, in flight).
    pub fn in_use(&self) -> u32 {
        // SAFETY: the pool is valid; a read-only count.
        unsafe { ffi::rte_mempool_in_use_count(self.ptr.as_ptr()) }
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: the pool is valid until freed below.
        let in_use = unsafe { ffi::rte_mempool_in_use_count(self.ptr.as_ptr()) };
        if in_use == 0 {
            // SAFETY: no mbuf of this pool is out and this was its only handle, so nothing
            // can touch it afterwards.
            unsafe { ffi::rte_mempool_free(self.ptr.as_ptr()) };
            tracing::debug!(pool = %self.name, "freed mbuf pool");
        } else {
            tracing::debug!(pool = %self.name, in_use, "mbuf pool parked until its mbufs are back");
            PARKED_POOLS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(ParkedPool(self.ptr));
        }
        sweep_parked_pools();
    }
}

impl fmt::Debug for Mempool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mempool")
            .field("name", &self.name)
            .field("mbufs", &self.mbufs)
            .field("data_room", &self.data_room)
            .finish()
    }
}

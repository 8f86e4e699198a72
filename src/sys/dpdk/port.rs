//! [`Port`]: a configured and started ethdev port with its mbuf pool, its queues
//! ([`PortQueue`], one owner each) and their RX and TX bursts.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::eal::{vdev_detach, Eal};
use super::error::{strerror, CallError};
use super::mbuf::MbufBurst;
use super::mempool::Mempool;
use super::port_info::port_name;
use super::{ffi, BURST_MAX};

/// Ports configured by this process now (a port is driven by one [`Port`] at a time).
static PORTS_IN_USE: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Whether a [`Port`] of this process drives port `id` now.
pub fn port_is_open(id: u16) -> bool {
    PORTS_IN_USE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&id)
}

/// How to configure a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSetup {
    /// RX queues (and as many TX queues).
    pub queues: u16,
    /// RX descriptors per queue (adjusted to what the driver allows).
    pub rx_desc: u16,
    /// TX descriptors per queue (adjusted likewise).
    pub tx_desc: u16,
    /// MTU to configure.
    pub mtu: u16,
    /// `RTE_ETH_TX_OFFLOAD_*` bits to enable (must be offered).
    pub tx_offloads: u64,
    /// Receive everything, whatever the destination MAC.
    pub promiscuous: bool,
    /// Spread received flows over the queues by RSS (with several queues).
    pub rss: Option<RssSetup>,
}

/// RSS for a port with several queues: the hash types and the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RssSetup {
    /// `RTE_ETH_RSS_*` bits (only ones the port offers).
    pub hash: u64,
    /// The Toeplitz key, exactly as long as the port's; empty: the driver's own.
    pub key: Vec<u8>,
}

/// `RTE_ETH_RSS_*` hash types for IPv4 (rte_ethdev.h): the addresses, fragments, TCP and UDP
/// ports, other protocols.
pub const RSS_IPV4_ALL: u64 = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 7);

/// `struct rte_eth_rss_reta_entry64` (rte_ethdev.h): 64 indirection table entries and a mask
/// of those to read or write.
#[repr(C)]
#[derive(Copy, Clone)]
struct RetaEntry64 {
    mask: u64,
    reta: [u16; 64],
}

extern "C" {
    // rte_ethdev.h; not in the generated bindings.
    fn rte_eth_dev_rss_hash_conf_get(
        port_id: u16,
        conf: *mut ffi::rte_eth_rss_conf,
    ) -> std::ffi::c_int;
    fn rte_eth_dev_rss_reta_query(
        port_id: u16,
        reta: *mut RetaEntry64,
        reta_size: u16,
    ) -> std::ffi::c_int;
}

/// Why a port could not be set up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Another [`Port`] of this process drives the port.
    #[error("port {port} is already in use by this process")]
    Busy {
        /// Port id.
        port: u16,
    },
    /// A configuration call failed.
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Link state of a port.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    /// Link up.
    pub up: bool,
    /// Speed in Mbit/s (0 when unknown).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

/// Port counters (`rte_eth_stats`), port-wide.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received.
    pub ipackets: u64,
    /// Frames sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// Frames the hardware dropped (RX ring full).
    pub imissed: u64,
    /// Receive errors.
    pub ierrors: u64,
    /// Transmit errors.
    pub oerrors: u64,
    /// RX allocation failures (mempool empty).
    pub rx_nombuf: u64,
}

/// A configured and started ethdev port with its mbuf pool. Shared (in an `Arc`) by the
/// [`PortQueue`]s; the last one dropped stops and closes the port.
pub struct Port {
    id: u16,
    name: String,
    queues: u16,
    rx_desc: u16,
    tx_desc: u16,
    taken: Box<[AtomicBool]>,
    detach_vdev: Option<String>,
    // Dropped after the port is closed (the Drop body runs first): the driver's rings give
    // their mbufs back on close.
    pool: Mempool,
}

impl Port {
    /// Configures port `id` with `setup`, gives its RX queues mbufs from `pool`, starts it.
    /// `detach_vdev` names a vdev to remove when the port is closed.
    pub fn start(
        eal: &Eal,
        id: u16,
        setup: &PortSetup,
        pool: Mempool,
        detach_vdev: Option<String>,
    ) -> Result<Arc<Port>, PortError> {
        {
            let mut in_use = PORTS_IN_USE.lock().unwrap_or_else(|p| p.into_inner());
            if in_use.contains(&id) {
                return Err(PortError::Busy { port: id });
            }
            in_use.push(id);
        }
        // From here on, a failure drops `port`, which stops, closes and releases it.
        let mut port = Port {
            id,
            name: port_name(eal, id).unwrap_or_default(),
            queues: setup.queues,
            rx_desc: setup.rx_desc,
            tx_desc: setup.tx_desc,
            taken: (0..setup.queues).map(|_| AtomicBool::new(false)).collect(),
            detach_vdev,
            pool,
        };
        port.configure(setup)?;
        Ok(Arc::new(port))
    }

    /// The port's RSS key and hash types now (`rte_eth_dev_rss_hash_conf_get`); the key is
    /// `key_len` bytes (the port's, from its information).
    pub fn rss_hash_conf(&self, key_len: u8) -> Result<(Vec<u8>, u64), CallError> {
        let mut key = vec![0u8; usize::from(key_len)];
        let mut conf = ffi::rte_eth_rss_conf {
            rss_key: key.as_mut_ptr(),
            rss_key_len: key_len,
            rss_hf: 0,
        };
        // SAFETY: the port is started; conf points at a key buffer of rss_key_len bytes, which
        // the driver fills (a driver writes at most the port's key size, which is key_len).
        let rc = unsafe { rte_eth_dev_rss_hash_conf_get(self.id, &mut conf) };
        if rc != 0 {
            return Err(CallError::from_ret("rte_eth_dev_rss_hash_conf_get", rc));
        }
        Ok((key, conf.rss_hf))
    }

    /// The port's RSS indirection table of `size` entries (`rte_eth_dev_rss_reta_query`).
    pub fn rss_reta(&self, size: u16) -> Result<Vec<u16>, CallError> {
        let groups = usize::from(size).div_ceil(64);
        let mut entries = vec![
            RetaEntry64 {
                mask: u64::MAX,
                reta: [0; 64]
            };
            groups
        ];
        // SAFETY: entries holds ceil(size / 64) groups, as the call reads for `size` entries.
        let rc = unsafe { rte_eth_dev_rss_reta_query(self.id, entries.as_mut_ptr(), size) };
        if rc != 0 {
            return Err(CallError::from_ret("rte_eth_dev_rss_reta_query", rc));
        }
        Ok(entries
            .iter()
            .flat_map(|e| e.reta)
            .take(usize::from(size))
            .collect())
    }

    fn configure(&mut self, setup: &PortSetup) -> Result<(), CallError> {
        let id = self.id;
        // SAFETY: rte_eth_conf is plain C data (integers, pointers, unions of those); all-zero
        // is the documented "defaults" value.
        let mut conf: ffi::rte_eth_conf = unsafe { std::mem::zeroed() };
        conf.rxmode.mtu = u32::from(setup.mtu);
        conf.txmode.offloads = setup.tx_offloads;
        let mut key = setup
            .rss
            .as_ref()
            .map(|r| r.key.clone())
            .unwrap_or_default();
        if let Some(rss) = setup.rss.as_ref().filter(|_| setup.queues > 1) {
            conf.rxmode.mq_mode = ffi::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf = ffi::rte_eth_rss_conf {
                rss_key: if key.is_empty() {
                    std::ptr::null_mut()
                } else {
                    key.as_mut_ptr()
                },
                rss_key_len: key.len() as u8,
                rss_hf: rss.hash,
            };
        }
        // SAFETY: the EAL runs; conf is valid for the call and copied by DPDK.
        let rc = unsafe { ffi::rte_eth_dev_configure(id, setup.queues, setup.queues, &conf) };
        if rc != 0 {
            return Err(CallError::from_ret("rte_eth_dev_configure", rc));
        }
        let (mut rx_desc, mut tx_desc) = (setup.rx_desc, setup.tx_desc);
        // SAFETY: the port is configured; both out-pointers are valid locals.
        let rc = unsafe { ffi::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut rx_desc, &mut tx_desc) };
        if rc != 0 {
            return Err(CallError::from_ret("rte_eth_dev_adjust_nb_rx_tx_desc", rc));
        }
        self.rx_desc = rx_desc;
        self.tx_desc = tx_desc;
        // SAFETY: a plain query on a valid port.
        let socket = unsafe { ffi::rte_eth_dev_socket_id(id) };
        let socket = u32::try_from(socket).unwrap_or(ffi::SOCKET_ID_ANY as u32);
        for q in 0..setup.queues {
            // SAFETY: the port is configured with `queues` RX queues and q is below that; a
            // null rxconf means the driver's defaults; the pool outlives the port (it is a
            // field dropped after the port is closed).
            let rc = unsafe {
                ffi::rte_eth_rx_queue_setup(
                    id,
                    q,
                    rx_desc,
                    socket,
                    std::ptr::null(),
                    self.pool.ptr.as_ptr(),
                )
            };
            if rc != 0 {
                return Err(CallError::from_ret("rte_eth_rx_queue_setup", rc));
            }
            // SAFETY: as above, for TX (no pool); a null txconf means the driver's defaults
            // with the port's offloads.
            let rc =
                unsafe { ffi::rte_eth_tx_queue_setup(id, q, tx_desc, socket, std::ptr::null()) };
            if rc != 0 {
                return Err(CallError::from_ret("rte_eth_tx_queue_setup", rc));
            }
        }
        // SAFETY: the port is configured with all its queues set up.
        let rc = unsafe { ffi::rte_eth_dev_start(id) };
        if rc != 0 {
            return Err(CallError::from_ret("rte_eth_dev_start", rc));
        }
        if setup.promiscuous {
            // SAFETY: a started, valid port.
            let rc = unsafe { ffi::rte_eth_promiscuous_enable(id) };
            if rc != 0 {
                tracing::debug!(
                    port = id,
                    "promiscuous mode not available: {}",
                    strerror(-rc)
                );
            }
        }
        Ok(())
    }

    /// Queue pairs (RX and TX queues each).
    pub fn queue_count(&self) -> u16 {
        self.queues
    }

    /// RX and TX ring sizes after the driver's adjustment.
    pub fn ring_sizes(&self) -> (u16, u16) {
        (self.rx_desc, self.tx_desc)
    }

    /// The port's mbuf pool (RX and TX).
    pub fn pool(&self) -> &Mempool {
        &self.pool
    }

    /// Queue pair `q`, if it exists and no other [`PortQueue`] holds it.
    pub fn queue(self: &Arc<Port>, q: u16) -> Option<PortQueue> {
        let slot = self.taken.get(q as usize)?;
        if slot.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(PortQueue {
            port: Arc::clone(self),
            queue: q,
        })
    }

    /// Link state, without waiting.
    pub fn link(&self) -> LinkStatus {
        // SAFETY: rte_eth_link is plain C data; all-zero is valid (link down).
        let mut link: ffi::rte_eth_link = unsafe { std::mem::zeroed() };
        // SAFETY: a started, valid port; link is a valid out-structure (size checked).
        let rc = unsafe { ffi::rte_eth_link_get_nowait(self.id, &mut link) };
        if rc != 0 {
            return LinkStatus {
                up: false,
                speed_mbps: 0,
                full_duplex: false,
            };
        }
        LinkStatus {
            up: link.link_status() == ffi::RTE_ETH_LINK_UP as u16,
            speed_mbps: link.link_speed,
            full_duplex: link.link_duplex() == ffi::RTE_ETH_LINK_FULL_DUPLEX as u16,
        }
    }

    /// Port counters.
    pub fn stats(&self) -> Result<PortStats, CallError> {
        // SAFETY: rte_eth_stats is plain integers; all-zero is valid.
        let mut s: ffi::rte_eth_stats = unsafe { std::mem::zeroed() };
        // SAFETY: a valid port; s is a valid out-structure (size checked).
        let rc = unsafe { ffi::rte_eth_stats_get(self.id, &mut s) };
        if rc != 0 {
            return Err(CallError::from_ret("rte_eth_stats_get", rc));
        }
        Ok(PortStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: the port is valid and ours (PORTS_IN_USE); no PortQueue is left (each holds
        // an Arc to this Port), so no burst runs concurrently. Stopping a port that never
        // started is harmless (it returns an error, logged at debug level).
        let rc = unsafe { ffi::rte_eth_dev_stop(self.id) };
        if rc != 0 {
            tracing::debug!(port = self.id, "rte_eth_dev_stop: {}", strerror(-rc));
        }
        // SAFETY: as above; after close the driver has given back the mbufs of its rings.
        let rc = unsafe { ffi::rte_eth_dev_close(self.id) };
        if rc != 0 {
            tracing::warn!(port = self.id, "rte_eth_dev_close: {}", strerror(-rc));
        }
        if let (Some(name), Some(eal)) = (&self.detach_vdev, Eal::get()) {
            if let Err(e) = vdev_detach(eal, name) {
                tracing::debug!(vdev = %name, "removing the vdev: {e}");
            }
        }
        PORTS_IN_USE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&p| p != self.id);
        tracing::debug!(port = self.id, name = %self.name, "closed DPDK port");
    }
}

impl fmt::Debug for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Port")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("queues", &self.queues)
            .field("rx_desc", &self.rx_desc)
            .field("tx_desc", &self.tx_desc)
            .field("pool", &self.pool)
            .finish()
    }
}

/// One RX/TX queue pair of a started [`Port`], held by one user.
pub struct PortQueue {
    port: Arc<Port>,
    queue: u16,
}

impl PortQueue {
    /// The port.
    pub fn port(&self) -> &Arc<Port> {
        &self.port
    }

    /// Queue index.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Receives up to `max` frames (and at most the burst's free room) into `burst`.
    #[inline]
    pub fn rx_burst(&mut self, burst: &mut MbufBurst, max: usize) -> usize {
        burst.compact();
        let n = max.min(BURST_MAX - burst.end);
        if n == 0 {
            return 0;
        }
        // SAFETY: the port is started with this queue (it exists below `queues`), this is its
        // only user (&mut self, one PortQueue per queue), and ptrs[end..end + n] has room for
        // the n pointers the driver may write; each returned mbuf is owned by the caller.
        let got = unsafe {
            ffi::ustack_rx_burst(
                self.port.id,
                self.queue,
                burst.ptrs.as_mut_ptr().add(burst.end),
                n as u16,
            )
        } as usize;
        burst.end += got.min(n);
        got
    }

    /// Offers the mbufs of `burst` to the driver, oldest first; those taken leave the burst
    /// (the driver frees them once sent). Returns how many were taken.
    #[inline]
    pub fn tx_burst(&mut self, burst: &mut MbufBurst) -> usize {
        let n = burst.len();
        if n == 0 {
            return 0;
        }
        // SAFETY: as in rx_burst; ptrs[start..end] are owned, valid mbufs; the driver takes
        // ownership of the first `sent` and leaves the rest untouched.
        let sent = unsafe {
            ffi::ustack_tx_burst(
                self.port.id,
                self.queue,
                burst.ptrs.as_mut_ptr().add(burst.start),
                n as u16,
            )
        } as usize;
        let sent = sent.min(n);
        burst.start += sent;
        if burst.start == burst.end {
            burst.start = 0;
            burst.end = 0;
        }
        sent
    }

    /// Waits up to `timeout` for received frames. Virtual PMDs offer no receive interrupts,
    /// and DPDK is built for polling: this sleeps (at most `wait_max`) to let an idle loop
    /// give its core away.
    pub fn wait(&mut self, timeout: Duration, wait_max: Duration) {
        let t = timeout.min(wait_max);
        if !t.is_zero() {
            std::thread::sleep(t);
        }
    }
}

impl Drop for PortQueue {
    fn drop(&mut self) {
        if let Some(slot) = self.port.taken.get(self.queue as usize) {
            slot.store(false, Ordering::Release);
        }
    }
}

impl fmt::Debug for PortQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortQueue")
            .field("port", &self.port.id)
            .field("queue", &self.queue)
            .finish()
    }
}

//! [`DpdkDevice`]: a DPDK ethdev port (a NIC's poll-mode driver, or a virtual device such as
//! `net_memif`, `net_af_packet`, `net_af_xdp`, `net_tap`, `net_ring`) as a [`PacketDevice`].
//!
//! Needs the `dpdk` Cargo feature and DPDK 22.11 (`apt-get install libdpdk-dev`). Every DPDK
//! call is in the crate's private `sys::dpdk`; this module decides what to open and how.
//!
//! ```no_run
//! use ustack::dev::dpdk::{DpdkConfig, DpdkDevice};
//! # fn main() -> Result<(), ustack::dev::dpdk::DpdkError> {
//! // A memif server port; the peer process opens `role=client` on the same socket.
//! let dev = DpdkDevice::open(&DpdkConfig::from_vdev(
//!     "net_memif0,role=server,socket=/tmp/ustack-memif.sock",
//! ))?;
//! println!("{} ({}) mac {:02x?}", dev.info().name, dev.info().driver, dev.mac());
//! # Ok(()) }
//! ```
//!
//! **Frames are mbufs.** Received mbufs go to the stack as they are, and [`PacketDevice::tx_alloc`]
//! is `rte_pktmbuf_alloc`: smoltcp writes its frames straight into mbufs, which the driver then
//! takes and frees once sent. Nothing is copied in ustack (a virtual driver may copy: memif
//! without `zero-copy=yes` copies into its shared rings).
//!
//! **One EAL per process.** The first device opened starts DPDK's EAL with its
//! [`DpdkConfig::eal`] settings; later devices must use the same settings, except for vdevs,
//! which are hot-plugged ([`DpdkError::Eal`] with [`EalError::AlreadyInitialised`] otherwise).
//! A vdev that fails to probe does not fail the EAL: the port lookup notices and says
//! [`DpdkError::VdevProbeFailed`].
//!
//! **Checksums.** When the port offers IPv4 and TCP transmit checksum offload (and
//! [`DpdkConfig::tx_checksum_offload`] is on), the device claims it: smoltcp then leaves the
//! IPv4 and TCP checksums alone, and `tx_burst` marks each IPv4 frame for the driver, zeroes the
//! IPv4 checksum and writes the TCP pseudo-header sum DPDK offload expects into the TCP checksum
//! field. Received checksums are verified by the stack unless
//! [`DpdkConfig::rx_checksum_trusted`] says the link cannot corrupt frames (shared memory).
//!
//! **Counters.** [`PacketDevice::stats`] adds the port's own counters (`rte_eth_stats`: missed,
//! no-mbuf, errors; port-wide when the port has several queues) to what the device counts.
//!
//! **Shutdown.** Dropping the last device of a port stops and closes it and removes its vdev;
//! the mbuf pool is freed once every mbuf from it is back.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::dev::{Batch, ChecksumCaps, DeviceCaps, Frame, LinkStats, PacketDevice, ETH_HEADER_LEN};
use crate::sys::dpdk::{self as sys, mbuf_flags, tx_offload, MbufBurst, Mempool, PortQueue};
use crate::time::Instant;

pub use crate::sys::dpdk::{
    CallError, Eal, EalConfig, EalError, Hugepages, LinkStatus, Mbuf, MemoryMode, PortInfo,
    PortStats, BURST_MAX,
};

/// Smallest IPv4 MTU (RFC 791).
const MTU_MIN: usize = 68;
/// Mbuf buffer size DPDK uses by default (2048 bytes of data room plus headroom).
const DATA_ROOM_DEFAULT: usize = 2048 + sys::MBUF_HEADROOM;
/// Frames the stack may hold beside the driver's rings (its receive and transmit queues),
/// counted when checking that the mbuf pool is large enough.
const STACK_FRAMES_RESERVE: u32 = 512;

/// Which port to drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSelect {
    /// By name: a vdev's name (`net_memif0`) or a PCI address (`0000:03:00.0`).
    Name(String),
    /// By port id.
    Id(u16),
}

/// How to open a [`DpdkDevice`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpdkConfig {
    /// EAL settings (used by the first device of the process; see the module docs).
    pub eal: EalConfig,
    /// The port. `None`: the first vdev's port when [`EalConfig::vdevs`] has one, else the
    /// first port found.
    pub port: Option<PortSelect>,
    /// RX/TX queue pairs to configure ([`DpdkDevice::open_queues`] gives one device each).
    pub queues: u16,
    /// RX descriptors per queue (the driver may adjust). Default 1024.
    pub rx_ring_len: u16,
    /// TX descriptors per queue (the driver may adjust). Default 1024.
    pub tx_ring_len: u16,
    /// Mbufs in the port's pool (RX rings, frames held by the stack, TX in flight). Default
    /// 8191 (a power of two minus one suits DPDK's ring).
    pub mempool_mbufs: u32,
    /// Per-lcore mbuf cache. Default 256.
    pub mempool_cache: u32,
    /// IP MTU in bytes. Default 1500.
    pub mtu: usize,
    /// Most frames per burst call (at most [`BURST_MAX`]). Default 32.
    pub burst_max: usize,
    /// Use the port's IPv4/TCP transmit checksum offload when it offers it. Default on.
    pub tx_checksum_offload: bool,
    /// Tell the stack received checksums need no verification: only for links that cannot
    /// corrupt frames (memif between processes on one host). Default off.
    pub rx_checksum_trusted: bool,
    /// Promiscuous mode (receive frames for any MAC). Default off.
    pub promiscuous: bool,
    /// With several queues, spread received flows over them by RSS where the port offers it
    /// (IPv4 addresses and TCP/UDP ports), with ustack's key
    /// ([`MICROSOFT_KEY`](crate::dev::rss::MICROSOFT_KEY)) when the port's key is 40 bytes
    /// (else the driver's): [`DpdkDevice::rss`] reads back what the port uses, for client-side
    /// steering. A port without RSS gets every flow on queue 0 (logged). Default true.
    pub rss: bool,
    /// Longest sleep of [`PacketDevice::wait`] (DPDK ports are polled: an idle loop sleeps
    /// this long at most between polls). Default 50 us.
    pub wait_max: Duration,
}

impl Default for DpdkConfig {
    fn default() -> DpdkConfig {
        DpdkConfig {
            eal: EalConfig::default(),
            port: None,
            queues: 1,
            rx_ring_len: 1024,
            tx_ring_len: 1024,
            mempool_mbufs: 8191,
            mempool_cache: 256,
            mtu: 1500,
            burst_max: 32,
            tx_checksum_offload: true,
            rx_checksum_trusted: false,
            promiscuous: false,
            rss: true,
            wait_max: Duration::from_micros(50),
        }
    }
}

impl DpdkConfig {
    /// A device on one virtual device, e.g. `net_memif0,role=server,socket=/tmp/x.sock` or
    /// `net_af_packet0,iface=eth1`; the port is the vdev's (the name before the first comma).
    pub fn from_vdev(spec: &str) -> DpdkConfig {
        let mut c = DpdkConfig::default();
        c.eal.vdevs.push(spec.to_string());
        c
    }

    /// A device from EAL command-line arguments (`-l 1 --vdev net_memif0,role=client -m 512`,
    /// split into words). The options ustack understands (`-l`, `--lcores`, `-m`, `--vdev`,
    /// `-a`/`--allow`, `--file-prefix`, `--log-level`, `--no-huge`) fill [`EalConfig`]'s
    /// fields; `--no-pci`, `--in-memory` and `--no-telemetry` are implied; anything else is
    /// passed through as is.
    pub fn from_eal_args<I, S>(args: I) -> Result<DpdkConfig, DpdkError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut c = DpdkConfig::default();
        let mut it = args.into_iter().map(|s| s.as_ref().to_string());
        while let Some(arg) = it.next() {
            let (opt, inline) = match arg.split_once('=') {
                Some((o, v)) if o.starts_with("--") => (o.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let takes_value = matches!(
                opt.as_str(),
                "-l" | "--lcores"
                    | "-m"
                    | "--vdev"
                    | "-a"
                    | "--allow"
                    | "--file-prefix"
                    | "--log-level"
            );
            let value = if takes_value {
                match inline.or_else(|| it.next()) {
                    Some(v) => v,
                    None => {
                        return Err(DpdkError::InvalidConfig {
                            field: "eal args",
                            value: opt,
                            reason: "this EAL option needs a value",
                        })
                    }
                }
            } else {
                String::new()
            };
            match opt.as_str() {
                "-l" | "--lcores" => c.eal.cores = Some(value),
                "-m" => {
                    c.eal.memory_mb = Some(value.parse().map_err(|_| DpdkError::InvalidConfig {
                        field: "eal args -m",
                        value: value.clone(),
                        reason: "memory must be a number of MiB",
                    })?)
                }
                "--vdev" => c.eal.vdevs.push(value),
                "-a" | "--allow" => c.eal.pci_allow.push(value),
                "--file-prefix" => c.eal.file_prefix = Some(value),
                "--log-level" => c.eal.log_level = Some(value),
                "--no-huge" => c.eal.hugepages = Hugepages::Off,
                "--no-pci" | "--in-memory" | "--no-telemetry" | "--no-shconf" => {}
                _ => c.eal.extra_args.push(arg),
            }
        }
        Ok(c)
    }

    /// Checks the numbers before anything is started.
    pub fn validate(&self) -> Result<(), DpdkError> {
        let bad = |field, value: String, reason| {
            Err(DpdkError::InvalidConfig {
                field,
                value,
                reason,
            })
        };
        if self.queues == 0 {
            return bad("queues", "0".into(), "at least one queue pair");
        }
        if self.burst_max == 0 || self.burst_max > BURST_MAX {
            return bad("burst_max", self.burst_max.to_string(), "must be 1..=64");
        }
        if self.rx_ring_len == 0 || self.tx_ring_len == 0 {
            return bad(
                "rx_ring_len/tx_ring_len",
                format!("{}/{}", self.rx_ring_len, self.tx_ring_len),
                "rings need at least one descriptor",
            );
        }
        if self.mtu < MTU_MIN || data_room_for(self.mtu) > usize::from(u16::MAX) {
            return bad(
                "mtu",
                self.mtu.to_string(),
                "must be at least 68 and fit one mbuf (below 65000)",
            );
        }
        let needed = self.mbufs_needed();
        if self.mempool_mbufs < needed {
            return Err(DpdkError::MempoolExhausted {
                mbufs: self.mempool_mbufs,
                needed,
            });
        }
        Ok(())
    }

    /// Mbufs the rings and the stacks of every queue may hold at once: the least
    /// `mempool_mbufs` can be.
    pub fn mbufs_needed(&self) -> u32 {
        let rings = u32::from(self.queues)
            * (u32::from(self.rx_ring_len) + u32::from(self.tx_ring_len) + 2 * BURST_MAX as u32);
        rings + STACK_FRAMES_RESERVE * u32::from(self.queues) + self.mempool_cache
    }

    /// The port name this configuration asks for, if any.
    fn port_name(&self) -> Option<&str> {
        match &self.port {
            Some(PortSelect::Name(n)) => Some(n.as_str()),
            Some(PortSelect::Id(_)) => None,
            None => self.eal.vdevs.first().map(|s| sys::vdev_name(s)),
        }
    }
}

/// Mbuf buffer size (headroom included) for an MTU: the frame plus 4 bytes of slack (a VLAN tag
/// or FCS some drivers keep), at least DPDK's default, a multiple of 64.
fn data_room_for(mtu: usize) -> usize {
    (sys::MBUF_HEADROOM + mtu + ETH_HEADER_LEN + 4)
        .next_multiple_of(64)
        .max(DATA_ROOM_DEFAULT)
}

/// Errors from opening a [`DpdkDevice`].
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    /// The EAL could not be started: no hugepages (with [`Hugepages::Require`]), already
    /// initialised with other arguments, `rte_eal_init` failed, ...
    #[error(transparent)]
    Eal(#[from] EalError),
    /// No port of that name.
    #[error(
        "no DPDK port named {name:?} (ports present: {available:?}): check the name, the vdev \
         spec (--vdev) or the PCI allow-list (-a), and that the NIC is bound to vfio-pci"
    )]
    NoPort {
        /// The name looked for.
        name: String,
        /// The ports that exist.
        available: Vec<String>,
    },
    /// No port with that id.
    #[error("no DPDK port with id {id} (ports present: {available:?})")]
    NoPortId {
        /// The id asked for.
        id: u16,
        /// The ports that exist.
        available: Vec<String>,
    },
    /// The EAL found no port at all.
    #[error(
        "DPDK found no port (EAL arguments {eal_args:?}): give a virtual device \
         (e.g. --vdev net_memif0,role=server) or allow a NIC bound to vfio-pci (-a 0000:03:00.0)"
    )]
    NoPorts {
        /// The running EAL's arguments.
        eal_args: Vec<String>,
    },
    /// A vdev did not turn into a port. DPDK's EAL starts anyway, so this is noticed at the
    /// port lookup.
    #[error(
        "DPDK vdev {spec:?} failed to probe ({reason}): check the driver name and its arguments \
         (the EAL log above says more; the driver's package, e.g. librte-net-memif23, must be \
         installed)"
    )]
    VdevProbeFailed {
        /// The vdev spec.
        spec: String,
        /// What DPDK said.
        reason: String,
    },
    /// The port is driven by another device of this process.
    #[error("DPDK port {name:?} is already open in this process: drop the other device first")]
    PortBusy {
        /// The port.
        name: String,
    },
    /// The mbuf pool could not be created: EAL memory exhausted (or the name clashed).
    #[error(
        "creating a pool of {mbufs} mbufs of {data_room} bytes failed ({source}): the EAL's memory \
         is exhausted: give it more (-m, more free hugepages) or use fewer or smaller mbufs"
    )]
    MempoolCreate {
        /// Mbufs asked for.
        mbufs: u32,
        /// Bytes per mbuf.
        data_room: usize,
        /// The DPDK error.
        #[source]
        source: CallError,
    },
    /// The configured pool would run dry: the rings and the stack can hold more mbufs than it
    /// has.
    #[error(
        "mempool_mbufs = {mbufs} is too small: the rings and the stack may hold {needed} mbufs at \
         once, and an exhausted pool stalls receiving: raise mempool_mbufs or shrink the rings"
    )]
    MempoolExhausted {
        /// Mbufs configured.
        mbufs: u32,
        /// Mbufs needed.
        needed: u32,
    },
    /// Configuring or starting the port failed.
    #[error("setting up DPDK port {port:?} ({driver}) failed: {source}")]
    PortSetup {
        /// Port name.
        port: String,
        /// Its driver.
        driver: String,
        /// The failed call.
        #[source]
        source: CallError,
    },
    /// The port cannot do what the configuration asks.
    #[error("DPDK port {port:?} ({driver}) cannot do {what}: {detail}")]
    Unsupported {
        /// Port name.
        port: String,
        /// Its driver.
        driver: String,
        /// The feature.
        what: &'static str,
        /// Limits the port reports.
        detail: String,
    },
    /// A thread could not be made an lcore of the EAL (every lcore id may be taken).
    #[error(
        "making this thread an lcore of DPDK's EAL failed: {0}; DPDK has at most RTE_MAX_LCORE \
         lcores, EAL threads included"
    )]
    ThreadRegister(#[source] CallError),
    /// A configuration value that cannot work.
    #[error("invalid DPDK configuration: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field (or option).
        field: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        reason: &'static str,
    },
}

/// Names of the ports present, for error messages.
fn port_names(eal: &Eal) -> Vec<String> {
    sys::port_ids(eal)
        .into_iter()
        .map(|id| sys::port_name(eal, id).unwrap_or_else(|| format!("port {id}")))
        .collect()
}

/// The port a configuration resolved to.
struct Resolved {
    id: u16,
    /// The vdev behind the port, removed again when the port is closed.
    vdev: Option<String>,
    /// Whether this call hot-plugged the vdev (and must remove it if opening fails).
    attached_now: bool,
}

/// Finds the port `cfg` asks for, hot-plugging its vdev when it is not there yet.
fn resolve_port(eal: &Eal, cfg: &DpdkConfig) -> Result<Resolved, DpdkError> {
    let found = |id, vdev| Resolved {
        id,
        vdev,
        attached_now: false,
    };
    if let Some(PortSelect::Id(id)) = cfg.port {
        return if sys::port_ids(eal).contains(&id) {
            Ok(found(id, None))
        } else {
            Err(DpdkError::NoPortId {
                id,
                available: port_names(eal),
            })
        };
    }
    let Some(name) = cfg.port_name() else {
        let ids = sys::port_ids(eal);
        return match ids.first() {
            Some(&id) => Ok(found(id, None)),
            None => Err(DpdkError::NoPorts {
                eal_args: eal.args().to_vec(),
            }),
        };
    };
    let vdev = cfg
        .eal
        .vdevs
        .iter()
        .find(|spec| sys::vdev_name(spec) == name);
    let detach = vdev.map(|_| name.to_string());
    if let Some(id) = sys::port_by_name(eal, name) {
        return Ok(found(id, detach));
    }
    let Some(spec) = vdev else {
        return Err(DpdkError::NoPort {
            name: name.to_string(),
            available: port_names(eal),
        });
    };
    // Not there: it failed to probe at start-up, or its port was closed since, or the EAL
    // started without it. Probe it now; the error, if any, is the driver's.
    if let Err(e) = sys::vdev_attach(eal, spec) {
        let reason = if eal.failed_vdevs().contains(spec) {
            format!("it did not probe when the EAL started, and again now: {e}")
        } else {
            e.to_string()
        };
        return Err(DpdkError::VdevProbeFailed {
            spec: spec.clone(),
            reason,
        });
    }
    match sys::port_by_name(eal, name) {
        Some(id) => Ok(Resolved {
            id,
            vdev: detach,
            attached_now: true,
        }),
        None => {
            if let Err(e) = sys::vdev_detach(eal, name) {
                tracing::debug!(vdev = %name, "removing a vdev without port: {e}");
            }
            Err(DpdkError::VdevProbeFailed {
                spec: spec.clone(),
                reason: format!("it probed but made no ethdev port named {name:?}"),
            })
        }
    }
}

/// Starts the EAL if needed and finds the port `cfg` names (hot-plugging its vdev), without
/// configuring it: for backend auto-selection ("is there a DPDK port?").
pub fn probe(cfg: &DpdkConfig) -> Result<PortInfo, DpdkError> {
    let eal = Eal::init(&cfg.eal)?;
    let id = resolve_port(eal, cfg)?.id;
    sys::port_info(eal, id).map_err(|source| DpdkError::PortSetup {
        port: sys::port_name(eal, id).unwrap_or_default(),
        driver: String::new(),
        source,
    })
}

/// One RX/TX queue pair of a DPDK port as a [`PacketDevice`] whose frames are [`Mbuf`]s.
pub struct DpdkDevice {
    queue: PortQueue,
    info: Arc<PortInfo>,
    caps: DeviceCaps,
    tx_offload: bool,
    rx: MbufBurst,
    tx: MbufBurst,
    stats: LinkStats,
    tx_alloc_failures: u64,
    wait_max: Duration,
}

impl DpdkDevice {
    /// Opens the port `cfg` names with one queue pair (starting the EAL first if needed).
    pub fn open(cfg: &DpdkConfig) -> Result<DpdkDevice, DpdkError> {
        if cfg.queues != 1 {
            return Err(DpdkError::InvalidConfig {
                field: "queues",
                value: cfg.queues.to_string(),
                reason: "DpdkDevice::open drives one queue pair: use open_queues for more",
            });
        }
        let mut all = DpdkDevice::open_queues(cfg)?;
        Ok(all.remove(0))
    }

    /// Opens the port with `cfg.queues` queue pairs and returns one device per pair (for one
    /// stack per core, the port spreading flows over the queues).
    pub fn open_queues(cfg: &DpdkConfig) -> Result<Vec<DpdkDevice>, DpdkError> {
        cfg.validate()?;
        let eal = Eal::init(&cfg.eal)?;
        let Resolved {
            id,
            vdev: detach,
            attached_now,
        } = resolve_port(eal, cfg)?;
        let name = sys::port_name(eal, id).unwrap_or_else(|| format!("port {id}"));
        if sys::port_is_open(id) {
            return Err(DpdkError::PortBusy { name });
        }
        // Undoes this call's hot-plug on failure (a vdev found in place stays).
        let detach_on_error = |detach: &Option<String>| {
            if let (true, Some(v)) = (attached_now, detach) {
                let _ = sys::vdev_detach(eal, v);
            }
        };
        let info = match sys::port_info(eal, id) {
            Ok(i) => i,
            Err(source) => {
                detach_on_error(&detach);
                return Err(DpdkError::PortSetup {
                    port: name,
                    driver: String::new(),
                    source,
                });
            }
        };
        if let Err(e) = check_port(&info, cfg) {
            detach_on_error(&detach);
            return Err(e);
        }
        let offered = |bits| info.tx_offload_capa & bits == bits;
        let csum_bits = tx_offload::IPV4_CKSUM | tx_offload::TCP_CKSUM;
        let use_csum = cfg.tx_checksum_offload && offered(csum_bits);
        let mut offloads = if use_csum { csum_bits } else { 0 };
        if offered(tx_offload::MBUF_FAST_FREE) {
            // Every mbuf sent comes from this port's pool with a reference count of 1.
            offloads |= tx_offload::MBUF_FAST_FREE;
        }
        let data_room = data_room_for(cfg.mtu);
        let pool = match Mempool::create(
            eal,
            cfg.mempool_mbufs,
            cfg.mempool_cache,
            data_room as u16,
            info.socket,
        ) {
            Ok(p) => p,
            Err(source) => {
                detach_on_error(&detach);
                return Err(DpdkError::MempoolCreate {
                    mbufs: cfg.mempool_mbufs,
                    data_room,
                    source,
                });
            }
        };
        let setup = sys::PortSetup {
            queues: cfg.queues,
            rx_desc: cfg.rx_ring_len,
            tx_desc: cfg.tx_ring_len,
            mtu: cfg.mtu as u16,
            tx_offloads: offloads,
            promiscuous: cfg.promiscuous,
            rss: rss_setup(&info, cfg),
        };
        // From here the Port owns the vdev: it detaches it when dropped, also on failure.
        let port = sys::Port::start(eal, id, &setup, pool, detach).map_err(|e| match e {
            sys::PortError::Busy { .. } => DpdkError::PortBusy { name: name.clone() },
            sys::PortError::Call(source) => DpdkError::PortSetup {
                port: name.clone(),
                driver: info.driver.clone(),
                source,
            },
        })?;
        let link = port.link();
        tracing::info!(
            port = %name,
            driver = %info.driver,
            queues = cfg.queues,
            rings = ?port.ring_sizes(),
            mbufs = cfg.mempool_mbufs,
            mtu = cfg.mtu,
            tx_checksum_offload = use_csum,
            link_up = link.up,
            memory = ?eal.memory(),
            "opened DPDK port"
        );
        let caps = DeviceCaps {
            mtu: cfg.mtu,
            burst_max: cfg.burst_max,
            checksum: ChecksumCaps {
                rx_ipv4: cfg.rx_checksum_trusted,
                rx_l4: cfg.rx_checksum_trusted,
                tx_ipv4: use_csum,
                tx_l4: use_csum,
            },
        };
        let info = Arc::new(info);
        let mut devices = Vec::with_capacity(cfg.queues as usize);
        for q in 0..cfg.queues {
            let queue = port.queue(q).expect("a fresh port's queues are all free");
            devices.push(DpdkDevice {
                queue,
                info: Arc::clone(&info),
                caps,
                tx_offload: use_csum,
                rx: MbufBurst::new(),
                tx: MbufBurst::new(),
                stats: LinkStats::default(),
                tx_alloc_failures: 0,
                wait_max: cfg.wait_max,
            });
        }
        Ok(devices)
    }

    /// The port's name, driver, MAC and limits.
    pub fn info(&self) -> &PortInfo {
        &self.info
    }

    /// The port's MAC address (give it to the stack: `StackConfig::mac`).
    pub fn mac(&self) -> [u8; 6] {
        self.info.mac
    }

    /// The queue pair this device drives.
    pub fn queue_index(&self) -> u16 {
        self.queue.queue()
    }

    /// Link state.
    pub fn link(&self) -> LinkStatus {
        self.queue.port().link()
    }

    /// The port's own counters (`rte_eth_stats`; zero if the driver cannot tell).
    pub fn port_stats(&self) -> PortStats {
        self.queue.port().stats().unwrap_or_default()
    }

    /// Whether transmit checksums are offloaded to the port.
    pub fn tx_checksum_offload(&self) -> bool {
        self.tx_offload
    }

    /// Mbufs free in the port's pool, and handed out.
    pub fn pool_usage(&self) -> (u32, u32) {
        let pool = self.queue.port().pool();
        (pool.available(), pool.in_use())
    }

    /// Times [`PacketDevice::tx_alloc`] found the pool empty.
    pub fn tx_alloc_failures(&self) -> u64 {
        self.tx_alloc_failures
    }

    /// Which memory the process's EAL runs on.
    pub fn memory_mode(&self) -> Option<&'static MemoryMode> {
        Eal::get().map(Eal::memory)
    }

    /// The RSS the port spreads flows with, read back from it (key and indirection table), for
    /// choosing client source ports whose replies come to this queue
    /// ([`StackConfig::rss_steer`](crate::stack::StackConfig::rss_steer)); `None` when the port
    /// has one queue, no RSS, or does not tell.
    pub fn rss(&self) -> Option<crate::dev::rss::RssConfig> {
        let port = self.queue.port();
        let info = self.info();
        if port.queue_count() < 2
            || info.rss_offloads & sys::RSS_IPV4_ALL == 0
            || info.reta_size == 0
        {
            return None;
        }
        let (key, _) = port.rss_hash_conf(info.rss_key_len).ok()?;
        let reta = port.rss_reta(info.reta_size).ok()?;
        crate::dev::rss::RssConfig::with_reta(&key, reta).ok()
    }

    /// Makes the calling thread, which will drive this queue (a per-core shard's), an lcore of
    /// the EAL (`rte_thread_register`), so the port's mempool serves it from a per-thread cache
    /// instead of its shared ring: threads DPDK did not start have no cache, and shards that
    /// allocate and free through the ring share its cache lines on every burst. Returns the
    /// lcore id.
    pub fn register_current_thread(&self) -> Result<u32, DpdkError> {
        let eal = Eal::get().ok_or(DpdkError::ThreadRegister(CallError {
            op: "rte_thread_register",
            errno: 0,
            reason: "the EAL is not running".into(),
        }))?;
        sys::register_thread(eal).map_err(DpdkError::ThreadRegister)
    }
}

/// RSS for `cfg.queues` queues where the port offers it (see [`DpdkConfig::rss`]).
fn rss_setup(info: &PortInfo, cfg: &DpdkConfig) -> Option<sys::RssSetup> {
    if cfg.queues < 2 || !cfg.rss {
        return None;
    }
    let hash = info.rss_offloads & sys::RSS_IPV4_ALL;
    if hash == 0 {
        tracing::warn!(
            port = %info.name,
            driver = %info.driver,
            queues = cfg.queues,
            "the port offers no RSS for IPv4: it decides the queue of each flow itself (queue \
             0 for every flow, on most drivers)"
        );
        return None;
    }
    let key = if usize::from(info.rss_key_len) == crate::dev::rss::MICROSOFT_KEY.len() {
        crate::dev::rss::MICROSOFT_KEY.to_vec()
    } else {
        Vec::new()
    };
    Some(sys::RssSetup { hash, key })
}

/// Checks the configuration against what the port reports.
fn check_port(info: &PortInfo, cfg: &DpdkConfig) -> Result<(), DpdkError> {
    let unsupported = |what, detail| {
        Err(DpdkError::Unsupported {
            port: info.name.clone(),
            driver: info.driver.clone(),
            what,
            detail,
        })
    };
    if cfg.queues > info.rx_queues_max || cfg.queues > info.tx_queues_max {
        return unsupported(
            "that many queues",
            format!(
                "{} asked, at most {} RX / {} TX",
                cfg.queues, info.rx_queues_max, info.tx_queues_max
            ),
        );
    }
    // ethdev checks the frame (MTU + Ethernet header + FCS) against max_rx_pktlen too.
    let frame_max = match usize::try_from(info.frame_len_max) {
        Ok(0) | Err(_) => usize::MAX, // not reported
        Ok(n) => n,
    };
    let mtu_max = usize::from(info.mtu_max).min(frame_max.saturating_sub(ETH_HEADER_LEN + 4));
    if cfg.mtu > mtu_max || cfg.mtu < usize::from(info.mtu_min) {
        return unsupported(
            "that MTU",
            format!(
                "{} asked, {}..={} possible (frames up to {} bytes)",
                cfg.mtu, info.mtu_min, mtu_max, info.frame_len_max
            ),
        );
    }
    Ok(())
}

impl fmt::Debug for DpdkDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpdkDevice")
            .field("port", &self.info.name)
            .field("driver", &self.info.driver)
            .field("queue", &self.queue.queue())
            .field("caps", &self.caps)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Frame for Mbuf {
    #[inline]
    fn data(&self) -> &[u8] {
        Mbuf::data(self)
    }
    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        Mbuf::data_mut(self)
    }
    #[inline]
    fn capacity(&self) -> usize {
        Mbuf::capacity(self)
    }
    #[inline]
    fn set_len(&mut self, len: usize) -> bool {
        Mbuf::set_len(self, len)
    }
}

/// What the driver must do for a frame whose checksums it offloads.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct TxOffload {
    flags: u64,
    l2_len: u8,
    l3_len: u16,
}

/// Prepares an outgoing frame for IPv4/TCP checksum offload: zeroes the IPv4 header checksum,
/// writes the TCP pseudo-header sum (not complemented, as `rte_ipv4_phdr_cksum` gives it) into
/// the TCP checksum field, and says which flags to set. `None` for frames that are not IPv4
/// (ARP): nothing to offload. Unfragmented TCP only; other IPv4 protocols get the IPv4 header
/// checksum offloaded (smoltcp computed theirs).
fn prepare_tx_offload(frame: &mut [u8]) -> Option<TxOffload> {
    const IPV4: [u8; 2] = [0x08, 0x00];
    const TCP: u8 = 6;
    if frame.len() < ETH_HEADER_LEN + 20 || frame[12..14] != IPV4 || frame[14] >> 4 != 4 {
        return None;
    }
    let ip = ETH_HEADER_LEN;
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    if ihl < 20 || frame.len() < ip + ihl {
        return None;
    }
    frame[ip + 10] = 0;
    frame[ip + 11] = 0;
    let mut flags = mbuf_flags::TX_IPV4 | mbuf_flags::TX_IP_CKSUM;
    let total_len = usize::from(u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]));
    let fragment = u16::from_be_bytes([frame[ip + 6], frame[ip + 7]]) & 0x3fff != 0;
    let tcp = ip + ihl;
    if frame[ip + 9] == TCP && !fragment && total_len >= ihl + 20 && frame.len() >= tcp + 20 {
        let sum = pseudo_header_sum(&frame[ip..ip + 20], (total_len - ihl) as u16);
        frame[tcp + 16..tcp + 18].copy_from_slice(&sum.to_be_bytes());
        flags |= mbuf_flags::TX_TCP_CKSUM;
    }
    Some(TxOffload {
        flags,
        l2_len: ETH_HEADER_LEN as u8,
        l3_len: ihl as u16,
    })
}

/// The ones'-complement sum (folded, not complemented) of the IPv4 pseudo-header: source,
/// destination, protocol and L4 length. `ip` is the IPv4 header (20 bytes at least).
fn pseudo_header_sum(ip: &[u8], l4_len: u16) -> u16 {
    let word = |i: usize| u32::from(u16::from_be_bytes([ip[i], ip[i + 1]]));
    let mut sum = word(12) + word(14) + word(16) + word(18) + u32::from(ip[9]) + u32::from(l4_len);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

impl PacketDevice for DpdkDevice {
    type Frame = Mbuf;

    fn mac_addr(&self) -> Option<[u8; 6]> {
        Some(self.mac())
    }

    fn caps(&self) -> DeviceCaps {
        self.caps
    }

    fn rx_burst(&mut self, _now: Instant, batch: &mut Batch<Mbuf>) -> usize {
        let want = batch.free().min(self.caps.burst_max);
        if want == 0 {
            return 0;
        }
        self.queue.rx_burst(&mut self.rx, want);
        let frame_len_max = self.caps.frame_len_max();
        let mut got = 0;
        while let Some(m) = self.rx.pop() {
            let len = m.len();
            if m.segments() != 1 || len < ETH_HEADER_LEN || len > frame_len_max {
                self.stats.rx_errors += 1;
                tracing::debug!(
                    port = %self.info.name,
                    len,
                    segments = m.segments(),
                    "dropped received frame"
                );
                continue;
            }
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += len as u64;
            // Cannot fail: at most batch.free() frames were asked for.
            if batch.push(m).is_err() {
                self.stats.rx_dropped += 1;
                continue;
            }
            got += 1;
        }
        got
    }

    #[inline]
    fn tx_alloc(&mut self) -> Option<Mbuf> {
        let m = self.queue.port().pool().alloc();
        if m.is_none() {
            self.tx_alloc_failures += 1;
        }
        m
    }

    fn tx_burst(&mut self, _now: Instant, batch: &mut Batch<Mbuf>) -> usize {
        let frame_len_max = self.caps.frame_len_max();
        let mut taken = 0;
        while taken < self.caps.burst_max && !batch.is_empty() {
            let mut offered_bytes = 0u64;
            while taken + self.tx.len() < self.caps.burst_max && self.tx.free() > 0 {
                let Some(mut m) = batch.pop() else { break };
                let len = m.len();
                if !(ETH_HEADER_LEN..=frame_len_max).contains(&len) {
                    self.stats.tx_errors += 1;
                    tracing::debug!(port = %self.info.name, len, "dropped outgoing frame of bad length");
                    taken += 1;
                    continue;
                }
                if self.tx_offload {
                    if let Some(o) = prepare_tx_offload(m.data_mut()) {
                        m.set_tx_offload(o.flags, o.l2_len, o.l3_len);
                    }
                }
                offered_bytes += len as u64;
                if let Err(m) = self.tx.push(m) {
                    // Not reached: free() was checked.
                    let _ = batch.push_front(m);
                    break;
                }
            }
            let offered = self.tx.len();
            if offered == 0 {
                break;
            }
            let sent = self.queue.tx_burst(&mut self.tx);
            // Frames the driver did not take go back to the front of the batch, in order.
            let mut unsent_bytes = 0u64;
            while let Some(m) = self.tx.pop_back() {
                unsent_bytes += m.len() as u64;
                if let Err(m) = batch.push_front(m) {
                    // Not reached: they came out of the batch just now.
                    drop(m);
                    self.stats.tx_dropped += 1;
                }
            }
            self.stats.tx_packets += sent as u64;
            self.stats.tx_bytes += offered_bytes - unsent_bytes;
            taken += sent;
            if sent < offered {
                // The TX ring is full for now.
                break;
            }
        }
        taken
    }

    fn stats(&self) -> LinkStats {
        let mut s = self.stats;
        let p = self.port_stats();
        s.rx_dropped += p.imissed + p.rx_nombuf;
        s.rx_errors += p.ierrors;
        s.tx_errors += p.oerrors;
        s
    }

    fn link_up(&self) -> bool {
        self.link().up
    }

    fn wait(&mut self, timeout: Duration) {
        self.queue.wait(timeout, self.wait_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP frame with the given addresses and payload length.
    fn tcp_frame(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20 + payload];
        f[12] = 0x08;
        f[14] = 0x45;
        let total = (20 + 20 + payload) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[14 + 8] = 64;
        f[14 + 9] = 6;
        f[14 + 10] = 0xab; // stale checksum, must be zeroed
        f[14 + 12..14 + 16].copy_from_slice(&src);
        f[14 + 16..14 + 20].copy_from_slice(&dst);
        f[34 + 12] = 0x50;
        for (i, b) in f[54..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    /// Internet checksum of `data` starting from `sum` (folded, complemented).
    fn finish(mut sum: u32, data: &[u8]) -> u16 {
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += u32::from(w);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn offload_prepares_ipv4_tcp() {
        let mut f = tcp_frame([10, 0, 0, 1], [10, 0, 0, 2], 101);
        let o = prepare_tx_offload(&mut f).expect("IPv4");
        assert_eq!(
            o.flags,
            mbuf_flags::TX_IPV4 | mbuf_flags::TX_IP_CKSUM | mbuf_flags::TX_TCP_CKSUM
        );
        assert_eq!((o.l2_len, o.l3_len), (14, 20));
        assert_eq!(&f[24..26], &[0, 0], "IPv4 checksum zeroed");
        // What a NIC does: sum the TCP segment starting from the field's pseudo-header sum.
        // The result must equal a checksum computed in software from scratch.
        let seeded = finish(0, &f[34..]);
        let mut g = f.clone();
        g[34 + 16] = 0;
        g[34 + 17] = 0;
        let mut sum = 0u32;
        for w in [&g[26..28], &g[28..30], &g[30..32], &g[32..34]] {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        sum += 6 + (f.len() - 34) as u32;
        let scratch = finish(sum, &g[34..]);
        assert_eq!(seeded, scratch);
        // Idempotent: a frame offered again gets the same bytes.
        let before = f.clone();
        assert_eq!(prepare_tx_offload(&mut f), Some(o));
        assert_eq!(f, before);
    }

    #[test]
    fn offload_matches_dpdk_pseudo_header() {
        for (src, dst, payload) in [
            ([10, 0, 0, 1], [10, 0, 0, 2], 0),
            ([192, 168, 255, 254], [172, 31, 200, 9], 1460),
            ([255, 255, 255, 255], [255, 255, 255, 255], 8000),
        ] {
            let mut f = tcp_frame(src, dst, payload);
            prepare_tx_offload(&mut f).unwrap();
            let dpdk = sys::ipv4_phdr_cksum_reference(&f[14..]).unwrap();
            // DPDK's value is stored into the header as it is (memory order).
            assert_eq!(f[50..52], dpdk.to_ne_bytes(), "{src:?} {dst:?} {payload}");
        }
    }

    #[test]
    fn offload_leaves_other_frames() {
        let mut arp = vec![0u8; 60];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(prepare_tx_offload(&mut arp), None);
        let mut udp = tcp_frame([1, 2, 3, 4], [5, 6, 7, 8], 10);
        udp[23] = 17;
        let o = prepare_tx_offload(&mut udp).unwrap();
        assert_eq!(o.flags, mbuf_flags::TX_IPV4 | mbuf_flags::TX_IP_CKSUM);
        let mut short = tcp_frame([1, 2, 3, 4], [5, 6, 7, 8], 0);
        short.truncate(30);
        assert_eq!(prepare_tx_offload(&mut short), None);
    }

    #[test]
    fn eal_args_parse() {
        let c = DpdkConfig::from_eal_args([
            "-l",
            "1",
            "--vdev=net_memif0,role=client,socket=/tmp/a.sock",
            "-m",
            "512",
            "--no-huge",
            "--no-pci",
            "-a",
            "0000:03:00.0",
            "--huge-unlink",
        ])
        .unwrap();
        assert_eq!(c.eal.cores.as_deref(), Some("1"));
        assert_eq!(c.eal.vdevs, ["net_memif0,role=client,socket=/tmp/a.sock"]);
        assert_eq!(c.eal.memory_mb, Some(512));
        assert_eq!(c.eal.hugepages, Hugepages::Off);
        assert_eq!(c.eal.pci_allow, ["0000:03:00.0"]);
        assert_eq!(c.eal.extra_args, ["--huge-unlink"]);
        assert_eq!(c.port_name(), Some("net_memif0"));
        assert!(matches!(
            DpdkConfig::from_eal_args(["--vdev"]),
            Err(DpdkError::InvalidConfig { .. })
        ));
        assert!(DpdkConfig::from_eal_args(["-m", "lots"]).is_err());
    }

    #[test]
    fn config_is_checked() {
        let ok = DpdkConfig::from_vdev("net_ring0");
        ok.validate().unwrap();
        let small = DpdkConfig {
            mempool_mbufs: 1000,
            ..ok.clone()
        };
        let e = small.validate().unwrap_err();
        assert!(
            matches!(e, DpdkError::MempoolExhausted { mbufs: 1000, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("mempool_mbufs"), "{e}");
        for bad in [
            DpdkConfig {
                burst_max: 65,
                ..ok.clone()
            },
            DpdkConfig {
                queues: 0,
                ..ok.clone()
            },
            DpdkConfig {
                mtu: 67,
                ..ok.clone()
            },
            DpdkConfig {
                mtu: 65_500,
                ..ok.clone()
            },
        ] {
            assert!(matches!(
                bad.validate(),
                Err(DpdkError::InvalidConfig { .. })
            ));
        }
    }

    #[test]
    fn data_room_holds_a_frame() {
        assert_eq!(data_room_for(1500), DATA_ROOM_DEFAULT);
        for mtu in [68, 1500, 2100, 9000] {
            assert!(data_room_for(mtu) - sys::MBUF_HEADROOM >= mtu + ETH_HEADER_LEN);
        }
    }
}

//! Backend selection: one device type over every backend ([`AnyDevice`]), and
//! [`AnyDevice::auto`], which picks the best backend that works here and says why.
//!
//! Order for a network interface: a DPDK port (when the `dpdk` feature is compiled in and EAL
//! finds one for it), then AF_XDP on the interface. When neither works, the error lists every
//! backend tried and why it was not usable (no such interface, a missing capability, locked
//! memory, ...), so the fix is in the message.

use std::fmt;
use std::time::Duration;

use crate::mem::PoolBuf;
use crate::time::Instant;

use super::af_xdp::{XdpConfig, XdpDevice, XdpError};
#[cfg(feature = "dpdk")]
use super::dpdk::{DpdkConfig, DpdkDevice};
use super::memif::{MemifConfig, MemifDevice, MemifFrame};
use super::sim::SimPort;
use super::tap::TapDevice;
use super::{Batch, DeviceCaps, Frame, LinkStats, PacketDevice};

/// The backends ustack can run on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// DPDK poll-mode driver.
    Dpdk,
    /// AF_XDP socket on a Linux interface.
    AfXdp,
    /// Shared memory (memif) with a peer process.
    Memif,
    /// Linux TAP interface (not kernel bypass: debugging and compatibility).
    Tap,
    /// The in-process simulated link.
    Sim,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Dpdk => "dpdk",
            BackendKind::AfXdp => "af-xdp",
            BackendKind::Memif => "memif",
            BackendKind::Tap => "tap",
            BackendKind::Sim => "sim",
        })
    }
}

/// One backend that was tried and why it was not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The backend.
    pub kind: BackendKind,
    /// Why it was not usable, with what to do about it.
    pub why: String,
}

/// Why no backend could be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Automatic selection found nothing usable.
    #[error("no kernel-bypass backend is usable for {target}:{}", list(.tried))]
    NoneUsable {
        /// What was asked for (an interface name).
        target: String,
        /// Every backend tried, in order.
        tried: Vec<Attempt>,
    },
    /// The backend asked for could not be opened.
    #[error("{kind} backend: {why}")]
    Open {
        /// The backend.
        kind: BackendKind,
        /// Why, with what to do about it.
        why: String,
    },
}

fn list(tried: &[Attempt]) -> String {
    tried
        .iter()
        .map(|a| format!("\n  - {}: {}", a.kind, a.why))
        .collect()
}

/// What [`AnyDevice::auto`] works from.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// AF_XDP settings; `xdp.ifname` names the interface, and `xdp.filter_ipv4` should be the
    /// stack's address so other traffic stays with the kernel.
    pub xdp: XdpConfig,
    /// The DPDK device to try first (a vdev spec or EAL arguments). Without one, DPDK is tried
    /// on the interface's PCI device only when its kernel driver lets DPDK share the NIC
    /// (mlx5); other NICs must be bound to vfio-pci and named with EAL arguments.
    #[cfg(feature = "dpdk")]
    pub dpdk: Option<DpdkConfig>,
    /// Skip DPDK even when it is compiled in.
    pub no_dpdk: bool,
}

impl BackendConfig {
    /// Defaults for interface `ifname`.
    pub fn from_iface(ifname: &str) -> BackendConfig {
        BackendConfig {
            xdp: XdpConfig::new(ifname),
            #[cfg(feature = "dpdk")]
            dpdk: None,
            no_dpdk: false,
        }
    }
}

/// Kernel drivers whose NICs DPDK can drive while the kernel keeps them (bifurcated).
#[cfg(feature = "dpdk")]
const SHARED_DRIVERS: &[&str] = &["mlx5_core", "mlx4_core"];

/// The DPDK device to try for `cfg`, or why there is none.
#[cfg(feature = "dpdk")]
fn dpdk_candidate(cfg: &BackendConfig) -> Result<DpdkConfig, String> {
    if let Some(d) = &cfg.dpdk {
        return Ok(d.clone());
    }
    let ifname = &cfg.xdp.ifname;
    let dev = std::path::Path::new("/sys/class/net")
        .join(ifname)
        .join("device");
    let pci = std::fs::canonicalize(&dev)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.contains(':'))
        .ok_or_else(|| format!("{ifname} is not a PCI NIC, and no DPDK device was given (--dpdk-vdev SPEC or --dpdk-eal ARGS)"))?;
    let driver = std::fs::read_link(dev.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    if !SHARED_DRIVERS.contains(&driver.as_str()) {
        return Err(format!(
            "{ifname} ({pci}) is driven by the kernel's {driver}: DPDK needs it bound to vfio-pci \
             (then pass --dpdk-eal \"-a {pci}\"), or a NIC DPDK can share with the kernel (mlx5)"
        ));
    }
    DpdkConfig::from_eal_args(["-a", pci.as_str()]).map_err(|e| e.to_string())
}

/// A frame of any backend.
pub enum AnyFrame {
    /// A pool buffer (sim, TAP, AF_XDP UMEM frame).
    Pool(PoolBuf),
    /// A memif frame: a pool buffer, or (server side) a buffer the client posted, built in
    /// place.
    Memif(MemifFrame),
    /// A DPDK mbuf.
    #[cfg(feature = "dpdk")]
    Mbuf(crate::sys::dpdk::Mbuf),
}

/// Runs `$body` with `$f` bound to the frame inside.
macro_rules! with_frame {
    ($self:expr, $f:ident => $body:expr) => {
        match $self {
            AnyFrame::Pool($f) => $body,
            AnyFrame::Memif($f) => $body,
            #[cfg(feature = "dpdk")]
            AnyFrame::Mbuf($f) => $body,
        }
    };
}

impl Frame for AnyFrame {
    #[inline]
    fn data(&self) -> &[u8] {
        with_frame!(self, f => Frame::data(f))
    }
    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        with_frame!(self, f => Frame::data_mut(f))
    }
    #[inline]
    fn capacity(&self) -> usize {
        with_frame!(self, f => Frame::capacity(f))
    }
    #[inline]
    fn set_len(&mut self, len: usize) -> bool {
        with_frame!(self, f => Frame::set_len(f, len))
    }
}

// Boxed variants: the devices are large and the enum is moved around by value.
enum Inner {
    AfXdp(Box<XdpDevice>),
    Memif(Box<MemifDevice<MemifFrame>>),
    Tap(TapDevice),
    Sim(SimPort),
    #[cfg(feature = "dpdk")]
    Dpdk(Box<DpdkDevice>),
}

/// A device of any backend, with the reason it was chosen.
pub struct AnyDevice {
    inner: Inner,
    kind: BackendKind,
    reason: String,
    /// Frames between the caller's batches and the backend's own (moved, never copied).
    rx_carry: Batch<PoolBuf>,
    tx_carry: Batch<PoolBuf>,
    rx_memif: Batch<MemifFrame>,
    tx_memif: Batch<MemifFrame>,
    #[cfg(feature = "dpdk")]
    rx_mbufs: Batch<crate::sys::dpdk::Mbuf>,
    #[cfg(feature = "dpdk")]
    tx_mbufs: Batch<crate::sys::dpdk::Mbuf>,
}

impl AnyDevice {
    fn new(inner: Inner, kind: BackendKind, reason: String, burst: usize) -> AnyDevice {
        let burst = burst.max(1);
        AnyDevice {
            inner,
            kind,
            reason,
            rx_carry: Batch::with_capacity(burst),
            tx_carry: Batch::with_capacity(burst),
            rx_memif: Batch::with_capacity(burst),
            tx_memif: Batch::with_capacity(burst),
            #[cfg(feature = "dpdk")]
            rx_mbufs: Batch::with_capacity(burst),
            #[cfg(feature = "dpdk")]
            tx_mbufs: Batch::with_capacity(burst),
        }
    }

    /// The best backend for the configured interface: DPDK if compiled in and it has a port for
    /// it, else AF_XDP; otherwise an error naming every backend tried and why it failed.
    pub fn auto(cfg: &BackendConfig) -> Result<AnyDevice, BackendError> {
        let target = cfg.xdp.ifname.clone();
        let mut tried = Vec::new();
        if cfg.no_dpdk {
            tried.push(Attempt {
                kind: BackendKind::Dpdk,
                why: "skipped (asked not to use DPDK)".into(),
            });
        } else {
            #[cfg(feature = "dpdk")]
            match dpdk_candidate(cfg) {
                Ok(dcfg) => match super::dpdk::probe(&dcfg).and_then(|_| DpdkDevice::open(&dcfg)) {
                    Ok(dev) => {
                        let reason =
                            format!("DPDK port {} ({})", dev.info().name, dev.info().driver);
                        return Ok(AnyDevice::dpdk(dev, reason));
                    }
                    Err(e) => tried.push(Attempt {
                        kind: BackendKind::Dpdk,
                        why: e.to_string(),
                    }),
                },
                Err(why) => tried.push(Attempt {
                    kind: BackendKind::Dpdk,
                    why,
                }),
            }
            #[cfg(not(feature = "dpdk"))]
            tried.push(Attempt {
                kind: BackendKind::Dpdk,
                why: "not compiled in (build with `--features dpdk`)".into(),
            });
        }
        match XdpDevice::open(&cfg.xdp) {
            Ok(dev) => {
                let m = dev.mode();
                let reason = format!(
                    "AF_XDP on {target} ({:?} XDP, {:?} bind{}); {}",
                    m.attach,
                    m.bind,
                    if m.filtered {
                        ", kernel keeps other traffic"
                    } else {
                        ""
                    },
                    tried
                        .iter()
                        .map(|a| format!("{} not used: {}", a.kind, a.why))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                Ok(AnyDevice::af_xdp(dev, reason))
            }
            Err(e) => {
                tried.push(Attempt {
                    kind: BackendKind::AfXdp,
                    why: e.to_string(),
                });
                Err(BackendError::NoneUsable { target, tried })
            }
        }
    }

    /// AF_XDP on the configured interface, nothing else.
    pub fn open_af_xdp(cfg: &XdpConfig) -> Result<AnyDevice, BackendError> {
        XdpDevice::open(cfg)
            .map(|d| AnyDevice::af_xdp(d, format!("AF_XDP on {} (asked for)", cfg.ifname)))
            .map_err(|e: XdpError| BackendError::Open {
                kind: BackendKind::AfXdp,
                why: e.to_string(),
            })
    }

    /// AF_XDP on queues `0..queues` of the configured interface, one device per queue for
    /// per-core shards ([`XdpDevice::open_queues`]).
    pub fn open_af_xdp_queues(
        cfg: &XdpConfig,
        queues: u32,
    ) -> Result<Vec<AnyDevice>, BackendError> {
        let devs = XdpDevice::open_queues(cfg, queues).map_err(|e| BackendError::Open {
            kind: BackendKind::AfXdp,
            why: e.to_string(),
        })?;
        Ok(devs
            .into_iter()
            .enumerate()
            .map(|(q, d)| {
                let reason = format!("AF_XDP on {} queue {q} of {queues}", cfg.ifname);
                AnyDevice::af_xdp(d, reason)
            })
            .collect())
    }

    fn af_xdp(dev: XdpDevice, reason: String) -> AnyDevice {
        let burst = dev.caps().burst_max;
        AnyDevice::new(
            Inner::AfXdp(Box::new(dev)),
            BackendKind::AfXdp,
            reason,
            burst,
        )
    }

    /// A memif interface (server or client role), shared memory with a peer process.
    pub fn open_memif(cfg: &MemifConfig) -> Result<AnyDevice, BackendError> {
        // A server builds its frames in the buffers its client posted (no copy on send).
        let dev = MemifDevice::open_in_place(cfg).map_err(|e| BackendError::Open {
            kind: BackendKind::Memif,
            why: e.to_string(),
        })?;
        let burst = dev.caps().burst_max;
        let reason = format!("memif {:?} on {}", cfg.role, cfg.socket_path.display());
        Ok(AnyDevice::new(
            Inner::Memif(Box::new(dev)),
            BackendKind::Memif,
            reason,
            burst,
        ))
    }

    /// Prepares the calling thread to drive this device, for a device opened on one thread
    /// and driven by another (a per-core shard's): a DPDK queue's thread becomes an lcore of
    /// the EAL, so the port's mempool serves it from a per-thread cache
    /// ([`DpdkDevice::register_current_thread`]). Nothing to do for the other backends.
    pub fn adopt_current_thread(&self) -> Result<(), BackendError> {
        match &self.inner {
            #[cfg(feature = "dpdk")]
            Inner::Dpdk(d) => {
                d.register_current_thread()
                    .map(drop)
                    .map_err(|e| BackendError::Open {
                        kind: BackendKind::Dpdk,
                        why: e.to_string(),
                    })
            }
            _ => Ok(()),
        }
    }

    /// A memif server whose queue pairs are served by `devices` devices, one per per-core
    /// shard ([`MemifDevice::open_in_place_shared`]): the first runs the control channel and
    /// serves queue pair 0, device `i` serves pair `i`. `cfg.queues` must be at least `devices`.
    pub fn open_memif_shared(
        cfg: &MemifConfig,
        devices: usize,
    ) -> Result<Vec<AnyDevice>, BackendError> {
        let devs =
            MemifDevice::open_in_place_shared(cfg, devices).map_err(|e| BackendError::Open {
                kind: BackendKind::Memif,
                why: e.to_string(),
            })?;
        Ok(devs
            .into_iter()
            .enumerate()
            .map(|(i, dev)| {
                let burst = dev.caps().burst_max;
                let reason = format!(
                    "memif {:?} on {}, queue pair {i} of {devices}",
                    cfg.role,
                    cfg.socket_path.display()
                );
                AnyDevice::new(
                    Inner::Memif(Box::new(dev)),
                    BackendKind::Memif,
                    reason,
                    burst,
                )
            })
            .collect())
    }

    /// A DPDK port.
    #[cfg(feature = "dpdk")]
    pub fn open_dpdk(cfg: &DpdkConfig) -> Result<AnyDevice, BackendError> {
        let dev = DpdkDevice::open(cfg).map_err(|e| BackendError::Open {
            kind: BackendKind::Dpdk,
            why: e.to_string(),
        })?;
        let reason = format!(
            "DPDK port {} ({}) (asked for)",
            dev.info().name,
            dev.info().driver
        );
        Ok(AnyDevice::dpdk(dev, reason))
    }

    /// The DPDK port `cfg` names with `cfg.queues` queue pairs, one device per pair for
    /// per-core shards ([`DpdkDevice::open_queues`]); the port spreads flows over its queues.
    #[cfg(feature = "dpdk")]
    pub fn open_dpdk_queues(cfg: &DpdkConfig) -> Result<Vec<AnyDevice>, BackendError> {
        let devs = DpdkDevice::open_queues(cfg).map_err(|e| BackendError::Open {
            kind: BackendKind::Dpdk,
            why: e.to_string(),
        })?;
        Ok(devs
            .into_iter()
            .map(|d| {
                let reason = format!(
                    "DPDK port {} ({}) queue {} of {}",
                    d.info().name,
                    d.info().driver,
                    d.queue_index(),
                    cfg.queues
                );
                AnyDevice::dpdk(d, reason)
            })
            .collect())
    }

    #[cfg(feature = "dpdk")]
    fn dpdk(dev: DpdkDevice, reason: String) -> AnyDevice {
        let burst = dev.caps().burst_max;
        AnyDevice::new(Inner::Dpdk(Box::new(dev)), BackendKind::Dpdk, reason, burst)
    }

    /// Wraps an open TAP device.
    pub fn from_tap(dev: TapDevice, reason: impl Into<String>) -> AnyDevice {
        let burst = dev.caps().burst_max;
        AnyDevice::new(Inner::Tap(dev), BackendKind::Tap, reason.into(), burst)
    }

    /// Wraps a port of the simulated link.
    pub fn from_sim(dev: SimPort, reason: impl Into<String>) -> AnyDevice {
        let burst = dev.caps().burst_max;
        AnyDevice::new(Inner::Sim(dev), BackendKind::Sim, reason.into(), burst)
    }

    /// The backend in use.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// Why this backend was chosen (and why better ones were not).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The MAC address the stack must use on this device, when the device has one of its own
    /// (a NIC or veth behind AF_XDP/DPDK drops frames for other addresses, and peers remember
    /// it across restarts).
    pub fn mac(&self) -> Option<[u8; 6]> {
        match &self.inner {
            Inner::AfXdp(d) => Some(d.mac()),
            #[cfg(feature = "dpdk")]
            Inner::Dpdk(d) => Some(d.mac()),
            Inner::Memif(_) | Inner::Tap(_) | Inner::Sim(_) => None,
        }
    }

    /// The memif device, if that is the backend.
    pub fn as_memif(&self) -> Option<&MemifDevice<MemifFrame>> {
        match &self.inner {
            Inner::Memif(d) => Some(d),
            _ => None,
        }
    }

    /// The AF_XDP device, if that is the backend.
    pub fn as_af_xdp(&self) -> Option<&XdpDevice> {
        match &self.inner {
            Inner::AfXdp(d) => Some(d),
            _ => None,
        }
    }

    /// The DPDK device, if that is the backend.
    #[cfg(feature = "dpdk")]
    pub fn as_dpdk(&self) -> Option<&crate::dev::dpdk::DpdkDevice> {
        match &self.inner {
            Inner::Dpdk(d) => Some(d.as_ref()),
            _ => None,
        }
    }
}

/// Runs `$body` with `$d` bound to the inner device, whatever its type.
macro_rules! with_dev {
    ($inner:expr, $d:ident => $body:expr) => {
        match $inner {
            Inner::AfXdp($d) => $body,
            Inner::Memif($d) => $body,
            Inner::Tap($d) => $body,
            Inner::Sim($d) => $body,
            #[cfg(feature = "dpdk")]
            Inner::Dpdk($d) => $body,
        }
    };
}

/// Runs `$pool` with `$d` bound to a pool-based inner device, `$memif` for memif, or `$mbuf`
/// for DPDK.
macro_rules! by_frame {
    ($inner:expr, $d:ident => $pool:expr, $mf:ident => $memif:expr, $m:ident => $mbuf:expr) => {
        match $inner {
            Inner::AfXdp($d) => $pool,
            Inner::Memif($mf) => $memif,
            Inner::Tap($d) => $pool,
            Inner::Sim($d) => $pool,
            #[cfg(feature = "dpdk")]
            Inner::Dpdk($m) => $mbuf,
        }
    };
}

/// Moves frames from `carry` into `batch` as `wrap(frame)`; returns how many.
fn drain_into<F, G>(carry: &mut Batch<F>, batch: &mut Batch<G>, wrap: impl Fn(F) -> G) -> usize {
    let mut n = 0;
    while !batch.is_full() {
        let Some(f) = carry.pop() else { break };
        // Cannot fail: the batch has room.
        let _ = batch.push(wrap(f));
        n += 1;
    }
    n
}

impl PacketDevice for AnyDevice {
    type Frame = AnyFrame;

    fn mac_addr(&self) -> Option<[u8; 6]> {
        self.mac()
    }

    fn caps(&self) -> DeviceCaps {
        with_dev!(&self.inner, d => d.caps())
    }

    fn rx_burst(&mut self, now: Instant, batch: &mut Batch<AnyFrame>) -> usize {
        by_frame!(&mut self.inner,
            d => {
                if self.rx_carry.is_empty() {
                    d.rx_burst(now, &mut self.rx_carry);
                }
                drain_into(&mut self.rx_carry, batch, AnyFrame::Pool)
            },
            mf => {
                if self.rx_memif.is_empty() {
                    mf.rx_burst(now, &mut self.rx_memif);
                }
                drain_into(&mut self.rx_memif, batch, AnyFrame::Memif)
            },
            m => {
                if self.rx_mbufs.is_empty() {
                    m.rx_burst(now, &mut self.rx_mbufs);
                }
                drain_into(&mut self.rx_mbufs, batch, AnyFrame::Mbuf)
            }
        )
    }

    fn tx_alloc(&mut self) -> Option<AnyFrame> {
        by_frame!(&mut self.inner,
            d => d.tx_alloc().map(AnyFrame::Pool),
            mf => mf.tx_alloc().map(AnyFrame::Memif),
            m => m.tx_alloc().map(AnyFrame::Mbuf))
    }

    fn tx_burst(&mut self, now: Instant, batch: &mut Batch<AnyFrame>) -> usize {
        // Frames move into the backend's own batch; those it does not take stay there (bounded)
        // and go first next time. A frame of another backend cannot occur: tx frames come
        // from this device's tx_alloc.
        let mut taken = 0;
        by_frame!(&mut self.inner,
            d => {
                while !self.tx_carry.is_full() {
                    match batch.pop() {
                        Some(AnyFrame::Pool(f)) => {
                            let _ = self.tx_carry.push(f);
                            taken += 1;
                        }
                        Some(_) => taken += 1,
                        None => break,
                    }
                }
                d.tx_burst(now, &mut self.tx_carry);
            },
            mf => {
                while !self.tx_memif.is_full() {
                    match batch.pop() {
                        Some(AnyFrame::Memif(f)) => {
                            let _ = self.tx_memif.push(f);
                            taken += 1;
                        }
                        Some(_) => taken += 1,
                        None => break,
                    }
                }
                mf.tx_burst(now, &mut self.tx_memif);
            },
            m => {
                while !self.tx_mbufs.is_full() {
                    match batch.pop() {
                        Some(AnyFrame::Mbuf(f)) => {
                            let _ = self.tx_mbufs.push(f);
                            taken += 1;
                        }
                        Some(_) => taken += 1,
                        None => break,
                    }
                }
                m.tx_burst(now, &mut self.tx_mbufs);
            }
        );
        taken
    }

    fn stats(&self) -> LinkStats {
        with_dev!(&self.inner, d => d.stats())
    }

    fn link_up(&self) -> bool {
        with_dev!(&self.inner, d => d.link_up())
    }

    fn link_problem(&self) -> Option<String> {
        with_dev!(&self.inner, d => d.link_problem())
    }

    fn wait(&mut self, timeout: Duration) {
        with_dev!(&mut self.inner, d => d.wait(timeout))
    }
}

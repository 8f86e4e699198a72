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
    /// Skip DPDK even when it is compiled in.
    pub no_dpdk: bool,
}

impl BackendConfig {
    /// Defaults for interface `ifname`.
    pub fn from_iface(ifname: &str) -> BackendConfig {
        BackendConfig {
            xdp: XdpConfig::new(ifname),
            no_dpdk: false,
        }
    }
}

/// A frame of any backend.
pub enum AnyFrame {
    /// A pool buffer (sim, TAP, AF_XDP UMEM frame).
    Pool(PoolBuf),
}

impl Frame for AnyFrame {
    #[inline]
    fn data(&self) -> &[u8] {
        match self {
            AnyFrame::Pool(b) => b.as_slice(),
        }
    }
    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        match self {
            AnyFrame::Pool(b) => b.as_mut_slice(),
        }
    }
    #[inline]
    fn capacity(&self) -> usize {
        match self {
            AnyFrame::Pool(b) => b.capacity(),
        }
    }
    #[inline]
    fn set_len(&mut self, len: usize) -> bool {
        match self {
            AnyFrame::Pool(b) => b.set_len(len),
        }
    }
}

enum Inner {
    // Boxed: the AF_XDP device is large and the enum is moved around by value.
    AfXdp(Box<XdpDevice>),
    Tap(TapDevice),
    Sim(SimPort),
}

/// A device of any backend, with the reason it was chosen.
pub struct AnyDevice {
    inner: Inner,
    kind: BackendKind,
    reason: String,
    /// Frames between the caller's batches and a pool-based backend's (moved, never copied).
    rx_carry: Batch<PoolBuf>,
    tx_carry: Batch<PoolBuf>,
}

impl AnyDevice {
    fn new(inner: Inner, kind: BackendKind, reason: String, burst: usize) -> AnyDevice {
        AnyDevice {
            inner,
            kind,
            reason,
            rx_carry: Batch::with_capacity(burst.max(1)),
            tx_carry: Batch::with_capacity(burst.max(1)),
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

    fn af_xdp(dev: XdpDevice, reason: String) -> AnyDevice {
        let burst = dev.caps().burst_max;
        AnyDevice::new(
            Inner::AfXdp(Box::new(dev)),
            BackendKind::AfXdp,
            reason,
            burst,
        )
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
            Inner::Tap(_) | Inner::Sim(_) => None,
        }
    }

    /// The AF_XDP device, if that is the backend.
    pub fn as_af_xdp(&self) -> Option<&XdpDevice> {
        match &self.inner {
            Inner::AfXdp(d) => Some(d),
            _ => None,
        }
    }
}

/// Runs `$body` with `$d` bound to the pool-based inner device.
macro_rules! with_pool_dev {
    ($self:expr, $d:ident => $body:expr) => {
        match &mut $self.inner {
            Inner::AfXdp($d) => $body,
            Inner::Tap($d) => $body,
            Inner::Sim($d) => $body,
        }
    };
}

impl PacketDevice for AnyDevice {
    type Frame = AnyFrame;

    fn caps(&self) -> DeviceCaps {
        match &self.inner {
            Inner::AfXdp(d) => d.caps(),
            Inner::Tap(d) => d.caps(),
            Inner::Sim(d) => d.caps(),
        }
    }

    fn rx_burst(&mut self, now: Instant, batch: &mut Batch<AnyFrame>) -> usize {
        if self.rx_carry.is_empty() {
            let carry = &mut self.rx_carry;
            with_pool_dev!(self, d => d.rx_burst(now, carry));
        }
        let mut n = 0;
        while !batch.is_full() {
            let Some(f) = self.rx_carry.pop() else { break };
            // Cannot fail: the batch has room.
            let _ = batch.push(AnyFrame::Pool(f));
            n += 1;
        }
        n
    }

    fn tx_alloc(&mut self) -> Option<AnyFrame> {
        with_pool_dev!(self, d => d.tx_alloc()).map(AnyFrame::Pool)
    }

    fn tx_burst(&mut self, now: Instant, batch: &mut Batch<AnyFrame>) -> usize {
        let mut taken = 0;
        while !self.tx_carry.is_full() {
            let Some(AnyFrame::Pool(f)) = batch.pop() else {
                break;
            };
            let _ = self.tx_carry.push(f);
            taken += 1;
        }
        let carry = &mut self.tx_carry;
        with_pool_dev!(self, d => d.tx_burst(now, carry));
        // Frames the device did not take stay in tx_carry (bounded) and go first next time.
        taken
    }

    fn stats(&self) -> LinkStats {
        match &self.inner {
            Inner::AfXdp(d) => d.stats(),
            Inner::Tap(d) => d.stats(),
            Inner::Sim(d) => d.stats(),
        }
    }

    fn link_up(&self) -> bool {
        match &self.inner {
            Inner::AfXdp(d) => d.link_up(),
            Inner::Tap(d) => d.link_up(),
            Inner::Sim(d) => d.link_up(),
        }
    }

    fn wait(&mut self, timeout: Duration) {
        with_pool_dev!(self, d => d.wait(timeout))
    }
}

//! What the serving loop hands operators: a [`Snapshot`] of every counter, and the
//! [`Observed`] trait through which a [`Hub`](super::Hub) asks a server for it.

use std::time::Duration;

use crate::chunk::{ChunkServer, ChunkStore, ServerSnapshot};
use crate::dev::af_xdp::{XdpModeInfo, XdpStats};
use crate::dev::auto::{AnyDevice, BackendKind};
use crate::dev::memif::{MemifState, MemifStats};
use crate::dev::{LinkStats, PacketDevice};
use crate::mem::PoolStats;
use crate::net::KernelServer;
use crate::stack::{
    CaptureSpec, CaptureStatus, ConnInfo, ConnStateCounts, Stack, StackStats, TcpStats,
};
use crate::time::Instant;

/// Every counter of a server at one moment, taken on its serving loop.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Taken this long after the hub was made.
    pub uptime: Duration,
    /// The hub's count of snapshots, this one included.
    pub sequence: u64,
    /// The transport: a backend name (`memif`, `af-xdp`, `dpdk`, `tap`, `sim`) or `kernel`.
    pub backend: &'static str,
    /// The chunk server.
    pub server: ServerSnapshot,
    /// The stack (`None` on kernel TCP).
    pub stack: Option<StackView>,
    /// The device (`None` on kernel TCP).
    pub device: Option<DeviceView>,
    /// The process: hugepages and memory.
    pub process: ProcessView,
}

impl Snapshot {
    /// Adds `other` to this: the snapshots of per-core shards (taken one after the other, a
    /// few microseconds apart) as one server's. Counters and sizes are summed; the smoothed
    /// RTT's minimum and maximum are taken over both, its mean weighted by the connections;
    /// the link is up only if it is up on every shard. `uptime`, `sequence`, `backend` and
    /// `process` are this one's.
    pub fn add(&mut self, other: &Snapshot) {
        self.server.add(&other.server);
        match (&mut self.stack, &other.stack) {
            (Some(a), Some(b)) => a.add(b),
            (a @ None, Some(b)) => *a = Some(b.clone()),
            _ => {}
        }
        match (&mut self.device, &other.device) {
            (Some(a), Some(b)) => a.add(b),
            (a @ None, Some(b)) => *a = Some(b.clone()),
            _ => {}
        }
    }

    /// This snapshot with the process's figures read now (`/proc/self`): called by the
    /// operator threads that show it, so the serving loop never reads `/proc`.
    pub fn with_process(&self) -> Snapshot {
        Snapshot {
            process: ProcessView::read(),
            ..self.clone()
        }
    }
}

/// The stack's part of a [`Snapshot`].
#[derive(Clone, Debug, Default)]
pub struct StackView {
    /// Frames and drops, connection events.
    pub stats: StackStats,
    /// TCP events summed over connections.
    pub tcp: TcpStats,
    /// Sockets by TCP state.
    pub states: ConnStateCounts,
    /// Sockets the stack has.
    pub sockets_max: usize,
    /// Sockets in use.
    pub sockets_in_use: usize,
    /// Smoothed RTT over the connections that have one: (min, mean, max).
    pub srtt: Option<(Duration, Duration, Duration)>,
    /// Bytes of socket buffers the stack reserved.
    pub socket_buffer_bytes: usize,
}

impl StackView {
    /// Adds `other` to this (see [`Snapshot::add`]).
    pub fn add(&mut self, other: &StackView) {
        let open = |v: &StackView| v.states.open() as u32;
        let (n, m) = (open(self), open(other));
        self.srtt = match (self.srtt, other.srtt) {
            (Some((a0, a1, a2)), Some((b0, b1, b2))) => {
                let mean = if n + m == 0 {
                    (a1 + b1) / 2
                } else {
                    (a1 * n + b1 * m) / (n + m)
                };
                Some((a0.min(b0), mean, a2.max(b2)))
            }
            (a, b) => a.or(b),
        };
        self.stats.add(&other.stats);
        self.tcp.add(&other.tcp);
        self.states.add_counts(&other.states);
        self.sockets_max += other.sockets_max;
        self.sockets_in_use += other.sockets_in_use;
        self.socket_buffer_bytes += other.socket_buffer_bytes;
    }
}

impl DeviceView {
    /// Adds `other` to this (see [`Snapshot::add`]): the same kind of device on each shard.
    pub fn add(&mut self, other: &DeviceView) {
        self.link.add(&other.link);
        self.link_up &= other.link_up;
        match (&mut self.pool, &other.pool) {
            (Some(a), Some(b)) => a.add(b),
            (a @ None, Some(b)) => *a = Some(*b),
            _ => {}
        }
        self.pool_bytes += other.pool_bytes;
        match (&mut self.detail, &other.detail) {
            // memif's state is the connection's: the first shard's (the owner's) is kept.
            (DeviceDetail::Memif { stats: a, .. }, DeviceDetail::Memif { stats: b, .. }) => {
                a.add(b)
            }
            (DeviceDetail::AfXdp { stats: a, .. }, DeviceDetail::AfXdp { stats: b, .. }) => {
                a.add(b)
            }
            // A DPDK port's counters and its one mempool are the same from every queue's
            // device: kept once; the allocation failures are each device's own.
            (
                DeviceDetail::Dpdk {
                    tx_alloc_failures: a,
                    ..
                },
                DeviceDetail::Dpdk {
                    tx_alloc_failures: b,
                    ..
                },
            ) => *a += b,
            _ => {}
        }
    }
}

/// The device's part of a [`Snapshot`].
#[derive(Clone, Debug)]
pub struct DeviceView {
    /// The backend's name (`memif`, `af-xdp`, `dpdk`, `tap`, `sim`; `other` for a device of
    /// the embedder's).
    pub kind: &'static str,
    /// Frames and bytes moved, dropped and broken.
    pub link: LinkStats,
    /// Whether the link is up.
    pub link_up: bool,
    /// Backend-specific counters.
    pub detail: DeviceDetail,
    /// The device's frame pool (memif, AF_XDP), if it has one of ours.
    pub pool: Option<PoolStats>,
    /// Bytes of the device's frame memory (UMEM, memif regions, DPDK mbufs) we know of.
    pub pool_bytes: usize,
}

/// Backend-specific counters.
#[derive(Clone, Debug)]
pub enum DeviceDetail {
    /// TAP, the simulated link: nothing beyond [`LinkStats`].
    None,
    /// memif: handshakes, peer faults, in-place frames.
    Memif {
        /// The counters.
        stats: MemifStats,
        /// Where the connection stands.
        state: MemifState,
    },
    /// AF_XDP: rings, kicks, multi-buffer, the mode it runs in.
    AfXdp {
        /// The counters.
        stats: XdpStats,
        /// Attach and bind mode, busy polling.
        mode: XdpModeInfo,
    },
    /// DPDK: the port's own counters and its mempool.
    Dpdk {
        /// Packets the port missed (`imissed`: its RX queue was full).
        missed: u64,
        /// Receive errors the port counted.
        rx_errors: u64,
        /// Receives that found no mbuf.
        rx_nombuf: u64,
        /// Mbufs free in the pool.
        pool_free: u64,
        /// Mbufs handed out.
        pool_in_use: u64,
        /// Transmit allocations that found the pool empty.
        tx_alloc_failures: u64,
    },
}

/// The process's part of a [`Snapshot`]: read from `/proc/self` when the snapshot is encoded
/// (not on the serving loop).
#[derive(Clone, Debug, Default)]
pub struct ProcessView {
    /// Hugepage memory mapped (`Private_Hugetlb` + `Shared_Hugetlb` of `smaps_rollup`).
    pub hugetlb_bytes: Option<u64>,
    /// Resident set size.
    pub resident_bytes: Option<u64>,
}

impl ProcessView {
    /// Reads the process's figures from `/proc/self` (figures it cannot read are `None`).
    pub fn read() -> ProcessView {
        let mut v = ProcessView::default();
        if let Ok(s) = std::fs::read_to_string("/proc/self/smaps_rollup") {
            let kb = |key: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|rest| {
                        rest.trim()
                            .trim_end_matches("kB")
                            .trim()
                            .parse::<u64>()
                            .ok()
                    })
            };
            v.resident_bytes = kb("Rss:").map(|k| k * 1024);
            v.hugetlb_bytes = match (kb("Private_Hugetlb:"), kb("Shared_Hugetlb:")) {
                (None, None) => None,
                (a, b) => Some((a.unwrap_or(0) + b.unwrap_or(0)) * 1024),
            };
        }
        v
    }
}

/// A serving loop's state as a [`Hub`](super::Hub) asks for it. Implemented for a ustack
/// server ([`StackServerView`]) and a kernel-TCP one ([`KernelServerView`]); an embedder with
/// its own loop can implement it too.
pub trait Observed {
    /// Every counter now (`uptime` and `sequence` are filled in by the hub).
    fn snapshot(&mut self, now: Instant) -> Snapshot;
    /// The connections, as `ss -ti` lists them; `Err` says why the transport cannot.
    fn connections(&mut self, now: Instant) -> Result<Vec<ConnInfo>, String>;
    /// Starts a packet capture; `Err` says why not.
    fn capture_start(&mut self, spec: CaptureSpec) -> Result<(), String>;
    /// Stops the capture and returns its final status (`None`: none was running).
    fn capture_stop(&mut self) -> Result<Option<CaptureStatus>, String>;
    /// The capture's status (`None`: none was started since the last stop).
    fn capture_status(&mut self) -> Result<Option<CaptureStatus>, String>;
}

/// A [`ChunkServer`] on a [`Stack`], as a [`Hub`](super::Hub) sees it: build one on the loop
/// for each [`Hub::serve`](super::Hub::serve) call (it only borrows). On an [`AnyDevice`] the
/// backend's own counters are included; on another device, its [`LinkStats`].
pub struct StackServerView<'a, D: PacketDevice + 'static, S: ChunkStore + 'static> {
    /// The stack.
    pub stack: &'a mut Stack<D>,
    /// The server.
    pub server: &'a ChunkServer<S>,
}

fn device_view<D: PacketDevice + 'static>(dev: &D) -> DeviceView {
    let any: &dyn std::any::Any = dev;
    let (kind, detail, pool, pool_bytes) = match any.downcast_ref::<AnyDevice>() {
        Some(a) => {
            let (detail, pool, bytes) = any_device_detail(a);
            (backend_name(a.kind()), detail, pool, bytes)
        }
        None if any.is::<crate::dev::sim::SimPort>() => ("sim", DeviceDetail::None, None, 0),
        None => ("other", DeviceDetail::None, None, 0),
    };
    DeviceView {
        kind,
        link: dev.stats(),
        link_up: dev.link_up(),
        detail,
        pool,
        pool_bytes,
    }
}

fn any_device_detail(dev: &AnyDevice) -> (DeviceDetail, Option<PoolStats>, usize) {
    let mut pool = None;
    let mut pool_bytes = 0;
    let detail = if let Some(m) = dev.as_memif() {
        let p = m.pool();
        pool = Some(p.stats());
        pool_bytes = p.capacity() * p.stride();
        DeviceDetail::Memif {
            stats: m.memif_stats(),
            state: m.state(),
        }
    } else if let Some(x) = dev.as_af_xdp() {
        let p = x.pool();
        pool = Some(p.stats());
        pool_bytes = p.capacity() * p.stride();
        DeviceDetail::AfXdp {
            stats: x.xdp_stats(),
            mode: x.mode(),
        }
    } else {
        dpdk_detail(dev).unwrap_or(DeviceDetail::None)
    };
    (detail, pool, pool_bytes)
}

#[cfg(feature = "dpdk")]
fn dpdk_detail(dev: &AnyDevice) -> Option<DeviceDetail> {
    let d = dev.as_dpdk()?;
    let port = d.port_stats();
    let (free, in_use) = d.pool_usage();
    Some(DeviceDetail::Dpdk {
        missed: port.imissed,
        rx_errors: port.ierrors,
        rx_nombuf: port.rx_nombuf,
        pool_free: u64::from(free),
        pool_in_use: u64::from(in_use),
        tx_alloc_failures: d.tx_alloc_failures(),
    })
}

#[cfg(not(feature = "dpdk"))]
fn dpdk_detail(_dev: &AnyDevice) -> Option<DeviceDetail> {
    None
}

/// The stack's view; `scratch` receives the connection list (for the RTT figures).
fn stack_view<D: PacketDevice>(
    stack: &mut Stack<D>,
    now: Instant,
    scratch: &mut Vec<ConnInfo>,
) -> StackView {
    stack.connections(now, scratch);
    let mut srtt: Option<(Duration, Duration, Duration)> = None;
    let (mut sum, mut n) = (Duration::ZERO, 0u32);
    for r in scratch.iter().filter_map(|c| c.srtt) {
        sum += r;
        n += 1;
        srtt = Some(match srtt {
            None => (r, r, r),
            Some((lo, _, hi)) => (lo.min(r), r, hi.max(r)),
        });
    }
    let srtt = srtt.map(|(lo, _, hi)| (lo, sum / n.max(1), hi));
    let cfg = stack.config();
    let sockets_max = cfg.sockets_max;
    let socket_buffer_bytes = cfg.socket_memory_len();
    StackView {
        stats: stack.stats(),
        tcp: stack.tcp_stats(),
        states: stack.connection_states(),
        sockets_max,
        sockets_in_use: sockets_max - stack.sockets_free(),
        srtt,
        socket_buffer_bytes,
    }
}

impl<D: PacketDevice + 'static, S: ChunkStore + 'static> Observed for StackServerView<'_, D, S> {
    fn snapshot(&mut self, now: Instant) -> Snapshot {
        let mut scratch = Vec::new();
        let stack = stack_view(self.stack, now, &mut scratch);
        let device = device_view(self.stack.device());
        Snapshot {
            backend: device.kind,
            server: self.server.snapshot(),
            stack: Some(stack),
            device: Some(device),
            ..Snapshot::default()
        }
    }

    fn connections(&mut self, now: Instant) -> Result<Vec<ConnInfo>, String> {
        let mut list = Vec::new();
        self.stack.connections(now, &mut list);
        Ok(list)
    }

    fn capture_start(&mut self, spec: CaptureSpec) -> Result<(), String> {
        self.stack.start_capture(spec).map_err(|e| e.to_string())
    }

    fn capture_stop(&mut self) -> Result<Option<CaptureStatus>, String> {
        Ok(self.stack.stop_capture())
    }

    fn capture_status(&mut self) -> Result<Option<CaptureStatus>, String> {
        Ok(self.stack.capture_status())
    }
}

/// The label value of a backend.
pub(crate) fn backend_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Dpdk => "dpdk",
        BackendKind::AfXdp => "af-xdp",
        BackendKind::Memif => "memif",
        BackendKind::Tap => "tap",
        BackendKind::Sim => "sim",
    }
}

/// A [`KernelServer`] as a [`Hub`](super::Hub) sees it: its counters; the kernel's own tools
/// (`ss`, `tcpdump`) see its connections and packets.
pub struct KernelServerView<'a, S: ChunkStore + 'static> {
    /// The server.
    pub server: &'a KernelServer<S>,
}

impl<S: ChunkStore + 'static> KernelServerView<'_, S> {
    fn port(&self) -> u16 {
        self.server.local_addr().port()
    }
}

impl<S: ChunkStore + 'static> Observed for KernelServerView<'_, S> {
    fn snapshot(&mut self, _now: Instant) -> Snapshot {
        Snapshot {
            backend: "kernel",
            server: self.server.snapshot(),
            ..Snapshot::default()
        }
    }

    fn connections(&mut self, _now: Instant) -> Result<Vec<ConnInfo>, String> {
        Err(format!(
            "this server runs on kernel TCP, whose connections the kernel lists: ss -tin 'sport = :{}'",
            self.port()
        ))
    }

    fn capture_start(&mut self, _spec: CaptureSpec) -> Result<(), String> {
        Err(format!(
            "this server runs on kernel TCP, whose packets the kernel captures: tcpdump -i any -w FILE 'tcp port {}'",
            self.port()
        ))
    }

    fn capture_stop(&mut self) -> Result<Option<CaptureStatus>, String> {
        Ok(None)
    }

    fn capture_status(&mut self) -> Result<Option<CaptureStatus>, String> {
        Ok(None)
    }
}

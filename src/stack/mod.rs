//! The user-space TCP/IP stack: the only module that imports smoltcp.
//!
//! A [`Stack`] owns one [`PacketDevice`], one smoltcp `Interface` (ARP, IPv4, TCP) and a fixed
//! set of TCP sockets whose buffers are carved from hugepage memory at start-up. Nothing is
//! allocated afterwards: sockets are recycled between connections.
//!
//! smoltcp walks every socket of a socket set on each poll and on each received segment, so
//! the sockets are split into *shards* of `StackConfig::shard_sockets` (4 by default), each its
//! own socket set. A flow table steers each TCP flow, by its 4-tuple, to the shard that owns it,
//! and a shard is polled only when it has frames, was used by the application, or has a timer
//! due: idle connections cost (almost) nothing. The shards share the one interface, so ARP and
//! routing are common to all.
//!
//! smoltcp has no `accept`: [`Stack::listen`] keeps `backlog` sockets listening on a port and
//! re-arms one each time a connection arrives; [`Stack::accept`] hands out the connected ones.
//! Connections are named by [`ConnId`], a slot index plus generation, so a handle that outlived
//! its connection is detected ([`ConnError::Stale`]) instead of touching a reused socket.
//!
//! The stack never reads a clock: every call that needs time takes `now`, so it runs the same
//! in real time and in the simulator's virtual time.

mod adapter;
mod capture;
mod capture_switch;
mod config;
mod conn_info;
mod cores;
mod error;
#[cfg(test)]
mod sim_pair;
mod sockets;
mod stats;

pub use capture::{
    CaptureEnd, CaptureError, CaptureSpec, CaptureStatus, CAPTURE_BYTES_CEILING,
    CAPTURE_PACKETS_CEILING, CAPTURE_RING_SLOTS, CAPTURE_STOP_WAIT,
};
pub use config::{Congestion, MacAddr, StackConfig, TcpConfig};
pub use conn_info::{ConnInfo, ConnStateCounts, TcpState};
pub use cores::CoreShards;
pub use error::StackError;
pub use smoltcp::socket::tcp::{RxSink, TxSource, TX_LENT_MAX};
pub use sockets::{ConnError, ConnId, ConnState, ListenerId};
pub use stats::{StackStats, TcpStats};

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use smoltcp::iface::{Config as IfaceConfig, Interface, PollIngressSingleResult, PollResult};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use crate::dev::{rss, Batch, Frame, LinkStats, PacketDevice};
use crate::mem::HugeRegion;
use crate::time::Instant;

use std::collections::HashMap;

use adapter::{FlowKey, Io, Route, RxDrop};
use sockets::{KnownPeers, SocketTable};

/// One socket set and its queue of received frames.
struct Shard<F> {
    table: SocketTable,
    rx: Batch<F>,
    /// Listening sockets free per listened port: SYNs this shard can take now.
    budget: Vec<(u16, u32)>,
    /// Times this shard was polled: its sockets may have changed when it moves.
    epoch: u64,
}

/// A listener across the shards.
struct ListenerMeta {
    port: u16,
}

const EPHEMERAL_FIRST: u16 = 49152;
/// Rounds of re-arming and routing held SYNs within one poll.
const SYN_ROUNDS_MAX: usize = 64;
/// How long a SYN may wait for a listening socket before it is dropped (the client retries).
const SYN_WAIT_MAX: Duration = Duration::from_secs(2);

/// Shards to poll: a flag per shard and the list of the flagged ones, so finding them costs
/// what was flagged rather than a walk over every shard. The list may hold shards whose flag was
/// cleared since (they are skipped); a shard is listed again only when its flag goes from clear
/// to set, so the list never outgrows twice the shard count between two polls.
struct DueSet {
    flags: Vec<bool>,
    list: Vec<usize>,
}

impl DueSet {
    fn new(n: usize) -> DueSet {
        DueSet {
            flags: vec![false; n],
            list: Vec::with_capacity(2 * n),
        }
    }

    fn mark(&mut self, i: usize) {
        if !self.flags[i] {
            self.flags[i] = true;
            self.list.push(i);
        }
    }

    fn unmark(&mut self, i: usize) {
        self.flags[i] = false;
    }

    fn mark_all(&mut self) {
        self.flags.fill(true);
        self.list.clear();
        self.list.extend(0..self.flags.len());
    }

    fn is(&self, i: usize) -> bool {
        self.flags[i]
    }

    fn listed_len(&self) -> usize {
        self.list.len()
    }

    /// The `k`th listed shard.
    fn listed(&self, k: usize) -> usize {
        self.list[k]
    }

    /// Drops the first `k` listed shards (those just looked at); shards marked meanwhile stay.
    fn forget_listed(&mut self, k: usize) {
        self.list.drain(..k);
    }

    /// Lists exactly the flagged shards (after a walk over all of them).
    fn relist(&mut self) {
        self.list.clear();
        let flags = &self.flags;
        self.list.extend((0..flags.len()).filter(|&i| flags[i]));
    }

    fn any(&self) -> bool {
        self.list.iter().any(|&i| self.flags[i])
    }
}

/// A TCP/IP stack over one packet device.
pub struct Stack<D: PacketDevice> {
    iface: Interface,
    io: Io<D>,
    shards: Vec<Shard<D::Frame>>,
    /// Per shard, kept apart from the shards so a poll scans two small arrays: the shard has
    /// frames queued, was touched by the application, or a neighbor was learned...
    due: DueSet,
    /// ...or its sockets' next timer (microseconds; `u64::MAX`: none).
    wake: Vec<u64>,
    /// No shard's timer is due before this (kept conservatively low).
    wake_min: u64,
    /// Shards with connections waiting to be accepted, and how many shards that is.
    ready: Vec<bool>,
    ready_shards: usize,
    /// Connection requests waiting for a listening socket to re-arm (bounded).
    syn_wait: Batch<(FlowKey, Instant, D::Frame)>,
    /// Addresses that completed a handshake lately (bounded): their half-open connections
    /// are evicted last.
    peers: KnownPeers,
    /// Which shard owns each TCP flow (bounded: swept of dead flows when full).
    flows: HashMap<FlowKey, u16, FlowHash>,
    flows_max: usize,
    listeners: Vec<Option<ListenerMeta>>,
    listener_gens: Vec<u32>,
    next_port: u16,
    next_shard: usize,
    /// The link state at the last poll, and how often it came back up.
    link_was_up: bool,
    link_ups: u64,
    /// The other per-core shards on this link, if this stack is one of a set.
    cores: Option<CoreShards>,
    cfg: StackConfig,
    now: Instant,
}

impl<D: PacketDevice> Stack<D> {
    /// Builds a stack on `dev`: reserves socket memory (hugepages preferred) for
    /// `cfg.sockets_max` connections and configures the interface.
    pub fn new(dev: D, mut cfg: StackConfig) -> Result<Stack<D>, StackError> {
        let caps = dev.caps();
        let mtu = match cfg.mtu {
            None => caps.mtu,
            Some(m) if m > caps.mtu => {
                return Err(StackError::Config {
                    field: "mtu",
                    reason: format!("{m} is larger than the device's MTU {}", caps.mtu),
                })
            }
            Some(m) => m,
        };
        if mtu < 576 {
            return Err(StackError::Config {
                field: "mtu",
                reason: format!("{mtu} is below the IPv4 minimum of 576"),
            });
        }
        let mac = cfg
            .mac
            .or_else(|| dev.mac_addr().map(MacAddr))
            .unwrap_or_else(|| MacAddr::local_from_ipv4(cfg.ipv4));
        if !mac.is_unicast() {
            return Err(StackError::Config {
                field: "mac",
                reason: format!("{mac} is not a unicast address"),
            });
        }
        cfg.mac = Some(mac);
        if cfg.prefix_len == 0 || cfg.prefix_len > 32 {
            return Err(StackError::Config {
                field: "prefix_len",
                reason: format!("{} is not in 1..=32", cfg.prefix_len),
            });
        }
        if cfg.ipv4.is_unspecified() || cfg.ipv4.is_broadcast() || cfg.ipv4.is_multicast() {
            return Err(StackError::Config {
                field: "ipv4",
                reason: format!("{} is not a unicast address", cfg.ipv4),
            });
        }
        let mss = mtu - 40;
        for (field, len) in [
            ("tcp.rx_buf_len", cfg.tcp.rx_buf_len),
            ("tcp.tx_buf_len", cfg.tcp.tx_buf_len),
        ] {
            if len < 4 * mss || len > (1 << 30) {
                return Err(StackError::Config {
                    field,
                    reason: format!(
                        "{len} bytes: must be between 4x the MSS ({}) and 1 GiB \
                         (a buffer near one segment stalls on zero-window probes)",
                        4 * mss
                    ),
                });
            }
        }
        if cfg.shard_sockets == 0 {
            return Err(StackError::Config {
                field: "shard_sockets",
                reason: "must be at least 1".into(),
            });
        }
        if cfg.rx_budget == 0 {
            return Err(StackError::Config {
                field: "rx_budget",
                reason: "must be at least 1 frame per poll".into(),
            });
        }
        if cfg.sockets_max == 0 || cfg.sockets_max > u32::MAX as usize / 2 {
            return Err(StackError::Config {
                field: "sockets_max",
                reason: format!("{} is out of range", cfg.sockets_max),
            });
        }
        if let Some(steer) = &cfg.rss_steer {
            if !steer.rss.has_queue(steer.queue) {
                return Err(StackError::Config {
                    field: "rss_steer.queue",
                    reason: format!(
                        "no entry of the {}-entry RSS indirection table names queue {} \
                         (the highest queue it names is {})",
                        steer.rss.reta().len(),
                        steer.queue,
                        steer.rss.reta().iter().max().copied().unwrap_or(0)
                    ),
                });
            }
        }

        let mut io = Io::new(dev, mtu, mac.0, cfg.ring_frames);
        let iface = build_iface(&cfg, &mut io, cfg.random_seed)?;
        let shard_count = cfg.sockets_max.div_ceil(cfg.shard_sockets);
        if shard_count > usize::from(u16::MAX) {
            return Err(StackError::Config {
                field: "shard_sockets",
                reason: format!("{} shards are too many", shard_count),
            });
        }
        let ring = cfg.ring_frames.max(io.dev.caps().burst_max).max(1);
        // One mapping for every shard's socket buffers, split in equal parts.
        let part_len = cfg.shard_sockets * (cfg.tcp.rx_buf_len + cfg.tcp.tx_buf_len);
        let parts =
            HugeRegion::map(part_len * shard_count, cfg.page_size)?.split(part_len, shard_count)?;
        let mut shards = Vec::with_capacity(shard_count);
        for (i, part) in parts.into_iter().enumerate() {
            let n = cfg
                .shard_sockets
                .min(cfg.sockets_max - i * cfg.shard_sockets);
            shards.push(Shard {
                table: SocketTable::new(&cfg, i as u16, n, part)?,
                rx: Batch::with_capacity(ring),
                budget: Vec::with_capacity(cfg.listeners_max),
                epoch: 0,
            });
        }
        tracing::debug!(
            ip = %cfg.ipv4, mac = %mac, mtu, sockets = cfg.sockets_max, shards = shard_count,
            page = %shards[0].table.page_size(), "stack ready"
        );
        let port_span = u64::from(u16::MAX - EPHEMERAL_FIRST) + 1;
        let flows_max = cfg.sockets_max * 2;
        let shard_count = shards.len();
        Ok(Stack {
            iface,
            io,
            shards,
            due: DueSet::new(shard_count),
            wake_min: u64::MAX,
            wake: vec![u64::MAX; shard_count],
            ready: vec![false; shard_count],
            ready_shards: 0,
            syn_wait: Batch::with_capacity(ring),
            peers: KnownPeers::new(),
            flows: HashMap::with_capacity_and_hasher(
                flows_max,
                FlowHash((cfg.random_seed ^ 0x9E37_79B9_7F4A_7C15) | 1),
            ),
            flows_max,
            listeners: (0..cfg.listeners_max).map(|_| None).collect(),
            listener_gens: vec![0; cfg.listeners_max],
            next_port: EPHEMERAL_FIRST + (cfg.random_seed % port_span) as u16,
            next_shard: 0,
            link_was_up: true,
            link_ups: 0,
            cores: None,
            cfg,
            now: Instant::ZERO,
        })
    }

    /// Processes received frames, timers and queued data, and transmits what is due. Returns
    /// `true` if anything happened (frames moved or a socket changed state), so an idle loop
    /// knows when it may wait.
    pub fn poll(&mut self, now: Instant) -> bool {
        self.now = now;
        self.io.set_now(now);
        let before = (
            self.io.stats.rx_frames,
            self.io.stats.tx_frames,
            self.io.stats.rx_dropped(),
        );
        let smol = smol_now(now);
        self.check_link();
        self.iface.poll_maintenance(smol);
        // Steer what arrived to the shards that own it.
        let budget = self.cfg.rx_budget.min(self.shards[0].rx.capacity());
        let Stack {
            io,
            shards,
            flows,
            flows_max,
            next_shard,
            syn_wait,
            due,
            cores,
            ..
        } = self;
        let mut arp = false;
        let single = shards.len() == 1;
        if let Some(c) = &*cores {
            while io.injected.len() < cores::INBOX_LEN {
                let Some(copy) = c.take_arp() else { break };
                io.injected.push(copy);
                arp = true;
            }
            if arp {
                due.mark(0);
            }
        }
        let mut fanout_dropped = 0;
        io.receive(budget, |route, frame| {
            if let Some(c) = &*cores {
                match route {
                    Route::Arp => fanout_dropped += c.fan_out_arp(frame.data()),
                    Route::Tcp { flow, syn: false }
                        if !owns_flow(shards, flows, &flow)
                            && c.owner(&flow) == cores::Owner::Other =>
                    {
                        return Err(RxDrop::Misdirected);
                    }
                    _ => {}
                }
            }
            let shard = match route {
                Route::Tcp { flow, syn: true } if listening(shards, flow.local_port) => {
                    if let Some(c) = &*cores {
                        c.claim(&flow);
                    }
                    match steer_syn(shards, due, flows, *flows_max, next_shard, flow) {
                        Some(s) => s,
                        // Every armed socket is taken for now: hold the SYN until one re-arms.
                        None => {
                            return syn_wait
                                .push((flow, now, frame))
                                .map_err(|_| RxDrop::BacklogFull);
                        }
                    }
                }
                _ if single => {
                    arp |= route == Route::Arp;
                    0
                }
                Route::Tcp { flow, .. } => flows.get(&flow).map_or(0, |&s| usize::from(s)),
                Route::Arp => {
                    arp = true;
                    0
                }
                Route::Other => 0,
            };
            due.mark(shard);
            shards[shard].rx.push(frame).map_err(|_| RxDrop::ShardFull)
        });
        io.stats.arp_fanout_dropped += fanout_dropped;
        if arp {
            // A neighbor may have been learned: sockets of every shard may be waiting for it.
            due.mark_all();
        }
        let mut changed = self.poll_due_shards(now);
        // SYNs that found no armed socket: each round of polling re-arms the listeners, so
        // route again until they are all placed or nothing moves.
        for _ in 0..SYN_ROUNDS_MAX {
            if self.syn_wait.is_empty() || !self.route_waiting_syns(now) {
                break;
            }
            changed |= self.poll_due_shards(now);
        }
        self.io.flush();
        let after = (
            self.io.stats.rx_frames,
            self.io.stats.tx_frames,
            self.io.stats.rx_dropped(),
        );
        changed || before != after
    }

    /// Makes this stack one of a set of per-core shards on one link (see [`CoreShards`]): it
    /// shares what it learns by ARP with the others, and drops (and counts in
    /// [`StackStats::rx_misdirected`]) TCP segments of flows it does not serve instead of
    /// answering them with a reset. Call it before the first poll.
    pub fn join_cores(&mut self, cores: CoreShards) {
        self.cores = Some(cores);
    }

    /// The per-core shard set this stack is in, if any.
    pub fn cores(&self) -> Option<&CoreShards> {
        self.cores.as_ref()
    }

    /// When the link comes back up (a memif peer reconnected, a cable was plugged), the peer
    /// may be another machine or a restarted process with another MAC: forget every neighbor
    /// by starting the interface afresh (the sockets live in the shards and are kept).
    fn check_link(&mut self) {
        let up = self.io.dev.link_up();
        if up && !self.link_was_up {
            self.link_ups += 1;
            let seed = self.cfg.random_seed ^ self.link_ups.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            match build_iface(&self.cfg, &mut self.io, seed) {
                Ok(iface) => {
                    self.iface = iface;
                    tracing::debug!("link up again: neighbor cache cleared");
                }
                Err(e) => {
                    tracing::warn!("link up again, but the interface could not be rebuilt: {e}")
                }
            }
            self.due.mark_all();
        }
        self.link_was_up = up;
    }

    /// Polls every shard that has frames, was touched, or has a timer due. Looks only at the
    /// shards marked due unless the earliest timer of all has come, so a turn with nothing to
    /// do costs the same with 1 or 1,000 shards.
    fn poll_due_shards(&mut self, now: Instant) -> bool {
        let mut changed = false;
        let now_us = now.as_micros();
        if now_us >= self.wake_min {
            let mut min = u64::MAX;
            for i in 0..self.shards.len() {
                if self.due.is(i) || self.wake[i] <= now_us {
                    changed |= self.poll_shard(i, now);
                }
                min = min.min(self.wake[i]);
            }
            self.wake_min = min;
            self.due.relist();
        } else {
            // Shards polled here may be marked again (frames left over the budget): those
            // wait for the next turn.
            let listed = self.due.listed_len();
            for k in 0..listed {
                let i = self.due.listed(k);
                if self.due.is(i) {
                    changed |= self.poll_shard(i, now);
                    self.wake_min = self.wake_min.min(self.wake[i]);
                }
            }
            self.due.forget_listed(listed);
        }
        changed
    }

    /// Offers the waiting SYNs to the shards again; drops those that waited too long. A SYN
    /// that finds every socket of its listener taken evicts the oldest half-open connection
    /// (RFC 4987's "drop oldest") that is past its grace (`SocketTable::oldest_half_open`);
    /// the freed socket listens again after the shard's next poll. Otherwise the SYN waits
    /// for a socket.
    /// Returns whether any SYN was placed or any socket freed for one.
    fn route_waiting_syns(&mut self, now: Instant) -> bool {
        let mut placed = false;
        for _ in 0..self.syn_wait.len() {
            let Some((flow, since, frame)) = self.syn_wait.pop() else {
                break;
            };
            if now.saturating_duration_since(since) > SYN_WAIT_MAX {
                // The client has retried by now; this copy is stale.
                self.io.count_drop(RxDrop::BacklogFull);
                continue;
            }
            match steer_syn(
                &mut self.shards,
                &mut self.due,
                &mut self.flows,
                self.flows_max,
                &mut self.next_shard,
                flow,
            ) {
                Some(s) => {
                    placed = true;
                    self.due.mark(s);
                    if self.shards[s].rx.push(frame).is_err() {
                        self.io.count_drop(RxDrop::ShardFull);
                    }
                }
                None => {
                    if let Some(s) = self.evict_oldest_half_open(flow.local_port, now) {
                        self.due.mark(s);
                        placed = true;
                    }
                    // Cannot fail: one was just taken out.
                    let _ = self.syn_wait.push((flow, since, frame));
                }
            }
        }
        placed
    }

    /// Frees the socket of the oldest half-open connection of the listener on `port`, if any
    /// (it listens again at once); returns its shard.
    fn evict_oldest_half_open(&mut self, port: u16, now: Instant) -> Option<usize> {
        let peers = &self.peers;
        let (_, shard, slot) = self
            .shards
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.table
                    .oldest_half_open(port, now, peers)
                    .map(|(t, slot)| (t, i, slot))
            })
            .min()?;
        self.shards[shard].table.evict_half_open(slot);
        self.io.stats.half_open_evicted += 1;
        self.forget_freed(shard);
        Some(shard)
    }

    /// Runs smoltcp over one shard: its frames in, its sockets out, then listener and socket
    /// upkeep.
    fn poll_shard(&mut self, i: usize, now: Instant) -> bool {
        let smol = smol_now(now);
        let Stack {
            iface,
            io,
            shards,
            cfg,
            peers,
            ..
        } = self;
        let shard = &mut shards[i];
        shard.epoch += 1;
        io.stats.shard_polls += 1;
        let mut changed = false;
        loop {
            let mut view = io.view(&mut shard.rx);
            let r = shard
                .table
                .with_set(|set| iface.poll_ingress_single(smol, &mut view, set));
            match r {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => changed = true,
            }
        }
        loop {
            let mut view = io.view(&mut shard.rx);
            match shard
                .table
                .with_set(|set| iface.poll_egress(smol, &mut view, set))
            {
                PollResult::None => break,
                PollResult::SocketStateChanged => changed = true,
            }
        }
        shard
            .table
            .maintain(now, cfg, &mut io.stats, peers, &|addr| {
                iface.neighbor_unreachable(addr)
            });
        shard.table.listen_budget(&mut shard.budget);
        let at = shard.table.with_set(|set| iface.poll_at(smol, set));
        let at = at.map_or(u64::MAX, |t| t.total_micros().max(0) as u64);
        let deadline = shard
            .table
            .next_deadline(cfg)
            .map_or(u64::MAX, Instant::as_micros);
        self.wake[i] = at.min(deadline);
        self.due.unmark(i);
        if !shard.rx.is_empty() {
            self.due.mark(i);
        }
        let ready = shard.table.has_ready();
        self.set_ready(i, ready);
        self.forget_freed(i);
        changed
    }

    fn set_ready(&mut self, i: usize, ready: bool) {
        if self.ready[i] != ready {
            self.ready[i] = ready;
            if ready {
                self.ready_shards += 1;
            } else {
                self.ready_shards -= 1;
            }
        }
    }

    /// Removes the flows of recycled sockets from the flow table.
    fn forget_freed(&mut self, i: usize) {
        let shard = &mut self.shards[i];
        for flow in shard.table.freed.drain(..) {
            if self.flows.get(&flow) == Some(&(i as u16)) {
                self.flows.remove(&flow);
            }
        }
    }

    /// The time given to the last [`Stack::poll`].
    pub fn now(&self) -> Instant {
        self.now
    }

    /// When the stack next needs a [`Stack::poll`] even if no frame arrives: `Some(now)` or
    /// earlier means at once, `None` means only when a frame arrives.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        if self.io.tx_pending() > 0 || self.io.rx_pending() > 0 || self.due.any() {
            return Some(now);
        }
        let timers = self
            .wake
            .iter()
            .copied()
            .min()
            .filter(|&t| t != u64::MAX)
            .map(Instant::from_micros);
        // Held SYNs are retried soon (a listener may re-arm after an accept).
        let syns = (!self.syn_wait.is_empty()).then(|| now + Duration::from_millis(1));
        timers.into_iter().chain(syns).min()
    }

    /// Waits (in the device, e.g. `poll(2)` on its fd) until a frame may have arrived or the
    /// stack's next timer is due, at most `max`. For idle loops in real time only.
    pub fn wait(&mut self, now: Instant, max: Duration) {
        let timeout = match self.poll_at(now) {
            Some(at) => at.saturating_duration_since(now).min(max),
            None => max,
        };
        if !timeout.is_zero() {
            self.io.dev.wait(timeout);
        }
    }

    /// Listens on `port`; connections queue (up to `backlog`) until [`Stack::accept`]ed. The
    /// backlog is spread over the socket shards (each keeps at least one socket armed).
    pub fn listen(&mut self, port: u16, backlog: usize) -> Result<ListenerId, StackError> {
        if port == 0 {
            return Err(StackError::Config {
                field: "port",
                reason: "cannot listen on port 0".into(),
            });
        }
        if backlog == 0 {
            return Err(StackError::Config {
                field: "backlog",
                reason: "must be at least 1".into(),
            });
        }
        if self.listeners.iter().flatten().any(|l| l.port == port) {
            return Err(StackError::PortInUse(port));
        }
        let idx =
            self.listeners
                .iter()
                .position(|l| l.is_none())
                .ok_or(StackError::NoListeners {
                    max: self.listeners.len(),
                })?;
        if self.sockets_free() == 0 {
            return Err(StackError::NoSockets {
                max: self.cfg.sockets_max,
            });
        }
        let per_shard = backlog.div_ceil(self.shards.len()).max(1);
        self.listeners[idx] = Some(ListenerMeta { port });
        for s in &mut self.shards {
            s.table.add_listener(idx as u32, port, per_shard);
            let iface = &self.iface;
            s.table.maintain(
                self.now,
                &self.cfg,
                &mut self.io.stats,
                &mut self.peers,
                &|addr| iface.neighbor_unreachable(addr),
            );
            s.table.listen_budget(&mut s.budget);
        }
        Ok(ListenerId {
            idx: idx as u32,
            gen: self.listener_gens[idx],
        })
    }

    fn listener(&self, id: ListenerId) -> Result<&ListenerMeta, StackError> {
        match self.listeners.get(id.idx as usize) {
            Some(Some(l)) if self.listener_gens[id.idx as usize] == id.gen => Ok(l),
            _ => Err(StackError::Stale),
        }
    }

    /// Stops listening: armed sockets are closed, connections not yet accepted are reset.
    pub fn unlisten(&mut self, id: ListenerId) -> Result<(), StackError> {
        self.listener(id)?;
        self.listeners[id.idx as usize] = None;
        self.listener_gens[id.idx as usize] = self.listener_gens[id.idx as usize].wrapping_add(1);
        for s in &mut self.shards {
            s.table.remove_listener(id.idx, self.now);
            s.table.listen_budget(&mut s.budget);
        }
        self.due.mark_all();
        Ok(())
    }

    /// The next connection that arrived on the listener, if any.
    pub fn accept(&mut self, id: ListenerId) -> Result<Option<ConnId>, StackError> {
        self.listener(id)?;
        if self.ready_shards == 0 {
            return Ok(None);
        }
        let n = self.shards.len();
        for k in 0..n {
            let i = (self.next_shard + k) % n;
            if !self.ready[i] {
                continue;
            }
            let c = self.shards[i].table.accept(id.idx);
            let still = self.shards[i].table.has_ready();
            self.set_ready(i, still);
            if let Some(c) = c {
                self.next_shard = (i + 1) % n;
                self.io.stats.accepted += 1;
                // Its listener may re-arm now.
                self.due.mark(i);
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// Opens a connection to `remote` from an ephemeral port. The connection is usable (for
    /// [`Stack::send`]) once [`Stack::state`] says `Established`; data sent earlier is queued.
    pub fn connect(&mut self, remote: SocketAddrV4) -> Result<ConnId, StackError> {
        if remote.port() == 0 || remote.ip().is_unspecified() {
            return Err(StackError::Unaddressable(remote));
        }
        // The shard with the most free sockets takes it.
        let (i, free) = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.table.free_count()))
            .max_by_key(|&(i, free)| (free, usize::MAX - i))
            .expect("a stack has at least one shard");
        if free == 0 {
            return Err(StackError::NoSockets {
                max: self.cfg.sockets_max,
            });
        }
        let port = self.ephemeral_port(remote)?;
        let flow = FlowKey {
            remote_ip: u32::from(*remote.ip()),
            remote_port: remote.port(),
            local_port: port,
        };
        let c = self.shards[i]
            .table
            .connect(&mut self.iface, remote, port, &self.cfg, self.now)?;
        if let Some(cores) = &self.cores {
            cores.claim(&flow);
        }
        if self.shards.len() > 1 {
            remember_flow(&mut self.flows, self.flows_max, &mut self.shards, flow, i);
        }
        self.due.mark(i);
        self.io.stats.connected += 1;
        Ok(c)
    }

    /// The next port in the ephemeral range no flow towards `remote` uses; with
    /// [`StackConfig::rss_steer`], the next such port whose replies hash to our queue.
    fn ephemeral_port(&mut self, remote: SocketAddrV4) -> Result<u16, StackError> {
        let (shards, flows) = (&mut self.shards, &self.flows);
        let mut taken = |port: u16| {
            let flow = FlowKey {
                remote_ip: u32::from(*remote.ip()),
                remote_port: remote.port(),
                local_port: port,
            };
            if shards.len() == 1 {
                shards[0].table.has_flow(&flow)
            } else {
                match flows.get(&flow) {
                    Some(&s) => shards[usize::from(s)].table.has_flow(&flow),
                    None => false,
                }
            }
        };
        let after = |port: u16| {
            if port == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                port + 1
            }
        };
        if let Some(steer) = &self.cfg.rss_steer {
            let port = rss::pick_source_port(
                &steer.rss,
                self.cfg.ipv4,
                remote,
                steer.queue,
                self.next_port,
                EPHEMERAL_FIRST..=u16::MAX,
                taken,
            )
            .ok_or(StackError::NoPorts)?;
            self.next_port = after(port);
            return Ok(port);
        }
        let span = u32::from(u16::MAX - EPHEMERAL_FIRST) + 1;
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = after(port);
            if !taken(port) {
                return Ok(port);
            }
        }
        Err(StackError::NoPorts)
    }

    /// The shard of `c`, marked for polling (the application changed its socket).
    fn shard_of(&mut self, c: ConnId) -> Result<&mut SocketTable, ConnError> {
        let s = self.shards.get_mut(c.shard()).ok_or(ConnError::Stale)?;
        self.due.mark(c.shard());
        Ok(&mut s.table)
    }

    /// Marks the shard of `c` for polling when `moved` bytes changed hands (reading opens the
    /// window, writing has data to send); an empty read or write changes nothing.
    fn moved(&mut self, c: ConnId, moved: usize) {
        if moved > 0 && c.shard() < self.shards.len() {
            self.due.mark(c.shard());
            self.shards[c.shard()].table.touch(c, self.now);
        }
    }

    /// Copies as much of `data` as fits into the connection's send buffer; `Ok(0)` when it is
    /// full (back-pressure: poll, then retry).
    pub fn send(&mut self, c: ConnId, data: &[u8]) -> Result<usize, ConnError> {
        let n = self.table_of(c)?.send(c, data)?;
        self.moved(c, n);
        Ok(n)
    }

    /// Zero-copy send: `f` gets the largest contiguous free part of the send buffer and returns
    /// how many bytes it wrote there (and a value passed back).
    pub fn send_with<R>(
        &mut self,
        c: ConnId,
        f: impl FnOnce(&mut [u8]) -> (usize, R),
    ) -> Result<R, ConnError> {
        let mut n = 0;
        let r = self.table_of(c)?.send_with(c, |buf| {
            let (k, r) = f(buf);
            n = k;
            (k, r)
        })?;
        self.moved(c, n);
        Ok(r)
    }

    /// Copies received bytes into `buf`. `Ok(0)`: nothing yet. `Err(Eof)`: the peer closed and
    /// everything was read. `Err(Reset)`: the connection broke (data may be missing).
    pub fn recv(&mut self, c: ConnId, buf: &mut [u8]) -> Result<usize, ConnError> {
        let n = self.table_of(c)?.recv(c, buf)?;
        self.moved(c, n);
        Ok(n)
    }

    /// Zero-copy receive: `f` gets the largest contiguous received part and returns how many
    /// bytes it consumed (and a value passed back).
    pub fn recv_with<R>(
        &mut self,
        c: ConnId,
        f: impl FnOnce(&[u8]) -> (usize, R),
    ) -> Result<R, ConnError> {
        let mut n = 0;
        let r = self.table_of(c)?.recv_with(c, |buf| {
            let (k, r) = f(buf);
            n = k;
            (k, r)
        })?;
        self.moved(c, n);
        Ok(r)
    }

    /// Queues `len` bytes of `src` from `from` for sending without copying them (smoltcp
    /// patch 15, [`TxSource`]): segments are built from `src`, which the connection holds
    /// until they are acknowledged. Returns how many were queued (as many as the send
    /// buffer has room for; 0 when [`TX_LENT_MAX`] ranges already wait).
    pub fn send_lent(
        &mut self,
        c: ConnId,
        src: &std::sync::Arc<dyn TxSource>,
        from: usize,
        len: usize,
    ) -> Result<usize, ConnError> {
        let n = self.table_of(c)?.send_lent(c, src, from, len)?;
        self.moved(c, n);
        Ok(n)
    }

    /// Lends `sink` the connection's next in-order payload (smoltcp patch 14, [`RxSink`]):
    /// bytes that arrive while nothing is buffered go straight to it, not through the
    /// receive buffer, saving a copy in and a copy out. Lend it when `recv_with` has read the
    /// buffer dry, and take it back with [`Stack::take_rx_sink`] before reading again.
    /// Returns the sink lent before, if any.
    pub fn set_rx_sink(
        &mut self,
        c: ConnId,
        sink: Box<dyn RxSink>,
    ) -> Result<Option<Box<dyn RxSink>>, ConnError> {
        self.table_of(c)?.with_conn(c, |s| s.set_rx_sink(sink))
    }

    /// Takes back the sink lent to the connection, with what it got (`None` if none is lent,
    /// or the connection was reset, which drops it).
    pub fn take_rx_sink(&mut self, c: ConnId) -> Result<Option<Box<dyn RxSink>>, ConnError> {
        let now = self.now;
        let table = self.table_of(c)?;
        let sink = table.with_conn(c, |s| s.take_rx_sink())?;
        if sink.is_some() {
            // Bytes may have moved through it: the connection is not idle.
            table.touch(c, now);
        }
        Ok(sink)
    }

    /// Bytes received and not yet read.
    pub fn recv_queue(&mut self, c: ConnId) -> Result<usize, ConnError> {
        self.table_of(c)?.with_conn(c, |s| s.recv_queue())
    }

    /// Free space in the send buffer.
    pub fn send_free(&mut self, c: ConnId) -> Result<usize, ConnError> {
        self.table_of(c)?
            .with_conn(c, |s| s.send_capacity() - s.send_queue())
    }

    /// Bytes queued for sending and not yet acknowledged.
    pub fn send_queue(&mut self, c: ConnId) -> Result<usize, ConnError> {
        self.table_of(c)?.with_conn(c, |s| s.send_queue())
    }

    /// The connection's state.
    pub fn state(&mut self, c: ConnId) -> Result<ConnState, ConnError> {
        self.table_of(c)?.state(c)
    }

    /// The peer's address.
    pub fn remote_addr(&mut self, c: ConnId) -> Result<Option<SocketAddrV4>, ConnError> {
        self.table_of(c)?
            .with_conn(c, |s| s.remote_endpoint().and_then(sockets::v4_endpoint))
    }

    /// The shard table of `c`, for reading (no poll needed).
    fn table_of(&mut self, c: ConnId) -> Result<&mut SocketTable, ConnError> {
        self.shards
            .get_mut(c.shard())
            .map(|s| &mut s.table)
            .ok_or(ConnError::Stale)
    }

    /// Closes our sending half gracefully (FIN after queued data); receiving continues.
    pub fn close(&mut self, c: ConnId) -> Result<(), ConnError> {
        self.shard_of(c)?.with_conn(c, |s| s.close())
    }

    /// Resets the connection at once (RST) and releases the handle.
    pub fn abort(&mut self, c: ConnId) -> Result<(), ConnError> {
        let now = self.now;
        let t = self.shard_of(c)?;
        t.with_conn(c, |s| s.abort())?;
        t.release(c, now)
    }

    /// Gives the handle back: the connection is closed gracefully if it is still open, and its
    /// socket returns to the free set once the close completes (or `close_timeout` passes).
    pub fn release(&mut self, c: ConnId) -> Result<(), ConnError> {
        let now = self.now;
        let t = self.shard_of(c)?;
        t.with_conn(c, |s| s.close())?;
        t.release(c, now)
    }

    /// Counters of the stack.
    pub fn stats(&self) -> StackStats {
        self.io.stats
    }

    /// TCP events summed over every connection the stack had (walks the sockets: for
    /// reports, not for every poll).
    pub fn tcp_stats(&mut self) -> TcpStats {
        let mut total = TcpStats::default();
        for shard in &mut self.shards {
            total.add_counters(&shard.table.tcp_counters());
        }
        total
    }

    /// Counters of the device.
    pub fn link_stats(&self) -> LinkStats {
        self.io.dev.stats()
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.io.dev
    }

    /// The device, mutably (for backend-specific controls).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.io.dev
    }

    /// Our IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.cfg.ipv4
    }

    /// Our MAC address: the configured one, the device's own, or one made from our IPv4
    /// address (see [`StackConfig::mac`]).
    pub fn mac(&self) -> MacAddr {
        self.cfg.mac.expect("resolved in Stack::new")
    }

    /// The configuration the stack was built with.
    pub fn config(&self) -> &StackConfig {
        &self.cfg
    }

    /// Sockets not in use by listeners or connections.
    pub fn sockets_free(&self) -> usize {
        self.shards.iter().map(|s| s.table.free_count()).sum()
    }

    /// Socket shards (socket sets polled separately).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// How many times shard `shard` was polled. Connections of a shard whose count did not move
    /// since the application last looked cannot have new data, new room or a new state, so an
    /// application with many connections only needs to look at the shards that moved
    /// (see [`ConnId::shard`]).
    pub fn shard_epoch(&self, shard: usize) -> u64 {
        self.shards.get(shard).map_or(0, |s| s.epoch)
    }

    /// Shard polls so far, all shards together (`StackStats::shard_polls`): while it does not
    /// move, no [`Stack::shard_epoch`] moved either.
    pub fn epoch(&self) -> u64 {
        self.io.stats.shard_polls
    }
}

/// A cheap keyed hash for the flow table: one multiply per word, keyed by the stack's random
/// seed so a peer cannot aim collisions at it (the table is also bounded).
#[derive(Clone)]
struct FlowHash(u64);

struct FlowHasher {
    key: u64,
    h: u64,
}

impl std::hash::BuildHasher for FlowHash {
    type Hasher = FlowHasher;
    fn build_hasher(&self) -> FlowHasher {
        FlowHasher {
            key: self.0,
            h: self.0,
        }
    }
}

impl std::hash::Hasher for FlowHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.h = (self.h ^ n).wrapping_mul(self.key).rotate_left(29);
    }
    fn finish(&self) -> u64 {
        let h = self.h ^ (self.h >> 32);
        h.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ (h >> 29)
    }
}

/// smoltcp's interface for `cfg` (addresses, default route), with neighbor cache empty.
fn build_iface<D: PacketDevice>(
    cfg: &StackConfig,
    io: &mut Io<D>,
    seed: u64,
) -> Result<Interface, StackError> {
    let mac = cfg.mac.expect("resolved in Stack::new");
    let mut icfg = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(mac.0)));
    icfg.random_seed = seed;
    let mut no_frames = Batch::with_capacity(0);
    let mut iface = Interface::new(icfg, &mut io.view(&mut no_frames), smol_now(Instant::ZERO));
    iface.update_ip_addrs(|addrs| {
        // Cannot fail: the list is empty and holds at least one address.
        let _ = addrs.push(IpCidr::new(cfg.ipv4.into(), cfg.prefix_len));
    });
    if let Some(gw) = cfg.gateway {
        iface
            .routes_mut()
            .add_default_ipv4_route(gw)
            .map_err(|_| StackError::Config {
                field: "gateway",
                reason: "route table full".into(),
            })?;
    }
    Ok(iface)
}

/// Whether any shard listens on `port`.
/// Whether a socket of this stack serves `flow` (with several socket shards, the flow table
/// says which shard to ask).
fn owns_flow<F>(
    shards: &mut [Shard<F>],
    flows: &HashMap<FlowKey, u16, FlowHash>,
    flow: &FlowKey,
) -> bool {
    if shards.len() == 1 {
        return shards[0].table.has_flow(flow);
    }
    flows
        .get(flow)
        .is_some_and(|&s| shards[usize::from(s)].table.has_flow(flow))
}

fn listening<F>(shards: &[Shard<F>], port: u16) -> bool {
    shards
        .iter()
        .any(|s| s.budget.iter().any(|&(p, _)| p == port))
}

/// The shard for a connection request: the one already handling this flow (a repeated SYN), or
/// one with a socket listening on the port (its budget is taken and the flow remembered).
fn steer_syn<F>(
    shards: &mut [Shard<F>],
    due: &mut DueSet,
    flows: &mut HashMap<FlowKey, u16, FlowHash>,
    flows_max: usize,
    next: &mut usize,
    flow: FlowKey,
) -> Option<usize> {
    if shards.len() == 1 {
        if shards[0].table.has_flow(&flow) {
            return Some(0);
        }
        return take_syn_budget(shards, due, flow.local_port, next);
    }
    if let Some(&s) = flows.get(&flow) {
        let s = usize::from(s);
        if shards[s].table.has_flow(&flow) {
            return Some(s);
        }
    }
    let s = take_syn_budget(shards, due, flow.local_port, next)?;
    remember_flow(flows, flows_max, shards, flow, s);
    Some(s)
}

/// Picks a shard with a socket listening on `port` (round robin) and takes one from its budget.
fn take_syn_budget<F>(
    shards: &mut [Shard<F>],
    due: &mut DueSet,
    port: u16,
    next: &mut usize,
) -> Option<usize> {
    let n = shards.len();
    for k in 0..n {
        let i = (*next + k) % n;
        if let Some((_, b)) = shards[i]
            .budget
            .iter_mut()
            .find(|(p, b)| *p == port && *b > 0)
        {
            *b -= 1;
            // Its listener re-arms on this shard's next poll.
            due.mark(i);
            *next = (i + 1) % n;
            return Some(i);
        }
    }
    None
}

/// Records that `flow` belongs to shard `s`; when the table is full, first forgets the flows no
/// socket serves any more.
fn remember_flow<F>(
    flows: &mut HashMap<FlowKey, u16, FlowHash>,
    max: usize,
    shards: &mut [Shard<F>],
    flow: FlowKey,
    s: usize,
) {
    if flows.len() >= max && !flows.contains_key(&flow) {
        flows.retain(|f, &mut owner| shards[usize::from(owner)].table.has_flow(f));
        if flows.len() >= max {
            // Every entry is live: the table is sized for twice the sockets, so this cannot
            // happen; refuse to grow rather than allocate.
            return;
        }
    }
    flows.insert(flow, s as u16);
}

fn smol_now(now: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(now.as_micros().min(i64::MAX as u64) as i64)
}

#[cfg(test)]
mod cores_tests;
#[cfg(test)]
mod tests;

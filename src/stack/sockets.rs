//! The fixed set of TCP sockets: creation at start-up in hugepage memory, listeners with
//! re-arming, connection handles with generations, and recycling of closed sockets.

use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::time::Duration;

use self_cell::self_cell;
use smoltcp::iface::{Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::{tcp, Socket};
use smoltcp::wire::{IpAddress, IpEndpoint};

use crate::mem::{PageSize, RegionPart};
use crate::time::Instant;

use super::adapter::FlowKey;
use super::config::{Congestion, StackConfig};
use super::error::StackError;
use super::stats::StackStats;

/// A connection handle: a socket slot plus the generation it had when handed out.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct ConnId {
    shard: u16,
    slot: u32,
    gen: u32,
}

impl ConnId {
    /// The socket slot within its shard (stable for the life of the connection; reused
    /// afterwards).
    pub fn slot(&self) -> usize {
        self.slot as usize
    }

    /// The socket shard that owns the connection.
    pub fn shard(&self) -> usize {
        self.shard as usize
    }
}

/// A listener handle.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct ListenerId {
    pub(crate) idx: u32,
    pub(crate) gen: u32,
}

/// A connection's state, simplified from the TCP state machine.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Handshake in progress.
    Connecting,
    /// Both directions open.
    Established,
    /// The peer closed its side (FIN received); we may still send.
    PeerClosed,
    /// We closed our side; we may still receive until the peer closes.
    Closing,
    /// Closed or reset; nothing more will move.
    Closed,
}

/// Why an operation on a connection failed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// The handle was released; its socket may serve another connection now.
    #[error("stale connection handle (the connection was released)")]
    Stale,
    /// Our sending half is closed.
    #[error("the connection is closed for sending")]
    Closed,
    /// The peer closed the connection and every byte it sent was read.
    #[error("the peer closed the connection")]
    Eof,
    /// The connection was reset, timed out, or never established; data may be missing.
    #[error("the connection was reset or timed out")]
    Reset,
}

pub(crate) struct Sockets<'a> {
    set: SocketSet<'a>,
    spare: Vec<tcp::Socket<'a>>,
}

self_cell!(
    /// The socket memory region together with the sockets whose buffers live in it.
    struct Store {
        owner: RegionPart,
        #[not_covariant]
        dependent: Sockets,
    }
);

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Role {
    Free,
    /// Listening or in the handshake, for listener `idx`.
    Armed(u32),
    /// Connected, waiting in the listener's accept queue.
    Ready(u32),
    /// Owned by the user through a ConnId.
    User,
    /// Released by the user, finishing its close.
    Closing,
}

struct Slot {
    gen: u32,
    role: Role,
    handle: Option<SocketHandle>,
    since: Instant,
    /// When a listening socket was first seen in SYN-RECEIVED (the oldest is evicted first),
    /// and its peer's address.
    half_open_since: Option<Instant>,
    half_open_peer: Option<IpAddress>,
    /// When the application last moved data on the connection (or it was accepted or opened),
    /// for the idle timeout.
    active_at: Instant,
}

struct Listener {
    port: u16,
    backlog: usize,
    /// Slots listening or in the handshake (at most 2 x backlog).
    members: Vec<u32>,
    /// Connected slots waiting for accept (at most backlog).
    ready: VecDeque<u32>,
    /// Members in the LISTEN state after the last maintenance.
    listening: u32,
    starved: bool,
    /// Smoothed time from a SYN|ACK going out to the handshake completing (gain 1/8, as SRTT),
    /// in microseconds; `None` before the first handshake completes.
    handshake_us: Option<u64>,
}

/// How old a half-open connection must be before a SYN that finds the backlog full may evict
/// it, before any handshake on the listener has completed...
const EVICT_GRACE_UNKNOWN: Duration = Duration::from_millis(10);
/// ...the bounds once handshakes are timed (four smoothed handshake times)...
const EVICT_GRACE_MIN: Duration = Duration::from_millis(1);
const EVICT_GRACE_MAX: Duration = Duration::from_secs(1);
/// ...and the grace of a half-open connection from an address that completed a handshake in
/// the last `KNOWN_PEER_FOR` (about the SYN|ACK's first retransmission timeout).
const EVICT_GRACE_KNOWN: Duration = Duration::from_secs(1);
const KNOWN_PEER_FOR: Duration = Duration::from_secs(10);
const KNOWN_PEERS: usize = 64;

impl Listener {
    /// A half-open connection younger than this is left alone by a SYN that finds the backlog
    /// full: a real client's ACK is on its way, while a made-up one never completes and ages
    /// past it. A client that completed a handshake lately gets the longest grace: under a
    /// burst of its own connections it answers SYN|ACKs late (tens of milliseconds), and the
    /// connections it opens must not evict each other.
    fn evict_grace(&self, known_peer: bool) -> Duration {
        let timed = match self.handshake_us {
            None => EVICT_GRACE_UNKNOWN,
            Some(us) => Duration::from_micros(4 * us).clamp(EVICT_GRACE_MIN, EVICT_GRACE_MAX),
        };
        if known_peer {
            timed.max(EVICT_GRACE_KNOWN)
        } else {
            timed
        }
    }

    fn handshake_done(&mut self, took: Duration) {
        let sample = took.as_micros().min(u128::from(u32::MAX)) as u64;
        self.handshake_us = Some(match self.handshake_us {
            None => sample,
            Some(h) => (7 * h + sample) / 8,
        });
    }
}

/// Addresses that completed a TCP handshake with a listener lately (at most `KNOWN_PEERS`; the
/// least recent is replaced). A spoofed SYN never completes one, so a half-open connection
/// from a known address is most likely a real client's and is evicted last.
pub(crate) struct KnownPeers {
    peers: Vec<(IpAddress, Instant)>,
}

impl KnownPeers {
    pub(crate) fn new() -> Self {
        Self {
            peers: Vec::with_capacity(KNOWN_PEERS),
        }
    }

    fn completed(&mut self, addr: IpAddress, now: Instant) {
        if let Some(p) = self.peers.iter_mut().find(|p| p.0 == addr) {
            p.1 = now;
        } else if self.peers.len() < KNOWN_PEERS {
            self.peers.push((addr, now));
        } else if let Some(p) = self.peers.iter_mut().min_by_key(|p| p.1) {
            *p = (addr, now);
        }
    }

    fn knows(&self, addr: IpAddress, now: Instant) -> bool {
        self.peers
            .iter()
            .any(|p| p.0 == addr && now.saturating_duration_since(p.1) < KNOWN_PEER_FOR)
    }
}

pub(crate) struct SocketTable {
    store: Store,
    slots: Vec<Slot>,
    free: Vec<u32>,
    listeners: Vec<Option<Listener>>,
    closing: Vec<u32>,
    page_size: PageSize,
    shard: u16,
    /// Flows of sockets recycled since the stack last looked, to forget in its flow table.
    pub(crate) freed: Vec<FlowKey>,
    /// TCP counters of the connections whose sockets were recycled.
    retired: tcp::Counters,
}

pub(crate) fn v4_endpoint(e: IpEndpoint) -> Option<SocketAddrV4> {
    match e.addr {
        IpAddress::Ipv4(a) => Some(SocketAddrV4::new(a, e.port)),
    }
}

fn as_tcp<'a>(s: Socket<'a>) -> tcp::Socket<'a> {
    #[allow(unreachable_patterns)]
    match s {
        Socket::Tcp(t) => t,
        _ => unreachable!("the stack only creates TCP sockets"),
    }
}

/// The flow a connected socket owns, as the router keys it.
fn flow_of(s: &tcp::Socket<'_>) -> Option<FlowKey> {
    let (local, remote) = (s.local_endpoint()?, s.remote_endpoint()?);
    let remote = v4_endpoint(remote)?;
    Some(FlowKey {
        remote_ip: u32::from(*remote.ip()),
        remote_port: remote.port(),
        local_port: local.port,
    })
}

/// Whether the socket serves `flow`.
fn serves(s: &tcp::Socket<'_>, flow: &FlowKey) -> bool {
    flow_of(s).as_ref() == Some(flow)
}

fn configure(s: &mut tcp::Socket<'_>, cfg: &StackConfig) {
    let t = &cfg.tcp;
    s.set_nagle_enabled(t.nagle);
    s.set_ack_delay(t.ack_delay.map(smol_duration));
    s.set_keep_alive(t.keep_alive.map(smol_duration));
    s.set_timeout(t.timeout.map(smol_duration));
    // The RTO is SRTT + max(4 RTTVAR, rto_min), at least rto_min (Linux's formula): a round
    // trip stretched by a busy machine must not bring the RTO down onto the tail loss probe's
    // 2 SRTT, which would then never go first.
    s.set_rto_min(smol_duration(t.rto_min));
    s.set_rto_margin(smol_duration(t.rto_min));
    s.set_sack_compression(t.sack_compression);
    s.set_congestion_control(match t.congestion {
        Congestion::None => tcp::CongestionControl::None,
        Congestion::Reno => tcp::CongestionControl::Reno,
        Congestion::LossProportional => tcp::CongestionControl::RenoLossProportional,
        Congestion::Cubic => tcp::CongestionControl::Cubic,
    });
}

fn smol_duration(d: std::time::Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl SocketTable {
    /// Shard `shard`, with `n` sockets whose buffers are carved from `region`.
    pub(crate) fn new(
        cfg: &StackConfig,
        shard: u16,
        n: usize,
        region: RegionPart,
    ) -> Result<SocketTable, StackError> {
        let (rx_len, tx_len) = (cfg.tcp.rx_buf_len, cfg.tcp.tx_buf_len);
        let page_size = region.page_size();
        let store = Store::try_new(region, |region| -> Result<Sockets<'_>, StackError> {
            let slabs = region.take_slabs(rx_len + tx_len)?;
            let mut spare = Vec::with_capacity(n);
            for slab in slabs.into_iter().take(n) {
                let (rx, tx) = slab.split_at_mut(rx_len);
                spare.push(tcp::Socket::new(
                    tcp::SocketBuffer::new(rx),
                    tcp::SocketBuffer::new(tx),
                ));
            }
            let storage: Vec<SocketStorage<'_>> = Vec::with_capacity(n);
            Ok(Sockets {
                set: SocketSet::new(storage),
                spare,
            })
        })?;
        Ok(SocketTable {
            store,
            slots: (0..n)
                .map(|_| Slot {
                    gen: 0,
                    role: Role::Free,
                    handle: None,
                    since: Instant::ZERO,
                    half_open_since: None,
                    half_open_peer: None,
                    active_at: Instant::ZERO,
                })
                .collect(),
            free: (0..n as u32).rev().collect(),
            listeners: (0..cfg.listeners_max).map(|_| None).collect(),
            closing: Vec::with_capacity(n),
            page_size,
            shard,
            freed: Vec::with_capacity(n),
            retired: tcp::Counters::default(),
        })
    }

    pub(crate) fn page_size(&self) -> PageSize {
        self.page_size
    }

    pub(crate) fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Whether a live socket of this shard serves `flow`.
    pub(crate) fn has_flow(&mut self, flow: &FlowKey) -> bool {
        self.store.with_dependent_mut(|_, s| {
            s.set.iter().any(|(_, sock)| match sock {
                #[allow(unreachable_patterns)]
                Socket::Tcp(t) => serves(t, flow),
                #[allow(unreachable_patterns)]
                _ => false,
            })
        })
    }

    /// TCP counters of every connection this shard had: recycled and live.
    pub(crate) fn tcp_counters(&mut self) -> tcp::Counters {
        let mut total = self.retired;
        self.store.with_dependent_mut(|_, s| {
            for (_, sock) in s.set.iter() {
                #[allow(irrefutable_let_patterns)]
                if let Socket::Tcp(t) = sock {
                    total.add(t.counters());
                }
            }
        });
        total
    }

    /// Calls `f` for every slot of the shard in slot order, with its socket (`None` for a free
    /// slot) and when the application last moved data on it (the idle timeout's clock).
    pub(crate) fn for_each_slot(&self, mut f: impl FnMut(Option<&tcp::Socket<'_>>, Instant)) {
        let slots = &self.slots;
        self.store.with_dependent(|_, s| {
            for slot in slots {
                let sock = slot.handle.map(|h| s.set.get::<tcp::Socket<'_>>(h));
                f(sock, slot.active_at);
            }
        });
    }

    pub(crate) fn with_set<R>(&mut self, f: impl FnOnce(&mut SocketSet<'_>) -> R) -> R {
        self.store.with_dependent_mut(|_, s| f(&mut s.set))
    }

    fn with_socket<R>(&mut self, h: SocketHandle, f: impl FnOnce(&mut tcp::Socket<'_>) -> R) -> R {
        self.store
            .with_dependent_mut(|_, s| f(s.set.get_mut::<tcp::Socket<'_>>(h)))
    }

    fn state_of(&mut self, slot: u32) -> tcp::State {
        match self.slots[slot as usize].handle {
            Some(h) => self.with_socket(h, |s| s.state()),
            None => tcp::State::Closed,
        }
    }

    /// Takes a spare socket into the set for a new role; `None` when all are in use.
    fn take_slot(
        &mut self,
        role: Role,
        now: Instant,
        setup: impl FnOnce(&mut tcp::Socket<'_>) -> bool,
    ) -> Option<Result<u32, ()>> {
        let slot = *self.free.last()?;
        let handle = self.store.with_dependent_mut(|_, s| {
            let mut sock = s
                .spare
                .pop()
                .expect("a free slot always has a spare socket");
            if setup(&mut sock) {
                Some(s.set.add(sock))
            } else {
                s.spare.push(sock);
                None
            }
        });
        let Some(handle) = handle else {
            return Some(Err(()));
        };
        self.free.pop();
        let s = &mut self.slots[slot as usize];
        s.role = role;
        s.handle = Some(handle);
        s.since = now;
        s.half_open_since = None;
        s.half_open_peer = None;
        s.active_at = now;
        Some(Ok(slot))
    }

    /// Returns a slot's socket to the spare list and bumps its generation.
    fn free_slot(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if let Some(h) = s.handle.take() {
            let (freed, retired) = (&mut self.freed, &mut self.retired);
            self.store.with_dependent_mut(|_, socks| {
                let mut sock = as_tcp(socks.set.remove(h));
                if let Some(flow) = flow_of(&sock) {
                    freed.push(flow);
                }
                retired.add(sock.counters());
                sock.abort();
                socks.spare.push(sock);
            });
        }
        s.role = Role::Free;
        s.gen = s.gen.wrapping_add(1);
        self.free.push(slot);
    }

    fn arm(&mut self, idx: u32, port: u16, cfg: &StackConfig, now: Instant) -> Option<u32> {
        self.take_slot(Role::Armed(idx), now, |s| {
            configure(s, cfg);
            // A handshake nobody completes gives its socket back to the listener.
            s.set_syn_retries(Some(cfg.tcp.synack_retries));
            s.listen(port).is_ok()
        })?
        .ok()
    }

    /// The oldest half-open connection (SYN received, handshake not complete) of the listener
    /// on `port` that is past its grace at `now` (`Listener::evict_grace`): when it was first
    /// seen, and its slot.
    pub(crate) fn oldest_half_open(
        &self,
        port: u16,
        now: Instant,
        peers: &KnownPeers,
    ) -> Option<(Instant, u32)> {
        self.listeners
            .iter()
            .flatten()
            .filter(|l| l.port == port)
            .flat_map(|l| l.members.iter().map(move |&slot| (l, slot)))
            .filter_map(|(l, slot)| {
                let s = &self.slots[slot as usize];
                let t = s.half_open_since?;
                let known = s.half_open_peer.is_some_and(|a| peers.knows(a, now));
                (now.saturating_duration_since(t) >= l.evict_grace(known)).then_some((t, slot))
            })
            .min()
    }

    /// Gives a half-open connection's socket back at once, silently (the peer of a SYN flood
    /// is made up; a real one retries its SYN): it is recycled like any socket (its counters
    /// kept, smoltcp's per-socket state dropped), and the listener re-arms a fresh one at the
    /// shard's next upkeep.
    pub(crate) fn evict_half_open(&mut self, slot: u32) {
        for l in self.listeners.iter_mut().flatten() {
            if let Some(i) = l.members.iter().position(|&m| m == slot) {
                l.members.swap_remove(i);
                break;
            }
        }
        self.free_slot(slot);
    }

    /// Arms listener `idx` (the stack's listener index) on `port` with `backlog` sockets.
    pub(crate) fn add_listener(&mut self, idx: u32, port: u16, backlog: usize) {
        self.listeners[idx as usize] = Some(Listener {
            port,
            backlog,
            members: Vec::with_capacity(2 * backlog),
            ready: VecDeque::with_capacity(backlog),
            listening: 0,
            starved: false,
            handshake_us: None,
        });
    }

    /// Stops listener `idx`: armed sockets close, connections not yet accepted are reset.
    pub(crate) fn remove_listener(&mut self, idx: u32, now: Instant) {
        let Some(l) = self.listeners[idx as usize].take() else {
            return;
        };
        for slot in l.members.into_iter().chain(l.ready) {
            // Reset what was never accepted; the RST goes out on the next poll.
            if let Some(h) = self.slots[slot as usize].handle {
                self.with_socket(h, |s| s.abort());
            }
            self.slots[slot as usize].role = Role::Closing;
            self.slots[slot as usize].since = now;
            self.closing.push(slot);
        }
    }

    /// Whether a connection waits in any listener's accept queue.
    pub(crate) fn has_ready(&self) -> bool {
        self.listeners.iter().flatten().any(|l| !l.ready.is_empty())
    }

    /// The next connection waiting on listener `idx`.
    pub(crate) fn accept(&mut self, idx: u32) -> Option<ConnId> {
        let l = self.listeners.get_mut(idx as usize)?.as_mut()?;
        let slot = l.ready.pop_front()?;
        let s = &mut self.slots[slot as usize];
        s.role = Role::User;
        Some(ConnId {
            shard: self.shard,
            slot,
            gen: s.gen,
        })
    }

    /// Opens a connection from local port `port` to `remote`.
    pub(crate) fn connect(
        &mut self,
        iface: &mut Interface,
        remote: SocketAddrV4,
        port: u16,
        cfg: &StackConfig,
        now: Instant,
    ) -> Result<ConnId, StackError> {
        if self.free.is_empty() {
            return Err(StackError::NoSockets {
                max: self.slots.len(),
            });
        }
        let endpoint = IpEndpoint::new(IpAddress::Ipv4(*remote.ip()), remote.port());
        let res = self.take_slot(Role::User, now, |s| {
            configure(s, cfg);
            s.set_syn_retries(None);
            s.connect(iface.context(), endpoint, port).is_ok()
        });
        match res {
            Some(Ok(slot)) => Ok(ConnId {
                shard: self.shard,
                slot,
                gen: self.slots[slot as usize].gen,
            }),
            Some(Err(())) => Err(StackError::Unaddressable(remote)),
            None => Err(StackError::NoSockets {
                max: self.slots.len(),
            }),
        }
    }

    fn user_handle(&self, c: ConnId) -> Result<SocketHandle, ConnError> {
        if c.shard != self.shard {
            return Err(ConnError::Stale);
        }
        match self.slots.get(c.slot as usize) {
            Some(s) if s.gen == c.gen && s.role == Role::User => s.handle.ok_or(ConnError::Stale),
            _ => Err(ConnError::Stale),
        }
    }

    pub(crate) fn with_conn<R>(
        &mut self,
        c: ConnId,
        f: impl FnOnce(&mut tcp::Socket<'_>) -> R,
    ) -> Result<R, ConnError> {
        let h = self.user_handle(c)?;
        Ok(self.with_socket(h, f))
    }

    pub(crate) fn state(&mut self, c: ConnId) -> Result<ConnState, ConnError> {
        self.with_conn(c, |s| conn_state(s.state()))
    }

    pub(crate) fn send(&mut self, c: ConnId, data: &[u8]) -> Result<usize, ConnError> {
        self.send_with(c, |buf| {
            let n = buf.len().min(data.len());
            buf[..n].copy_from_slice(&data[..n]);
            (n, n)
        })
    }

    pub(crate) fn send_with<R>(
        &mut self,
        c: ConnId,
        f: impl FnOnce(&mut [u8]) -> (usize, R),
    ) -> Result<R, ConnError> {
        self.with_conn(c, |s| {
            if matches!(s.state(), tcp::State::SynSent | tcp::State::SynReceived) {
                // Not connected yet: no room, not an error.
                return Ok(f(&mut []).1);
            }
            if !s.may_send() {
                return Err(send_error(s.state()));
            }
            s.send(f).map_err(|_| send_error(s.state()))
        })?
    }

    pub(crate) fn send_lent(
        &mut self,
        c: ConnId,
        src: &std::sync::Arc<dyn tcp::TxSource>,
        from: usize,
        len: usize,
    ) -> Result<usize, ConnError> {
        self.with_conn(c, |s| {
            if matches!(s.state(), tcp::State::SynSent | tcp::State::SynReceived) {
                return Ok(0);
            }
            if !s.may_send() {
                return Err(send_error(s.state()));
            }
            s.send_lent(src, from, len)
                .map_err(|_| send_error(s.state()))
        })?
    }

    pub(crate) fn recv(&mut self, c: ConnId, buf: &mut [u8]) -> Result<usize, ConnError> {
        self.recv_with(c, |data| {
            let n = buf.len().min(data.len());
            buf[..n].copy_from_slice(&data[..n]);
            (n, n)
        })
    }

    pub(crate) fn recv_with<R>(
        &mut self,
        c: ConnId,
        f: impl FnOnce(&[u8]) -> (usize, R),
    ) -> Result<R, ConnError> {
        self.with_conn(c, |s| {
            match s.state() {
                // Nothing can have arrived yet: an empty read, not an error.
                tcp::State::SynSent | tcp::State::SynReceived => return Ok(f(&[]).1),
                _ => {}
            }
            match s.recv(|buf| f(buf)) {
                Ok(r) => Ok(r),
                Err(tcp::RecvError::Finished) => Err(ConnError::Eof),
                Err(tcp::RecvError::InvalidState) => Err(ConnError::Reset),
            }
        })?
    }

    pub(crate) fn release(&mut self, c: ConnId, now: Instant) -> Result<(), ConnError> {
        self.user_handle(c)?;
        let s = &mut self.slots[c.slot as usize];
        s.role = Role::Closing;
        s.since = now;
        // Generation changes now, so the released handle is stale at once.
        s.gen = s.gen.wrapping_add(1);
        self.closing.push(c.slot);
        Ok(())
    }

    /// The earliest time maintenance must run: a lingering close timing out, or a connection
    /// going idle for too long.
    pub(crate) fn next_deadline(&self, cfg: &StackConfig) -> Option<Instant> {
        let closes = self
            .closing
            .iter()
            .map(|&slot| self.slots[slot as usize].since + cfg.tcp.close_timeout);
        let idles = cfg.tcp.idle_timeout.into_iter().flat_map(|idle| {
            self.slots
                .iter()
                .filter(|s| matches!(s.role, Role::Ready(_) | Role::User))
                .map(move |s| s.active_at + idle)
        });
        closes.chain(idles).min()
    }

    /// Fills `budget` with (port, sockets listening) for every listener.
    pub(crate) fn listen_budget(&self, budget: &mut Vec<(u16, u32)>) {
        budget.clear();
        budget.extend(
            self.listeners
                .iter()
                .flatten()
                .map(|l| (l.port, l.listening)),
        );
    }

    /// Moves connected sockets to accept queues and re-arms listeners; `unreachable` says
    /// whether a peer's address went unanswered (its half-open connection is dropped).
    pub(crate) fn maintain_listeners(
        &mut self,
        now: Instant,
        cfg: &StackConfig,
        stats: &mut StackStats,
        peers: &mut KnownPeers,
        unreachable: &dyn Fn(IpAddress) -> bool,
    ) {
        for idx in 0..self.listeners.len() {
            if self.listeners[idx].is_some() {
                self.maintain_listener(idx as u32, now, cfg, stats, peers, unreachable);
            }
        }
    }

    /// Resets connections the application has not moved data on for `cfg.tcp.idle_timeout`
    /// (waiting to be accepted, or accepted): a RST goes to the peer, the application sees the
    /// connection reset and releases it.
    fn reap_idle(&mut self, now: Instant, cfg: &StackConfig, stats: &mut StackStats) {
        let Some(idle) = cfg.tcp.idle_timeout else {
            return;
        };
        for slot in 0..self.slots.len() as u32 {
            let s = &self.slots[slot as usize];
            if !matches!(s.role, Role::Ready(_) | Role::User)
                || now.saturating_duration_since(s.active_at) < idle
            {
                continue;
            }
            let Some(h) = s.handle else { continue };
            let open = self.with_socket(h, |sock| {
                let open = sock.is_open();
                if open {
                    sock.abort();
                }
                open
            });
            if open {
                stats.idle_reaped += 1;
            }
            let s = &mut self.slots[slot as usize];
            // Checked again only after another idle period.
            s.active_at = now;
            if let Role::Ready(idx) = s.role {
                // Never accepted: the socket goes back once its RST is out.
                s.role = Role::Closing;
                s.since = now;
                s.gen = s.gen.wrapping_add(1);
                if let Some(Some(l)) = self.listeners.get_mut(idx as usize) {
                    l.ready.retain(|&r| r != slot);
                }
                self.closing.push(slot);
            }
        }
    }

    /// Marks the application's use of connection `c` now (for the idle timeout).
    pub(crate) fn touch(&mut self, c: ConnId, now: Instant) {
        if let Some(s) = self.slots.get_mut(c.slot as usize) {
            if s.gen == c.gen {
                s.active_at = now;
            }
        }
    }

    /// Listener upkeep, then recycles released sockets whose close has finished.
    pub(crate) fn maintain(
        &mut self,
        now: Instant,
        cfg: &StackConfig,
        stats: &mut StackStats,
        peers: &mut KnownPeers,
        unreachable: &dyn Fn(IpAddress) -> bool,
    ) {
        self.reap_idle(now, cfg, stats);
        // Recycle first, so a listener starved of sockets re-arms with the ones freed now
        // (nothing else may wake this shard up again).
        let mut i = 0;
        while i < self.closing.len() {
            let slot = self.closing[i];
            let (state, pending_rst) = match self.slots[slot as usize].handle {
                Some(h) => self.with_socket(h, |s| (s.state(), s.remote_endpoint().is_some())),
                None => (tcp::State::Closed, false),
            };
            let done = matches!(state, tcp::State::TimeWait)
                || (state == tcp::State::Closed && !pending_rst);
            let expired = now.saturating_duration_since(self.slots[slot as usize].since)
                >= cfg.tcp.close_timeout;
            if done || expired {
                if !done {
                    stats.close_timeouts += 1;
                }
                self.closing.swap_remove(i);
                self.free_slot(slot);
            } else {
                i += 1;
            }
        }
        self.maintain_listeners(now, cfg, stats, peers, unreachable);
    }

    fn maintain_listener(
        &mut self,
        idx: u32,
        now: Instant,
        cfg: &StackConfig,
        stats: &mut StackStats,
        peers: &mut KnownPeers,
        unreachable: &dyn Fn(IpAddress) -> bool,
    ) {
        let Some(mut l) = self.listeners[idx as usize].take() else {
            return;
        };
        let mut listening = 0;
        let mut i = 0;
        while i < l.members.len() {
            let slot = l.members[i];
            match self.state_of(slot) {
                tcp::State::Listen => {
                    // (Back to LISTEN after a handshake that was given up, or never left.)
                    let s = &mut self.slots[slot as usize];
                    s.half_open_since = None;
                    s.half_open_peer = None;
                    listening += 1;
                    i += 1;
                }
                tcp::State::SynReceived => {
                    let peer = self.slots[slot as usize]
                        .handle
                        .and_then(|h| self.with_socket(h, |s| s.remote_endpoint().map(|e| e.addr)));
                    if peer.is_some_and(unreachable) {
                        // Nobody answers for the peer's address: its SYN was made up, and the
                        // SYN|ACK can never be delivered. The socket goes back at once (a
                        // fresh one is armed below).
                        l.members.swap_remove(i);
                        self.free_slot(slot);
                        stats.half_open_unreachable += 1;
                    } else {
                        let s = &mut self.slots[slot as usize];
                        s.half_open_since.get_or_insert(now);
                        s.half_open_peer = peer;
                        i += 1;
                    }
                }
                tcp::State::Closed | tcp::State::TimeWait => {
                    // The handshake failed (RST, timeout): recycle.
                    l.members.swap_remove(i);
                    self.free_slot(slot);
                }
                _ => {
                    // Connected: no longer half-open (and never evicted as one).
                    let s = &mut self.slots[slot as usize];
                    if let Some(t) = s.half_open_since.take() {
                        l.handshake_done(now.saturating_duration_since(t));
                        if let Some(a) = s.half_open_peer.take() {
                            peers.completed(a, now);
                        }
                    }
                    if l.ready.len() < l.backlog {
                        l.members.swap_remove(i);
                        let s = &mut self.slots[slot as usize];
                        s.role = Role::Ready(idx);
                        s.active_at = now;
                        l.ready.push_back(slot);
                    } else {
                        i += 1;
                    }
                }
            }
        }
        while listening < l.backlog && l.members.len() < 2 * l.backlog && l.ready.len() < l.backlog
        {
            match self.arm(idx, l.port, cfg, now) {
                Some(slot) => {
                    l.members.push(slot);
                    listening += 1;
                    l.starved = false;
                }
                None => {
                    if !l.starved {
                        stats.sockets_exhausted += 1;
                        l.starved = true;
                    }
                    break;
                }
            }
        }
        l.listening = listening as u32;
        self.listeners[idx as usize] = Some(l);
    }
}

fn conn_state(s: tcp::State) -> ConnState {
    use tcp::State::*;
    match s {
        SynSent | SynReceived => ConnState::Connecting,
        Established => ConnState::Established,
        CloseWait => ConnState::PeerClosed,
        FinWait1 | FinWait2 | Closing | LastAck | TimeWait => ConnState::Closing,
        Closed | Listen => ConnState::Closed,
    }
}

fn send_error(s: tcp::State) -> ConnError {
    use tcp::State::*;
    match s {
        FinWait1 | FinWait2 | Closing | LastAck | TimeWait => ConnError::Closed,
        _ => ConnError::Reset,
    }
}

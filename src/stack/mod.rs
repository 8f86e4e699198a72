//! The user-space TCP/IP stack: the only module that imports smoltcp.
//!
//! A [`Stack`] owns one [`PacketDevice`], one smoltcp `Interface` (ARP, IPv4, TCP) and a fixed
//! set of TCP sockets whose buffers are carved from one hugepage region at start-up. Nothing
//! is allocated afterwards: sockets are recycled between connections.
//!
//! smoltcp has no `accept`: [`Stack::listen`] keeps `backlog` sockets listening on a port and
//! re-arms one each time a connection arrives; [`Stack::accept`] hands out the connected ones.
//! Connections are named by [`ConnId`], a slot index plus generation, so a handle that outlived
//! its connection is detected ([`ConnError::Stale`]) instead of touching a reused socket.
//!
//! The stack never reads a clock: every call that needs time takes `now`, so it runs the same
//! in real time and in the simulator's virtual time.

mod adapter;
mod config;
mod sockets;

pub use config::{Congestion, MacAddr, StackConfig, TcpConfig};
pub use sockets::{ConnError, ConnId, ConnState, ListenerId};

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use smoltcp::iface::{Config as IfaceConfig, Interface, PollIngressSingleResult, PollResult};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use crate::dev::{LinkStats, PacketDevice};
use crate::mem::MemError;
use crate::time::Instant;

use adapter::DevAdapter;
use sockets::SocketTable;

/// Counters of the stack (frames the adapter accepted or dropped, and TCP bookkeeping).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Frames handed to smoltcp.
    pub rx_frames: u64,
    /// Frames shorter than the headers they claim.
    pub rx_runt: u64,
    /// Frames longer than the MTU.
    pub rx_oversize: u64,
    /// Frames addressed to another MAC.
    pub rx_not_ours: u64,
    /// Frames of an unsupported ethertype (IPv6, VLAN, ...).
    pub rx_unsupported: u64,
    /// IPv4 packets with inconsistent headers or lengths.
    pub rx_bad_ipv4: u64,
    /// IPv4 fragments (not supported: TCP segments fit the MTU).
    pub rx_fragment: u64,
    /// Frames with a wrong IPv4 or TCP checksum.
    pub rx_bad_checksum: u64,
    /// Connection requests (SYN) dropped because every socket armed for the port was taken;
    /// the client retries, as with a full kernel backlog.
    pub rx_syn_backlog_full: u64,
    /// Frames handed to the device.
    pub tx_frames: u64,
    /// Frames smoltcp built while the device had no buffer: dropped (TCP retransmits).
    pub tx_nobuf: u64,
    /// Times the transmit queue was full and smoltcp was told to wait.
    pub tx_queue_full: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections opened with [`Stack::connect`].
    pub connected: u64,
    /// Times a listener could not re-arm because every socket was in use.
    pub sockets_exhausted: u64,
    /// Sockets reset because they lingered past `close_timeout` after being released.
    pub close_timeouts: u64,
}

impl StackStats {
    /// All frames dropped as malformed or not for us.
    pub fn rx_dropped(&self) -> u64 {
        self.rx_runt
            + self.rx_oversize
            + self.rx_not_ours
            + self.rx_unsupported
            + self.rx_bad_ipv4
            + self.rx_fragment
            + self.rx_bad_checksum
            + self.rx_syn_backlog_full
    }
}

/// Errors from building a stack and from connection management.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A configuration value that cannot work.
    #[error("invalid stack configuration: {field}: {reason}")]
    Config {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Socket memory could not be mapped.
    #[error("cannot reserve socket memory: {0}")]
    Memory(#[from] MemError),
    /// Every TCP socket is in use.
    #[error(
        "all {max} TCP sockets are in use (raise StackConfig::sockets_max, or release connections)"
    )]
    NoSockets {
        /// The configured maximum.
        max: usize,
    },
    /// Every listener slot is in use.
    #[error("all {max} listeners are in use (raise StackConfig::listeners_max)")]
    NoListeners {
        /// The configured maximum.
        max: usize,
    },
    /// The port is already listened on.
    #[error("port {0} is already being listened on")]
    PortInUse(u16),
    /// Port 0, an unspecified address, or no route to the address.
    #[error("cannot connect to {0}: address is not reachable from this stack (check the address, prefix and gateway)")]
    Unaddressable(SocketAddrV4),
    /// No ephemeral port is free.
    #[error("no free ephemeral port")]
    NoPorts,
    /// The handle belongs to a connection or listener that is gone.
    #[error("stale handle: the connection or listener was released")]
    Stale,
}

/// A TCP/IP stack over one packet device.
pub struct Stack<D: PacketDevice> {
    iface: Interface,
    dev: DevAdapter<D>,
    table: SocketTable,
    cfg: StackConfig,
    now: Instant,
}

impl<D: PacketDevice> Stack<D> {
    /// Builds a stack on `dev`: reserves socket memory (hugepages preferred) for
    /// `cfg.sockets_max` connections and configures the interface.
    pub fn new(dev: D, cfg: StackConfig) -> Result<Stack<D>, StackError> {
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
        if !cfg.mac.is_unicast() {
            return Err(StackError::Config {
                field: "mac",
                reason: format!("{} is not a unicast address", cfg.mac),
            });
        }
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
        if cfg.sockets_max == 0 || cfg.sockets_max > u32::MAX as usize / 2 {
            return Err(StackError::Config {
                field: "sockets_max",
                reason: format!("{} is out of range", cfg.sockets_max),
            });
        }

        let mut dev = DevAdapter::new(dev, mtu, cfg.mac.0, cfg.ring_frames, cfg.listeners_max);
        let mut icfg = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(cfg.mac.0)));
        icfg.random_seed = cfg.random_seed;
        let mut iface = Interface::new(icfg, &mut dev, smol_now(Instant::ZERO));
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
        let table = SocketTable::new(&cfg)?;
        tracing::debug!(
            ip = %cfg.ipv4, mac = %cfg.mac, mtu, sockets = cfg.sockets_max,
            page = %table.page_size(), "stack ready"
        );
        Ok(Stack {
            iface,
            dev,
            table,
            cfg,
            now: Instant::ZERO,
        })
    }

    /// Processes received frames, timers and queued data, and transmits what is due. Returns
    /// `true` if anything happened (frames moved or a socket changed state), so an idle loop
    /// knows when it may wait.
    pub fn poll(&mut self, now: Instant) -> bool {
        self.now = now;
        self.dev.set_now(now);
        let before = (
            self.dev.stats.rx_frames,
            self.dev.stats.tx_frames,
            self.dev.stats.rx_dropped(),
        );
        let smol = smol_now(now);
        // smoltcp's Interface::poll, unrolled so listeners are re-armed between frames: a burst
        // of SYNs then finds fresh listening sockets instead of being dropped.
        self.iface.poll_maintenance(smol);
        let mut changed = false;
        loop {
            let (iface, dev) = (&mut self.iface, &mut self.dev);
            match self
                .table
                .with_set(|set| iface.poll_ingress_single(smol, dev, set))
            {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => changed = true,
            }
            if self.dev.syn_accepted {
                self.dev.syn_accepted = false;
                self.table
                    .maintain_listeners(now, &self.cfg, &mut self.dev.stats);
                self.table.listen_budget(&mut self.dev.listen_budget);
            }
        }
        loop {
            let (iface, dev) = (&mut self.iface, &mut self.dev);
            match self.table.with_set(|set| iface.poll_egress(smol, dev, set)) {
                PollResult::None => break,
                PollResult::SocketStateChanged => changed = true,
            }
        }
        self.dev.flush();
        self.table.maintain(now, &self.cfg, &mut self.dev.stats);
        self.table.listen_budget(&mut self.dev.listen_budget);
        let after = (
            self.dev.stats.rx_frames,
            self.dev.stats.tx_frames,
            self.dev.stats.rx_dropped(),
        );
        changed || before != after
    }

    /// When the stack next needs a [`Stack::poll`] even if no frame arrives: `Some(now)` or
    /// earlier means at once, `None` means only when a frame arrives.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        if self.dev.tx_pending() > 0 {
            return Some(now);
        }
        let smol = smol_now(now);
        let iface = &mut self.iface;
        let at = self.table.with_set(|set| iface.poll_at(smol, set));
        let at = at.map(|t| Instant::from_micros(t.total_micros().max(0) as u64));
        match (at, self.table.next_deadline(self.cfg.tcp.close_timeout)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Waits (in the device, e.g. `poll(2)` on its fd) until a frame may have arrived or the
    /// stack's next timer is due, at most `max`. For idle loops in real time only.
    pub fn wait(&mut self, now: Instant, max: Duration) {
        let timeout = match self.poll_at(now) {
            Some(at) => at.saturating_duration_since(now).min(max),
            None => max,
        };
        if !timeout.is_zero() {
            self.dev.dev.wait(timeout);
        }
    }

    /// Listens on `port` with `backlog` sockets kept armed; connections queue (up to `backlog`)
    /// until [`Stack::accept`]ed.
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
        let id = self.table.add_listener(port, backlog)?;
        self.table
            .maintain(self.now, &self.cfg, &mut self.dev.stats);
        self.table.listen_budget(&mut self.dev.listen_budget);
        Ok(id)
    }

    /// Stops listening: armed sockets are closed, connections not yet accepted are reset.
    pub fn unlisten(&mut self, id: ListenerId) -> Result<(), StackError> {
        self.table.remove_listener(id, self.now)?;
        self.table.listen_budget(&mut self.dev.listen_budget);
        Ok(())
    }

    /// The next connection that arrived on the listener, if any.
    pub fn accept(&mut self, id: ListenerId) -> Result<Option<ConnId>, StackError> {
        let c = self.table.accept(id)?;
        if c.is_some() {
            self.dev.stats.accepted += 1;
        }
        Ok(c)
    }

    /// Opens a connection to `remote` from an ephemeral port. The connection is usable (for
    /// [`Stack::send`]) once [`Stack::state`] says `Established`; data sent earlier is queued.
    pub fn connect(&mut self, remote: SocketAddrV4) -> Result<ConnId, StackError> {
        if remote.port() == 0 || remote.ip().is_unspecified() {
            return Err(StackError::Unaddressable(remote));
        }
        let iface = &mut self.iface;
        let c = self.table.connect(iface, remote, &self.cfg, self.now)?;
        self.dev.stats.connected += 1;
        Ok(c)
    }

    /// Copies as much of `data` as fits into the connection's send buffer; `Ok(0)` when it is
    /// full (back-pressure: poll, then retry).
    pub fn send(&mut self, c: ConnId, data: &[u8]) -> Result<usize, ConnError> {
        self.table.send(c, data)
    }

    /// Zero-copy send: `f` gets the largest contiguous free part of the send buffer and returns
    /// how many bytes it wrote there (and a value passed back).
    pub fn send_with<R>(
        &mut self,
        c: ConnId,
        f: impl FnOnce(&mut [u8]) -> (usize, R),
    ) -> Result<R, ConnError> {
        self.table.send_with(c, f)
    }

    /// Copies received bytes into `buf`. `Ok(0)`: nothing yet. `Err(Eof)`: the peer closed and
    /// everything was read. `Err(Reset)`: the connection broke (data may be missing).
    pub fn recv(&mut self, c: ConnId, buf: &mut [u8]) -> Result<usize, ConnError> {
        self.table.recv(c, buf)
    }

    /// Zero-copy receive: `f` gets the largest contiguous received part and returns how many
    /// bytes it consumed (and a value passed back).
    pub fn recv_with<R>(
        &mut self,
        c: ConnId,
        f: impl FnOnce(&[u8]) -> (usize, R),
    ) -> Result<R, ConnError> {
        self.table.recv_with(c, f)
    }

    /// Bytes received and not yet read.
    pub fn recv_queue(&mut self, c: ConnId) -> Result<usize, ConnError> {
        self.table.with_conn(c, |s| s.recv_queue())
    }

    /// Free space in the send buffer.
    pub fn send_free(&mut self, c: ConnId) -> Result<usize, ConnError> {
        self.table
            .with_conn(c, |s| s.send_capacity() - s.send_queue())
    }

    /// Bytes queued for sending and not yet acknowledged.
    pub fn send_queue(&mut self, c: ConnId) -> Result<usize, ConnError> {
        self.table.with_conn(c, |s| s.send_queue())
    }

    /// The connection's state.
    pub fn state(&mut self, c: ConnId) -> Result<ConnState, ConnError> {
        self.table.state(c)
    }

    /// The peer's address.
    pub fn remote_addr(&mut self, c: ConnId) -> Result<Option<SocketAddrV4>, ConnError> {
        self.table
            .with_conn(c, |s| s.remote_endpoint().and_then(sockets::v4_endpoint))
    }

    /// Closes our sending half gracefully (FIN after queued data); receiving continues.
    pub fn close(&mut self, c: ConnId) -> Result<(), ConnError> {
        self.table.with_conn(c, |s| s.close())
    }

    /// Resets the connection at once (RST) and releases the handle.
    pub fn abort(&mut self, c: ConnId) -> Result<(), ConnError> {
        self.table.with_conn(c, |s| s.abort())?;
        self.table.release(c, self.now)
    }

    /// Gives the handle back: the connection is closed gracefully if it is still open, and its
    /// socket returns to the free set once the close completes (or `close_timeout` passes).
    pub fn release(&mut self, c: ConnId) -> Result<(), ConnError> {
        self.table.with_conn(c, |s| s.close())?;
        self.table.release(c, self.now)
    }

    /// Counters of the stack.
    pub fn stats(&self) -> StackStats {
        self.dev.stats
    }

    /// Counters of the device.
    pub fn link_stats(&self) -> LinkStats {
        self.dev.dev.stats()
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev.dev
    }

    /// The device, mutably (for backend-specific controls).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev.dev
    }

    /// Our IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.cfg.ipv4
    }

    /// Our MAC address.
    pub fn mac(&self) -> MacAddr {
        self.cfg.mac
    }

    /// The configuration the stack was built with.
    pub fn config(&self) -> &StackConfig {
        &self.cfg
    }

    /// Sockets not in use by listeners or connections.
    pub fn sockets_free(&self) -> usize {
        self.table.free_count()
    }
}

fn smol_now(now: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(now.as_micros().min(i64::MAX as u64) as i64)
}

#[cfg(test)]
mod tests;

//! The object service on its two transports, each a [`Service`] for the
//! [`ServeLoop`](crate::serve::ServeLoop): [`S3OnStack`] (ustack's TCP on any backend: AF_XDP,
//! DPDK, memif, TAP) and [`S3OnKernel`] (kernel TCP with epoll, the baseline). Both move bytes
//! between sockets and [`HttpConn`]s and leave the rest to one [`Engine`], so a comparison of
//! the two is a comparison of the network paths.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime};

use super::conn::{Ending, Engine, HttpConn, S3Stats};
use crate::chunk::{ChunkStore, ServerStats};
use crate::dev::PacketDevice;
use crate::metrics::Observed;
use crate::serve::Service;
use crate::stack::{ConnError, ConnId, ListenerId, Stack, StackError};
use crate::sys::socket::{Epoll, EpollEvent, EPOLLET, EPOLLIN, EPOLLOUT, EPOLLRDHUP};
use crate::time::Instant;

/// How a transport reads and writes one connection.
trait ByteIo {
    /// Received bytes into `buf`: `Ok(0)` none yet, `Err(Eof)` the peer is done sending.
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, Gone>;
    /// Bytes of `data` taken for sending (`Ok(0)`: no room now).
    fn send(&mut self, data: &[u8]) -> Result<usize, Gone>;
}

/// A connection that cannot go on, or whose peer stopped sending.
#[derive(Debug, PartialEq, Eq)]
enum Gone {
    Eof,
    Broken,
}

/// Moves bytes both ways and lets the engine serve them, a bounded number of rounds. Returns
/// (anything moved, the connection is still usable).
fn pump<S: ChunkStore>(
    engine: &mut Engine<S>,
    c: &mut HttpConn,
    io: &mut impl ByteIo,
    now: Instant,
    wall: SystemTime,
) -> (bool, bool) {
    let mut any = false;
    for _ in 0..8 {
        let mut moved = false;
        let spare = c.rx_spare();
        if !spare.is_empty() {
            match io.recv(spare) {
                Ok(n) => {
                    c.rx_filled(n, now);
                    moved |= n > 0;
                }
                Err(Gone::Eof) => c.peer_closed(),
                Err(Gone::Broken) => return (true, false),
            }
        }
        moved |= engine.process(c, now, wall);
        let out = c.tx_pending();
        if !out.is_empty() {
            match io.send(out) {
                Ok(n) => {
                    c.tx_sent(n);
                    moved |= n > 0;
                }
                Err(_) => return (true, false),
            }
        }
        if !moved {
            break;
        }
        any = true;
    }
    (any, true)
}

/// Connection counters of a transport.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnCounts {
    /// Accepted and served.
    pub accepted: u64,
    /// Refused: `conns_max` were open, or shutting down.
    pub refused: u64,
    /// Ended.
    pub closed: u64,
}

fn server_stats(s: S3Stats, c: ConnCounts) -> ServerStats {
    ServerStats {
        connections_accepted: c.accepted,
        connections_refused: c.refused,
        connections_closed: c.closed,
        connections_closed_for_errors: s.bad_requests + s.timeouts,
        reads: s.gets,
        writes: s.puts,
        deletes: s.deletes,
        lists: s.lists,
        errors: s.errors,
        bytes_written: s.bytes_in,
        bytes_read: s.bytes_out,
        ..ServerStats::default()
    }
}

struct StackIo<'a, D: PacketDevice> {
    stack: &'a mut Stack<D>,
    id: ConnId,
}

impl<D: PacketDevice> ByteIo for StackIo<'_, D> {
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, Gone> {
        match self.stack.recv(self.id, buf) {
            Ok(n) => Ok(n),
            Err(ConnError::Eof) => Err(Gone::Eof),
            Err(_) => Err(Gone::Broken),
        }
    }
    fn send(&mut self, data: &[u8]) -> Result<usize, Gone> {
        self.stack.send(self.id, data).map_err(|_| Gone::Broken)
    }
}

/// The object service on a ustack [`Stack`].
pub struct S3OnStack<D: PacketDevice + 'static, S: ChunkStore + 'static> {
    /// The stack.
    pub stack: Stack<D>,
    /// The service's logic.
    pub engine: Engine<S>,
    listener: ListenerId,
    conns: Vec<(ConnId, HttpConn)>,
    conns_max: usize,
    counts: ConnCounts,
    shutting_down: bool,
}

impl<D: PacketDevice + 'static, S: ChunkStore + 'static> S3OnStack<D, S> {
    /// Serves `engine` on `port` of `stack`, at most `conns_max` connections at once.
    pub fn new(
        mut stack: Stack<D>,
        engine: Engine<S>,
        port: u16,
        conns_max: usize,
    ) -> Result<Self, StackError> {
        let listener = stack.listen(port, conns_max.clamp(1, 1024))?;
        Ok(S3OnStack {
            stack,
            engine,
            listener,
            conns: Vec::with_capacity(conns_max),
            conns_max,
            counts: ConnCounts::default(),
            shutting_down: false,
        })
    }

    /// Connection counters.
    pub fn counts(&self) -> ConnCounts {
        self.counts
    }
}

impl<D: PacketDevice + 'static, S: ChunkStore + 'static> Service for S3OnStack<D, S> {
    fn turn(&mut self, now: Instant) -> bool {
        let mut progress = self.stack.poll(now);
        while let Ok(Some(id)) = self.stack.accept(self.listener) {
            progress = true;
            if self.shutting_down || self.conns.len() >= self.conns_max {
                let _ = self.stack.abort(id);
                self.counts.refused += 1;
                continue;
            }
            self.counts.accepted += 1;
            self.conns.push((id, HttpConn::new(now)));
        }
        let wall = SystemTime::now();
        let mut i = 0;
        while i < self.conns.len() {
            let (id, c) = &mut self.conns[i];
            let mut io = StackIo {
                stack: &mut self.stack,
                id: *id,
            };
            let (moved, alive) = pump(&mut self.engine, c, &mut io, now, wall);
            progress |= moved;
            if !alive || c.is_done() {
                // A connection that timed out may hold answer bytes its peer is not taking: reset
                // it rather than let them wait in the send buffer for TCP to give up.
                let graceful = alive && c.ending() != Some(Ending::TimedOut);
                let (id, c) = self.conns.swap_remove(i);
                self.engine.discard(c);
                let _ = if graceful {
                    self.stack.release(id)
                } else {
                    self.stack.abort(id)
                };
                self.counts.closed += 1;
                progress = true;
            } else {
                i += 1;
            }
        }
        progress
    }
    fn sleep(&mut self, now: Instant, max: Duration) {
        self.stack.wait(now, max);
    }
    fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        let _ = self.stack.unlisten(self.listener);
        for (_, c) in &mut self.conns {
            c.close_after_answer();
        }
    }
    fn is_idle(&self) -> bool {
        self.conns.is_empty()
    }
    fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(5)
    }
    fn flush(&mut self, deadline: Instant) {
        while Instant::now() < deadline {
            self.stack.poll(Instant::now());
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    fn observe(&mut self, _f: &mut dyn FnMut(&mut dyn Observed)) {}
    fn stats(&self) -> ServerStats {
        server_stats(self.engine.stats(), self.counts)
    }
}

struct KernelIo<'a>(&'a mut TcpStream);

impl ByteIo for KernelIo<'_> {
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, Gone> {
        match self.0.read(buf) {
            Ok(0) => Err(Gone::Eof),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(_) => Err(Gone::Broken),
        }
    }
    fn send(&mut self, data: &[u8]) -> Result<usize, Gone> {
        match self.0.write(data) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(_) => Err(Gone::Broken),
        }
    }
}

/// The epoll token of the listener; connections have their slot + 1.
const LISTENER: u64 = 0;

/// The object service on kernel TCP: non-blocking sockets, `TCP_NODELAY`, and epoll (edge
/// triggered) to sleep on, the kernel's best settings for a busy server.
pub struct S3OnKernel<S: ChunkStore + 'static> {
    /// The service's logic.
    pub engine: Engine<S>,
    listener: Option<TcpListener>,
    epoll: Epoll,
    events: Vec<EpollEvent>,
    conns: Vec<Option<(TcpStream, HttpConn)>>,
    open: usize,
    counts: ConnCounts,
    shutting_down: bool,
}

impl<S: ChunkStore + 'static> S3OnKernel<S> {
    /// Serves `engine` on `addr`, at most `conns_max` connections at once.
    pub fn bind(addr: SocketAddr, engine: Engine<S>, conns_max: usize) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.add(listener.as_fd(), EPOLLIN | EPOLLET, LISTENER)?;
        Ok(S3OnKernel {
            engine,
            listener: Some(listener),
            epoll,
            events: vec![EpollEvent::EMPTY; 256],
            conns: (0..conns_max.max(1)).map(|_| None).collect(),
            open: 0,
            counts: ConnCounts::default(),
            shutting_down: false,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Connection counters.
    pub fn counts(&self) -> ConnCounts {
        self.counts
    }

    fn accept(&mut self, now: Instant) -> bool {
        let Some(listener) = &self.listener else {
            return false;
        };
        let mut any = false;
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(_) => break,
            };
            any = true;
            let slot = self.conns.iter().position(Option::is_none);
            let Some(slot) = slot.filter(|_| !self.shutting_down) else {
                self.counts.refused += 1;
                continue; // dropped: closed
            };
            let ready = stream
                .set_nonblocking(true)
                .and_then(|()| stream.set_nodelay(true));
            let registered = ready.and_then(|()| {
                self.epoll.add(
                    stream.as_fd(),
                    EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                    slot as u64 + 1,
                )
            });
            if let Err(e) = registered {
                tracing::warn!(error = %e, "cannot set up an accepted connection; dropping it");
                self.counts.refused += 1;
                continue;
            }
            self.counts.accepted += 1;
            self.open += 1;
            self.conns[slot] = Some((stream, HttpConn::new(now)));
        }
        any
    }
}

impl<S: ChunkStore + 'static> Service for S3OnKernel<S> {
    fn turn(&mut self, now: Instant) -> bool {
        let mut progress = self.accept(now);
        let wall = SystemTime::now();
        for slot in 0..self.conns.len() {
            let Some((stream, c)) = &mut self.conns[slot] else {
                continue;
            };
            let (moved, alive) = pump(&mut self.engine, c, &mut KernelIo(stream), now, wall);
            progress |= moved;
            if !alive || c.is_done() {
                if let Some((stream, c)) = self.conns[slot].take() {
                    let graceful = alive && c.ending() != Some(Ending::TimedOut);
                    self.engine.discard(c);
                    if graceful {
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                    } else {
                        // Dropped with SO_LINGER 0: a reset, not a wait for a peer that is not
                        // reading.
                        let _ = crate::sys::socket::set_linger_zero(stream.as_fd());
                    }
                }
                self.open -= 1;
                self.counts.closed += 1;
                progress = true;
            }
        }
        progress
    }
    fn sleep(&mut self, _now: Instant, max: Duration) {
        let _ = self.epoll.wait(&mut self.events, max);
    }
    fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        self.listener = None;
        for (_, c) in self.conns.iter_mut().flatten() {
            c.close_after_answer();
        }
    }
    fn is_idle(&self) -> bool {
        self.open == 0
    }
    fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(5)
    }
    fn observe(&mut self, _f: &mut dyn FnMut(&mut dyn Observed)) {}
    fn stats(&self) -> ServerStats {
        server_stats(self.engine.stats(), self.counts)
    }
}

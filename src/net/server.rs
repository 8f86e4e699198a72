//! [`KernelServer`]: the chunk server over kernel TCP, one thread serving every connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant as WallInstant};

use crate::chunk::{
    conn_tag, refusal, take_results, ChunkStore, ServeCtx, ServerConfig, ServerConn,
    ServerSnapshot, ServerStats, Staging, Storage, REFUSED_LINGER, REFUSED_MAX,
};
use crate::sys::socket::{
    self, Epoll, EpollEvent, EPOLLERR, EPOLLET, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP,
};

use super::pipe::{Pipe, ReadOutcome};
use super::{bind_hint, NetError};

/// How long a connection closed by the server (protocol error, shutdown) keeps reading and
/// discarding what the peer still sends, so the peer receives the last answer (a close with
/// unread input would reset the connection and could destroy it in flight).
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Read/feed/write rounds per connection per poll: bounds how long one busy connection keeps
/// the others waiting (about `ROUNDS_MAX` receive buffers of input).
const ROUNDS_MAX: usize = 4;

/// Passes over all connections per poll (see [`KernelServer::poll`]).
const PASSES_MAX: usize = 4;

/// Connections accepted per poll.
const ACCEPT_BURST_MAX: usize = 64;

/// Reads discarded per poll from a connection that is closing.
const LINGER_READS_MAX: usize = 8;

/// How long accepting pauses after the process ran out of descriptors or memory.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How long [`KernelServer::run_until`] waits in `epoll_wait` between looks at its stop flag.
const IDLE_WAIT: Duration = Duration::from_millis(20);

/// The epoll token of the listener (connections have their slot index).
const LISTENER: u64 = u64::MAX;

/// The epoll token of the storage workers' eventfd.
const STORAGE: u64 = u64::MAX - 1;

/// Events taken from the kernel per wait.
const EVENTS_MAX: usize = 256;

/// How long the loop sleeps at most while store calls run (their timeouts are checked then).
const STORAGE_WAIT_MAX: Duration = Duration::from_millis(100);

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    Open,
    /// Our side is shut; reading and discarding until the peer closes or `deadline`.
    Lingering {
        deadline: WallInstant,
    },
}

struct Slot {
    stream: Option<TcpStream>,
    peer: Option<SocketAddr>,
    core: ServerConn,
    pipe: Pipe,
    state: SlotState,
    /// The kernel said readable and no read has found the socket empty since.
    readable: bool,
    /// A read returned end of stream.
    peer_eof: bool,
    /// epoll reported the peer's end of stream (EPOLLRDHUP): reads go on until one returns
    /// it, since no other edge will say it is there.
    rdhup: bool,
    /// The core was told about the end of stream (after it took every buffered byte).
    eof_fed: bool,
    /// epoll reported an error or hang-up: the connection cannot carry answers any more, so it
    /// goes as soon as it stops making progress.
    hung_up: bool,
    /// Bumped at each accept: store results for an earlier connection in this slot are
    /// recognised and dropped.
    generation: u32,
}

/// A chunk server on kernel TCP: accepts up to `connections_max` connections on one address and
/// serves their pipelined requests from the store, all on the thread that calls
/// [`KernelServer::poll`].
///
/// Connections beyond `connections_max` (or arriving during shutdown) are accepted, told why
/// (an answer with request id 0 and status [`Status::TooManyConnections`](crate::proto::Status::TooManyConnections) or
/// [`Status::ShuttingDown`](crate::proto::Status::ShuttingDown)) and closed, and counted in
/// [`ServerStats::connections_refused`]. Up to 16 of them wait (reading and discarding, at
/// most 1 s) for their peer to close first, so the refusal is not lost to a reset; beyond
/// that, refusals are resets.
pub struct KernelServer<S: ChunkStore + 'static> {
    storage: Storage<S>,
    staging: Staging,
    shutdown_grace: Duration,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    slots: Vec<Slot>,
    free: Vec<usize>,
    stats: ServerStats,
    shutting_down: bool,
    grace_deadline: Option<WallInstant>,
    accept_paused_until: Option<WallInstant>,
    /// The last poll stopped with work left: the next one looks again without waiting.
    hot: bool,
    /// Every socket is registered once, edge-triggered: a wait costs the same with 1 or 1,000
    /// connections, and a connection is looked at only when the kernel says it changed.
    epoll: Epoll,
    events: Vec<EpollEvent>,
    /// The listener reported connections not all accepted yet (edge-triggered: no second
    /// report comes for them).
    accept_pending: bool,
    /// Refused connections, told why and shut for writing, kept until their peer closes or
    /// the deadline (at most `REFUSED_MAX`; not in epoll: looked at on every turn).
    refused: Vec<(TcpStream, WallInstant)>,
}

impl<S: ChunkStore + 'static> KernelServer<S> {
    /// Listens on `addr` (port 0 picks a free port: see [`KernelServer::local_addr`]) and
    /// reserves everything the server will use: `connections_max` connection slots, each with
    /// its protocol state and a [`RECV_BUFFER_LEN`](super::RECV_BUFFER_LEN) +
    /// [`SEND_BUFFER_LEN`](super::SEND_BUFFER_LEN) buffer pair, and the staging pools.
    pub fn bind(addr: SocketAddr, store: S, cfg: ServerConfig) -> Result<Self, NetError> {
        cfg.limits.validate()?;
        if cfg.connections_max == 0 {
            return Err(NetError::Config {
                field: "connections_max",
                value: 0,
                reason: "a server must take at least one connection",
            });
        }
        if cfg.backlog == 0 {
            return Err(NetError::Config {
                field: "backlog",
                value: 0,
                reason: "the listener must queue at least one connection",
            });
        }
        let staging = Staging::new(&cfg.staging, cfg.limits.payload_len_max as usize)?;
        let storage = Storage::new(store, &cfg.storage).map_err(NetError::Workers)?;
        if let Some(Err(e)) = storage.wake_fd() {
            return Err(NetError::Workers(e));
        }
        let bind_err = |source: io::Error| NetError::Bind {
            addr,
            hint: bind_hint(&source),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let option_err = |option| {
            move |source| NetError::SocketOption {
                addr: local_addr,
                option,
                source,
            }
        };
        socket::set_listen_backlog(listener.as_fd(), cfg.backlog)
            .map_err(option_err("the listen backlog"))?;
        listener
            .set_nonblocking(true)
            .map_err(option_err("O_NONBLOCK"))?;
        let epoll = Epoll::new().map_err(option_err("epoll"))?;
        epoll
            .add(listener.as_fd(), EPOLLIN | EPOLLET, LISTENER)
            .map_err(option_err("epoll registration"))?;
        if let Some(fd) = storage.wake_fd() {
            let fd = fd.map_err(NetError::Workers)?;
            epoll
                .add(fd, EPOLLIN, STORAGE)
                .map_err(option_err("epoll registration"))?;
        }
        let slots = (0..cfg.connections_max)
            .map(|_| Slot {
                stream: None,
                peer: None,
                core: ServerConn::new(cfg.limits),
                pipe: Pipe::new(),
                state: SlotState::Free,
                readable: false,
                peer_eof: false,
                rdhup: false,
                eof_fed: false,
                hung_up: false,
                generation: 0,
            })
            .collect();
        tracing::info!(
            addr = %local_addr,
            connections_max = cfg.connections_max,
            "chunk server listening on kernel TCP"
        );
        Ok(KernelServer {
            storage,
            staging,
            shutdown_grace: cfg.shutdown_grace,
            listener: Some(listener),
            local_addr,
            slots,
            free: (0..cfg.connections_max).rev().collect(),
            stats: ServerStats::default(),
            shutting_down: false,
            grace_deadline: None,
            accept_paused_until: None,
            hot: false,
            epoll,
            events: vec![EpollEvent::EMPTY; EVENTS_MAX],
            accept_pending: true,
            refused: Vec::with_capacity(REFUSED_MAX),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// One turn of the event loop: waits up to `timeout` for a socket to become ready (not at
    /// all if the last turn left work), then accepts, reads, runs requests and writes answers
    /// until nothing more can be done without waiting. Returns whether anything happened.
    pub fn poll(&mut self, timeout: Duration) -> bool {
        let now = WallInstant::now();
        let wait = if self.hot {
            Duration::ZERO
        } else {
            self.next_deadline()
                .map_or(timeout, |d| timeout.min(d.saturating_duration_since(now)))
        };
        let n = match self.epoll.wait(&mut self.events, wait) {
            Ok(n) => n,
            Err(e) => {
                // Not expected (EINVAL, ENOMEM): serve what is ready rather than spin on it.
                tracing::warn!(error = %e, "epoll_wait failed on the chunk server's sockets");
                0
            }
        };
        let now = WallInstant::now();
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
        }
        for ev in &self.events[..n] {
            let (events, token) = (ev.events(), ev.token());
            if token == LISTENER {
                self.accept_pending = true;
                continue;
            }
            if token == STORAGE {
                if let Some(Ok(fd)) = self.storage.wake_fd() {
                    let _ = crate::sys::unix_ipc::eventfd_drain(fd);
                }
                continue;
            }
            let Some(slot) = self.slots.get_mut(token as usize) else {
                continue;
            };
            if events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP) != 0 {
                slot.readable = true;
            }
            if events & EPOLLRDHUP != 0 {
                slot.rdhup = true;
            }
            if events & (EPOLLOUT | EPOLLERR | EPOLLHUP) != 0 {
                slot.pipe.write_blocked = false;
            }
            if events & (EPOLLERR | EPOLLHUP) != 0 {
                slot.hung_up = true;
            }
        }
        let mut busy = self.take_store_results();
        if !self.refused.is_empty() {
            self.drain_refused(now);
        }
        if self.accept_pending && self.accept_paused_until.is_none() && self.listener.is_some() {
            busy |= self.accept_ready(now);
        }
        // Passes over every connection until one changes nothing: what one connection frees
        // (staging buffers, by sending) may let another's waiting request go on, and that
        // needs no syscall to find out. A loop cut short by PASSES_MAX makes the next poll
        // look again without waiting.
        self.hot = false;
        for pass in 1..=PASSES_MAX {
            let mut pass_busy = false;
            for i in 0..self.slots.len() {
                pass_busy |= match self.slots[i].state {
                    SlotState::Free => false,
                    SlotState::Open => self.serve(i, now),
                    SlotState::Lingering { deadline } => self.linger(i, deadline, now),
                };
            }
            busy |= pass_busy;
            if !pass_busy {
                break;
            }
            self.hot = pass == PASSES_MAX;
        }
        if self.grace_deadline.is_some_and(|d| now >= d) {
            for i in 0..self.slots.len() {
                if self.slots[i].state != SlotState::Free {
                    tracing::debug!(peer = ?self.slots[i].peer, "shutdown grace over: resetting");
                    self.release(i, true);
                    busy = true;
                }
            }
        }
        busy
    }

    /// Serves until `stop` is set (looking at it at least every 20 ms), then shuts down: stops
    /// accepting, lets queued answers go out for up to `shutdown_grace`, and closes every
    /// connection.
    pub fn run_until(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            self.poll(IDLE_WAIT);
        }
        self.shut_down();
    }

    /// [`KernelServer::begin_shutdown`], then polls until every connection is closed (at most
    /// `shutdown_grace`, plus one poll).
    pub fn shut_down(&mut self) {
        self.begin_shutdown();
        while !self.is_idle() {
            self.poll(IDLE_WAIT);
        }
    }

    /// Stops accepting (the listener closes) and taking new requests; answers already queued
    /// still go out until `shutdown_grace` has passed, then every connection left is reset. Keep
    /// polling until [`KernelServer::is_idle`].
    pub fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.listener = None;
        self.grace_deadline = Some(WallInstant::now() + self.shutdown_grace);
        for slot in &mut self.slots {
            slot.core.drain();
        }
        self.hot = true;
        tracing::info!(addr = %self.local_addr, "chunk server shutting down");
    }

    /// How long a shutdown may take to send the answers already due
    /// ([`ServerConfig::shutdown_grace`]); past it, connections left are reset.
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }

    /// No connection is open.
    pub fn is_idle(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    /// Connections open (including ones closing).
    pub fn connections(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Counters and what the server holds now, for operators (O(connections)).
    pub fn snapshot(&self) -> ServerSnapshot {
        ServerSnapshot::of(
            self.stats,
            self.slots
                .iter()
                .filter(|s| s.state != SlotState::Free)
                .map(|s| &s.core),
            self.slots.len(),
            self.storage.outstanding(),
            &self.staging,
        )
    }

    /// The store.
    pub fn store(&self) -> &S {
        self.storage.store()
    }

    /// Hands finished store calls to their connections and times out the ones that run too
    /// long; true if anything became ready.
    fn take_store_results(&mut self) -> bool {
        if !self.storage.uses_workers() {
            return false;
        }
        let (now, timeout) = (crate::time::Instant::now(), self.storage.timeout());
        let slots = &mut self.slots;
        let mut any = take_results(
            &mut self.storage,
            &mut self.stats,
            |i, done, stats| match slots.get_mut(i) {
                Some(slot) if slot.state == SlotState::Open && slot.core.tag() == done.tag => {
                    slot.core.complete(done, now, stats);
                    true
                }
                _ => false,
            },
        );
        for slot in &mut self.slots {
            if slot.core.storage_waiting() > 0 {
                let before = self.stats.storage_timeouts;
                slot.core.expire(now, timeout, &mut self.stats);
                any |= self.stats.storage_timeouts != before;
            }
        }
        any
    }

    /// The earliest time the loop must wake up by itself.
    fn next_deadline(&self) -> Option<WallInstant> {
        let lingering = self.slots.iter().filter_map(|s| match s.state {
            SlotState::Lingering { deadline } => Some(deadline),
            _ => None,
        });
        let storage =
            (self.storage.outstanding() > 0).then(|| WallInstant::now() + STORAGE_WAIT_MAX);
        // A refused connection is looked at again within 20 ms, or at its deadline.
        let refused = self
            .refused
            .iter()
            .map(|r| r.1.min(WallInstant::now() + IDLE_WAIT))
            .min();
        lingering
            .chain(refused)
            .chain(self.grace_deadline)
            .chain(self.accept_paused_until)
            .chain(storage)
            .min()
    }

    fn accept_ready(&mut self, now: WallInstant) -> bool {
        let mut busy = false;
        for _ in 0..ACCEPT_BURST_MAX {
            let Some(listener) = &self.listener else {
                break;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    busy = true;
                    self.admit(stream, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    break;
                }
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the listener stays readable, so pause
                    // instead of spinning on it.
                    tracing::warn!(
                        error = %e,
                        addr = %self.local_addr,
                        "accept failed; pausing accepts for {} ms",
                        ACCEPT_PAUSE.as_millis()
                    );
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    break;
                }
            }
        }
        // Stopped by the burst limit: more may wait, and no new edge reports them.
        self.hot |= self.accept_pending && self.accept_paused_until.is_none();
        busy
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) {
        let slot_index = if self.shutting_down {
            None
        } else {
            self.free.pop()
        };
        let Some(i) = slot_index else {
            self.refuse(stream, peer);
            return;
        };
        if let Err(e) = stream
            .set_nonblocking(true)
            .and_then(|()| stream.set_nodelay(true))
            .and_then(|()| {
                self.epoll.add(
                    stream.as_fd(),
                    EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                    i as u64,
                )
            })
        {
            tracing::warn!(%peer, error = %e, "cannot set O_NONBLOCK/TCP_NODELAY or register with epoll; dropping the connection");
            self.free.push(i);
            self.stats.connections_refused += 1;
            return;
        }
        let slot = &mut self.slots[i];
        slot.generation = slot.generation.wrapping_add(1);
        slot.core.reset(conn_tag(i, slot.generation));
        slot.pipe.reset();
        slot.stream = Some(stream);
        slot.peer = Some(peer);
        slot.state = SlotState::Open;
        // Data may have arrived with the handshake: try a read at once.
        slot.readable = true;
        slot.peer_eof = false;
        slot.rdhup = false;
        slot.eof_fed = false;
        slot.hung_up = false;
        self.stats.connections_accepted += 1;
        tracing::debug!(%peer, slot = i, "connection accepted");
    }

    /// Moves bytes for one open connection; closes it when the core says so.
    fn serve(&mut self, i: usize, now: WallInstant) -> bool {
        let KernelServer {
            slots,
            storage,
            staging,
            stats,
            grace_deadline,
            ..
        } = self;
        let mut ctx = ServeCtx {
            storage,
            staging,
            stats,
            now: crate::time::Instant::now(),
        };
        let slot = &mut slots[i];
        let Some(stream) = slot.stream.as_mut() else {
            return false;
        };
        let mut busy = false;
        let mut failed = None;
        for _ in 0..ROUNDS_MAX {
            let mut progress = false;
            // Requests in. Called even with nothing buffered: a request waiting for a staging
            // buffer retries this way.
            let n = slot.core.handle_input(slot.pipe.received(), &mut ctx);
            slot.pipe.consume(n);
            progress |= n > 0;
            if slot.pipe.rx_is_empty() {
                if slot.readable && !slot.peer_eof {
                    match slot.pipe.read_from(stream) {
                        Ok(ReadOutcome::Data { drained }) => {
                            progress = true;
                            // Emptied: epoll says when more comes, no need to ask with a read
                            // (unless the end of stream is already there: no edge will come).
                            slot.readable = !drained || slot.rdhup;
                        }
                        Ok(ReadOutcome::WouldBlock) => slot.readable = false,
                        // The socket may still hold data, and no new edge will say so.
                        Ok(ReadOutcome::Full) => {}
                        Ok(ReadOutcome::Eof) => {
                            slot.peer_eof = true;
                            progress = true;
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                // A READ still waiting for a staging buffer survives the end of stream; the
                // handle_input call at the top of each round retries it.
                if slot.peer_eof && !slot.eof_fed && slot.pipe.rx_is_empty() {
                    slot.core.handle_eof(ctx.stats);
                    slot.eof_fed = true;
                }
            }
            // Answers out.
            if !slot.pipe.write_blocked {
                match slot.pipe.flush(stream.as_fd(), &mut slot.core) {
                    Ok(n) => progress |= n > 0,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            busy |= progress;
            if !progress {
                break;
            }
        }
        if let Some(e) = failed {
            tracing::debug!(peer = ?slot.peer, error = %e, "connection failed");
            self.release(i, true);
            return true;
        }
        if slot.hung_up && !busy {
            tracing::debug!(peer = ?slot.peer, "connection hung up");
            self.release(i, true);
            return true;
        }
        if !(slot.core.should_close() && slot.pipe.tx_is_empty()) {
            return busy;
        }
        if slot.eof_fed {
            // The peer finished sending and has every answer: an orderly close.
            tracing::debug!(peer = ?slot.peer, "connection done");
            self.release(i, false);
        } else {
            // A protocol error or shutdown: send FIN after the last answer, and read what the
            // peer still sends until it closes, so the last answer is not destroyed by a reset.
            let _ = stream.shutdown(Shutdown::Write);
            let mut deadline = now + CLOSE_LINGER;
            if let Some(g) = *grace_deadline {
                deadline = deadline.min(g);
            }
            slot.state = SlotState::Lingering { deadline };
            slot.readable = true;
            tracing::debug!(peer = ?slot.peer, "closing connection");
        }
        true
    }

    /// Reads and discards from a closing connection; frees it on end of stream or deadline.
    fn linger(&mut self, i: usize, deadline: WallInstant, now: WallInstant) -> bool {
        let slot = &mut self.slots[i];
        let Some(stream) = slot.stream.as_mut() else {
            return false;
        };
        let mut busy = false;
        let mut done = now >= deadline;
        let mut reads = 0;
        while !done && slot.readable && reads < LINGER_READS_MAX {
            reads += 1;
            slot.pipe.consume(usize::MAX);
            match slot.pipe.read_from(stream) {
                Ok(ReadOutcome::Data { .. }) => busy = true,
                Ok(ReadOutcome::WouldBlock) => slot.readable = false,
                Ok(ReadOutcome::Full) => {}
                Ok(ReadOutcome::Eof) | Err(_) => done = true,
            }
        }
        slot.pipe.consume(usize::MAX);
        if done {
            self.release(i, false);
            return true;
        }
        busy
    }

    /// Tells the peer why it is not served (one answer with request id 0) and closes: shut
    /// for writing and kept until the peer closes, so the answer is not lost to the reset a
    /// close with unread input would send; a reset at once when `REFUSED_MAX` wait already.
    fn refuse(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        self.stats.connections_refused += 1;
        let (status, answer) = refusal(self.shutting_down);
        tracing::debug!(%peer, %status, "connection refused");
        // A fresh socket's send buffer takes 40 bytes at once.
        let told = self.refused.len() < REFUSED_MAX
            && stream.set_nonblocking(true).is_ok()
            && stream.write(&answer).is_ok_and(|n| n == answer.len())
            && stream.shutdown(Shutdown::Write).is_ok();
        if told {
            self.refused
                .push((stream, WallInstant::now() + REFUSED_LINGER));
        } else {
            let _ = socket::set_linger_zero(stream.as_fd());
        }
    }

    /// Reads and discards what refused connections sent; drops those whose peer closed or
    /// whose time is up.
    fn drain_refused(&mut self, now: WallInstant) {
        let mut scratch = [0u8; 512];
        self.refused.retain_mut(|(stream, deadline)| {
            if now >= *deadline {
                return false;
            }
            for _ in 0..16 {
                match stream.read(&mut scratch) {
                    Ok(0) => return false,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            true
        });
    }

    /// Closes slot `i` (with a reset if `reset`) and makes it free.
    fn release(&mut self, i: usize, reset: bool) {
        let slot = &mut self.slots[i];
        if let Some(stream) = slot.stream.take() {
            if reset {
                let _ = socket::set_linger_zero(stream.as_fd());
            }
            drop(stream);
        }
        slot.state = SlotState::Free;
        slot.peer = None;
        // A result still due for this connection finds another tag and is dropped.
        slot.core.reset(u64::MAX);
        slot.pipe.reset();
        self.free.push(i);
        self.stats.connections_closed += 1;
    }
}

impl<S: ChunkStore + 'static> KernelServer<S> {
    /// Binds (errors come back here) and runs the server on a new thread until
    /// [`ServerHandle::stop`]: for tests, benchmarks and simple embedders.
    pub fn spawn(
        addr: SocketAddr,
        store: S,
        cfg: ServerConfig,
    ) -> Result<ServerHandle<S>, NetError> {
        KernelServer::bind(addr, store, cfg)?.start()
    }

    /// Runs this server on a new thread until [`ServerHandle::stop`].
    pub fn start(mut self) -> Result<ServerHandle<S>, NetError> {
        let stop = Arc::new(AtomicBool::new(false));
        let local_addr = self.local_addr;
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("chunk-server-{}", local_addr.port()))
            .spawn(move || {
                self.run_until(&flag);
                self
            })
            .map_err(NetError::Thread)?;
        Ok(ServerHandle {
            stop,
            thread: Some(thread),
            local_addr,
        })
    }
}

/// A [`KernelServer`] running on its own thread. Dropping the handle stops the server too.
pub struct ServerHandle<S: ChunkStore + 'static> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<KernelServer<S>>>,
    local_addr: SocketAddr,
}

impl<S: ChunkStore + 'static> ServerHandle<S> {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Shuts the server down (as [`KernelServer::run_until`] does) and returns its counters.
    /// A panic on the server thread is resumed here.
    pub fn stop(self) -> ServerStats {
        self.stop_server().stats()
    }

    /// Shuts the server down and returns it (its store, its counters).
    pub fn stop_server(mut self) -> KernelServer<S> {
        self.stop.store(true, Ordering::Release);
        let thread = self
            .thread
            .take()
            .expect("the server thread is joined only here");
        match thread.join() {
            Ok(server) => server,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl<S: ChunkStore + 'static> Drop for ServerHandle<S> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.store(true, Ordering::Release);
            let _ = thread.join();
        }
    }
}

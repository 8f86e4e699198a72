//! [`KernelClient`]: one kernel-TCP connection to a chunk server, many requests in flight.

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use crate::chunk::{
    ChunkOp, ClientConfig, ClientConn, ClientError, ClientStats, Completion, Staging, SubmitError,
};
use crate::proto::Status;
use crate::sys::socket::{self, PollFd, POLLIN, POLLOUT};
use crate::time::Instant;

use super::pipe::{Pipe, ReadOutcome};
use super::{connect_hint, NetError};

/// Read/feed/write rounds per [`KernelClient::poll`] before it returns to the caller.
const ROUNDS_MAX: usize = 8;

/// The longest single wait in [`KernelClient::call`] (it re-reads the clock after each).
const CALL_WAIT_MAX: Duration = Duration::from_millis(100);

/// A chunk client on kernel TCP: one connection, up to `in_flight_max` pipelined requests, the
/// same API as [`ChunkClient`](crate::chunk::ChunkClient) without a [`Stack`](crate::stack::Stack).
///
/// The connection is made (blocking, bounded by `connect_timeout`) by
/// [`KernelClient::connect`]; afterwards nothing blocks except [`KernelClient::poll`] when told
/// it may wait, and [`KernelClient::call`].
pub struct KernelClient {
    stream: TcpStream,
    peer: SocketAddr,
    core: ClientConn,
    pipe: Pipe,
    /// Completions [`KernelClient::call`] took out of the core while waiting for its own.
    parked: VecDeque<Completion>,
    in_flight_max: usize,
    /// The last read emptied the socket: with time to wait, ppoll first instead of reading.
    drained: bool,
    closed: bool,
}

impl KernelClient {
    /// Connects to `server` (waiting at most `cfg.connect_timeout`) and reserves the client's
    /// own staging pools and buffers.
    pub fn connect(server: SocketAddr, cfg: &ClientConfig) -> Result<KernelClient, NetError> {
        cfg.limits.validate()?;
        let staging = Staging::new(&cfg.staging, cfg.limits.payload_len_max as usize)?;
        KernelClient::connect_with_staging(server, cfg, staging)
    }

    /// Like [`KernelClient::connect`], drawing payload buffers from `staging` (shared by many
    /// clients; its large buffers must hold `cfg.limits.payload_len_max` bytes).
    pub fn connect_with_staging(
        server: SocketAddr,
        cfg: &ClientConfig,
        staging: Staging,
    ) -> Result<KernelClient, NetError> {
        cfg.limits.validate()?;
        if cfg.connect_timeout.is_zero() {
            return Err(NetError::Config {
                field: "connect_timeout",
                value: 0,
                reason: "connecting needs some time: use at least a few milliseconds",
            });
        }
        let stream =
            TcpStream::connect_timeout(&server, cfg.connect_timeout).map_err(|source| {
                NetError::Connect {
                    addr: server,
                    hint: connect_hint(&source),
                    source,
                }
            })?;
        let option_err = |option| {
            move |source| NetError::SocketOption {
                addr: server,
                option,
                source,
            }
        };
        stream
            .set_nodelay(true)
            .map_err(option_err("TCP_NODELAY"))?;
        stream
            .set_nonblocking(true)
            .map_err(option_err("O_NONBLOCK"))?;
        let in_flight_max = cfg.limits.in_flight_max.max(1) as usize;
        tracing::debug!(%server, "chunk client connected over kernel TCP");
        Ok(KernelClient {
            stream,
            peer: server,
            core: ClientConn::with_staging(cfg, staging),
            pipe: Pipe::new(),
            parked: VecDeque::with_capacity(in_flight_max),
            in_flight_max,
            drained: false,
            closed: false,
        })
    }

    /// Queues a request; returns its id. It goes out on the next [`KernelClient::poll`].
    pub fn submit(&mut self, op: ChunkOp<'_>, now: Instant) -> Result<u64, SubmitError> {
        if self.closed {
            return Err(SubmitError::Closed);
        }
        if self.core.in_flight() + self.core.completions_ready() + self.parked.len()
            >= self.in_flight_max
        {
            return Err(SubmitError::TooManyInFlight {
                max: self.in_flight_max,
            });
        }
        self.core.submit(op, now)
    }

    /// Sends what is queued, reads answers, and expires requests whose deadline passed at
    /// `now`. If no request completed that way and some are outstanding, waits in `ppoll` for
    /// the socket up to `wait` (never past the earliest request deadline) and does it all once
    /// more. Returns whether anything happened (bytes moved, a request completed).
    ///
    /// With nothing outstanding it returns at once: no answer can come.
    pub fn poll(&mut self, now: Instant, wait: Duration) -> bool {
        if self.closed || self.core.is_broken() {
            return false;
        }
        let ready = self.core.completions_ready();
        // Allowed to wait and the socket was emptied last time: ppoll, not a read, says when
        // there is more.
        let busy = self.pump(now, wait.is_zero() || !self.drained);
        if self.core.completions_ready() != ready
            || wait.is_zero()
            || self.core.in_flight() == 0
            || self.core.is_broken()
        {
            return busy;
        }
        let wait = self
            .core
            .next_deadline()
            .map_or(wait, |d| wait.min(d.saturating_duration_since(now)));
        let mut events = POLLIN;
        if self.pipe.write_blocked {
            events |= POLLOUT;
        }
        let mut fds = [PollFd::new(self.stream.as_raw_fd(), events)];
        let started = std::time::Instant::now();
        if let Err(e) = socket::poll(&mut fds, wait) {
            tracing::warn!(error = %e, "ppoll failed on the chunk client's socket");
        }
        self.pipe.write_blocked = false;
        self.pump(now + started.elapsed(), true) | busy
    }

    /// Moves bytes both ways without waiting (reading only if `read`, or once more input came),
    /// then expires requests.
    fn pump(&mut self, now: Instant, read: bool) -> bool {
        let mut busy = false;
        let mut read = read;
        for _ in 0..ROUNDS_MAX {
            let mut progress = false;
            let n = self.core.handle_input(self.pipe.received());
            self.pipe.consume(n);
            progress |= n > 0;
            if self.core.is_broken() {
                // A response the client cannot skip (bad magic, header CRC...): the core
                // failed every request.
                return true;
            }
            if read && self.pipe.rx_is_empty() {
                match self.pipe.read_from(&mut self.stream) {
                    Ok(ReadOutcome::Data { drained }) => {
                        progress = true;
                        self.drained = drained;
                        read = !drained;
                    }
                    Ok(ReadOutcome::WouldBlock) | Ok(ReadOutcome::Full) => {
                        self.drained = true;
                        read = false;
                    }
                    Ok(ReadOutcome::Eof) => {
                        return self.lost(None);
                    }
                    Err(e) => return self.lost(Some(e)),
                }
            }
            match self.pipe.flush(self.stream.as_fd(), &mut self.core) {
                Ok(n) => progress |= n > 0,
                Err(e) => return self.lost(Some(e)),
            }
            busy |= progress;
            if !progress {
                break;
            }
        }
        let before = self.core.completions_ready();
        self.core.handle_timeouts(now);
        busy || self.core.completions_ready() != before
    }

    /// The connection ended: answers the server sent before it went are still taken (a failed
    /// send can come before the read that would have found them), then every request left
    /// fails with `ConnectionLost`.
    fn lost(&mut self, error: Option<io::Error>) -> bool {
        while !self.core.is_broken() {
            let n = self.core.handle_input(self.pipe.received());
            self.pipe.consume(n);
            if !self.pipe.rx_is_empty() {
                break;
            }
            match self.pipe.read_from(&mut self.stream) {
                Ok(ReadOutcome::Data { .. }) => {}
                _ => break,
            }
        }
        match &error {
            Some(e) => tracing::debug!(server = %self.peer, error = %e, "chunk connection lost"),
            None => tracing::debug!(server = %self.peer, "chunk server closed the connection"),
        }
        self.core.fail_all(ClientError::ConnectionLost);
        true
    }

    /// Submits `op` and polls (blocking) until it completes: with an answer, a timeout
    /// (`request_timeout`), or a lost connection. Completions of other requests that arrive
    /// meanwhile are kept for [`KernelClient::next_completion`].
    pub fn call(&mut self, op: ChunkOp<'_>) -> Result<Completion, SubmitError> {
        let id = self.submit(op, Instant::now())?;
        loop {
            while let Some(c) = self.core.next_completion() {
                if c.request_id == id {
                    return Ok(c);
                }
                self.parked.push_back(c);
            }
            if self.closed || self.core.is_broken() {
                // fail_all completed every request, ours included: it was taken above.
                return Err(SubmitError::Closed);
            }
            self.poll(Instant::now(), CALL_WAIT_MAX);
        }
    }

    /// The next finished request.
    pub fn next_completion(&mut self) -> Option<Completion> {
        self.parked
            .pop_front()
            .or_else(|| self.core.next_completion())
    }

    /// Requests submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    /// Completions waiting to be taken.
    pub fn completions_ready(&self) -> usize {
        self.core.completions_ready() + self.parked.len()
    }

    /// The earliest request deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.core.next_deadline()
    }

    /// Whether the connection failed: every request fails, a new client must connect.
    pub fn is_broken(&self) -> bool {
        self.core.is_broken()
    }

    /// The status the server gave for the whole connection when it refused or closed it
    /// (e.g. [`Status::TooManyConnections`]), if it gave one.
    pub fn refusal(&self) -> Option<Status> {
        self.core.refusal()
    }

    /// Whether request bytes are queued that the kernel has not taken yet. An application
    /// that waits on many clients' sockets with one `poll(2)` asks for `POLLOUT` on these and
    /// `POLLIN` on all (see the [`AsFd`] implementation).
    pub fn has_unsent(&self) -> bool {
        self.core.next_output().is_some() || self.pipe.has_unsent()
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The local address of the connection.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.core.stats()
    }

    /// Closes the connection; outstanding requests fail with `ConnectionLost` (their
    /// completions stay available).
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.core.fail_all(ClientError::ConnectionLost);
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }
}

impl std::fmt::Debug for KernelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelClient")
            .field("server", &self.peer)
            .field("in_flight", &self.core.in_flight())
            .field("broken", &self.core.is_broken())
            .field("closed", &self.closed)
            .finish()
    }
}

/// The connection's socket, for waiting on many clients at once with `poll(2)` or epoll: when
/// it is readable (or writable while [`KernelClient::has_unsent`]), call
/// [`KernelClient::poll`]. Reading or writing the socket directly would corrupt the stream.
impl AsFd for KernelClient {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

//! The serving loop: what every chunk server's `main` would otherwise write by hand.
//!
//! A [`ServeLoop`] turns a [`Service`] (a [`ChunkServer`] on a [`Stack`], as
//! [`StackService`], or a kernel-TCP [`KernelServer`]) until it is asked to stop, then shuts it
//! down gracefully:
//!
//! - **Busy-polling, then sleeping.** Every turn polls the service; after
//!   [`ServeLoop::spin_polls`] turns in a row with nothing to do it sleeps in the device (or in
//!   epoll for kernel TCP) for at most [`ServeLoop::sleep_max`], so a request that comes while
//!   the loop spins is seen at once and an idle server does not burn its core. While store
//!   calls run on storage workers and nothing else moves, it yields the CPU instead of sleeping
//!   (their results come without a packet to wake a sleep).
//! - **Operators.** With a [`Hub`] ([`ServeLoop::hub`]) it answers the metrics endpoint and the
//!   admin socket between turns (one relaxed atomic load per turn while nobody asks).
//! - **Stopping.** On SIGINT/SIGTERM ([`ServeLoop::stop_on_signals`]) or a [`StopHandle`]
//!   (from any thread), the service stops accepting and taking requests, sends the answers
//!   already due (every WRITE it acknowledged is in the store), and the loop ends once every
//!   connection is closed or the server's `shutdown_grace` has passed; a ustack service then
//!   polls a little longer ([`ServeLoop::drain`]) so the last FINs and ACKs go out.
//! - **Cores.** [`run_cores`] runs one loop per core, each over its own service (per-core
//!   shards: a device queue and a stack each), all stopped together.
//! - **Reports.** The callback given to [`ServeLoop::run`] hears of the start of the shutdown
//!   and, every [`ServeLoop::report_every`], gets the service to print or export its counters.
//!
//! ```no_run
//! use ustack::prelude::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = AnyDevice::open_memif(&MemifConfig::new("/tmp/chunks.sock", MemifRole::Server))?;
//! let mut stack = Stack::new(dev, StackConfig::new("10.0.0.1".parse()?, 24))?;
//! let server = ChunkServer::bind(&mut stack, 7000, MemStore::new(1 << 30), ServerConfig::default())?;
//! let mut service = StackService::new(stack, server);
//! let ended = ServeLoop::new().stop_on_signals()?.run(&mut service, |_, _| {});
//! println!("stopped by {:?}; every connection closed in time: {}", ended.cause, ended.drained);
//! # Ok(()) }
//! ```

mod cores;

pub use cores::{check_cores, run_cores, CoreList, CoreRun, CoresError};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::chunk::{ChunkServer, ChunkStore, ServerStats};
use crate::dev::PacketDevice;
use crate::metrics::{Hub, KernelServerView, Observed, StackServerView};
use crate::net::KernelServer;
use crate::stack::Stack;
use crate::sys::signal;
use crate::time::Instant;

/// A server the [`ServeLoop`] can run: [`StackService`] (a [`ChunkServer`] on a [`Stack`]),
/// [`KernelServer`], or an embedder's own.
pub trait Service {
    /// One turn without waiting: move frames, accept, serve requests, send answers. Returns
    /// whether anything happened.
    fn turn(&mut self, now: Instant) -> bool;
    /// Nothing happened for a while: sleep until traffic may have come, at most `max`.
    fn sleep(&mut self, now: Instant, max: Duration);
    /// Store calls running on storage workers: while some are, the loop yields instead of
    /// sleeping. 0 when the store is called inline.
    fn storage_outstanding(&self) -> usize {
        0
    }
    /// Stops accepting and taking new requests; answers already due still go out.
    fn begin_shutdown(&mut self);
    /// Every connection is closed.
    fn is_idle(&self) -> bool;
    /// How long shutdown may take to send the answers already due (the server's
    /// `ServerConfig::shutdown_grace`).
    fn shutdown_grace(&self) -> Duration;
    /// After the shutdown: until `deadline`, let the last segments (FINs, ACKs) out. Nothing to
    /// do for kernel TCP, whose sockets outlive the process's interest in them.
    fn flush(&mut self, _deadline: Instant) {}
    /// Calls `f` with the service as the metrics [`Hub`] sees it.
    fn observe(&mut self, f: &mut dyn FnMut(&mut dyn Observed));
    /// The server's counters.
    fn stats(&self) -> ServerStats;
}

/// A [`ChunkServer`] and the [`Stack`] it serves on, as one [`Service`]. Both stay reachable
/// (`service.stack`, `service.server`) for reports and for what the loop does not do.
pub struct StackService<D: PacketDevice + 'static, S: ChunkStore + 'static> {
    /// The stack.
    pub stack: Stack<D>,
    /// The chunk server bound on it.
    pub server: ChunkServer<S>,
}

impl<D: PacketDevice + 'static, S: ChunkStore + 'static> StackService<D, S> {
    /// `server` must have been bound on `stack`.
    pub fn new(stack: Stack<D>, server: ChunkServer<S>) -> Self {
        StackService { stack, server }
    }
}

impl<D: PacketDevice + 'static, S: ChunkStore + 'static> Service for StackService<D, S> {
    #[inline]
    fn turn(&mut self, now: Instant) -> bool {
        self.stack.poll(now) | self.server.poll(&mut self.stack)
    }
    fn sleep(&mut self, now: Instant, max: Duration) {
        self.stack.wait(now, max);
    }
    fn storage_outstanding(&self) -> usize {
        self.server.storage_outstanding()
    }
    fn begin_shutdown(&mut self) {
        self.server.begin_shutdown(&mut self.stack);
    }
    fn is_idle(&self) -> bool {
        self.server.is_idle()
    }
    fn shutdown_grace(&self) -> Duration {
        self.server.shutdown_grace()
    }
    fn flush(&mut self, deadline: Instant) {
        while Instant::now() < deadline {
            self.stack.poll(Instant::now());
        }
    }
    fn observe(&mut self, f: &mut dyn FnMut(&mut dyn Observed)) {
        f(&mut StackServerView {
            stack: &mut self.stack,
            server: &self.server,
        })
    }
    fn stats(&self) -> ServerStats {
        self.server.stats()
    }
}

impl<S: ChunkStore + 'static> Service for KernelServer<S> {
    #[inline]
    fn turn(&mut self, _now: Instant) -> bool {
        self.poll(Duration::ZERO)
    }
    fn sleep(&mut self, _now: Instant, max: Duration) {
        // epoll: wakes with the first readable socket, and serves it.
        self.poll(max);
    }
    fn begin_shutdown(&mut self) {
        KernelServer::begin_shutdown(self);
    }
    fn is_idle(&self) -> bool {
        KernelServer::is_idle(self)
    }
    fn shutdown_grace(&self) -> Duration {
        KernelServer::shutdown_grace(self)
    }
    fn observe(&mut self, f: &mut dyn FnMut(&mut dyn Observed)) {
        f(&mut KernelServerView { server: self })
    }
    fn stats(&self) -> ServerStats {
        KernelServer::stats(self)
    }
}

/// Asks a [`ServeLoop`] to stop, from any thread (clone it freely).
#[derive(Clone, Debug, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// Asks the loop to shut down; it begins at its next turn.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`StopHandle::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Why the loop stopped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// A signal the loop's handlers caught (`libc::SIGINT`, `libc::SIGTERM`).
    Signal(i32),
    /// [`StopHandle::stop`].
    Requested,
}

impl std::fmt::Display for StopCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopCause::Signal(sig) => write!(f, "signal {sig}"),
            StopCause::Requested => f.write_str("stop requested"),
        }
    }
}

/// What the loop tells the callback of [`ServeLoop::run`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// [`ServeLoop::report_every`] has passed since the last report (or the start).
    Report,
    /// The shutdown begins: the service no longer accepts or takes requests.
    Stopping(StopCause),
}

/// How a [`ServeLoop::run`] ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// What stopped it.
    pub cause: StopCause,
    /// Every connection closed within the shutdown grace (`false`: some were cut off).
    pub drained: bool,
    /// From the start of the run to its end.
    pub served: Duration,
}

/// The serving loop: spin-then-sleep polling, operator requests, graceful shutdown on a signal
/// or a [`StopHandle`] (see the module docs). Configure it with the builder methods, then
/// [`ServeLoop::run`] a service.
#[derive(Clone, Debug)]
pub struct ServeLoop {
    spin_polls: u32,
    sleep_max: Duration,
    drain: Duration,
    report_every: Option<Duration>,
    hub: Option<Hub>,
    signals: bool,
    stop: StopHandle,
}

impl Default for ServeLoop {
    fn default() -> ServeLoop {
        ServeLoop::new()
    }
}

impl ServeLoop {
    /// Idle turns spun through before sleeping, by default: about 100 us to 1 ms of polling,
    /// enough for the next request of a busy client to find the loop awake.
    pub const SPIN_POLLS: u32 = 1000;

    /// A loop with the defaults: [`ServeLoop::SPIN_POLLS`], sleeps of at most 1 ms, a drain
    /// of 100 ms, no reports, no hub, no signal handlers.
    pub fn new() -> ServeLoop {
        ServeLoop {
            spin_polls: Self::SPIN_POLLS,
            sleep_max: Duration::from_millis(1),
            drain: Duration::from_millis(100),
            report_every: None,
            hub: None,
            signals: false,
            stop: StopHandle::default(),
        }
    }

    /// Idle turns to spin through before sleeping (0: sleep at the first idle turn).
    pub fn spin_polls(mut self, n: u32) -> Self {
        self.spin_polls = n;
        self
    }

    /// The longest single sleep: how late the loop may notice a stop request, a report due or
    /// an operator's question while idle (traffic wakes it at once).
    pub fn sleep_max(mut self, d: Duration) -> Self {
        self.sleep_max = d.max(Duration::from_micros(1));
        self
    }

    /// After the shutdown, how long a ustack service keeps polling so its last FINs and ACKs
    /// go out (default 100 ms).
    pub fn drain(mut self, d: Duration) -> Self {
        self.drain = d;
        self
    }

    /// Calls the run's callback with [`Event::Report`] this often (`None` or zero: never).
    pub fn report_every(mut self, every: Option<Duration>) -> Self {
        self.report_every = every.filter(|d| !d.is_zero());
        self
    }

    /// Answers the metrics endpoint's and the admin socket's questions from this hub.
    pub fn hub(mut self, hub: Hub) -> Self {
        self.hub = Some(hub);
        self
    }

    /// Installs SIGINT and SIGTERM handlers (process-wide) and stops the loop when one comes.
    pub fn stop_on_signals(mut self) -> std::io::Result<Self> {
        signal::install_stop_handlers()?;
        self.signals = true;
        Ok(self)
    }

    /// A handle that stops the loop from anywhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    fn stop_cause(&self) -> Option<StopCause> {
        if self.signals && signal::stop_requested() {
            Some(StopCause::Signal(signal::stop_signal()))
        } else if self.stop.is_stopped() {
            Some(StopCause::Requested)
        } else {
            None
        }
    }

    /// Serves `service` until asked to stop, then shuts it down (see the module docs).
    /// `on_event` hears of reports due and of the shutdown's start, with the service at hand.
    pub fn run<S: Service>(
        &self,
        service: &mut S,
        mut on_event: impl FnMut(Event, &mut S),
    ) -> Ended {
        let started = Instant::now();
        let mut last_report = started;
        let mut idle_turns = 0u32;
        let mut stopping: Option<(StopCause, Instant)> = None;
        loop {
            let now = Instant::now();
            let mut busy = service.turn(now);
            if let Some(hub) = &self.hub {
                if hub.is_asked() {
                    service.observe(&mut |obs| busy |= hub.serve(now, obs));
                }
            }
            if let Some((_, deadline)) = stopping {
                if service.is_idle() || now >= deadline {
                    break;
                }
            } else if let Some(cause) = self.stop_cause() {
                on_event(Event::Stopping(cause), service);
                service.begin_shutdown();
                stopping = Some((cause, now + service.shutdown_grace()));
                continue;
            }
            if self
                .report_every
                .is_some_and(|every| now - last_report >= every)
            {
                on_event(Event::Report, service);
                last_report = now;
            }
            if busy {
                idle_turns = 0;
            } else if service.storage_outstanding() > 0 {
                // Store calls run and nothing else moved: give the CPU to a worker that may
                // share this core, rather than spin or sleep.
                std::thread::yield_now();
                idle_turns = 0;
            } else {
                idle_turns = idle_turns.saturating_add(1);
                if idle_turns > self.spin_polls {
                    service.sleep(now, self.sleep_max);
                }
            }
        }
        let (cause, _) = stopping.expect("the loop ends only after the shutdown began");
        let drained = service.is_idle();
        service.flush(Instant::now() + self.drain);
        Ended {
            cause,
            drained,
            served: Instant::now() - started,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkOp, ClientConfig, MemStore, ServerConfig};
    use crate::net::KernelClient;
    use crate::proto::ChunkId;

    /// A kernel-TCP server on the loop: a client's WRITE is acknowledged, the stop handle
    /// shuts the loop down, the run ends drained with the cause, and the listener is gone.
    #[test]
    fn kernel_service_serves_then_stops_on_request() {
        let cfg = ServerConfig {
            shutdown_grace: Duration::from_secs(2),
            ..ServerConfig::default()
        };
        let mut server =
            KernelServer::bind("127.0.0.1:0".parse().unwrap(), MemStore::new(1 << 20), cfg)
                .expect("bind");
        let addr = server.local_addr();
        let serve = ServeLoop::new().spin_polls(10);
        let stop = serve.stop_handle();
        let client = std::thread::spawn(move || {
            let mut c = KernelClient::connect(addr, &ClientConfig::default()).expect("connect");
            let id = ChunkId(7);
            let data = b"hello";
            let w = c
                .call(ChunkOp::Write {
                    id,
                    offset: 0,
                    data,
                })
                .expect("write");
            assert!(w.result.is_ok(), "{:?}", w.result);
            let r = c
                .call(ChunkOp::Read {
                    id,
                    offset: 0,
                    len: 5,
                })
                .expect("read");
            let got = r.data().to_vec();
            c.close();
            drop(c);
            stop.stop();
            got
        });
        let mut stopping = 0;
        let ended = serve.run(&mut server, |e, _| {
            assert_eq!(e, Event::Stopping(StopCause::Requested));
            stopping += 1;
        });
        assert_eq!(&client.join().unwrap(), b"hello");
        assert_eq!(stopping, 1);
        assert_eq!(ended.cause, StopCause::Requested);
        assert!(ended.drained);
        assert_eq!(server.stats().connections_accepted, 1);
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "still listening"
        );
    }

    /// Reports come every `report_every` while the loop idles (it sleeps at most `sleep_max`).
    #[test]
    fn reports_come_while_idle() {
        let mut server = KernelServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            MemStore::new(1 << 20),
            ServerConfig::default(),
        )
        .expect("bind");
        let serve = ServeLoop::new()
            .spin_polls(0)
            .report_every(Some(Duration::from_millis(5)));
        let stop = serve.stop_handle();
        let mut reports = 0;
        serve.run(&mut server, |e, _| {
            if e == Event::Report {
                reports += 1;
                if reports == 3 {
                    stop.stop();
                }
            }
        });
        assert_eq!(reports, 3);
    }
}

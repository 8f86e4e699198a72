//! The client sets chunkctl drives: kernel TCP clients, the in-process sim server, and
//! single requests over a set.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::common::{stack_config, Cidr, ClientSet, IdleSpin, Ready, IDLE_SPIN_POLLS};
use ustack::chunk::{
    ChunkOp, ChunkServer, Completion, MemStore, ServerConfig, ServerStats, SubmitError,
};
use ustack::dev::sim::SimPort;
use ustack::net::KernelClient;
use ustack::proto::{Limits, Reply};
use ustack::stack::Stack;
use ustack::Instant;

/// Kernel-TCP clients, one per connection.
pub(super) struct KernelClients {
    clients: Vec<KernelClient>,
    what: String,
    /// Connections held open and never used.
    idle: Vec<std::net::TcpStream>,
    ready: Ready,
    /// One `poll(2)` over every socket says which to pump, rather than a read per connection.
    fds: Vec<libc::pollfd>,
    /// Pumped next time whatever poll(2) says: a request was queued, or the last pump moved
    /// something (there may be more).
    dirty: Vec<bool>,
    /// When every connection was last pumped (which also expires requests past their deadline).
    swept: Instant,
    spin: IdleSpin,
}

impl KernelClients {
    pub(super) fn new(clients: Vec<KernelClient>, what: String) -> KernelClients {
        let n = clients.len();
        KernelClients {
            clients,
            what,
            idle: Vec::new(),
            ready: Ready::new(n),
            fds: Vec::with_capacity(n),
            dirty: vec![true; n],
            swept: Instant::ZERO,
            spin: IdleSpin::new(IDLE_SPIN_POLLS),
        }
    }
}

impl ClientSet for KernelClients {
    fn describe(&self) -> String {
        self.what.clone()
    }
    fn len(&self) -> usize {
        self.clients.len()
    }
    fn poll(&mut self, now: Instant) -> bool {
        let sweep = now.saturating_duration_since(self.swept) >= Duration::from_millis(10);
        if sweep {
            self.swept = now;
        }
        let mut pump_all = true;
        if self.clients.len() > 1 && !sweep {
            self.fds.clear();
            for c in &self.clients {
                let out = if c.has_unsent() { libc::POLLOUT } else { 0 };
                self.fds.push(libc::pollfd {
                    fd: c.as_fd().as_raw_fd(),
                    events: libc::POLLIN | out,
                    revents: 0,
                });
            }
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures; timeout 0.
            let r = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, 0) };
            // On failure (EINTR, ENOMEM) pump every connection, as without poll(2).
            pump_all = r < 0;
        }
        let mut busy = false;
        for (i, c) in self.clients.iter_mut().enumerate() {
            let wake = pump_all || self.dirty[i] || self.fds.get(i).is_some_and(|f| f.revents != 0);
            if !wake {
                continue;
            }
            let moved = c.poll(now, Duration::ZERO);
            self.dirty[i] = moved;
            if moved {
                busy = true;
                self.ready.mark(i);
            }
        }
        if busy {
            self.spin.busy();
        }
        busy
    }
    fn take_ready(&mut self, out: &mut Vec<usize>) {
        self.ready.take(out);
    }
    fn idle(&mut self, now: Instant) {
        // Spin a while like the ustack clients (latency), then, with one connection, block
        // in poll(2) until it has something.
        if !self.spin.idle() {
            return;
        }
        if let [one] = &mut self.clients[..] {
            if one.poll(now, Duration::from_millis(1)) {
                self.ready.mark(0);
            }
        }
    }
    fn set_spin_polls(&mut self, polls: u32) {
        self.spin.set_spin(polls);
    }
    fn submit(&mut self, i: usize, op: ChunkOp<'_>, now: Instant) -> Result<u64, SubmitError> {
        self.dirty[i] = true;
        self.clients[i].submit(op, now)
    }
    fn next_completion(&mut self, i: usize) -> Option<Completion> {
        self.clients[i].next_completion()
    }
    fn is_connected(&self, _i: usize) -> bool {
        true
    }
    fn is_broken(&self, i: usize) -> bool {
        self.clients[i].is_broken()
    }
    fn refusal(&self, i: usize) -> Option<ustack::proto::Status> {
        self.clients[i].refusal()
    }
    fn open_idle(&mut self, n: usize, server: SocketAddr) -> Result<(), String> {
        for k in 0..n {
            let s = std::net::TcpStream::connect_timeout(&server, Duration::from_secs(5))
                .map_err(|e| format!("idle connection {k}: {e}"))?;
            self.idle.push(s);
        }
        Ok(())
    }
}

/// The in-process server of the sim backend, on its own thread.
pub(super) struct SimServer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<ServerStats, String>>>,
}

impl SimServer {
    pub(super) fn finish(mut self) -> Result<ServerStats, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .unwrap()
            .join()
            .map_err(|_| "sim server thread panicked".to_string())?
    }
}

pub(super) const SIM_SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

pub(super) const SIM_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

pub(super) fn spawn_sim_server(port: SimPort, connections: usize, limits: Limits) -> SimServer {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = thread::spawn(move || -> Result<ServerStats, String> {
        let cfg = ServerConfig {
            limits,
            connections_max: connections.max(1),
            backlog: connections.clamp(1, 16),
            ..ServerConfig::default()
        };
        let sockets = cfg.connections_max + cfg.backlog;
        let mut stack = Stack::new(
            port,
            stack_config(
                Cidr {
                    addr: SIM_SERVER,
                    prefix: 24,
                },
                None,
                sockets,
            ),
        )
        .map_err(|e| e.to_string())?;
        let store = Arc::new(MemStore::new(8 << 30));
        let mut server =
            ChunkServer::bind(&mut stack, 7000, store, cfg).map_err(|e| e.to_string())?;
        let mut spin = IdleSpin::new(IDLE_SPIN_POLLS);
        while !flag.load(Ordering::Relaxed) {
            let now = Instant::now();
            if spin.turn(stack.poll(now) | server.poll(&mut stack)) {
                stack.wait(now, Duration::from_millis(1));
            }
        }
        Ok(server.stats())
    });
    SimServer {
        stop,
        thread: Some(thread),
    }
}

pub(super) fn wait_connected(c: &mut dyn ClientSet) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let now = Instant::now();
        c.poll(now);
        if (0..c.len()).all(|i| c.is_connected(i)) {
            return Ok(());
        }
        if (0..c.len()).any(|i| c.is_broken(i)) || now - start > Duration::from_secs(10) {
            let connected = (0..c.len()).filter(|&i| c.is_connected(i)).count();
            let why = match c.link_problem() {
                Some(p) => format!("the link is down: {p}"),
                None if connected > 0 => format!(
                    "{connected} of {} connections came up; the server refuses connections \
                     beyond its --connections-max (the file server counts them as refused)",
                    c.len()
                ),
                None => format!(
                    "is the server running and reachable? ({}); a memif server serves one \
                     client per interface id at a time",
                    c.describe()
                ),
            };
            return Err(format!("could not connect: {why}"));
        }
        c.idle(now);
    }
}

/// Why connection `i` of `c` broke, in words.
pub(super) fn broken_why(c: &dyn ClientSet, i: usize) -> String {
    if let Some(status) = c.refusal(i) {
        return match status {
            ustack::proto::Status::TooManyConnections => format!(
                "the server refused it: {status} (its --connections-max is reached; retry \
                 later, or use fewer connections)"
            ),
            _ => format!("the server refused it: {status}"),
        };
    }
    match c.link_problem() {
        Some(p) => format!("the link is down: {p}"),
        None => "the server closed or reset it, or stopped answering".to_string(),
    }
}

/// One request on connection 0, waited for.
pub(super) fn call(c: &mut dyn ClientSet, op: ChunkOp<'_>) -> Result<Completion, String> {
    let rid = c.submit(0, op, Instant::now()).map_err(|e| e.to_string())?;
    loop {
        let now = Instant::now();
        let busy = c.poll(now);
        if let Some(comp) = c.next_completion(0) {
            if comp.request_id == rid {
                return Ok(comp);
            }
        }
        if c.is_broken(0) {
            return Err(format!("connection failed: {}", broken_why(c, 0)));
        }
        if !busy {
            c.idle(now);
        }
    }
}

/// One STAT, DELETE or PING, its answer printed as a line; an error says what failed.
pub(super) fn single(c: &mut dyn ClientSet, op: ChunkOp<'_>) -> Result<(), String> {
    let (what, id) = match &op {
        ChunkOp::Stat { id } => ("STAT", Some(*id)),
        ChunkOp::Delete { id } => ("DELETE", Some(*id)),
        _ => ("PING", None),
    };
    let started = Instant::now();
    let comp = call(c, op)?;
    let took = Instant::now() - started;
    let subject = id.map_or_else(|| "server".to_string(), |id| format!("chunk {id}"));
    match comp.result {
        Ok(Reply::Stat {
            chunk_size,
            chunk_crc,
        }) => println!("{subject}: {chunk_size} bytes, CRC32C {chunk_crc:08x}"),
        Ok(Reply::Delete) => println!("{subject}: deleted"),
        Ok(Reply::Ping) => println!("{subject}: answered PING in {} us", took.as_micros()),
        Ok(other) => return Err(format!("{what} of {subject}: unexpected answer {other:?}")),
        Err(e) => return Err(format!("{what} of {subject}: {e}")),
    }
    Ok(())
}

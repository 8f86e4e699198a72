//! The chunk client tool: put and get files, single requests, a verified round trip of many
//! chunks (`verify`, the main job), and a benchmark (`bench`), over kernel TCP or a ustack backend.
//!
//! ```text
//! chunkctl --backend sim verify --total 256MiB           # ustack <-> ustack in this process
//! chunkctl --backend kernel --server 127.0.0.1:7000 bench --op read --size 4KiB --depth 1
//! chunkctl --backend kernel --server 127.0.0.1:7000 put FILE > manifest
//! chunkctl --backend kernel --server 127.0.0.1:7000 get manifest --out FILE
//! chunkctl --backend kernel --server 127.0.0.1:7000 ls                       # every chunk
//! chunkctl --backend kernel --server 127.0.0.1:7000 gc --keep *.manifest     # delete orphans
//! ```

#[path = "../common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use common::{
    check_pattern, fill_pattern, open_device, stack_config, stack_on, Backend, Cidr, ClientSet,
    DevArgs, IdleSpin, MemifRoleArg, Ready, Rng, Size, StackClients, IDLE_SPIN_POLLS,
};
use ustack::chunk::{
    ChunkOp, ChunkServer, ClientConfig, ClientError, Completion, MemStore, ServerConfig,
    ServerStats, Staging, SubmitError,
};
use ustack::dev::sim::{SimConfig, SimLink, SimPort};
use ustack::net::KernelClient;
use ustack::proto::{crc32c, ChunkId, Limits, ListEntry, Reply, Status, LIST_PAGE_MAX};
use ustack::stack::Stack;
use ustack::sys::signal;
use ustack::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "chunkctl",
    version,
    about = "ustack chunk client: put/get/ls/gc/verify/bench"
)]
struct Args {
    /// Network backend.
    #[arg(long, value_enum, default_value_t = Backend::Kernel)]
    backend: Backend,
    /// The chunk server, HOST:PORT. The kernel backend takes a host name or an IPv6 address
    /// too (`[::1]:7000`); ustack backends take IPv4:PORT on --ip's subnet.
    #[arg(long, default_value = "127.0.0.1:7000")]
    server: String,
    /// Connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Largest payload of one request (must match the server's).
    #[arg(long, default_value = "4MiB")]
    payload_max: Size,
    /// Seconds a request may take.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    /// ustack client backends: our address.
    #[arg(long, default_value = "10.213.0.3/24")]
    ip: Cidr,
    #[command(flatten)]
    dev: DevArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write random chunks (sizes log-uniform from 1 B to the payload limit) totalling --total,
    /// read every one back, check every byte and every STAT checksum, delete them.
    Verify {
        #[arg(long, default_value = "256MiB")]
        total: Size,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 8)]
        depth: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Leave the chunks on the server.
        #[arg(long)]
        keep: bool,
    },
    /// Measure one operation: ops/s, MB/s, latency percentiles; every READ is verified.
    Bench {
        #[arg(long, value_enum, default_value_t = BenchOp::Read)]
        op: BenchOp,
        /// Bytes per request.
        #[arg(long, default_value = "4KiB")]
        size: Size,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 1)]
        depth: usize,
        /// Seconds to measure (after one second of warm-up).
        #[arg(long, default_value_t = 5)]
        duration_s: u64,
        /// Distinct chunks the requests spread over.
        #[arg(long, default_value_t = 64)]
        chunks: u64,
        /// Extra connections held open and idle during the run (connection scaling).
        #[arg(long, default_value_t = 0)]
        idle: usize,
    },
    /// Split a file into chunks, write them, print the manifest (one line per chunk:
    /// `ID OFFSET LENGTH CRC32C`).
    Put {
        file: std::path::PathBuf,
        #[arg(long, default_value = "4MiB")]
        chunk_size: Size,
    },
    /// Read the chunks of a manifest, check each CRC32C, write the file.
    Get {
        manifest: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// List every chunk on the server (LIST, page by page): `ID SIZE` per line (32 hex digits,
    /// bytes), in the server's listing order; a count on standard error.
    Ls {
        /// Only the chunks none of these manifests names (what `gc --keep` would delete).
        #[arg(long, num_args = 1.., value_name = "MANIFEST")]
        orphans: Vec<std::path::PathBuf>,
    },
    /// Delete every chunk on the server that none of the given manifests names: the chunks an
    /// interrupted put left behind. Reads every manifest first and deletes nothing if any fails
    /// to parse. Do not run it while a put is in progress: its chunks are in no manifest yet.
    Gc {
        /// The manifests of the files to keep.
        #[arg(long, num_args = 1.., required = true, value_name = "MANIFEST")]
        keep: Vec<std::path::PathBuf>,
        /// Print what would be deleted, and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// STAT a chunk (hex id).
    Stat { id: String },
    /// DELETE a chunk (hex id).
    Delete { id: String },
    /// PING the server.
    Ping,
    /// Ask a running file server through its admin socket (`fileserver --admin-socket PATH`):
    /// `stats` (every counter in words), `metrics` (the Prometheus exposition),
    /// `connections` (like `ss -ti`), `capture start FILE --packets N | --bytes N`,
    /// `capture stop`, `capture status`, `help`. Connects to no chunk server.
    Admin {
        /// The server's admin socket.
        #[arg(long, value_name = "PATH")]
        socket: std::path::PathBuf,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 10)]
        wait_s: u64,
        /// The command and its arguments (a relative capture file is taken from the current
        /// directory).
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum BenchOp {
    Read,
    Write,
}

fn main() -> ExitCode {
    common::init_logging();
    common::exit_code("chunkctl", run(&Args::parse()))
}

fn client_config(args: &Args) -> Result<ClientConfig, String> {
    let mut cfg = ClientConfig {
        request_timeout: Duration::from_secs(args.timeout_s),
        ..ClientConfig::default()
    };
    cfg.limits = Limits {
        payload_len_max: u32::try_from(args.payload_max.0)
            .map_err(|_| "--payload-max must be below 4 GiB")?,
        ..Limits::default()
    };
    // Enough staging for every connection to keep its requests in flight.
    cfg.staging.small_count = (64 * args.connections).max(128);
    cfg.staging.large_count = (4 * args.connections).clamp(8, 64);
    Ok(cfg)
}

/// Kernel-TCP clients, one per connection.
struct KernelClients {
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
    fn new(clients: Vec<KernelClient>, what: String) -> KernelClients {
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
struct SimServer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<ServerStats, String>>>,
}

impl SimServer {
    fn finish(mut self) -> Result<ServerStats, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .unwrap()
            .join()
            .map_err(|_| "sim server thread panicked".to_string())?
    }
}

const SIM_SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const SIM_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

fn spawn_sim_server(port: SimPort, connections: usize, limits: Limits) -> SimServer {
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

/// The server's addresses: every address of a host name (or an IPv6 address) for the kernel
/// backend, tried in order; one IPv4 address for ustack backends, which have no resolver and
/// speak IPv4.
fn server_addrs(args: &Args) -> Result<Vec<SocketAddr>, String> {
    let s = args.server.as_str();
    match args.backend {
        Backend::Kernel => {
            use std::net::ToSocketAddrs;
            let addrs: Vec<SocketAddr> = s
                .to_socket_addrs()
                .map_err(|e| {
                    format!(
                        "--server {s}: {e} (expected HOST:PORT, e.g. 127.0.0.1:7000, \
                         localhost:7000 or [::1]:7000)"
                    )
                })?
                .collect();
            if addrs.is_empty() {
                return Err(format!("--server {s}: the name has no address"));
            }
            Ok(addrs)
        }
        Backend::Sim => Ok(vec![SocketAddr::V4(SocketAddrV4::new(SIM_SERVER, 7000))]),
        _ => s
            .parse::<SocketAddrV4>()
            .map(|a| vec![SocketAddr::V4(a)])
            .map_err(|_| {
                format!(
                    "--server {s}: ustack backends take an IPv4 address and port (e.g. \
                     10.214.0.1:7000); host names and IPv6 work with --backend kernel"
                )
            }),
    }
}

fn run(args: &Args) -> Result<(), String> {
    if let Cmd::Admin {
        socket,
        wait_s,
        command,
    } = &args.cmd
    {
        return admin(socket, *wait_s, command);
    }
    let cfg = client_config(args)?;
    let addrs = server_addrs(args)?;
    let mut server = addrs[0];
    // Sockets for the working connections, the idle ones of a scaling run, and one spare.
    let idle = match args.cmd {
        Cmd::Bench { idle, .. } => idle,
        _ => 0,
    };
    let sockets = args.connections + idle + 1;
    let mut sim_server = None;
    let mut clients: Box<dyn ClientSet> = match args.backend {
        Backend::Kernel => {
            let staging = Staging::new(&cfg.staging, cfg.limits.payload_len_max as usize)
                .map_err(|e| e.to_string())?;
            // The first address that takes a connection serves them all.
            let mut first = Err(String::new());
            for &a in &addrs {
                first = KernelClient::connect_with_staging(a, &cfg, staging.clone())
                    .map_err(|e| e.to_string());
                if first.is_ok() {
                    server = a;
                    break;
                }
            }
            let mut clients = vec![first?];
            for _ in 1..args.connections {
                clients.push(
                    KernelClient::connect_with_staging(server, &cfg, staging.clone())
                        .map_err(|e| e.to_string())?,
                );
            }
            Box::new(KernelClients::new(
                clients,
                format!("kernel TCP to {server} (no bypass)"),
            ))
        }
        Backend::Sim => {
            let (_link, a, b) = SimLink::new(SimConfig {
                latency: Duration::ZERO,
                ..SimConfig::default()
            })
            .map_err(|e| e.to_string())?;
            sim_server = Some(spawn_sim_server(b, args.connections + idle, cfg.limits));
            let stack = Stack::new(
                a,
                stack_config(
                    Cidr {
                        addr: SIM_CLIENT,
                        prefix: 24,
                    },
                    None,
                    sockets,
                ),
            )
            .map_err(|e| e.to_string())?;
            Box::new(StackClients::connect(
                stack,
                SocketAddrV4::new(SIM_SERVER, 7000),
                args.connections,
                &cfg,
                "ustack <-> ustack over the in-process simulated link (server thread + client thread, memory store)".into(),
            )?)
        }
        backend => {
            // server_addrs gives ustack backends one IPv4 address.
            let SocketAddr::V4(server_v4) = server else {
                return Err(format!(
                    "--server {server}: ustack backends speak IPv4 only"
                ));
            };
            let mask = u32::MAX << (32 - u32::from(args.ip.prefix));
            if u32::from(*server_v4.ip()) & mask != u32::from(args.ip.addr) & mask {
                return Err(format!(
                    "--server {} is not on --ip {}'s subnet, and a ustack client reaches only \
                     its own subnet: give an --ip in the server's subnet",
                    server_v4.ip(),
                    args.ip
                ));
            }
            let (dev, _netns) =
                open_device(backend, &args.dev, args.ip.addr, MemifRoleArg::Client)?;
            let what = format!(
                "ustack client on {}: {}, to {}",
                dev.kind(),
                dev.reason(),
                server_v4
            );
            let stack = stack_on(dev, &args.dev, args.ip, None, sockets, |_| {})?;
            Box::new(StackClients::connect(
                stack,
                server_v4,
                args.connections,
                &cfg,
                what,
            )?)
        }
    };
    if let Some(n) = args.dev.spin_polls {
        clients.set_spin_polls(n);
    }
    // On stderr: stdout carries the manifest (put) and the results.
    eprintln!("chunkctl: {}", clients.describe());
    wait_connected(clients.as_mut())?;
    let result = match &args.cmd {
        Cmd::Verify {
            total,
            depth,
            seed,
            keep,
        } => verify(
            clients.as_mut(),
            total.0,
            *depth,
            *seed,
            *keep,
            args.payload_max.0,
        ),
        Cmd::Bench {
            op,
            size,
            depth,
            duration_s,
            chunks,
            idle,
        } => clients.open_idle(*idle, server).and_then(|()| {
            bench(
                clients.as_mut(),
                *op,
                size.0,
                *depth,
                *duration_s,
                *chunks,
                *idle,
            )
        }),
        Cmd::Put { file, chunk_size } => {
            put(clients.as_mut(), file, chunk_size.0, args.payload_max.0)
        }
        Cmd::Get { manifest, out } => get(clients.as_mut(), manifest, out),
        Cmd::Ls { orphans } => ls(clients.as_mut(), orphans),
        Cmd::Gc { keep, dry_run } => gc(clients.as_mut(), keep, *dry_run),
        Cmd::Stat { id } => single(clients.as_mut(), ChunkOp::Stat { id: parse_id(id)? }),
        Cmd::Delete { id } => single(clients.as_mut(), ChunkOp::Delete { id: parse_id(id)? }),
        Cmd::Ping => single(clients.as_mut(), ChunkOp::Ping),
        // Answered at the start of `run`, without a chunk connection.
        Cmd::Admin { .. } => unreachable!("admin is handled before connecting"),
    };
    // FINs, so the server frees its connections now rather than when they time out.
    clients.close(Duration::from_millis(500));
    if let Some(tcp) = clients.tcp_report() {
        // Standard error: standard output carries a put's manifest.
        eprintln!("chunkctl: tcp {tcp}");
    }
    drop(clients);
    if let Some(s) = sim_server {
        let stats = s.finish()?;
        eprintln!(
            "chunkctl: sim server: {} writes, {} reads, {} errors, {:.1} MiB in, {:.1} MiB out",
            stats.writes,
            stats.reads,
            stats.errors,
            stats.bytes_written as f64 / 1048576.0,
            stats.bytes_read as f64 / 1048576.0
        );
    }
    result
}

fn parse_id(s: &str) -> Result<ChunkId, String> {
    u128::from_str_radix(s.trim_start_matches("0x"), 16)
        .map(ChunkId)
        .map_err(|_| format!("{s:?} is not a hex chunk id"))
}

fn wait_connected(c: &mut dyn ClientSet) -> Result<(), String> {
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

/// What a workload keeps per request in flight.
#[derive(Copy, Clone)]
struct Req {
    chunk: u128,
    offset: u64,
    len: u64,
    op: u8,
    start: Instant,
}

/// Drives a workload: `plan(now)` yields the next request (or None when there is nothing more to
/// submit), `check` judges each completion.
struct Driver<'a> {
    c: &'a mut dyn ClientSet,
    depth: usize,
    in_flight: Vec<usize>,
    reqs: HashMap<(usize, u64), Req>,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    /// Whole contents of the benchmark's chunks, computed once, so that writing and checking a
    /// payload costs a copy or a compare rather than regenerating the pattern every request.
    preset: Option<Preset>,
}

/// The contents of chunks `base | 0 .. base | n-1`, each `size` bytes, back to back.
struct Preset {
    base: u128,
    size: u64,
    data: Vec<u8>,
}

impl Preset {
    /// Bytes `offset .. offset+len` of `chunk`, when they are in the preset.
    fn get(&self, chunk: u128, offset: u64, len: u64) -> Option<&[u8]> {
        let k = chunk.checked_sub(self.base)?;
        let start = u64::try_from(k).ok()?.checked_mul(self.size)?;
        if offset.checked_add(len)? > self.size {
            return None;
        }
        let from = usize::try_from(start + offset).ok()?;
        self.data.get(from..from + len as usize)
    }
}

impl<'a> Driver<'a> {
    fn new(c: &'a mut dyn ClientSet, depth: usize, payload_max: usize) -> Driver<'a> {
        let n = c.len();
        Driver {
            c,
            depth: depth.max(1),
            in_flight: vec![0; n],
            reqs: HashMap::with_capacity(n * depth.max(1) * 2),
            buf: vec![0; payload_max],
            scratch: vec![0; 64 << 10],
            preset: None,
        }
    }

    /// Submits `req` on connection `i`; WRITE data is the chunk's pattern.
    fn submit(&mut self, i: usize, req: Req) -> Result<bool, String> {
        let id = ChunkId(req.chunk);
        let op = match req.op {
            b'w' => {
                let data = match self
                    .preset
                    .as_ref()
                    .and_then(|p| p.get(req.chunk, req.offset, req.len))
                {
                    Some(d) => d,
                    None => {
                        let b = &mut self.buf[..req.len as usize];
                        fill_pattern(req.chunk, req.offset, b);
                        b
                    }
                };
                ChunkOp::Write {
                    id,
                    offset: req.offset,
                    data,
                }
            }
            b'r' => ChunkOp::Read {
                id,
                offset: req.offset,
                len: req.len as u32,
            },
            b's' => ChunkOp::Stat { id },
            _ => ChunkOp::Delete { id },
        };
        match self.c.submit(i, op, req.start) {
            Ok(rid) => {
                self.reqs.insert((i, rid), req);
                self.in_flight[i] += 1;
                Ok(true)
            }
            Err(SubmitError::NoBuffer) | Err(SubmitError::TooManyInFlight { .. }) => Ok(false),
            Err(e) => Err(format!("submit: {e}")),
        }
    }

    /// Runs until `plan` is exhausted and all requests completed, or `until` passes.
    ///
    /// Each turn looks only at the connections where something happened and fills only those
    /// below `depth` (oldest first, one request each in turn), so a turn with nothing to do
    /// costs the same with 1 or 1,024 connections.
    fn run(
        &mut self,
        until: Option<Instant>,
        mut plan: impl FnMut() -> Option<Req>,
        mut check: impl FnMut(&Req, &Completion, &mut Checker<'_>, Instant) -> Result<(), String>,
    ) -> Result<(), String> {
        let n = self.c.len();
        let mut pending: Option<Req> = None;
        let mut exhausted = false;
        let mut outstanding: usize = self.in_flight.iter().sum();
        // Connections below depth, in the order they got there.
        let mut hungry: VecDeque<usize> = VecDeque::with_capacity(n);
        let queued_at_start = self.in_flight.iter().map(|&f| f < self.depth);
        let mut queued: Vec<bool> = queued_at_start.collect();
        hungry.extend((0..n).filter(|&i| queued[i]));
        let mut ready = Vec::with_capacity(n);
        loop {
            let now = Instant::now();
            let stop = until.is_some_and(|u| now >= u);
            let mut busy = self.c.poll(now);
            self.c.take_ready(&mut ready);
            for &i in &ready {
                while let Some(comp) = self.c.next_completion(i) {
                    busy = true;
                    self.in_flight[i] -= 1;
                    outstanding -= 1;
                    let req = self
                        .reqs
                        .remove(&(i, comp.request_id))
                        .ok_or("completion for an unknown request")?;
                    let mut checker = Checker {
                        preset: self.preset.as_ref(),
                        scratch: &mut self.scratch,
                    };
                    check(&req, &comp, &mut checker, now)?;
                }
                if self.c.is_broken(i) {
                    return Err(format!(
                        "connection {i} failed: {}",
                        broken_why(&*self.c, i)
                    ));
                }
                if !queued[i] && self.in_flight[i] < self.depth {
                    queued[i] = true;
                    hungry.push_back(i);
                }
            }
            if (exhausted || stop) && outstanding == 0 {
                return Ok(());
            }
            while !stop && !exhausted {
                let Some(&i) = hungry.front() else { break };
                if self.in_flight[i] >= self.depth {
                    hungry.pop_front();
                    queued[i] = false;
                    continue;
                }
                let req = match pending.take() {
                    Some(r) => r,
                    None => match plan() {
                        Some(mut r) => {
                            r.start = now;
                            r
                        }
                        None => {
                            exhausted = true;
                            break;
                        }
                    },
                };
                if !self.submit(i, req)? {
                    // Out of staging buffers or of room on this connection: again next turn,
                    // the others first.
                    pending = Some(req);
                    hungry.pop_front();
                    hungry.push_back(i);
                    break;
                }
                outstanding += 1;
                busy = true;
                hungry.pop_front();
                if self.in_flight[i] < self.depth {
                    hungry.push_back(i);
                } else {
                    queued[i] = false;
                }
            }
            if !busy {
                self.c.idle(now);
            }
        }
    }
}

/// What a completion's data is checked against: the preset contents, or the pattern regenerated
/// into `scratch`.
struct Checker<'a> {
    preset: Option<&'a Preset>,
    scratch: &'a mut [u8],
}

impl Checker<'_> {
    fn matches(&mut self, req: &Req, data: &[u8]) -> bool {
        match self
            .preset
            .and_then(|p| p.get(req.chunk, req.offset, req.len))
        {
            Some(expected) => expected == data,
            None => check_pattern(req.chunk, req.offset, data, self.scratch),
        }
    }
}

fn verify_read(req: &Req, comp: &Completion, ck: &mut Checker<'_>) -> Result<(), String> {
    match comp.result {
        Ok(Reply::Read {
            len, chunk_size, ..
        }) => {
            if u64::from(len) != req.len || chunk_size < req.offset + req.len {
                return Err(format!(
                    "chunk {:032x}: read {len} of {} bytes (chunk {chunk_size})",
                    req.chunk, req.len
                ));
            }
            if !ck.matches(req, comp.data()) {
                return Err(format!(
                    "chunk {:032x}: data read back differs from what was written",
                    req.chunk
                ));
            }
            Ok(())
        }
        ref r => Err(format!("chunk {:032x}: read failed: {r:?}", req.chunk)),
    }
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

fn verify(
    c: &mut dyn ClientSet,
    total: u64,
    depth: usize,
    seed: u64,
    keep: bool,
    payload_max: u64,
) -> Result<(), String> {
    let what = c.describe();
    let mut rng = Rng(seed);
    let mut chunks = Vec::new();
    let mut sum = 0;
    while sum < total {
        let size = rng.log_uniform(payload_max).min(total - sum).max(1);
        let id = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
        chunks.push((id, size));
        sum += size;
    }
    let mut d = Driver::new(c, depth, payload_max as usize);
    let blank = Req {
        chunk: 0,
        offset: 0,
        len: 0,
        op: 0,
        start: Instant::ZERO,
    };

    let started = Instant::now();
    let t = started;
    let mut it = chunks.iter();
    d.run(
        None,
        || {
            it.next().map(|&(chunk, len)| Req {
                chunk,
                len,
                op: b'w',
                ..blank
            })
        },
        |req, comp, _, _| match comp.result {
            Ok(Reply::Write { chunk_size }) if chunk_size == req.len => Ok(()),
            ref r => Err(format!(
                "chunk {:032x}: write of {} bytes: {r:?}",
                req.chunk, req.len
            )),
        },
    )?;
    let write_time = Instant::now() - t;

    let t = Instant::now();
    let mut verified = 0u64;
    let mut it = chunks.iter();
    d.run(
        None,
        || {
            it.next().map(|&(chunk, len)| Req {
                chunk,
                len,
                op: b'r',
                ..blank
            })
        },
        |req, comp, ck, _| {
            verify_read(req, comp, ck)?;
            verified += req.len;
            Ok(())
        },
    )?;
    let read_time = Instant::now() - t;

    let mut stat_ok = 0u64;
    let mut it = chunks.iter();
    let mut content = vec![0u8; payload_max as usize];
    d.run(
        None,
        || {
            it.next().map(|&(chunk, len)| Req {
                chunk,
                len,
                op: b's',
                ..blank
            })
        },
        |req, comp, _, _| {
            let data = &mut content[..req.len as usize];
            fill_pattern(req.chunk, 0, data);
            match comp.result {
                Ok(Reply::Stat {
                    chunk_size,
                    chunk_crc,
                }) if chunk_size == req.len && chunk_crc == crc32c(data) => {
                    stat_ok += 1;
                    Ok(())
                }
                ref r => Err(format!(
                    "chunk {:032x}: STAT {r:?}, expected size {} and crc {:08x}",
                    req.chunk,
                    req.len,
                    crc32c(data)
                )),
            }
        },
    )?;
    if !keep {
        let mut it = chunks.iter();
        d.run(
            None,
            || {
                it.next().map(|&(chunk, len)| Req {
                    chunk,
                    len,
                    op: b'd',
                    ..blank
                })
            },
            |req, comp, _, _| match comp.result {
                Ok(Reply::Delete) => Ok(()),
                ref r => Err(format!("chunk {:032x}: DELETE {r:?}", req.chunk)),
            },
        )?;
    }
    println!();
    println!("  backend        {what}");
    println!(
        "  chunks         {} (1 B .. {}, log-uniform), {:.1} MiB",
        chunks.len(),
        Size(payload_max),
        total as f64 / 1048576.0
    );
    println!(
        "  write          {:>8.1} MB/s  ({:.2} s)",
        mbps(total, write_time),
        write_time.as_secs_f64()
    );
    println!(
        "  read           {:>8.1} MB/s  ({:.2} s)",
        mbps(total, read_time),
        read_time.as_secs_f64()
    );
    println!("  verified       {verified} of {total} bytes read back identical; {stat_ok} of {} STAT checksums right", chunks.len());
    println!("  result         OK");
    // For scripts (scripts/compare.sh): the whole round trip, writes to deletes.
    println!(
        "RESULT cmd=verify total_bytes={total} chunks={} verified={verified} write_s={:.3} read_s={:.3} elapsed_s={:.3}",
        chunks.len(),
        write_time.as_secs_f64(),
        read_time.as_secs_f64(),
        (Instant::now() - started).as_secs_f64()
    );
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A plan that issues `op` once for each of chunks `0..chunks`, in order.
fn sweep(
    chunks: u64,
    op: u8,
    blank: Req,
    chunk_id: impl Fn(u64) -> u128,
) -> impl FnMut() -> Option<Req> {
    let mut k = 0;
    move || {
        (k < chunks).then(|| {
            k += 1;
            Req {
                chunk: chunk_id(k - 1),
                op,
                ..blank
            }
        })
    }
}

fn bench(
    c: &mut dyn ClientSet,
    op: BenchOp,
    size: u64,
    depth: usize,
    duration_s: u64,
    chunks: u64,
    idle: usize,
) -> Result<(), String> {
    let what = c.describe();
    let conns = c.len();
    let mut d = Driver::new(c, depth, size as usize);
    let blank = Req {
        chunk: 0,
        offset: 0,
        len: size,
        op: 0,
        start: Instant::ZERO,
    };
    // Random high 64 bits: benches run at once against one server use chunks of their own.
    let base = ustack::sys::random::chunk_id()
        .map_err(|e| format!("no random chunk id from the kernel: {e}"))?
        .get()
        & !u128::from(u64::MAX);
    let chunk_id = |k: u64| base | u128::from(k);
    // The chunks' contents, computed once (up to 1 GiB): the client then spends its time on I/O,
    // not on generating and checking patterns.
    if chunks.saturating_mul(size) <= 1 << 30 {
        let mut data = vec![0; (chunks * size) as usize];
        for (k, c) in data.chunks_mut(size.max(1) as usize).enumerate() {
            fill_pattern(chunk_id(k as u64), 0, c);
        }
        d.preset = Some(Preset { base, size, data });
    }
    // Fill the chunks the requests will read.
    d.run(
        None,
        sweep(chunks, b'w', blank, chunk_id),
        |req, comp, _, _| {
            comp.result
                .map(|_| ())
                .map_err(|e| format!("prefill of {:032x}: {e}", req.chunk))
        },
    )?;
    let mut rng = Rng(7);
    let opc = match op {
        BenchOp::Read => b'r',
        BenchOp::Write => b'w',
    };
    // Warm-up, then the measured run.
    let mut lat: Vec<u32> = Vec::with_capacity(8 << 20);
    let (mut ops, mut verified, mut errors) = (0u64, 0u64, 0u64);
    // Every payload byte this process moved (prefill and warm-up included), for CPU per GB.
    let mut moved = chunks * size;
    let mut outcome = Ok(());
    for (secs, measure) in [(1, false), (duration_s.max(1), true)] {
        let start = Instant::now();
        d.run(
            Some(start + Duration::from_secs(secs)),
            || {
                Some(Req {
                    chunk: chunk_id(rng.below(chunks)),
                    op: opc,
                    ..blank
                })
            },
            |req, comp, ck, now| {
                if comp.result.is_ok() {
                    moved += size;
                }
                if !measure {
                    return Ok(());
                }
                let ok = match op {
                    BenchOp::Read => verify_read(req, comp, ck).is_ok(),
                    BenchOp::Write => comp.result.is_ok(),
                };
                if ok {
                    ops += 1;
                    if op == BenchOp::Read {
                        verified += 1;
                    }
                    if lat.len() < lat.capacity() {
                        lat.push(u32::try_from((now - req.start).as_nanos()).unwrap_or(u32::MAX));
                    }
                } else {
                    errors += 1;
                }
                Ok(())
            },
        )?;
        if measure {
            let elapsed = Instant::now() - start;
            lat.sort_unstable();
            let us = |p| f64::from(percentile(&lat, p)) / 1000.0;
            let ops_s = ops as f64 / elapsed.as_secs_f64();
            println!("  backend      {what}");
            println!(
                "  workload     {:?} {} x {conns} connection(s) x depth {depth}, {:.1} s",
                op,
                Size(size),
                elapsed.as_secs_f64()
            );
            println!(
                "  throughput   {ops_s:.0} ops/s, {:.1} MB/s",
                ops_s * size as f64 / 1e6
            );
            println!(
                "  latency      p50 {:.1} us, p99 {:.1} us, p999 {:.1} us",
                us(0.5),
                us(0.99),
                us(0.999)
            );
            println!("  verified     {verified} reads checked byte for byte; {errors} errors");
            println!(
                "RESULT op={op:?} size={size} connections={conns} depth={depth} idle={idle} ops_s={ops_s:.0} mb_s={:.1} p50_us={:.1} p99_us={:.1} p999_us={:.1} verified={verified} errors={errors} total_bytes={moved} cpu_s={:.3}",
                ops_s * size as f64 / 1e6,
                us(0.5),
                us(0.99),
                us(0.999),
                ustack::sys::proc::cpu_time().as_secs_f64()
            );
            if errors > 0 {
                outcome = Err(format!("{errors} requests failed"));
            }
        }
    }
    // Leave nothing behind: DELETE every chunk the run wrote.
    d.run(
        None,
        sweep(chunks, b'd', blank, chunk_id),
        |req, comp, _, _| match &comp.result {
            Ok(_) | Err(ClientError::Status(Status::NotFound)) => Ok(()),
            Err(e) => Err(format!("deleting bench chunk {:032x}: {e}", req.chunk)),
        },
    )?;
    outcome
}

/// First word of a manifest's header line.
const MANIFEST_MAGIC: &str = "ustack-manifest";
/// The manifest format `put` writes and `get` reads.
const MANIFEST_VERSION: u32 = 1;

/// One chunk of a file, as a manifest line names it.
struct Piece {
    id: ChunkId,
    offset: u64,
    len: u64,
    crc: u32,
}

impl Piece {
    fn line(&self) -> String {
        format!("{} {} {} {:08x}", self.id, self.offset, self.len, self.crc)
    }
}

/// Splits `file` into chunks of `chunk_size` bytes, writes each under a fresh random id, and
/// prints the manifest: a header `ustack-manifest 1 length=BYTES chunks=N`, then one line per
/// chunk, `ID OFFSET LENGTH CRC32C` (hex id and CRC). If it cannot finish (an error, SIGINT or
/// SIGTERM), it deletes the chunks it wrote; those it cannot delete are printed as a manifest
/// marked `partial`, which `get` refuses and `chunkctl delete` can work through.
fn put(
    c: &mut dyn ClientSet,
    file: &std::path::Path,
    chunk_size: u64,
    payload_max: u64,
) -> Result<(), String> {
    if chunk_size == 0 || chunk_size > payload_max {
        return Err(format!(
            "--chunk-size {chunk_size} is out of range: 1 B ..= {payload_max} B (--payload-max; \
             the server's limit may be lower)"
        ));
    }
    let mut f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let len = f
        .metadata()
        .map_err(|e| format!("{}: {e}", file.display()))?
        .len();
    signal::install_stop_handlers().map_err(|e| format!("installing signal handlers: {e}"))?;
    let mut written: Vec<Piece> = Vec::new();
    let mut buf = vec![0u8; chunk_size.min(len) as usize];
    let mut offset = 0;
    let outcome = loop {
        if offset == len {
            break Ok(());
        }
        if signal::stop_requested() {
            break Err(format!("stopped by signal {}", signal::stop_signal()));
        }
        let n = (len - offset).min(chunk_size);
        let data = &mut buf[..n as usize];
        if let Err(e) = f
            .seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(data))
        {
            break Err(format!("reading {} at {offset}: {e}", file.display()));
        }
        let id = match ustack::sys::random::chunk_id() {
            Ok(id) => id,
            Err(e) => break Err(format!("no random chunk id from the kernel: {e}")),
        };
        let data = &buf[..n as usize];
        let crc = crc32c(data);
        match call(
            c,
            ChunkOp::Write {
                id,
                offset: 0,
                data,
            },
        ) {
            Ok(comp) => match comp.result {
                Ok(Reply::Write { .. }) => {}
                Err(e) => break Err(format!("writing chunk {id} (bytes {offset}..): {e}")),
                Ok(other) => {
                    break Err(format!(
                        "writing chunk {id} (bytes {offset}..): unexpected answer {other:?}"
                    ))
                }
            },
            Err(e) => break Err(format!("writing chunk {id} (bytes {offset}..): {e}")),
        }
        written.push(Piece {
            id,
            offset,
            len: n,
            crc,
        });
        offset += n;
    };
    if let Err(why) = outcome {
        // Leave no chunk that no manifest names.
        let mut left = Vec::new();
        for p in written {
            let gone = call(c, ChunkOp::Delete { id: p.id }).is_ok_and(|comp| {
                matches!(
                    comp.result,
                    Ok(_) | Err(ClientError::Status(Status::NotFound))
                )
            });
            if !gone {
                left.push(p);
            }
        }
        if left.is_empty() {
            return Err(format!(
                "put of {} failed: {why}; the chunks it wrote are deleted",
                file.display()
            ));
        }
        println!(
            "{MANIFEST_MAGIC} {MANIFEST_VERSION} partial chunks={}",
            left.len()
        );
        for p in &left {
            println!("{}", p.line());
        }
        return Err(format!(
            "put of {} failed: {why}; {} chunks it wrote could not be deleted: they are listed \
             on standard output (a manifest marked partial, which get refuses); remove each \
             with `chunkctl delete ID` once the server is back",
            file.display(),
            left.len()
        ));
    }
    println!(
        "{MANIFEST_MAGIC} {MANIFEST_VERSION} length={len} chunks={}",
        written.len()
    );
    for p in &written {
        println!("{}", p.line());
    }
    eprintln!(
        "chunkctl: put {len} bytes of {} as {} chunks",
        file.display(),
        written.len()
    );
    Ok(())
}

/// Reads and checks a whole manifest: the header, then chunks that cover the file's length
/// exactly, in order, without gaps, overlaps or repeated ids. Errors name the line.
fn read_manifest(path: &std::path::Path) -> Result<(u64, Vec<Piece>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let at = |no: usize, what: String| format!("{} line {}: {what}", path.display(), no + 1);
    let mut lines = text.lines().enumerate();
    let Some((_, header)) = lines.next() else {
        return Err(format!("{}: empty, not a manifest", path.display()));
    };
    let h: Vec<&str> = header.split_whitespace().collect();
    if h.first() != Some(&MANIFEST_MAGIC) {
        return Err(at(
            0,
            format!(
                "not a ustack manifest: it must start with `{MANIFEST_MAGIC} {MANIFEST_VERSION}` \
                 (manifests without a header, from chunkctl before 0.2, are not read)"
            ),
        ));
    }
    if h.get(1) != Some(&"1") {
        return Err(at(
            0,
            format!(
                "manifest version {:?}; this chunkctl reads version {MANIFEST_VERSION}",
                h.get(1).copied().unwrap_or("")
            ),
        ));
    }
    if h.get(2) == Some(&"partial") {
        return Err(at(
            0,
            "a partial manifest (chunks an interrupted put could not delete): it does not \
             describe a whole file"
                .into(),
        ));
    }
    let field = |name: &str| -> Result<u64, String> {
        let v = h
            .iter()
            .skip(2)
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| at(0, format!("the header has no {name}=")))?;
        v.parse()
            .map_err(|_| at(0, format!("{name}={v} is not a whole number")))
    };
    let (length, count) = (field("length")?, field("chunks")?);
    let mut pieces: Vec<Piece> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let mut next = 0u64;
    for (no, line) in lines {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [id, off, len, crc] = parts[..] else {
            return Err(at(
                no,
                format!("expected `ID OFFSET LENGTH CRC32C`, got {line:?}"),
            ));
        };
        let bad = |what: &str, v: &str| at(no, format!("bad {what} {v:?}"));
        if id.len() != 32 {
            return Err(bad("chunk id (32 hex digits)", id));
        }
        let id = u128::from_str_radix(id, 16)
            .map(ChunkId)
            .map_err(|_| bad("chunk id (32 hex digits)", id))?;
        let offset: u64 = off.parse().map_err(|_| bad("offset", off))?;
        let len: u64 = len.parse().map_err(|_| bad("length", len))?;
        if crc.len() != 8 {
            return Err(bad("CRC32C (8 hex digits)", crc));
        }
        let crc = u32::from_str_radix(crc, 16).map_err(|_| bad("CRC32C (8 hex digits)", crc))?;
        if len == 0 {
            return Err(at(no, "a chunk of 0 bytes".into()));
        }
        if offset != next {
            return Err(at(
                no,
                format!(
                    "chunk at offset {offset}, but the chunks before it end at {next} (a chunk \
                     is missing, repeated or out of order)"
                ),
            ));
        }
        if !ids.insert(id) {
            return Err(at(no, format!("chunk {id} appears twice")));
        }
        next = offset
            .checked_add(len)
            .filter(|&e| e <= length)
            .ok_or_else(|| {
                at(
                    no,
                    format!("the chunk ends past the file's length {length}"),
                )
            })?;
        pieces.push(Piece {
            id,
            offset,
            len,
            crc,
        });
    }
    if pieces.len() as u64 != count || next != length {
        return Err(format!(
            "{}: the header says {count} chunks and {length} bytes, the lines give {} chunks \
             and {next} bytes (lines are missing or were added)",
            path.display(),
            pieces.len()
        ));
    }
    Ok((length, pieces))
}

/// Reads the chunks of a checked manifest into a temporary file next to `out`, checking each
/// CRC32C, then syncs it and renames it to `out`: a failed get leaves nothing under `out`.
fn get(
    c: &mut dyn ClientSet,
    manifest: &std::path::Path,
    out: &std::path::Path,
) -> Result<(), String> {
    let (length, pieces) = read_manifest(manifest)?;
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = out
        .file_name()
        .ok_or_else(|| format!("{}: not a file name", out.display()))?;
    let tmp = dir.join(format!(
        ".{}.chunkctl-get-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let fetch = |f: &mut std::fs::File, c: &mut dyn ClientSet| -> Result<(), String> {
        for p in &pieces {
            let len = u32::try_from(p.len).map_err(|_| format!("chunk {}: too long", p.id))?;
            let comp = call(
                c,
                ChunkOp::Read {
                    id: p.id,
                    offset: 0,
                    len,
                },
            )?;
            if let Err(e) = &comp.result {
                return Err(match e {
                    ClientError::Status(Status::NotFound) => {
                        format!(
                            "chunk {} (bytes {}..): not found on the server",
                            p.id, p.offset
                        )
                    }
                    e => format!("chunk {} (bytes {}..): {e}", p.id, p.offset),
                });
            }
            let got = crc32c(comp.data());
            if comp.data().len() as u64 != p.len || got != p.crc {
                return Err(format!(
                    "chunk {} (bytes {}..): the server sent {} bytes with CRC32C {got:08x}; the \
                     manifest says {} bytes, {:08x}",
                    p.id,
                    p.offset,
                    comp.data().len(),
                    p.len,
                    p.crc
                ));
            }
            f.write_all(comp.data())
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        f.sync_all().map_err(|e| format!("{}: {e}", tmp.display()))
    };
    let done = fetch(&mut f, c).and_then(|()| {
        std::fs::rename(&tmp, out).map_err(|e| format!("renaming to {}: {e}", out.display()))
    });
    if let Err(e) = done {
        drop(f);
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{e}; nothing was written to {}", out.display()));
    }
    // The rename itself survives a crash once the directory is synced.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    eprintln!(
        "chunkctl: wrote {length} bytes to {} from {} chunks, every CRC32C checked",
        out.display(),
        pieces.len()
    );
    Ok(())
}

/// Why connection `i` of `c` broke, in words.
fn broken_why(c: &dyn ClientSet, i: usize) -> String {
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

/// The chunk ids the manifests name, or every manifest that does not parse (each error names
/// its file, and the line where it is about one).
fn manifest_ids(manifests: &[std::path::PathBuf]) -> Result<HashSet<ChunkId>, String> {
    let mut ids = HashSet::new();
    let mut errors = Vec::new();
    for m in manifests {
        match read_manifest(m) {
            Ok((_, pieces)) => ids.extend(pieces.iter().map(|p| p.id)),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(ids)
    } else {
        Err(errors.join("; "))
    }
}

/// Every chunk on the server, page by page (LIST from the start, each page after the last id
/// of the one before), handed to `page` as it comes.
fn list_pages(
    c: &mut dyn ClientSet,
    mut page: impl FnMut(&[ListEntry]) -> Result<(), String>,
) -> Result<(), String> {
    let mut after = None;
    let mut entries: Vec<ListEntry> = Vec::with_capacity(LIST_PAGE_MAX as usize);
    loop {
        let at = after.map_or_else(|| "from the start".to_string(), |a| format!("after {a}"));
        let comp = call(
            c,
            ChunkOp::List {
                after,
                max: LIST_PAGE_MAX,
            },
        )
        .map_err(|e| format!("LIST {at}: {e}"))?;
        let more = match comp.result {
            Ok(Reply::List { more, .. }) => more,
            Err(ClientError::Status(Status::Unsupported)) => {
                return Err("this server's store cannot list its chunks (LIST: Unsupported)".into())
            }
            Err(ClientError::Status(Status::UnknownOp)) => {
                return Err(
                    "this server does not know LIST (an older server): it cannot list chunks"
                        .into(),
                )
            }
            Err(e) => return Err(format!("LIST {at}: {e}")),
            Ok(other) => return Err(format!("LIST {at}: unexpected answer {other:?}")),
        };
        entries.clear();
        entries.extend(comp.list_entries());
        page(&entries)?;
        if !more {
            return Ok(());
        }
        match entries.last() {
            Some(last) => after = Some(last.id),
            None => {
                return Err(format!(
                    "LIST {at}: the server says more chunks follow but sent none"
                ))
            }
        }
    }
}

/// `ls`: every chunk (or, given manifests, every chunk none of them names) as `ID SIZE` lines.
fn ls(c: &mut dyn ClientSet, orphans_of: &[std::path::PathBuf]) -> Result<(), String> {
    let keep = if orphans_of.is_empty() {
        None
    } else {
        Some(manifest_ids(orphans_of)?)
    };
    let (mut total, mut shown, mut bytes) = (0u64, 0u64, 0u64);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    list_pages(c, |page| {
        for e in page {
            total += 1;
            if keep.as_ref().is_some_and(|k| k.contains(&e.id)) {
                continue;
            }
            shown += 1;
            bytes += e.size;
            writeln!(out, "{} {}", e.id, e.size).map_err(|e| format!("standard output: {e}"))?;
        }
        Ok(())
    })?;
    out.flush().map_err(|e| format!("standard output: {e}"))?;
    if keep.is_some() {
        eprintln!("chunkctl: {shown} orphan chunks ({bytes} bytes) of {total} on the server");
    } else {
        eprintln!("chunkctl: {total} chunks, {bytes} bytes");
    }
    Ok(())
}

/// `gc`: deletes every chunk no manifest in `keep` names; with `dry_run`, only says which.
fn gc(c: &mut dyn ClientSet, keep: &[std::path::PathBuf], dry_run: bool) -> Result<(), String> {
    let kept_ids = manifest_ids(keep).map_err(|e| format!("{e}; gc deleted nothing"))?;
    let mut orphans = Vec::new();
    let mut kept = 0u64;
    list_pages(c, |page| {
        for e in page {
            if kept_ids.contains(&e.id) {
                kept += 1;
            } else {
                orphans.push(*e);
            }
        }
        Ok(())
    })
    .map_err(|e| format!("{e}; gc deleted nothing"))?;
    let missing = kept_ids.len() as u64 - kept;
    if missing > 0 {
        eprintln!(
            "chunkctl: warning: {missing} chunks the manifests name are not on this server              (`get` of those files will fail)"
        );
    }
    if dry_run {
        let bytes: u64 = orphans.iter().map(|e| e.size).sum();
        for e in &orphans {
            println!("would delete {} {}", e.id, e.size);
        }
        println!(
            "gc (dry run): kept {kept} chunks, would delete {} chunks, {bytes} bytes",
            orphans.len()
        );
        return Ok(());
    }
    let (mut deleted, mut freed, mut gone, mut failed) = (0u64, 0u64, 0u64, 0u64);
    for e in &orphans {
        let result = call(c, ChunkOp::Delete { id: e.id }).map(|comp| comp.result);
        match result {
            Ok(Ok(_)) => {
                deleted += 1;
                freed += e.size;
                println!("deleted {} {}", e.id, e.size);
            }
            // Deleted by someone else since it was listed.
            Ok(Err(ClientError::Status(Status::NotFound))) => gone += 1,
            Ok(Err(err)) => {
                failed += 1;
                eprintln!("chunkctl: deleting chunk {}: {err}", e.id);
            }
            Err(err) => {
                return Err(format!(
                    "deleting chunk {}: {err}; {deleted} of {} orphan chunks were deleted \
                     before that",
                    e.id,
                    orphans.len()
                ))
            }
        }
    }
    let mut summary =
        format!("gc: kept {kept} chunks, deleted {deleted} chunks, {freed} bytes freed");
    if gone > 0 {
        summary += &format!(", {gone} already gone");
    }
    println!("{summary}");
    if failed > 0 {
        return Err(format!("{failed} chunks could not be deleted (see above)"));
    }
    Ok(())
}

/// One request on connection 0, waited for.
fn call(c: &mut dyn ClientSet, op: ChunkOp<'_>) -> Result<Completion, String> {
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
fn single(c: &mut dyn ClientSet, op: ChunkOp<'_>) -> Result<(), String> {
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

/// `chunkctl admin`: one command to the admin socket; the answer goes to standard output.
fn admin(socket: &std::path::Path, wait_s: u64, command: &[String]) -> Result<(), String> {
    let mut words = command.to_vec();
    // The server resolves nothing against our directory: send the capture file absolute.
    if words.len() >= 3 && words[0] == "capture" && words[1] == "start" {
        let p = std::path::Path::new(&words[2]);
        if p.is_relative() {
            let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
            words[2] = cwd.join(p).display().to_string();
        }
    }
    let line = words.join(" ");
    if line.contains('\n') {
        return Err("the command must be one line".into());
    }
    let body = ustack::metrics::admin_request(socket, &line, Duration::from_secs(wait_s.max(1)))
        .map_err(|e| e.to_string())?;
    print!("{body}");
    Ok(())
}

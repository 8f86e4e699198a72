//! Code the example binaries share: argument types, stores, backends, and the client set the
//! workloads run on.
#![allow(dead_code)]

pub mod server;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ustack::chunk::{
    ChunkClient, ChunkOp, ChunkStore, ClientConfig, Completion, DirStore, DirStoreConfig, MemStore,
    Staging, SubmitError, SyncPolicy,
};
use ustack::dev::tap::{TapConfig, TapDevice};
use ustack::host::netns::NetNs;
use ustack::stack::{Stack, StackConfig};
use ustack::{Instant, PacketDevice};

/// A byte count with an optional unit: `4096`, `4KiB`, `4k`, `1MiB`, `256M`, `2GiB`.
#[derive(Copy, Clone, Debug)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?}: expected a number with an optional unit"))?;
        let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB)"
                ))
            }
        };
        n.checked_mul(mul)
            .map(Size)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", b >> 30)
        } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

/// An IPv4 address with prefix length: `10.213.0.2/24`.
#[derive(Copy, Clone, Debug)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected ADDRESS/PREFIX, e.g. 10.213.0.2/24"))?;
        let addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("{p:?} is not a prefix length"))?;
        if !(1..=32).contains(&prefix) {
            return Err(format!("prefix /{prefix} is not in 1..=32"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Where chunks live: `mem` or `dir:PATH`.
#[derive(Clone, Debug)]
pub enum StoreSpec {
    Mem,
    Dir(std::path::PathBuf),
}

impl FromStr for StoreSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<StoreSpec, String> {
        match s {
            "mem" => Ok(StoreSpec::Mem),
            _ => match s.strip_prefix("dir:") {
                Some(p) if !p.is_empty() => Ok(StoreSpec::Dir(p.into())),
                _ => Err(format!("{s:?}: expected `mem` or `dir:PATH`")),
            },
        }
    }
}

/// Opens the store; returns it with a line describing it. A directory store's directory must
/// exist unless `create` is set (a mistyped path would otherwise open a new, empty store).
pub fn open_store(
    spec: &StoreSpec,
    mem_budget: u64,
    chunk_len_max: u64,
    sync: SyncPolicy,
    create: bool,
) -> Result<(Arc<dyn ChunkStore>, String), String> {
    match spec {
        StoreSpec::Mem => Ok((
            Arc::new(MemStore::new(mem_budget).with_chunk_len_max(chunk_len_max)),
            format!(
                "mem (budget {}; in memory only: every chunk is lost when the server exits, \
                 use --store dir:PATH to keep them)",
                Size(mem_budget)
            ),
        )),
        StoreSpec::Dir(path) => {
            if !create && !path.exists() {
                return Err(format!(
                    "store directory {} does not exist: check the path, or add --create to make \
                     a new store there",
                    path.display()
                ));
            }
            let cfg = DirStoreConfig {
                sync,
                chunk_len_max,
                ..DirStoreConfig::default()
            };
            let store = DirStore::open(path, cfg).map_err(|e| e.to_string())?;
            let line = format!(
                "dir:{} (sync {}; recovery: {})",
                path.display(),
                match sync {
                    SyncPolicy::Always => "always: each write is synced before it is acknowledged",
                    SyncPolicy::Never => "never: writes stay in the page cache",
                },
                store.recovery()
            );
            Ok((Arc::new(store), line))
        }
    }
}

/// Logging to stderr, filtered by RUST_LOG (default info).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The process's exit code for `result`: success, or failure after printing the error as
/// `PROGRAM: error`.
pub fn exit_code(program: &str, result: Result<(), String>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Opens a TAP interface for a ustack endpoint and configures its kernel side: `peer` as the
/// kernel's address on it, inside `netns` if given (created by the caller).
pub fn open_tap(
    name: Option<String>,
    peer: Option<Cidr>,
    netns: Option<&NetNs>,
) -> Result<(TapDevice, String), String> {
    let tap = TapDevice::open(&TapConfig {
        name,
        ..TapConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let ifname = tap.name().to_string();
    let run = |args: &[&str]| -> Result<(), String> {
        match netns {
            Some(ns) => ns.ip(args).map(|_| ()).map_err(|e| e.to_string()),
            None => {
                let out = std::process::Command::new("ip")
                    .args(args)
                    .output()
                    .map_err(|e| format!("running `ip`: {e} (install iproute2)"))?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "ip {}: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                }
            }
        }
    };
    if let Some(ns) = netns {
        ns.move_link(&ifname).map_err(|e| e.to_string())?;
    }
    if let Some(p) = peer {
        run(&["addr", "add", &p.to_string(), "dev", &ifname])?;
        run(&["link", "set", &ifname, "up"])?;
    }
    let where_ = match (peer, netns) {
        (Some(p), Some(ns)) => format!("TAP {ifname}, kernel side {p} in netns {}", ns.name()),
        (Some(p), None) => format!("TAP {ifname}, kernel side {p}"),
        (None, _) => format!("TAP {ifname} (kernel side not configured)"),
    };
    Ok((tap, where_))
}

/// A stack configuration for an example endpoint.
pub fn stack_config(ip: Cidr, gateway: Option<Ipv4Addr>, sockets: usize) -> StackConfig {
    let mut c = StackConfig::new(ip.addr, ip.prefix);
    c.gateway = gateway;
    c.sockets_max = sockets;
    c
}

/// A set of chunk connections driven together (one thread).
pub trait ClientSet {
    /// What the connections run on, for the report.
    fn describe(&self) -> String;
    /// Why the link under the connections is down, if the device knows.
    fn link_problem(&self) -> Option<String> {
        None
    }
    /// Connections.
    fn len(&self) -> usize;
    /// Moves bytes; true if anything happened.
    fn poll(&mut self, now: Instant) -> bool;
    /// Moves into `out` (cleared first) the connections where something happened since the
    /// last call: only they can have new completions or have failed.
    fn take_ready(&mut self, out: &mut Vec<usize>);
    /// Waits a little when idle (real time): after `polls` idle turns (see
    /// [`ClientSet::set_spin_polls`]) it sleeps until something comes.
    fn idle(&mut self, now: Instant);
    /// Idle turns to busy-poll before sleeping.
    fn set_spin_polls(&mut self, polls: u32);
    /// Closes every connection gracefully, waiting at most `max` for the closes to complete
    /// (kernel sockets close when dropped).
    fn close(&mut self, _max: Duration) {}
    /// The TCP counters of a ustack client set (retransmissions by cause, probes, RTOs), for
    /// its last words; `None` for kernel TCP.
    fn tcp_report(&mut self) -> Option<String> {
        None
    }
    /// Queues a request on connection `i`.
    fn submit(&mut self, i: usize, op: ChunkOp<'_>, now: Instant) -> Result<u64, SubmitError>;
    /// A finished request of connection `i`.
    fn next_completion(&mut self, i: usize) -> Option<Completion>;
    /// Whether connection `i` is up.
    fn is_connected(&self, i: usize) -> bool;
    /// Whether connection `i` failed.
    fn is_broken(&self, i: usize) -> bool;
    /// Why the server refused or closed connection `i`, if it said.
    fn refusal(&self, i: usize) -> Option<ustack::proto::Status>;
    /// Opens `n` more connections to `server` that stay idle (for connection-scaling runs).
    fn open_idle(&mut self, n: usize, server: std::net::SocketAddr) -> Result<(), String>;
}

/// Idle turns a client spins through before it sleeps (in the device, or in poll(2) for kernel
/// TCP) unless `--spin-polls` says otherwise: a reply that comes within this is seen at once.
pub const IDLE_SPIN_POLLS: u32 = 2000;

/// Counts the idle turns of a busy-polling loop: it spins `spin` of them, then may sleep.
pub struct IdleSpin {
    idle: u32,
    spin: u32,
}

impl IdleSpin {
    pub fn new(spin: u32) -> IdleSpin {
        IdleSpin { idle: 0, spin }
    }

    pub fn set_spin(&mut self, spin: u32) {
        self.spin = spin;
    }

    /// Something happened: spin again before sleeping.
    pub fn busy(&mut self) {
        self.idle = 0;
    }

    /// One more idle turn; true once the loop has spun its share and should sleep.
    pub fn idle(&mut self) -> bool {
        self.idle = self.idle.saturating_add(1);
        self.spun()
    }

    /// Whether the spinning is over (the loop's next wait may sleep).
    pub fn spun(&self) -> bool {
        self.idle > self.spin
    }

    /// Notes a turn; true when it was idle and the loop should sleep now.
    pub fn turn(&mut self, busy: bool) -> bool {
        if busy {
            self.busy();
            false
        } else {
            self.idle()
        }
    }
}

/// Connections where something happened, each listed once, so a driver with many connections
/// looks at those rather than at all of them.
pub struct Ready {
    list: Vec<usize>,
    listed: Vec<bool>,
}

impl Ready {
    pub fn new(n: usize) -> Ready {
        Ready {
            list: Vec::with_capacity(n),
            listed: vec![false; n],
        }
    }

    pub fn mark(&mut self, i: usize) {
        if !self.listed[i] {
            self.listed[i] = true;
            self.list.push(i);
        }
    }

    /// Moves the marked connections into `out` (cleared first).
    pub fn take(&mut self, out: &mut Vec<usize>) {
        out.clear();
        for &i in &self.list {
            self.listed[i] = false;
        }
        std::mem::swap(&mut self.list, out);
    }
}

/// Chunk clients on one ustack stack.
pub struct StackClients<D: PacketDevice> {
    pub stack: Stack<D>,
    pub clients: Vec<ChunkClient>,
    pub what: String,
    pub spin: IdleSpin,
    /// Connections held open and never used.
    pub idle_conns: Vec<ustack::stack::ConnId>,
    pub ready: Ready,
}

impl<D: PacketDevice> StackClients<D> {
    pub fn connect(
        mut stack: Stack<D>,
        server: SocketAddrV4,
        n: usize,
        cfg: &ClientConfig,
        what: String,
    ) -> Result<StackClients<D>, String> {
        // One staging set for all connections: sized for every request in flight on all of them
        // would be wasteful; this covers the common case and submit says NoBuffer otherwise.
        let staging = Staging::new(&cfg.staging, cfg.limits.payload_len_max as usize)
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        let clients = (0..n)
            .map(|_| {
                ChunkClient::connect_with_staging(&mut stack, server, cfg, staging.clone(), now)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(StackClients {
            stack,
            clients,
            what,
            spin: IdleSpin::new(IDLE_SPIN_POLLS),
            idle_conns: Vec::new(),
            ready: Ready::new(n),
        })
    }
}

impl<D: PacketDevice> ClientSet for StackClients<D> {
    fn describe(&self) -> String {
        self.what.clone()
    }
    fn link_problem(&self) -> Option<String> {
        let dev = self.stack.device();
        if dev.link_up() {
            None
        } else {
            dev.link_problem()
        }
    }
    fn len(&self) -> usize {
        self.clients.len()
    }
    fn poll(&mut self, now: Instant) -> bool {
        let mut busy = self.stack.poll(now);
        for (i, c) in self.clients.iter_mut().enumerate() {
            if c.poll(&mut self.stack, now) {
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
        // Spin a while (latency), then sleep in the device until a frame or a timer.
        if self.spin.idle() {
            self.stack.wait(now, Duration::from_millis(1));
        }
    }
    fn set_spin_polls(&mut self, polls: u32) {
        self.spin.set_spin(polls);
    }
    fn close(&mut self, max: Duration) {
        for c in &mut self.clients {
            c.close(&mut self.stack);
        }
        for c in self.idle_conns.drain(..) {
            let _ = self.stack.release(c);
        }
        let end = Instant::now() + max;
        let all = self.stack.config().sockets_max;
        loop {
            let now = Instant::now();
            if self.stack.sockets_free() >= all || now >= end {
                break;
            }
            if !self.stack.poll(now) {
                self.stack.wait(now, Duration::from_millis(1));
            }
        }
    }
    fn tcp_report(&mut self) -> Option<String> {
        Some(self.stack.tcp_stats().to_string())
    }
    fn submit(&mut self, i: usize, op: ChunkOp<'_>, now: Instant) -> Result<u64, SubmitError> {
        self.clients[i].submit(op, now)
    }
    fn next_completion(&mut self, i: usize) -> Option<Completion> {
        self.clients[i].next_completion()
    }
    fn is_connected(&self, i: usize) -> bool {
        self.clients[i].is_connected()
    }
    fn is_broken(&self, i: usize) -> bool {
        self.clients[i].is_broken()
    }
    fn refusal(&self, i: usize) -> Option<ustack::proto::Status> {
        self.clients[i].refusal()
    }
    fn open_idle(&mut self, n: usize, server: std::net::SocketAddr) -> Result<(), String> {
        let std::net::SocketAddr::V4(server) = server else {
            return Err(format!("{server}: ustack speaks IPv4 only"));
        };
        for _ in 0..n {
            let c = self.stack.connect(server).map_err(|e| e.to_string())?;
            self.idle_conns.push(c);
        }
        let start = Instant::now();
        loop {
            let now = Instant::now();
            self.poll(now);
            let up = self
                .idle_conns
                .iter()
                .filter(|&&c| self.stack.state(c) == Ok(ustack::stack::ConnState::Established))
                .count();
            if up == self.idle_conns.len() {
                return Ok(());
            }
            if now - start > Duration::from_secs(30) {
                return Err(format!(
                    "only {up} of {n} idle connections came up (is the server's \
                     --connections-max below them?)"
                ));
            }
            self.idle(now);
        }
    }
}

/// Deterministic chunk content: byte `i` of chunk `id` depends only on both, so any range can be
/// generated or checked on its own.
pub fn fill_pattern(id: u128, offset: u64, buf: &mut [u8]) {
    let seed = (id as u64) ^ ((id >> 64) as u64).rotate_left(29);
    let word = |w: u64| {
        let mut z = seed ^ w.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut i = 0;
    while i < buf.len() {
        let pos = offset + i as u64;
        let bytes = word(pos / 8).to_le_bytes();
        let start = (pos % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&bytes[start..start + n]);
        i += n;
    }
}

/// Whether `data` is chunk `id`'s content from `offset`; `scratch` is working space.
pub fn check_pattern(id: u128, offset: u64, data: &[u8], scratch: &mut [u8]) -> bool {
    let mut done = 0;
    while done < data.len() {
        let n = (data.len() - done).min(scratch.len());
        fill_pattern(id, offset + done as u64, &mut scratch[..n]);
        if scratch[..n] != data[done..done + n] {
            return false;
        }
        done += n;
    }
    true
}

/// A small seeded generator: ustack's SplitMix64 on the state in `.0` (the seed).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(ustack::dev::sim::SplitMix64::GAMMA);
        ustack::dev::sim::SplitMix64::mix(self.0)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Log-uniform in `1..=max`.
    pub fn log_uniform(&mut self, max: u64) -> u64 {
        let bits = 64 - max.leading_zeros() as u64;
        let b = self.below(bits) + 1;
        let lo = 1u64 << (b - 1);
        let hi = ((1u128 << b) - 1).min(u128::from(max)) as u64;
        lo + self.below(hi - lo + 1)
    }
}

/// The network backend to run on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The best kernel-bypass backend for --iface: a DPDK port (when built with `--features
    /// dpdk` and DPDK has one for it), else AF_XDP; fails listing every reason when none works.
    Auto,
    /// ustack TCP/IP on an AF_XDP socket bound to --iface (CAP_NET_RAW, CAP_BPF, CAP_NET_ADMIN).
    AfXdp,
    /// ustack TCP/IP on a DPDK port (--dpdk-vdev or --dpdk-eal; needs `--features dpdk`).
    Dpdk,
    /// ustack TCP/IP over shared memory with a peer process on this host (memif, --memif-socket).
    /// No privileges needed.
    Memif,
    /// ustack TCP/IP on a Linux TAP interface (CAP_NET_ADMIN). Debugging and compatibility.
    Tap,
    /// ustack on both ends of the in-process simulated link (chunkctl only: it runs the server
    /// stack itself).
    Sim,
    /// Kernel TCP (std::net): no kernel bypass; the baseline.
    Kernel,
}

/// XDP attach mode.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Native (driver) XDP, falling back to generic.
    Auto,
    /// Native XDP only.
    Native,
    /// Generic (skb) XDP only.
    Generic,
}

/// AF_XDP preferred busy polling (`XdpConfig::busy_poll`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpBusyPollArg {
    /// The wakeup path only (need_wakeup flags, poll()).
    Off,
    /// Busy polling where the kernel allows it, else the wakeup path (one warning).
    Auto,
    /// Busy polling, or fail to start.
    On,
}

/// memif role.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MemifRoleArg {
    /// Listens on the socket (the file server's usual role).
    Server,
    /// Connects to the socket and provides the shared memory.
    Client,
}

/// Options of the kernel-bypass backends, shared by the examples.
#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// auto, af-xdp (and dpdk on a shared NIC): the network interface, in this namespace.
    #[arg(long)]
    pub iface: Option<String>,
    /// af-xdp: XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// af-xdp: UMEM frame size, 2048 or 4096. Interface MTUs above 1778 (2048) or 3826 (4096)
    /// are carried in several UMEM frames per packet (multi-buffer, copied once each way).
    #[arg(long, default_value_t = 2048)]
    pub xdp_frame_len: usize,
    /// af-xdp: preferred busy polling of the queue from the socket's system calls
    /// (SO_PREFER_BUSY_POLL, SO_BUSY_POLL, SO_BUSY_POLL_BUDGET).
    #[arg(long, value_enum, default_value_t = XdpBusyPollArg::Off)]
    pub xdp_busy_poll: XdpBusyPollArg,
    /// af-xdp: SO_BUSY_POLL, microseconds one system call may busy-poll.
    #[arg(long, default_value_t = 20)]
    pub xdp_busy_poll_us: u32,
    /// af-xdp: SO_BUSY_POLL_BUDGET, packets one busy poll may process.
    #[arg(long, default_value_t = 64)]
    pub xdp_busy_poll_budget: u32,
    /// Idle turns of the serving or client loop to busy-poll before sleeping until something
    /// comes (every backend, kernel TCP too): lower latency for more CPU. 0 sleeps at once.
    /// Default: 1000 in the file server, 2000 in chunkctl.
    #[arg(long)]
    pub spin_polls: Option<u32>,
    /// memif: the control socket path (the server creates it).
    #[arg(long)]
    pub memif_socket: Option<std::path::PathBuf>,
    /// memif: our role (default: server for fileserver, client for chunkctl).
    #[arg(long, value_enum)]
    pub memif_role: Option<MemifRoleArg>,
    /// memif: queue pairs. A client proposes this many and spreads its connections over them
    /// (by a hash of addresses and ports; a connection stays on one); a server takes at most
    /// this many. Default 1; a file server with `--cores` serves one per core.
    #[arg(long)]
    pub memif_queues: Option<usize>,
    /// dpdk: a virtual device, e.g. `net_memif0,role=client,socket=/tmp/m.sock`.
    #[arg(long)]
    pub dpdk_vdev: Option<String>,
    /// dpdk: EAL arguments, e.g. "-l 1 -a 0000:3b:00.0 -m 512".
    #[arg(long, allow_hyphen_values = true)]
    pub dpdk_eal: Option<String>,
    /// tap: interface name (default: the kernel picks ust<N>).
    #[arg(long)]
    pub tap_name: Option<String>,
    /// tap: the kernel's address on the TAP (configured with `ip`), e.g. 10.213.0.1/24.
    #[arg(long)]
    pub tap_peer: Option<Cidr>,
    /// tap: create this network namespace and put the TAP's kernel side in it.
    #[arg(long)]
    pub tap_netns: Option<String>,
    /// ustack backends: TCP receive and send buffer per connection, each. Memory is reserved
    /// for every socket at start. Default: 1 MiB, less when there are many sockets, so that
    /// all of them together take at most 256 MiB (e.g. 1 MiB each for the file server's 80
    /// sockets, 64 KiB each for 1,100 connections). The window a connection can keep in flight
    /// is this size: bulk transfers need about a round trip's worth of data (on memif, 256 KiB
    /// moved 1 MiB WRITEs at 1.2 GB/s, 1 MiB at 2.0 GB/s).
    #[arg(long)]
    pub tcp_buf: Option<Size>,
    /// memif and dpdk: the link's IP MTU [default: 9000 for memif, 1500 for dpdk]. The AF_XDP
    /// and TAP MTU is the interface's. A shared-memory link has no wire limit: 65000 (IPv4's
    /// 16-bit total length allows 65535; one frame then fits one memif buffer, at most 65535
    /// bytes) moves bulk data in a seventh of the frames 9000 takes, but its 256-slot rings
    /// (64 KiB buffers) cannot take a burst of a thousand connections yet, so it is not the
    /// default. TCP's MSS option keeps ends with different MTUs working, each sending what the
    /// other can take; frames longer than a peer's buffers are chained.
    #[arg(long)]
    pub mtu: Option<usize>,
}

/// A kernel-bypass device for `backend` (not sim or kernel), plus a namespace to keep alive.
pub fn open_device(
    backend: Backend,
    dev: &DevArgs,
    ip: Ipv4Addr,
    default_role: MemifRoleArg,
) -> Result<(ustack::dev::auto::AnyDevice, Option<NetNs>), String> {
    use ustack::dev::auto::AnyDevice;
    let iface = || {
        dev.iface.clone().ok_or_else(|| {
            format!("--backend {backend:?} needs --iface NAME (the interface to bind)")
        })
    };
    let backend_cfg = |ifname: String| backend_config(dev, ip, &ifname);
    let opened = match backend {
        Backend::Auto => AnyDevice::auto(&backend_cfg(iface()?)?),
        Backend::AfXdp => AnyDevice::open_af_xdp(&backend_cfg(iface()?)?.xdp),
        Backend::Memif => AnyDevice::open_memif(&memif_config(dev, default_role)?),
        Backend::Dpdk => {
            #[cfg(feature = "dpdk")]
            {
                let cfg = dpdk_config(dev)?
                    .ok_or("--backend dpdk needs --dpdk-vdev SPEC or --dpdk-eal ARGS")?;
                AnyDevice::open_dpdk(&cfg)
            }
            #[cfg(not(feature = "dpdk"))]
            {
                return Err("this binary was built without DPDK: cargo build --release --examples --features dpdk".into());
            }
        }
        Backend::Tap => {
            let ns = match &dev.tap_netns {
                Some(name) => Some(NetNs::create(name).map_err(|e| e.to_string())?),
                None => None,
            };
            let (tap, where_) = open_tap(dev.tap_name.clone(), dev.tap_peer, ns.as_ref())?;
            return Ok((
                AnyDevice::from_tap(tap, format!("ustack TCP/IP over {where_}")),
                ns,
            ));
        }
        Backend::Sim | Backend::Kernel => {
            return Err(format!("{backend:?} is not a device backend"))
        }
    };
    opened.map(|d| (d, None)).map_err(|e| e.to_string())
}

/// The memif device the flags describe (`--memif-socket`, `--memif-role`, `--memif-queues`,
/// `--mtu`).
fn memif_config(
    dev: &DevArgs,
    default_role: MemifRoleArg,
) -> Result<ustack::dev::memif::MemifConfig, String> {
    use ustack::dev::memif::{MemifConfig, MemifRole};
    let path = dev
        .memif_socket
        .clone()
        .ok_or("--backend memif needs --memif-socket PATH")?;
    let role = match dev.memif_role.unwrap_or(default_role) {
        MemifRoleArg::Server => MemifRole::Server,
        MemifRoleArg::Client => MemifRole::Client,
    };
    let mut cfg = MemifConfig::new(path, role);
    cfg.queues = dev.memif_queues.unwrap_or(1);
    cfg.mtu = dev.mtu.unwrap_or(MEMIF_MTU_DEFAULT);
    // As a client, whole frames in one buffer (65024 bytes for the default MTU): no
    // chains and no copies between ustack peers. Chains are for peers with small
    // buffers (DPDK's and VPP's 2048), and cost a copy of all but the first piece.
    cfg.buffer_size = (cfg.mtu + 14).next_multiple_of(64).clamp(2048, 65535);
    if cfg.mtu > 9000 {
        // Buffers of up to 64 KiB: 1,024 ring slots, as at the default MTU (with 256,
        // a burst of 1,024 connections did not all come up: SYN|ACKs waited for posted
        // buffers while the listener's backlog turned over), and 2,560 pool buffers
        // (160 MiB at 64 KiB): every slot posted, as many frames in flight, and the
        // frames the stack holds; 1,024 more per further queue pair.
        cfg.ring_size_log2 = 10;
        cfg.pool_frames = Some(2560 + 1024 * cfg.queues.saturating_sub(1));
    }
    Ok(cfg)
}

/// The backend settings the flags describe for interface `ifname` (AF_XDP's, and DPDK's when
/// built with it).
fn backend_config(
    dev: &DevArgs,
    ip: Ipv4Addr,
    ifname: &str,
) -> Result<ustack::dev::auto::BackendConfig, String> {
    use ustack::dev::af_xdp::{BusyPoll, XdpMode};
    let mut b = ustack::dev::auto::BackendConfig::from_iface(ifname);
    b.xdp.filter_ipv4 = Some(ip);
    b.xdp.mode = match dev.xdp_mode {
        XdpModeArg::Auto => XdpMode::Auto,
        XdpModeArg::Native => XdpMode::Native,
        XdpModeArg::Generic => XdpMode::Generic,
    };
    b.xdp.frame_len = dev.xdp_frame_len;
    b.xdp.busy_poll = match dev.xdp_busy_poll {
        XdpBusyPollArg::Off => BusyPoll::Off,
        XdpBusyPollArg::Auto => BusyPoll::Auto,
        XdpBusyPollArg::On => BusyPoll::On,
    };
    b.xdp.busy_poll_timeout_us = dev.xdp_busy_poll_us;
    b.xdp.busy_poll_budget = dev.xdp_busy_poll_budget;
    #[cfg(feature = "dpdk")]
    {
        b.dpdk = dpdk_config(dev)?;
    }
    Ok(b)
}

/// One device per core for `--cores` (per-core shards): memif queue pairs of one connection,
/// or AF_XDP sockets on queues `0..cores` of `--iface`.
pub fn open_devices_for_cores(
    backend: Backend,
    dev: &DevArgs,
    ip: Ipv4Addr,
    cores: usize,
) -> Result<Vec<ustack::dev::auto::AnyDevice>, String> {
    match backend {
        Backend::Memif => open_memif_cores(dev, cores),
        Backend::AfXdp => {
            let ifname = dev
                .iface
                .clone()
                .ok_or("--backend af-xdp needs --iface NAME (the interface to bind)")?;
            let cfg = backend_config(dev, ip, &ifname)?;
            let queues = u32::try_from(cores).map_err(|_| "too many cores")?;
            ustack::dev::auto::AnyDevice::open_af_xdp_queues(&cfg.xdp, queues)
                .map_err(|e| e.to_string())
        }
        #[cfg(feature = "dpdk")]
        Backend::Dpdk => {
            let mut cfg = dpdk_config(dev)?
                .ok_or("--backend dpdk needs --dpdk-vdev SPEC or --dpdk-eal ARGS")?;
            cfg.queues = u16::try_from(cores).map_err(|_| "too many cores")?;
            // The pool serves every queue's rings and stack: at least what they may hold (a
            // power of two less one, as mempools like).
            let needed = (cfg.mbufs_needed() + 1).next_power_of_two() - 1;
            cfg.mempool_mbufs = cfg.mempool_mbufs.max(needed);
            ustack::dev::auto::AnyDevice::open_dpdk_queues(&cfg).map_err(|e| e.to_string())
        }
        other => Err(format!(
            "--cores works with --backend memif, af-xdp and dpdk (built with the dpdk \
             feature), not {other:?}"
        )),
    }
}

/// A memif server for `--cores`: one device per core, device `i` serving queue pair `i` of the
/// client's connection (the client proposes the pairs: `chunkctl --memif-queues N`).
fn open_memif_cores(
    dev: &DevArgs,
    cores: usize,
) -> Result<Vec<ustack::dev::auto::AnyDevice>, String> {
    let mut cfg = memif_config(dev, MemifRoleArg::Server)?;
    if cfg.role != ustack::dev::memif::MemifRole::Server {
        return Err("--cores serves as a memif server: leave out --memif-role client".into());
    }
    match dev.memif_queues {
        Some(q) if q < cores => {
            return Err(format!(
                "--memif-queues {q} is fewer than the {cores} cores of --cores: each core \
                 serves one queue pair"
            ))
        }
        Some(_) => {}
        None => cfg.queues = cores,
    }
    ustack::dev::auto::AnyDevice::open_memif_shared(&cfg, cores).map_err(|e| e.to_string())
}

/// A list of cores on the command line: `0,1`, `0-3`, `0-3,8`.
#[derive(Clone, Debug)]
pub struct Cores(pub Vec<usize>);

impl std::str::FromStr for Cores {
    type Err = String;
    fn from_str(s: &str) -> Result<Cores, String> {
        parse_cores(s).map(Cores)
    }
}

fn parse_cores(s: &str) -> Result<Vec<usize>, String> {
    let mut cores = Vec::new();
    for part in s.split(',') {
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("{t:?} in {s:?} is not a core number (a list: 0,1 or 0-3)"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b - a >= 4096 {
                    return Err(format!("{part:?} is not a range of cores"));
                }
                cores.extend(a..=b);
            }
            None => cores.push(num(part)?),
        }
    }
    Ok(cores)
}

/// The memif link MTU when `--mtu` is not given. Larger MTUs (`--mtu 65000`) move 1 MiB
/// transfers faster on some runs and 4 KiB requests slower on others (docs/DATAPATH.md, "MTU"):
/// 9000 until a larger one wins on both.
const MEMIF_MTU_DEFAULT: usize = 9000;

/// The DPDK device named on the command line, if any.
#[cfg(feature = "dpdk")]
fn dpdk_config(dev: &DevArgs) -> Result<Option<ustack::dev::dpdk::DpdkConfig>, String> {
    use ustack::dev::dpdk::DpdkConfig;
    let mut cfg = match (&dev.dpdk_vdev, &dev.dpdk_eal) {
        (Some(v), None) => Some(DpdkConfig::from_vdev(v)),
        (None, Some(a)) => {
            Some(DpdkConfig::from_eal_args(a.split_whitespace()).map_err(|e| e.to_string())?)
        }
        (Some(v), Some(a)) => {
            let mut c =
                DpdkConfig::from_eal_args(a.split_whitespace()).map_err(|e| e.to_string())?;
            c.eal.vdevs.push(v.clone());
            Some(c)
        }
        (None, None) => None,
    };
    if let (Some(c), Some(mtu)) = (cfg.as_mut(), dev.mtu) {
        c.mtu = mtu;
    }
    Ok(cfg)
}

/// The TCP buffer size (each way) for `sockets` sockets when `--tcp-buf` is not given: 1 MiB,
/// lowered in steps of 64 KiB (to 64 KiB at least) so all buffers fit in 256 MiB.
pub fn default_tcp_buf(sockets: usize) -> usize {
    const MAX: usize = 1 << 20;
    const STEP: usize = 64 << 10;
    const BUDGET: usize = 256 << 20;
    let each = BUDGET / (2 * sockets.max(1));
    (each / STEP * STEP).clamp(STEP, MAX)
}

/// A stack on `dev` with the device's own MAC when it has one; `tune` sees the configuration
/// last (program-specific settings).
pub fn stack_on(
    dev: ustack::dev::auto::AnyDevice,
    args: &DevArgs,
    ip: Cidr,
    gateway: Option<Ipv4Addr>,
    sockets: usize,
    tune: impl FnOnce(&mut StackConfig),
) -> Result<Stack<ustack::dev::auto::AnyDevice>, String> {
    let mut cfg = stack_config(ip, gateway, sockets);
    let buf = match args.tcp_buf {
        Some(b) => usize::try_from(b.0).map_err(|_| "--tcp-buf is too large")?,
        None => default_tcp_buf(sockets),
    };
    cfg.tcp.rx_buf_len = buf;
    cfg.tcp.tx_buf_len = buf;
    tune(&mut cfg);
    Stack::new(dev, cfg).map_err(|e| e.to_string())
}

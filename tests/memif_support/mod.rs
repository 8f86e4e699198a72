//! Shared by the memif tests (`memif`, `memif_hostile`, `memif_frames`, `memif_interop`) and
//! the two-process memif benchmark (`benches/memif_processes.rs`): a ustack chunk server and
//! client on memif devices ([`ServerRig`], [`ClientRig`]), the roles a child process plays
//! ([`run_child`]), frames between two devices, and (in [`raw`] and [`dpdk_peer`]) peers that
//! are not ustack: one written here against the wire format, and DPDK's.
#![allow(dead_code)]

pub mod dpdk_peer;
pub mod raw;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use crate::common::child::{self, ChildCommand};
use crate::common::{self, Pattern, Rng, Watched};
use ustack::chunk::{
    ChunkClient, ChunkOp, ChunkServer, ClientConfig, MemStore, ServerConfig, StagingConfig,
    SubmitError,
};
use ustack::dev::memif::{MemifConfig, MemifDevice, MemifFrame, MemifRole};
use ustack::proto::{ChunkId, Reply};
use ustack::stack::{MacAddr, Stack, StackConfig};
use ustack::{Batch, Frame, Instant, PacketDevice, PoolBuf};

pub const PORT: u16 = 7000;
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Fixed MACs: a restarted peer comes back with the same one, so neighbour caches stay right.
pub const SERVER_MAC: MacAddr = MacAddr([0x02, 0x4d, 0x49, 0, 0, 1]);
pub const CLIENT_MAC: MacAddr = MacAddr([0x02, 0x4d, 0x49, 0, 0, 2]);
/// The memif socket a child process uses.
pub const SOCKET_ENV: &str = "USTACK_MEMIF_SOCKET";
/// The user a child server runs as when the test runs as root.
pub const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------------------------
// Rigs

/// A fresh directory under /tmp that any user may write (for the socket), removed at the end.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = PathBuf::from(format!(
            "/tmp/ustack-memif-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).expect("create test dir");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        TestDir(p)
    }

    pub fn socket(&self) -> PathBuf {
        self.0.join("memif.sock")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// This process's effective user id.
pub fn euid() -> u32 {
    common::effective_uid().expect("effective uid")
}

pub fn memif_cfg(socket: &Path, role: MemifRole) -> MemifConfig {
    MemifConfig {
        // Modest memory: tests run several devices at once.
        ring_size_log2: 9,
        ..MemifConfig::new(socket, role)
    }
}

pub fn stack_cfg(ip: Ipv4Addr, mac: MacAddr) -> StackConfig {
    let mut c = StackConfig::new(ip, 24);
    c.mac = Some(mac);
    c.sockets_max = 16;
    c
}

pub fn server_cfg() -> ServerConfig {
    ServerConfig {
        connections_max: 8,
        backlog: 4,
        staging: StagingConfig {
            small_count: 64,
            large_count: 8,
            ..StagingConfig::default()
        },
        ..ServerConfig::default()
    }
}

pub fn client_cfg(request_timeout: Duration) -> ClientConfig {
    ClientConfig {
        request_timeout,
        connect_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

/// Spins this long without work before sleeping in the device's wait.
pub const SPIN: Duration = Duration::from_micros(50);

/// Idle policy for the poll loops: spin a little (yielding the CPU at each turn), then wait on
/// the device (eventfds, control socket) for at most 1 ms.
pub struct Idle(Option<WallInstant>);

impl Idle {
    pub fn new() -> Idle {
        Idle(None)
    }

    pub fn step<D: PacketDevice>(&mut self, busy: bool, stack: &mut Stack<D>) {
        if busy {
            self.0 = None;
            return;
        }
        let since = *self.0.get_or_insert_with(WallInstant::now);
        if since.elapsed() > SPIN {
            stack.wait(Instant::now(), Duration::from_millis(1));
        } else {
            // A peer woken on this CPU runs now rather than after our spin.
            std::thread::yield_now();
        }
    }
}

/// The server's device: it builds outgoing frames in the buffers its client posted.
pub type ServerDev = MemifDevice<MemifFrame>;

/// A chunk server over memif (in place).
pub struct ServerRig {
    pub stack: Stack<ServerDev>,
    pub server: ChunkServer<Arc<MemStore>>,
    pub idle: Idle,
}

impl ServerRig {
    pub fn new(socket: &Path) -> ServerRig {
        ServerRig::with(memif_cfg(socket, MemifRole::Server))
    }

    pub fn with(cfg: MemifConfig) -> ServerRig {
        let dev = MemifDevice::open_in_place(&cfg).expect("memif server");
        let mut stack = Stack::new(dev, stack_cfg(SERVER_IP, SERVER_MAC)).expect("stack");
        let server = ChunkServer::bind(
            &mut stack,
            PORT,
            Arc::new(MemStore::new(1 << 30)),
            server_cfg(),
        )
        .expect("chunk server");
        ServerRig {
            stack,
            server,
            idle: Idle::new(),
        }
    }

    pub fn step(&mut self) -> bool {
        let now = Instant::now();
        let busy = self.stack.poll(now) | self.server.poll(&mut self.stack);
        self.idle.step(busy, &mut self.stack);
        busy
    }

    pub fn dev(&self) -> &ServerDev {
        self.stack.device()
    }
}

/// A chunk client over memif.
pub struct ClientRig {
    pub stack: Stack<MemifDevice>,
    pub client: Option<ChunkClient>,
    pub idle: Idle,
    pub request_timeout: Duration,
}

impl ClientRig {
    pub fn new(socket: &Path, request_timeout: Duration) -> ClientRig {
        ClientRig::with(memif_cfg(socket, MemifRole::Client), request_timeout)
    }

    pub fn with(cfg: MemifConfig, request_timeout: Duration) -> ClientRig {
        let dev = MemifDevice::open(&cfg).expect("memif client");
        let stack = Stack::new(dev, stack_cfg(CLIENT_IP, CLIENT_MAC)).expect("stack");
        ClientRig {
            stack,
            client: None,
            idle: Idle::new(),
            request_timeout,
        }
    }

    pub fn dev(&self) -> &MemifDevice {
        self.stack.device()
    }

    /// One poll round; `other` is polled too (a server in the same thread).
    pub fn step(&mut self, other: Option<&mut ServerRig>) -> bool {
        let now = Instant::now();
        let mut busy = self.stack.poll(now);
        if let Some(c) = &mut self.client {
            busy |= c.poll(&mut self.stack, now);
        }
        match other {
            Some(s) => {
                busy |= s.stack.poll(now) | s.server.poll(&mut s.stack);
                if !busy {
                    std::thread::yield_now();
                }
            }
            None => self.idle.step(busy, &mut self.stack),
        }
        busy
    }

    /// Polls until the memif link is up.
    pub fn wait_link(
        &mut self,
        mut other: Option<&mut ServerRig>,
        limit: Duration,
    ) -> Result<(), String> {
        let start = WallInstant::now();
        while !self.dev().link_up() || other.as_ref().is_some_and(|s| !s.dev().link_up()) {
            if start.elapsed() > limit {
                return Err(format!(
                    "memif link not up after {limit:?}: {:?} (last error {:?})",
                    self.dev(),
                    self.dev().last_error()
                ));
            }
            self.step(other.as_deref_mut());
        }
        Ok(())
    }

    /// Opens a chunk connection and polls until it is established.
    pub fn connect(&mut self, mut other: Option<&mut ServerRig>) -> Result<(), String> {
        if let Some(mut old) = self.client.take() {
            old.close(&mut self.stack);
        }
        let c = ChunkClient::connect(
            &mut self.stack,
            SocketAddrV4::new(SERVER_IP, PORT),
            &client_cfg(self.request_timeout),
            Instant::now(),
        )
        .map_err(|e| e.to_string())?;
        self.client = Some(c);
        let start = WallInstant::now();
        loop {
            let c = self.client.as_ref().unwrap();
            if c.is_connected() {
                return Ok(());
            }
            if c.is_broken() || start.elapsed() > Duration::from_secs(15) {
                return Err("chunk connection not established".into());
            }
            self.step(other.as_deref_mut());
        }
    }

    /// Writes then reads back `count` chunks of log-uniform sizes in 1 B ..= `max_len`, up to
    /// `depth` requests in flight, and checks every byte. `progress` sees each completion.
    pub fn round_trip(
        &mut self,
        mut other: Option<&mut ServerRig>,
        count: usize,
        max_len: usize,
        seed: u64,
        depth: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<u64, String> {
        let mut rng = Rng::new(seed);
        let ln_max = (max_len as f64).ln();
        let sizes: Vec<usize> = (0..count)
            .map(|_| {
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                ((u * ln_max).exp() as usize).clamp(1, max_len)
            })
            .collect();
        let base = u128::from(seed) << 64;
        let mut data = vec![0u8; max_len];
        let mut scratch = vec![0u8; 64 << 10];
        let mut bytes = 0u64;
        let mut done_total = 0;
        for phase_write in [true, false] {
            let mut next = 0;
            let mut done = 0;
            let mut pending: HashMap<u64, usize> = HashMap::new();
            let deadline = WallInstant::now() + Duration::from_secs(300);
            while done < count {
                if WallInstant::now() > deadline {
                    return Err(format!("round trip stuck at {done}/{count}"));
                }
                while next < count && pending.len() < depth {
                    let i = next;
                    let id = ChunkId(base + i as u128);
                    let pat = Pattern::new(seed ^ i as u64);
                    let op = if phase_write {
                        pat.fill(0, &mut data[..sizes[i]]);
                        ChunkOp::Write {
                            id,
                            offset: 0,
                            data: &data[..sizes[i]],
                        }
                    } else {
                        ChunkOp::Read {
                            id,
                            offset: 0,
                            len: sizes[i] as u32,
                        }
                    };
                    let client = self.client.as_mut().ok_or("no chunk client")?;
                    match client.submit(op, Instant::now()) {
                        Ok(rid) => {
                            pending.insert(rid, i);
                            next += 1;
                        }
                        Err(SubmitError::NoBuffer | SubmitError::TooManyInFlight { .. }) => break,
                        Err(e) => return Err(format!("submit: {e}")),
                    }
                }
                self.step(other.as_deref_mut());
                let client = self.client.as_mut().ok_or("no chunk client")?;
                while let Some(c) = client.next_completion() {
                    let i = pending
                        .remove(&c.request_id)
                        .ok_or("completion of an unknown request")?;
                    let reply = c.result.map_err(|e| format!("chunk {i}: {e}"))?;
                    match (phase_write, reply) {
                        (true, Reply::Write { chunk_size }) if chunk_size == sizes[i] as u64 => {}
                        (false, Reply::Read { len, .. }) if len as usize == sizes[i] => {
                            let pat = Pattern::new(seed ^ i as u64);
                            if let Some(at) = pat.mismatch(0, c.data(), &mut scratch) {
                                return Err(format!(
                                    "chunk {i} ({} bytes) differs at byte {at}",
                                    sizes[i]
                                ));
                            }
                        }
                        (_, other) => return Err(format!("chunk {i}: unexpected reply {other:?}")),
                    }
                    bytes += sizes[i] as u64;
                    done += 1;
                    done_total += 1;
                    progress(done_total);
                }
            }
        }
        Ok(bytes)
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes (tests/common/child.rs)

/// Starts a child process (`cmd`: this binary in a role, see [`run_child`]) on the memif
/// socket `socket`.
pub fn spawn_role(cmd: ChildCommand, socket: &Path) -> Watched {
    cmd.env(SOCKET_ENV, socket).spawn()
}

/// What a child process does in `role`, on the socket its parent named:
///
/// - `chunk-server`: a chunk server; prints `READY uid=N`, serves until stdin closes, then
///   prints its device's counters;
/// - `chunk-client` / `chunk-client-forever`: a client that writes and reads back chunks
///   (`child: progress N` after each completion), once or until killed;
/// - `sink`: counts the frames it receives until stdin closes (`READY`, then
///   `child: received FRAMES BYTES`);
/// - `echo`: sends every frame back until stdin closes (`READY`).
pub fn run_child(role: &str) {
    let socket = PathBuf::from(std::env::var(SOCKET_ENV).expect("socket path"));
    match role {
        "chunk-server" => child_chunk_server(&socket),
        "chunk-client" => child_chunk_client(&socket, false),
        "chunk-client-forever" => child_chunk_client(&socket, true),
        "sink" => child_sink(&socket),
        "echo" => child_echo(&socket),
        other => panic!("unknown child role {other}"),
    }
}

fn child_chunk_server(socket: &Path) {
    let stop = child::stdin_closed();
    let mut rig = ServerRig::new(socket);
    child::report(format!("{} uid={}", child::READY, euid()));
    while !stop.load(Ordering::Acquire) {
        rig.step();
    }
    println!("child: stats {:?}", rig.dev().memif_stats());
}

fn child_chunk_client(socket: &Path, forever: bool) {
    let mut rig = ClientRig::new(socket, Duration::from_secs(30));
    rig.wait_link(None, Duration::from_secs(20)).expect("link");
    rig.connect(None).expect("chunk connection");
    println!("child: connected");
    let mut seed = 1000;
    loop {
        let mut n = 0;
        let r = rig.round_trip(None, 20, 1 << 20, seed, 8, |_| {
            n += 1;
            println!("child: progress {n}");
        });
        match r {
            Ok(bytes) => println!("child: round trip ok {bytes} bytes"),
            Err(e) => panic!("child round trip failed: {e}"),
        }
        if !forever {
            break;
        }
        seed += 1;
    }
    println!("child: done");
}

/// Counts frames until stdin closes.
fn child_sink(socket: &Path) {
    let stop = child::stdin_closed();
    let cfg = memif_cfg(socket, MemifRole::Server);
    let mut dev = MemifDevice::open(&cfg).expect("memif server");
    child::report(child::READY);
    let mut batch = Batch::with_capacity(256);
    let (mut frames, mut bytes) = (0u64, 0u64);
    while !stop.load(Ordering::Acquire) {
        let n = dev.rx_burst(Instant::now(), &mut batch);
        if n == 0 {
            // Let the sender run if it shares our core (2 vCPUs, other load).
            std::thread::yield_now();
        }
        while let Some(f) = batch.pop() {
            frames += 1;
            bytes += f.len() as u64;
        }
    }
    println!("child: received {frames} {bytes}");
}

/// Sends every frame back (a copy into a new buffer), until stdin closes.
fn child_echo(socket: &Path) {
    let stop = child::stdin_closed();
    let cfg = memif_cfg(socket, MemifRole::Server);
    let mut dev = MemifDevice::open(&cfg).expect("memif server");
    child::report(child::READY);
    let mut rx: Batch<PoolBuf> = Batch::with_capacity(256);
    let mut tx: Batch<PoolBuf> = Batch::with_capacity(256);
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if dev.rx_burst(now, &mut rx) == 0 && tx.is_empty() {
            std::thread::yield_now();
        }
        while let Some(f) = rx.pop() {
            if tx.is_full() {
                break;
            }
            let Some(mut out) = dev.tx_alloc() else { break };
            assert!(out.set_len(f.len()));
            out.as_mut_slice().copy_from_slice(f.as_slice());
            let _ = tx.push(out);
        }
        if !tx.is_empty() {
            dev.tx_burst(now, &mut tx);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Frames between two devices

pub fn frame_with<D: PacketDevice>(dev: &mut D, tag: u8, len: usize) -> D::Frame {
    let mut f = dev.tx_alloc().expect("tx buffer");
    assert!(f.set_len(len));
    for (i, b) in f.data_mut().iter_mut().enumerate() {
        *b = tag ^ (i as u8);
    }
    f
}

/// Sends `n` frames each way and checks them.
pub fn exchange(a: &mut MemifDevice, b: &mut MemifDevice, n: usize) {
    for (from_a, len) in [(true, 60usize), (false, 1514)] {
        let (tx_dev, rx_dev) = if from_a {
            (&mut *a, &mut *b)
        } else {
            (&mut *b, &mut *a)
        };
        let mut out = Batch::with_capacity(n);
        for i in 0..n {
            let f = frame_with(tx_dev, i as u8, len);
            out.push(f).ok().unwrap();
        }
        let mut got: Batch<PoolBuf> = Batch::with_capacity(n);
        let start = WallInstant::now();
        while got.len() < n {
            assert!(start.elapsed() < Duration::from_secs(5), "frames lost");
            tx_dev.tx_burst(Instant::now(), &mut out);
            rx_dev.rx_burst(Instant::now(), &mut got);
        }
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.len(), len);
            assert!(f
                .as_slice()
                .iter()
                .enumerate()
                .all(|(k, &b)| b == (i as u8) ^ (k as u8)));
        }
    }
}

pub fn pump_until_up(a: &mut MemifDevice, b: &mut MemifDevice) {
    let mut batch = Batch::with_capacity(64);
    let start = WallInstant::now();
    while !(a.link_up() && b.link_up()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not connected: {a:?} / {b:?} ({:?} / {:?})",
            a.last_error(),
            b.last_error()
        );
        a.rx_burst(Instant::now(), &mut batch);
        b.rx_burst(Instant::now(), &mut batch);
        batch.clear();
    }
}

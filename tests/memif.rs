//! The memif backend between processes, with no privileges:
//!
//! - ustack memif client <-> ustack memif server in two processes (the server child runs as uid
//!   65534 when the test runs as root), a chunk server and a chunk client on top: 500 random
//!   chunks (log-uniform 1 B .. 4 MiB) written and read back, every byte checked;
//! - either process killed with SIGKILL mid-transfer: the survivor notices, frees the rings,
//!   reconnects to a restarted peer; failed requests report errors;
//! - hostile peers (a raw client and a raw server written here against the wire format) that
//!   write corrupt descriptors and ring indexes: rejected and counted, and a well-behaved peer
//!   is served afterwards;
//! - either side may start first.
//!
//! Child processes are this test binary run again with `USTACK_MEMIF_CHILD` naming their role
//! (the `memif_child` test is their entry point and does nothing otherwise).
//!
//! The ignored `bench_*` tests print frame rates and 4 KiB READ latency over memif next to
//! kernel TCP loopback: `cargo test --release --test memif bench -- --ignored --nocapture`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use common::{Pattern, Rng};
use ustack::chunk::{
    ChunkClient, ChunkOp, ChunkServer, ClientConfig, ClientError, MemStore, ServerConfig,
    StagingConfig, SubmitError,
};
use ustack::dev::memif::proto::{self, AddRegion, AddRing, Hello, Init, Msg, Name};
use ustack::dev::memif::ring::{ring_len, Desc, RingView, DESC_FLAG_NEXT};
use ustack::dev::memif::{MemifConfig, MemifDevice, MemifFrame, MemifRole, MemifState};
use ustack::host::unix_ipc::{self as sys, SeqPacket, SeqPacketListener, UnixAddr};
use ustack::mem::shm::SharedRegion;
use ustack::proto::{ChunkId, Reply};
use ustack::stack::{MacAddr, Stack, StackConfig};
use ustack::{Batch, Frame, Instant, PacketDevice, PageSize, PoolBuf};

const PORT: u16 = 7000;
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Fixed MACs: a restarted peer comes back with the same one, so neighbour caches stay right.
const SERVER_MAC: MacAddr = MacAddr([0x02, 0x4d, 0x49, 0, 0, 1]);
const CLIENT_MAC: MacAddr = MacAddr([0x02, 0x4d, 0x49, 0, 0, 2]);
const CHILD_ENV: &str = "USTACK_MEMIF_CHILD";
const SOCKET_ENV: &str = "USTACK_MEMIF_SOCKET";
const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// A fresh directory under /tmp that any user may write (for the socket), removed at the end.
struct TestDir(PathBuf);

impl TestDir {
    fn new(tag: &str) -> TestDir {
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

    fn socket(&self) -> PathBuf {
        self.0.join("memif.sock")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn euid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

fn memif_cfg(socket: &Path, role: MemifRole) -> MemifConfig {
    MemifConfig {
        // Modest memory: tests run several devices at once.
        ring_size_log2: 9,
        ..MemifConfig::new(socket, role)
    }
}

fn stack_cfg(ip: Ipv4Addr, mac: MacAddr) -> StackConfig {
    let mut c = StackConfig::new(ip, 24);
    c.mac = Some(mac);
    c.sockets_max = 16;
    c
}

fn server_cfg() -> ServerConfig {
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

fn client_cfg(request_timeout: Duration) -> ClientConfig {
    ClientConfig {
        request_timeout,
        connect_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

/// Spins this long without work before sleeping in the device's wait.
const SPIN: Duration = Duration::from_micros(50);

/// Idle policy for the poll loops: spin a little (yielding the CPU at each turn), then wait on
/// the device (eventfds, control socket) for at most 1 ms.
struct Idle(Option<WallInstant>);

impl Idle {
    fn new() -> Idle {
        Idle(None)
    }

    fn step<D: PacketDevice>(&mut self, busy: bool, stack: &mut Stack<D>) {
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
type ServerDev = MemifDevice<MemifFrame>;

/// A chunk server over memif (in place).
struct ServerRig {
    stack: Stack<ServerDev>,
    server: ChunkServer<Arc<MemStore>>,
    idle: Idle,
}

impl ServerRig {
    fn new(socket: &Path) -> ServerRig {
        ServerRig::with(memif_cfg(socket, MemifRole::Server))
    }

    fn with(cfg: MemifConfig) -> ServerRig {
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

    fn step(&mut self) -> bool {
        let now = Instant::now();
        let busy = self.stack.poll(now) | self.server.poll(&mut self.stack);
        self.idle.step(busy, &mut self.stack);
        busy
    }

    fn dev(&self) -> &ServerDev {
        self.stack.device()
    }
}

/// A chunk client over memif.
struct ClientRig {
    stack: Stack<MemifDevice>,
    client: Option<ChunkClient>,
    idle: Idle,
    request_timeout: Duration,
}

impl ClientRig {
    fn new(socket: &Path, request_timeout: Duration) -> ClientRig {
        ClientRig::with(memif_cfg(socket, MemifRole::Client), request_timeout)
    }

    fn with(cfg: MemifConfig, request_timeout: Duration) -> ClientRig {
        let dev = MemifDevice::open(&cfg).expect("memif client");
        let stack = Stack::new(dev, stack_cfg(CLIENT_IP, CLIENT_MAC)).expect("stack");
        ClientRig {
            stack,
            client: None,
            idle: Idle::new(),
            request_timeout,
        }
    }

    fn dev(&self) -> &MemifDevice {
        self.stack.device()
    }

    /// One poll round; `other` is polled too (a server in the same thread).
    fn step(&mut self, other: Option<&mut ServerRig>) -> bool {
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
    fn wait_link(
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
    fn connect(&mut self, mut other: Option<&mut ServerRig>) -> Result<(), String> {
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
    fn round_trip(
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
// Child processes

/// Entry point of the child processes (a no-op in a normal test run).
#[test]
fn memif_child() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    let socket = PathBuf::from(std::env::var(SOCKET_ENV).expect("socket path"));
    match role.as_str() {
        "chunk-server" => child_chunk_server(&socket),
        "chunk-client" => child_chunk_client(&socket, false),
        "chunk-client-forever" => child_chunk_client(&socket, true),
        "sink" => child_sink(&socket),
        "echo" => child_echo(&socket),
        other => panic!("unknown child role {other}"),
    }
}

/// Set when the parent closes our stdin: time to finish.
fn stdin_closed() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&flag);
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        f.store(true, Ordering::Release);
    });
    flag
}

fn child_chunk_server(socket: &Path) {
    let stop = stdin_closed();
    let mut rig = ServerRig::new(socket);
    println!("child: ready uid={}", euid());
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
    let stop = stdin_closed();
    let cfg = memif_cfg(socket, MemifRole::Server);
    let mut dev = MemifDevice::open(&cfg).expect("memif server");
    println!("child: ready");
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
    let stop = stdin_closed();
    let cfg = memif_cfg(socket, MemifRole::Server);
    let mut dev = MemifDevice::open(&cfg).expect("memif server");
    println!("child: ready");
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

struct Child {
    child: std::process::Child,
    lines: Receiver<String>,
    role: String,
}

fn spawn_child(role: &str, socket: &Path, as_nobody: bool) -> Child {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["memif_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, role)
        .env(SOCKET_ENV, socket)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if as_nobody {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    spawn_command(cmd, role)
}

/// Spawns `cmd` with its stdout read line by line.
fn spawn_command(mut cmd: Command, role: &str) -> Child {
    let mut child = cmd.spawn().expect("spawn child");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Child {
        child,
        lines: rx,
        role: role.into(),
    }
}

impl Child {
    /// The next line holding `prefix` (libtest may print its own text in front), from `prefix`
    /// on; polls `pump` meanwhile.
    fn wait_line(&mut self, prefix: &str, limit: Duration, mut pump: impl FnMut()) -> String {
        let start = WallInstant::now();
        loop {
            match self.lines.recv_timeout(Duration::from_micros(200)) {
                Ok(l) if l.contains(prefix) => return l[l.find(prefix).unwrap_or(0)..].to_string(),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => pump(),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("child {} exited before printing {prefix:?}", self.role)
                }
            }
            assert!(
                start.elapsed() < limit,
                "child {} printed no {prefix:?} within {limit:?}",
                self.role
            );
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL by pid.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes stdin (the child's cue to finish), polls `pump` until it exits; its status.
    fn finish(&mut self, limit: Duration, mut pump: impl FnMut()) -> std::process::ExitStatus {
        drop(self.child.stdin.take());
        let start = WallInstant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(start.elapsed() < limit, "child {} did not exit", self.role);
            pump();
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Two processes, 500 chunks

#[test]
fn chunks_round_trip_between_two_processes_without_privileges() {
    let dir = TestDir::new("chunks");
    let socket = dir.socket();
    let as_nobody = euid() == 0;
    let mut server = spawn_child("chunk-server", &socket, as_nobody);
    let ready = server.wait_line("child: ready", Duration::from_secs(30), || {});
    if as_nobody {
        assert!(ready.ends_with(&format!("uid={NOBODY}")), "{ready}");
    } else {
        println!("not root: both processes run as uid {}", euid());
    }
    // The socket file belongs to the unprivileged server.
    let owner = std::fs::metadata(&socket).expect("socket file").uid();
    assert_eq!(owner, if as_nobody { NOBODY } else { euid() });

    let mut rig = ClientRig::new(&socket, Duration::from_secs(60));
    println!(
        "client's shared frame pool: {} buffers on {} pages",
        rig.dev().pool().capacity(),
        rig.dev().pool().page_size()
    );
    rig.wait_link(None, Duration::from_secs(20)).unwrap();
    rig.connect(None).unwrap();
    let start = WallInstant::now();
    let bytes = rig
        .round_trip(None, 500, 4 << 20, 0x5eed_0001, 8, |_| {})
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let stats = rig.dev().memif_stats();
    println!(
        "500 chunks written then read back ({bytes} payload bytes moved) in {secs:.2} s: \
         {:.2} Gbit/s of payload; client device {stats:?}",
        bytes as f64 * 8.0 / secs / 1e9
    );
    assert_eq!(stats.rejected_desc, 0);
    assert_eq!(stats.disconnects, 0);
    assert!(rig.dev().lent_buffers() > 0, "receive buffers are posted");

    let status = server.finish(Duration::from_secs(20), || {
        rig.step(None);
    });
    assert!(status.success(), "server child failed: {status}");
}

// ---------------------------------------------------------------------------------------------
// 2. Kill either process mid-transfer

#[test]
fn killing_the_server_mid_transfer_fails_requests_and_the_client_reconnects() {
    let dir = TestDir::new("killsrv");
    let socket = dir.socket();
    let mut server = spawn_child("chunk-server", &socket, false);
    server.wait_line("child: ready", Duration::from_secs(30), || {});
    let mut rig = ClientRig::new(&socket, Duration::from_secs(3));
    rig.wait_link(None, Duration::from_secs(20)).unwrap();
    rig.connect(None).unwrap();

    // Keep 8 writes of 1 MiB in flight; kill the server after a few complete.
    let data = vec![0xA5u8; 1 << 20];
    let (mut submitted, mut ok, mut failed) = (0u64, 0u64, 0u64);
    let mut errors: HashMap<String, u64> = HashMap::new();
    let mut killed = false;
    let start = WallInstant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(60), "stuck");
        let client = rig.client.as_mut().unwrap();
        while !killed && client.in_flight() < 8 {
            let op = ChunkOp::Write {
                id: ChunkId(submitted as u128),
                offset: 0,
                data: &data,
            };
            match client.submit(op, Instant::now()) {
                Ok(_) => submitted += 1,
                Err(_) => break,
            }
        }
        rig.step(None);
        let client = rig.client.as_mut().unwrap();
        while let Some(c) = client.next_completion() {
            match c.result {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(
                        matches!(e, ClientError::Timeout | ClientError::ConnectionLost),
                        "unexpected error {e:?}"
                    );
                    *errors.entry(format!("{e:?}")).or_default() += 1;
                    failed += 1;
                }
            }
        }
        if !killed && ok >= 5 {
            println!("killing server pid {} after {ok} writes", server.pid());
            server.kill();
            killed = true;
        }
        if killed && ok + failed == submitted && !rig.dev().link_up() {
            break;
        }
    }
    println!("submitted {submitted}, ok {ok}, failed {failed} {errors:?}");
    assert!(failed > 0, "requests in flight at the kill must fail");
    assert_eq!(
        ok + failed,
        submitted,
        "every request completed, nothing lost"
    );
    let stats = rig.dev().memif_stats();
    assert_eq!(stats.disconnects, 1, "{stats:?}");
    assert_eq!(rig.dev().state(), MemifState::Idle);
    assert_eq!(rig.dev().mapped_regions(), 0, "rings unmapped");
    assert_eq!(rig.dev().lent_buffers(), 0, "every buffer back in the pool");

    // Frames sent while the link is down are dropped and counted (TCP retransmissions here).
    let dropped = stats.link.tx_dropped;
    let c = rig.client.as_mut().unwrap();
    let _ = c.submit(ChunkOp::Ping, Instant::now());
    let start = WallInstant::now();
    while rig.dev().memif_stats().link.tx_dropped == dropped {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing sent while down"
        );
        rig.step(None);
    }

    // A restarted server: the client's device reconnects, and a new connection works.
    let mut server = spawn_child("chunk-server", &socket, false);
    server.wait_line("child: ready", Duration::from_secs(30), || {
        rig.step(None);
    });
    rig.wait_link(None, Duration::from_secs(20)).unwrap();
    assert_eq!(rig.dev().memif_stats().reconnects, 1);
    rig.connect(None).unwrap();
    rig.round_trip(None, 20, 1 << 20, 77, 8, |_| {}).unwrap();
    let status = server.finish(Duration::from_secs(20), || {
        rig.step(None);
    });
    assert!(status.success());
}

#[test]
fn killing_the_client_mid_transfer_frees_the_rings_and_a_new_client_is_served() {
    let dir = TestDir::new("killcli");
    let socket = dir.socket();
    let mut rig = ServerRig::new(&socket);
    let mut client = spawn_child("chunk-client-forever", &socket, false);
    client.wait_line("child: progress 10", Duration::from_secs(60), || {
        rig.step();
    });
    assert_eq!(rig.dev().state(), MemifState::Up);
    assert_eq!(rig.dev().mapped_regions(), 2);
    println!("killing client pid {} mid-transfer", client.pid());
    client.kill();
    let start = WallInstant::now();
    while rig.dev().state() != MemifState::Idle {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "hang-up not noticed"
        );
        rig.step();
    }
    let stats = rig.dev().memif_stats();
    assert_eq!(stats.disconnects, 1, "{stats:?}");
    assert_eq!(
        rig.dev().mapped_regions(),
        0,
        "the dead client's regions are unmapped"
    );
    assert!(!rig.dev().link_up());

    // A new client process is served in full.
    let mut client = spawn_child("chunk-client", &socket, false);
    client.wait_line("child: done", Duration::from_secs(120), || {
        rig.step();
    });
    let status = client.finish(Duration::from_secs(20), || {
        rig.step();
    });
    assert!(status.success(), "client child failed: {status}");
    let stats = rig.dev().memif_stats();
    assert_eq!((stats.connects, stats.reconnects), (2, 1), "{stats:?}");
    assert_eq!(stats.rejected_desc, 0);
}

// ---------------------------------------------------------------------------------------------
// 3. Hostile peers

/// Receives one control message, polling `pump` while none is there.
fn recv_msg(
    sock: &SeqPacket,
    mut pump: impl FnMut(),
) -> Option<(Msg, Option<std::os::fd::OwnedFd>)> {
    let start = WallInstant::now();
    let mut buf = [0u8; proto::MSG_LEN];
    loop {
        match sock.recv(&mut buf) {
            Ok(r) if r.len == 0 => return None,
            Ok(r) => return Some((Msg::parse(&buf[..r.len]).expect("a memif message"), r.fd)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("recv: {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no control message"
        );
        pump();
    }
}

fn send_msg(sock: &SeqPacket, m: Msg, fd: Option<std::os::fd::BorrowedFd<'_>>) {
    sock.send(&m.to_bytes(), fd).expect("send");
}

/// An ARP request for `target` from a made-up host.
fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&[10, 77, 0, 9]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

#[test]
fn a_hostile_client_is_rejected_and_counted_and_a_good_one_is_served() {
    let dir = TestDir::new("hostile");
    let socket = dir.socket();
    let mut srv = ServerRig::new(&socket);

    // A raw client: the handshake by hand.
    let sock = SeqPacket::connect(&UnixAddr::Path(socket.clone())).expect("connect");
    macro_rules! pump {
        () => {
            || {
                srv.step();
            }
        };
    }
    let (hello, _) = recv_msg(&sock, pump!()).unwrap();
    let Msg::Hello(Hello {
        max_log2_ring_size, ..
    }) = hello
    else {
        panic!("expected HELLO, got {hello:?}")
    };
    assert_eq!(max_log2_ring_size, proto::LOG2_RING_SIZE_MAX);
    send_msg(
        &sock,
        Msg::Init(Init {
            version: proto::VERSION,
            id: 0,
            mode: proto::MODE_ETHERNET,
            secret: [0; 24],
            name: Name::new("hostile"),
        }),
        None,
    );
    assert_eq!(recv_msg(&sock, pump!()).unwrap().0, Msg::Ack);
    const LOG2: u8 = 4;
    let rings =
        SharedRegion::create(2 * ring_len(LOG2), PageSize::Base4K, "hostile-rings").unwrap();
    let data = SharedRegion::create(64 << 10, PageSize::Base4K, "hostile-data").unwrap();
    let c2s = RingView::new(&rings, 0, LOG2).unwrap();
    let s2c = RingView::new(&rings, ring_len(LOG2), LOG2).unwrap();
    c2s.init(0);
    s2c.init(0);
    for (i, r) in [&rings, &data].into_iter().enumerate() {
        send_msg(
            &sock,
            Msg::AddRegion(AddRegion {
                index: i as u16,
                size: r.len() as u64,
            }),
            r.fd(),
        );
        assert_eq!(recv_msg(&sock, pump!()).unwrap().0, Msg::Ack);
    }
    let efd = sys::eventfd().unwrap();
    for (flags, offset) in [(proto::ADD_RING_FLAG_C2S, 0), (0, ring_len(LOG2) as u32)] {
        send_msg(
            &sock,
            Msg::AddRing(AddRing {
                flags,
                index: 0,
                region: 0,
                offset,
                log2_ring_size: LOG2,
                private_hdr_size: 0,
            }),
            Some(efd.as_fd()),
        );
        assert_eq!(recv_msg(&sock, pump!()).unwrap().0, Msg::Ack);
    }
    send_msg(&sock, Msg::Connect(Name::new("hostile0")), None);
    assert!(matches!(
        recv_msg(&sock, pump!()).unwrap().0,
        Msg::Connected(_)
    ));
    assert_eq!(srv.dev().state(), MemifState::Up);

    // S2C: one posted buffer outside the data region, then good ones.
    let desc = |region, offset, length, flags| Desc {
        flags,
        region,
        length,
        offset,
        metadata: 0,
    };
    s2c.set_desc(0, &desc(1, (64 << 10) - 100, 2048, 0));
    for s in 1..8u16 {
        s2c.set_desc(s, &desc(1, 32768 + u32::from(s) * 2048, 2048, 0));
    }
    s2c.set_head(8, Ordering::Release);

    // C2S: offset past the region, a length larger than any frame, a region that does not
    // exist, a chain whose second part is outside the region; then a good ARP request.
    let arp = arp_request(SERVER_IP);
    assert!(data.write(4096, &arp));
    let bad = [
        desc(1, (64 << 10) - 10, 200, 0),
        desc(1, 0, 100_000, 0),
        desc(9, 0, 60, 0),
        desc(1, 0, 20, DESC_FLAG_NEXT),
        desc(1, 1 << 20, 40, 0),
        desc(1, 4096, arp.len() as u32, 0),
    ];
    for (s, d) in bad.iter().enumerate() {
        c2s.set_desc(s as u16, d);
    }
    c2s.set_head(bad.len() as u16, Ordering::Release);
    let start = WallInstant::now();
    while s2c.tail(Ordering::Acquire) == 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "no ARP reply");
        srv.step();
    }
    let stats = srv.dev().memif_stats();
    println!("server after corrupt descriptors: {stats:?}");
    assert_eq!(
        stats.rejected_desc,
        4 + 1,
        "four bad C2S frames, one bad S2C buffer"
    );
    assert_eq!(stats.link.rx_packets, 1, "the good ARP request");
    assert_eq!(
        c2s.tail(Ordering::Acquire),
        bad.len() as u16,
        "every slot handed back"
    );
    // The bad S2C buffer came back empty; the ARP reply is in the next one.
    assert_eq!(s2c.desc(0).length, 0);
    let reply = s2c.desc(1);
    assert_eq!(reply.region, 1);
    let mut got = vec![0u8; reply.length as usize];
    assert!(data.read(reply.offset as usize, &mut got));
    assert_eq!(&got[12..14], &[0x08, 0x06], "an ARP frame");
    assert_eq!(&got[20..22], &[0, 2], "an ARP reply");
    assert_eq!(
        &got[28..32],
        &SERVER_IP.octets(),
        "from the server's address"
    );

    // A head beyond the ring: the server drops the connection and says why.
    c2s.set_head(bad.len() as u16 + 100, Ordering::Release);
    let (m, _) = recv_msg(&sock, pump!()).expect("a DISCONNECT");
    let Msg::Disconnect(d) = m else {
        panic!("expected DISCONNECT, got {m:?}")
    };
    println!("server said: {:?}", d.reason_lossy());
    assert!(recv_msg(&sock, pump!()).is_none(), "socket closed");
    let stats = srv.dev().memif_stats();
    assert_eq!(stats.bad_ring_index, 1);
    assert_eq!(stats.disconnects, 1);
    assert_eq!(srv.dev().mapped_regions(), 0);
    drop(sock);

    // A client that never finishes its handshake holds the server up only until the handshake
    // timeout; one that connects while another is served is turned away. Then a good client.
    let silent = SeqPacket::connect(&UnixAddr::Path(socket.clone())).expect("connect");
    for _ in 0..100 {
        srv.step();
    }
    assert_eq!(srv.dev().state(), MemifState::Handshake);
    let mut good = ClientRig::new(&socket, Duration::from_secs(30));
    good.wait_link(Some(&mut srv), Duration::from_secs(20))
        .unwrap();
    assert!(srv.dev().memif_stats().handshake_failures >= 1);
    drop(silent);
    let intruder = SeqPacket::connect(&UnixAddr::Path(socket.clone())).expect("connect");
    let (m, _) = recv_msg(&intruder, || {
        good.step(Some(&mut srv));
    })
    .expect("a message");
    assert!(
        matches!(m, Msg::Disconnect(ref d) if d.reason_lossy() == "Already connected"),
        "{m:?}"
    );
    good.connect(Some(&mut srv)).unwrap();
    let bytes = good
        .round_trip(Some(&mut srv), 30, 1 << 20, 99, 8, |_| {})
        .unwrap();
    let stats = srv.dev().memif_stats();
    println!("good client moved {bytes} bytes; server {stats:?}");
    assert_eq!(stats.rejected_desc, 5, "nothing new rejected");
    assert_eq!(stats.reconnects, 1);
    // The intruder, and the good client's attempts while the silent one held the server.
    assert!(stats.connections_refused >= 1);
}

#[test]
fn a_hostile_server_cannot_make_the_client_misbehave() {
    let dir = TestDir::new("hostsrv");
    let socket = dir.socket();
    let listener = SeqPacketListener::bind(&UnixAddr::Path(socket.clone()), 4).unwrap();
    let mut dev = MemifDevice::open(&memif_cfg(&socket, MemifRole::Client)).unwrap();
    fn pump(dev: &mut MemifDevice) {
        let mut batch: Batch<PoolBuf> = Batch::with_capacity(64);
        dev.rx_burst(Instant::now(), &mut batch);
        assert!(batch.is_empty(), "no frames expected here");
    }
    let sock = loop {
        pump(&mut dev);
        if let Some(s) = listener.accept().unwrap() {
            break s;
        }
    };
    send_msg(
        &sock,
        Msg::Hello(Hello {
            name: Name::new("hostile-server"),
            min_version: proto::VERSION,
            max_version: proto::VERSION,
            max_region: 255,
            max_s2c_ring: 0,
            max_c2s_ring: 0,
            max_log2_ring_size: 4,
        }),
        None,
    );
    let mut regions = Vec::new();
    let mut ring_offsets = Vec::new();
    loop {
        let (m, fd) = recv_msg(&sock, || pump(&mut dev)).expect("a message");
        match m {
            Msg::Init(i) => assert_eq!(i.id, 0),
            Msg::AddRegion(r) => {
                regions.push(SharedRegion::map_fd(fd.expect("region fd"), r.size as usize).unwrap())
            }
            Msg::AddRing(r) => {
                assert!(fd.is_some(), "every ring comes with an eventfd");
                assert_eq!(r.log2_ring_size, 4, "the client took our smaller limit");
                ring_offsets.push((r.is_c2s(), r.offset as usize));
            }
            Msg::Connect(_) => break,
            other => panic!("unexpected {other:?}"),
        }
        send_msg(&sock, Msg::Ack, None);
    }
    send_msg(&sock, Msg::Connected(Name::new("evil")), None);
    while !dev.link_up() {
        pump(&mut dev);
    }
    assert_eq!(regions.len(), 2);
    assert_eq!(dev.queues(), Some((1, 1)));
    let (_, s2c_off) = *ring_offsets.iter().find(|(c2s, _)| !c2s).unwrap();
    let s2c = RingView::new(&regions[0], s2c_off, 4).unwrap();
    assert_eq!(
        s2c.head(Ordering::Acquire),
        16,
        "the client posted every slot"
    );
    assert_eq!(dev.lent_buffers(), 16);

    // Frames in the posted buffers, with lies: another buffer's offset, a length larger than
    // the buffer, the ring region instead of the buffer region; then a good frame.
    let posted: Vec<Desc> = (0..4).map(|s| s2c.desc(s)).collect();
    let frame: Vec<u8> = (0..60u8).collect();
    for d in &posted {
        assert!(regions[1].write(d.offset as usize, &frame));
    }
    s2c.set_desc(
        0,
        &Desc {
            offset: posted[0].offset + 2048,
            length: 60,
            ..posted[0]
        },
    );
    s2c.set_desc(
        1,
        &Desc {
            length: 5000,
            ..posted[1]
        },
    );
    s2c.set_desc(
        2,
        &Desc {
            region: 0,
            length: 60,
            ..posted[2]
        },
    );
    s2c.set_desc(
        3,
        &Desc {
            length: 60,
            ..posted[3]
        },
    );
    s2c.set_tail(4, Ordering::Release);
    let mut got: Batch<PoolBuf> = Batch::with_capacity(64);
    dev.rx_burst(Instant::now(), &mut got);
    assert_eq!(got.len(), 1);
    assert_eq!(got.front().unwrap().as_slice(), &frame[..]);
    assert_eq!(dev.memif_stats().rejected_desc, 3);
    assert_eq!(dev.lent_buffers(), 16, "slots refilled");

    // A tail beyond what was posted: the client disconnects and takes its buffers back.
    s2c.set_tail(4 + 40, Ordering::Release);
    dev.rx_burst(Instant::now(), &mut got);
    let stats = dev.memif_stats();
    assert_eq!(stats.bad_ring_index, 1);
    assert!(!dev.link_up());
    assert_eq!(dev.lent_buffers(), 0);
    assert_eq!(dev.pool().stats().in_use, 1, "only the frame we hold");
    let (m, _) = recv_msg(&sock, || {}).expect("a DISCONNECT");
    assert!(matches!(m, Msg::Disconnect(_)), "{m:?}");
    drop(got);
    assert_eq!(dev.pool().stats().in_use, 0);
    // And it tries again.
    let start = WallInstant::now();
    while listener.accept().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no reconnection attempt"
        );
        pump(&mut dev);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Either side first

fn frame_with<D: PacketDevice>(dev: &mut D, tag: u8, len: usize) -> D::Frame {
    let mut f = dev.tx_alloc().expect("tx buffer");
    assert!(f.set_len(len));
    for (i, b) in f.data_mut().iter_mut().enumerate() {
        *b = tag ^ (i as u8);
    }
    f
}

/// Sends `n` frames each way and checks them.
fn exchange(a: &mut MemifDevice, b: &mut MemifDevice, n: usize) {
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

fn pump_until_up(a: &mut MemifDevice, b: &mut MemifDevice) {
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

/// A second client while one is connected is turned away, and says why in words (it used to
/// wait silently).
#[test]
fn a_second_client_learns_the_server_is_taken() {
    let dir = TestDir::new("second");
    let socket = dir.socket();
    let mut server = MemifDevice::open(&memif_cfg(&socket, MemifRole::Server)).unwrap();
    let mut first = MemifDevice::open(&memif_cfg(&socket, MemifRole::Client)).unwrap();
    pump_until_up(&mut first, &mut server);
    let mut second = MemifDevice::open(&memif_cfg(&socket, MemifRole::Client)).unwrap();
    let mut batch = Batch::with_capacity(64);
    let start = WallInstant::now();
    let why = loop {
        assert!(start.elapsed() < Duration::from_secs(10), "no reason given");
        for d in [&mut server, &mut first, &mut second] {
            d.rx_burst(Instant::now(), &mut batch);
            batch.clear();
        }
        if let Some(w) = second.link_problem() {
            break w;
        }
    };
    assert!(why.contains("serving another client"), "{why}");
    assert!(!second.link_up() && first.link_up());
    assert!(server.memif_stats().connections_refused >= 1);
}

#[test]
fn either_side_can_start_first() {
    let dir = TestDir::new("order");
    let socket = dir.socket();

    // Client first: it retries with backoff, drops (and counts) what it is given to send.
    let mut client = MemifDevice::open(&memif_cfg(&socket, MemifRole::Client)).unwrap();
    let mut batch = Batch::with_capacity(64);
    let start = WallInstant::now();
    while start.elapsed() < Duration::from_millis(300) {
        client.rx_burst(Instant::now(), &mut batch);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!client.link_up());
    // Why, in words, without debug logging.
    let why = client.link_problem().expect("a reason");
    assert!(why.contains("no such socket"), "{why}");
    let attempts = client.memif_stats().connect_attempts;
    assert!(
        (3..=40).contains(&attempts),
        "backoff: {attempts} attempts in 300 ms"
    );
    let mut out = Batch::with_capacity(4);
    out.push(frame_with(&mut client, 1, 100)).ok().unwrap();
    assert_eq!(client.tx_burst(Instant::now(), &mut out), 1);
    assert_eq!(client.memif_stats().link.tx_dropped, 1);
    // The device's wait also sleeps when there is nothing to connect to.
    client.wait(Duration::from_millis(20));

    let mut server = MemifDevice::open(&memif_cfg(&socket, MemifRole::Server)).unwrap();
    pump_until_up(&mut client, &mut server);
    exchange(&mut client, &mut server, 100);
    assert_eq!(client.peer_names().unwrap().0, "ustack");
    drop(client);
    drop(server);
    assert!(!socket.exists(), "the server removed its socket file");

    // Server first.
    let mut server = MemifDevice::open(&memif_cfg(&socket, MemifRole::Server)).unwrap();
    let mut batch = Batch::with_capacity(64);
    for _ in 0..50 {
        server.rx_burst(Instant::now(), &mut batch);
    }
    assert!(!server.link_up());
    let mut client = MemifDevice::open(&memif_cfg(&socket, MemifRole::Client)).unwrap();
    pump_until_up(&mut server, &mut client);
    exchange(&mut server, &mut client, 100);

    // A stale socket file from a dead server is replaced; a live server's is not.
    let e = MemifDevice::open(&memif_cfg(&socket, MemifRole::Server)).unwrap_err();
    assert!(
        e.to_string().contains("another process is listening"),
        "{e}"
    );
    drop(server);
    drop(client);
    let stale = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(stale);
    assert!(socket.exists());
    let server = MemifDevice::open(&memif_cfg(&socket, MemifRole::Server)).unwrap();
    drop(server);
    // A file that is not a socket is never removed.
    std::fs::write(&socket, b"precious").unwrap();
    let e = MemifDevice::open(&memif_cfg(&socket, MemifRole::Server)).unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&socket).unwrap(), b"precious");
}

#[test]
fn secrets_and_interface_ids_must_match() {
    let dir = TestDir::new("secret");
    let socket = dir.socket();
    let mut scfg = memif_cfg(&socket, MemifRole::Server);
    scfg.secret = Some("open sesame".into());
    scfg.interface_id = 5;
    let mut server = MemifDevice::open(&scfg).unwrap();
    let mut batch = Batch::with_capacity(64);
    for (id, secret, ok) in [
        (5, None, false),
        (5, Some("wrong"), false),
        (6, Some("open sesame"), false),
        (5, Some("open sesame"), true),
    ] {
        let mut ccfg = memif_cfg(&socket, MemifRole::Client);
        ccfg.interface_id = id;
        ccfg.secret = secret.map(String::from);
        let mut client = MemifDevice::open(&ccfg).unwrap();
        let start = WallInstant::now();
        while start.elapsed() < Duration::from_millis(300) && !client.link_up() {
            client.rx_burst(Instant::now(), &mut batch);
            server.rx_burst(Instant::now(), &mut batch);
        }
        assert_eq!(client.link_up(), ok, "id {id} secret {secret:?}");
        if !ok {
            assert!(client.memif_stats().handshake_failures > 0);
            println!("refused: {:?}", client.last_error());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers (ignored by default)

fn bench_secs() -> f64 {
    std::env::var("USTACK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0)
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture (release build)"]
fn bench_two_process_frames() {
    for len in [64usize, 1500] {
        // Stream: this process (client) sends, the child (server) counts.
        let dir = TestDir::new("bench");
        let socket = dir.socket();
        let mut sink = spawn_child("sink", &socket, false);
        sink.wait_line("child: ready", Duration::from_secs(30), || {});
        let mut dev = MemifDevice::open(&memif_cfg(&socket, MemifRole::Client)).unwrap();
        let mut scratch = Batch::with_capacity(64);
        while !dev.link_up() {
            dev.rx_burst(Instant::now(), &mut scratch);
        }
        let mut out = Batch::with_capacity(64);
        let start = WallInstant::now();
        let mut sent = 0u64;
        while start.elapsed().as_secs_f64() < bench_secs() {
            while !out.is_full() {
                let Some(mut f) = dev.tx_alloc() else { break };
                let _ = f.set_len(len);
                // A header and a sequence number, as a packet generator writes; the rest of the
                // frame is whatever the buffer held.
                let d = f.data_mut();
                d[..12].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
                d[12..14].copy_from_slice(&[0x88, 0xb5]);
                d[14..22].copy_from_slice(&sent.to_le_bytes());
                let _ = out.push(f);
            }
            let n = dev.tx_burst(Instant::now(), &mut out);
            if n == 0 {
                std::thread::yield_now(); // ring full: let the receiver run
            }
            sent += n as u64;
        }
        let secs = start.elapsed().as_secs_f64();
        let status = sink.finish(Duration::from_secs(10), || {});
        assert!(status.success());
        let got = sink.wait_line("child: received", Duration::from_secs(5), || {});
        let frames: u64 = got.split_whitespace().nth(2).unwrap().parse().unwrap();
        println!(
            "memif stream {len} B: sent {sent}, received {frames} frames in {secs:.2} s: {:.3} Mpps, \
             {:.2} Gbit/s",
            frames as f64 / secs / 1e6,
            frames as f64 * len as f64 * 8.0 / secs / 1e9
        );

        // Loop: the child echoes, this process keeps a window of frames in flight.
        let dir = TestDir::new("bench-echo");
        let socket = dir.socket();
        let mut echo = spawn_child("echo", &socket, false);
        echo.wait_line("child: ready", Duration::from_secs(30), || {});
        let mut dev = MemifDevice::open(&memif_cfg(&socket, MemifRole::Client)).unwrap();
        while !dev.link_up() {
            dev.rx_burst(Instant::now(), &mut scratch);
        }
        let window = 256u64;
        let (mut sent, mut back) = (0u64, 0u64);
        let mut rx = Batch::with_capacity(64);
        let start = WallInstant::now();
        while start.elapsed().as_secs_f64() < bench_secs() {
            while sent - back < window && !out.is_full() {
                let Some(mut f) = dev.tx_alloc() else { break };
                let _ = f.set_len(len);
                let _ = out.push(f);
                sent += 1;
            }
            dev.tx_burst(Instant::now(), &mut out);
            if dev.rx_burst(Instant::now(), &mut rx) == 0 {
                std::thread::yield_now();
            }
            back += rx.len() as u64;
            rx.clear();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "memif echo loop {len} B (window {window}): {:.3} M round trips/s, {:.2} Gbit/s each way",
            back as f64 / secs / 1e6,
            back as f64 * len as f64 * 8.0 / secs / 1e9
        );
        assert!(echo.finish(Duration::from_secs(10), || {}).success());
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture (release build)"]
fn bench_chunk_read_4k_depth1_memif_vs_kernel() {
    let dir = TestDir::new("bench-read");
    let socket = dir.socket();
    let mut server = spawn_child("chunk-server", &socket, false);
    server.wait_line("child: ready", Duration::from_secs(30), || {});
    let mut rig = ClientRig::new(&socket, Duration::from_secs(10));
    rig.wait_link(None, Duration::from_secs(20)).unwrap();
    rig.connect(None).unwrap();
    let data = vec![7u8; 4096];
    let id = ChunkId(42);
    let client = rig.client.as_mut().unwrap();
    client
        .submit(
            ChunkOp::Write {
                id,
                offset: 0,
                data: &data,
            },
            Instant::now(),
        )
        .unwrap();
    while rig.client.as_mut().unwrap().next_completion().is_none() {
        rig.step(None);
    }
    let mut lat = Vec::new();
    let start = WallInstant::now();
    while start.elapsed().as_secs_f64() < bench_secs() {
        let t = WallInstant::now();
        rig.client
            .as_mut()
            .unwrap()
            .submit(
                ChunkOp::Read {
                    id,
                    offset: 0,
                    len: 4096,
                },
                Instant::now(),
            )
            .unwrap();
        loop {
            // Spin (yielding) for up to 50 us, then sleep in the device's wait (the server's
            // eventfd kick wakes us): robust when the two vCPUs are shared with other work.
            rig.step(None);
            if let Some(done) = rig.client.as_mut().unwrap().next_completion() {
                assert_eq!(done.data().len(), 4096);
                break;
            }
        }
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "memif 4 KiB READ depth 1: {:.0} ops/s, p50 {:.1} us, p99 {:.1} us ({} ops)",
        lat.len() as f64 / secs,
        percentile(&lat, 0.5) as f64 / 1e3,
        percentile(&lat, 0.99) as f64 / 1e3,
        lat.len()
    );
    let _ = server.finish(Duration::from_secs(10), || {
        rig.step(None);
    });

    // Kernel TCP on loopback, the same protocol (ustack::net).
    let handle = ustack::net::KernelServer::spawn(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(MemStore::new(1 << 30)),
        server_cfg(),
    )
    .unwrap();
    let mut kc = ustack::net::KernelClient::connect(
        handle.local_addr(),
        &client_cfg(Duration::from_secs(10)),
    )
    .unwrap();
    kc.call(ChunkOp::Write {
        id,
        offset: 0,
        data: &data,
    })
    .unwrap();
    let mut lat = Vec::new();
    let start = WallInstant::now();
    while start.elapsed().as_secs_f64() < bench_secs() {
        let t = WallInstant::now();
        let c = kc
            .call(ChunkOp::Read {
                id,
                offset: 0,
                len: 4096,
            })
            .unwrap();
        assert_eq!(c.data().len(), 4096);
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "kernel TCP loopback 4 KiB READ depth 1: {:.0} ops/s, p50 {:.1} us, p99 {:.1} us ({} ops)",
        lat.len() as f64 / secs,
        percentile(&lat, 0.5) as f64 / 1e3,
        percentile(&lat, 0.99) as f64 / 1e3,
        lat.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Interoperability with DPDK's net_memif

/// A DPDK application on net_memif that echoes every frame: built by the test from this source
/// with the system's DPDK (`libdpdk-dev`), or taken from `USTACK_MEMIF_DPDK_PEER`.
const DPDK_PEER_C: &str = r#"/* A DPDK net_memif peer that echoes every frame back (for ustack's memif interop tests).
 * usage: peer <vdev-args> <seconds> [extra EAL args...] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: peer <vdev-args> <seconds>\n"); return 2; }
    char vdev[600], prefix[64];
    snprintf(vdev, sizeof vdev, "--vdev=%s", argv[1]);
    snprintf(prefix, sizeof prefix, "--file-prefix=ustmemif%d", (int)getpid());
    char *eal[32] = {"peer", "-l", "0", "--no-pci", "--no-huge", "-m", "256", "--no-shconf",
                     prefix, vdev, "--log-level=pmd.net.memif:info"};
    int n = 11;
    for (int i = 3; i < argc && n < 31; i++) eal[n++] = argv[i];
    if (rte_eal_init(n, eal) < 0) { fprintf(stderr, "peer: EAL init failed\n"); return 1; }
    uint16_t port;
    const char *name = argv[1];
    char devname[64];
    snprintf(devname, sizeof devname, "%.*s", (int)strcspn(name, ","), name);
    if (rte_eth_dev_get_port_by_name(devname, &port) != 0) { fprintf(stderr, "peer: no port %s\n", devname); return 1; }
    struct rte_mempool *pool = rte_pktmbuf_pool_create("mb", 8191, 256, 0,
        RTE_MBUF_DEFAULT_BUF_SIZE, rte_socket_id());
    if (!pool) { fprintf(stderr, "peer: no mempool\n"); return 1; }
    struct rte_eth_conf conf;
    memset(&conf, 0, sizeof conf);
    if (rte_eth_dev_configure(port, 1, 1, &conf) < 0 ||
        rte_eth_rx_queue_setup(port, 0, 1024, rte_eth_dev_socket_id(port), NULL, pool) < 0 ||
        rte_eth_tx_queue_setup(port, 0, 1024, rte_eth_dev_socket_id(port), NULL) < 0) {
        fprintf(stderr, "peer: port setup failed\n"); return 1;
    }
    if (rte_eth_dev_start(port) < 0) { fprintf(stderr, "peer: start failed\n"); return 1; }
    printf("peer: started\n"); fflush(stdout);
    double end = now_s() + atof(argv[2]);
    unsigned long frames = 0, bytes = 0;
    int up = 0;
    struct rte_mbuf *b[32];
    while (now_s() < end) {
        struct rte_eth_link link;
        rte_eth_link_get_nowait(port, &link);
        if (link.link_status != up) {
            up = link.link_status;
            printf("peer: link %s\n", up ? "up" : "down"); fflush(stdout);
        }
        uint16_t got = rte_eth_rx_burst(port, 0, b, 32);
        for (uint16_t i = 0; i < got; i++) { frames++; bytes += rte_pktmbuf_pkt_len(b[i]); }
        uint16_t sent = 0;
        while (sent < got) {
            uint16_t k = rte_eth_tx_burst(port, 0, b + sent, got - sent);
            if (k == 0 && now_s() > end) break;
            sent += k;
        }
        for (uint16_t i = sent; i < got; i++) rte_pktmbuf_free(b[i]);
    }
    printf("peer: echoed %lu frames %lu bytes\n", frames, bytes); fflush(stdout);
    rte_eth_dev_stop(port);
    rte_eth_dev_close(port);
    rte_eal_cleanup();
    return 0;
}
"#;

fn dpdk_peer(dir: &Path) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("USTACK_MEMIF_DPDK_PEER") {
        return Ok(PathBuf::from(p));
    }
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "libdpdk"])
        .output()
        .map_err(|e| format!("pkg-config: {e}"))?;
    if !flags.status.success() {
        return Err(
            "DPDK development files not found (apt-get install libdpdk-dev pkg-config)".into(),
        );
    }
    let src = dir.join("peer.c");
    let bin = dir.join("peer");
    std::fs::write(&src, DPDK_PEER_C).map_err(|e| e.to_string())?;
    let flags = String::from_utf8_lossy(&flags.stdout).to_string();
    let out = Command::new("cc")
        .arg("-O2")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .args(flags.split_whitespace())
        .output()
        .map_err(|e| format!("cc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the DPDK peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(bin)
}

/// Sends frames of every length from 60 to 1514 bytes through a DPDK echo peer and checks what
/// comes back, byte for byte and in order.
fn echo_through<D: PacketDevice>(dev: &mut D, frames: usize) {
    let len_of = |i: usize| 60 + (i * 37) % (1514 - 60 + 1);
    let (mut sent, mut back) = (0usize, 0usize);
    let mut out: Batch<D::Frame> = Batch::with_capacity(64);
    let mut rx: Batch<D::Frame> = Batch::with_capacity(64);
    let start = WallInstant::now();
    while back < frames {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{back} of {frames} frames came back; {:?}",
            dev.stats()
        );
        while sent < frames && sent - back < 256 && !out.is_full() {
            let f = frame_with(dev, sent as u8, len_of(sent));
            out.push(f).ok().unwrap();
            sent += 1;
        }
        dev.tx_burst(Instant::now(), &mut out);
        dev.rx_burst(Instant::now(), &mut rx);
        while let Some(f) = rx.pop() {
            let i = back;
            assert_eq!(f.data().len(), len_of(i), "frame {i}");
            assert!(
                f.data()
                    .iter()
                    .enumerate()
                    .all(|(k, &b)| b == (i as u8) ^ (k as u8)),
                "frame {i} corrupted"
            );
            back += 1;
        }
    }
}

#[test]
fn interop_with_dpdk_net_memif_both_roles() {
    let dir = TestDir::new("dpdk");
    let peer = match dpdk_peer(&dir.0) {
        Ok(p) => p,
        Err(e) => {
            common::skip(&e);
            return;
        }
    };
    // (our role, abstract socket name, DPDK client in zero-copy mode)
    for (ours, socket_abstract, zero_copy) in [
        (MemifRole::Client, false, false),
        (MemifRole::Server, false, false),
        (MemifRole::Client, true, false),
        (MemifRole::Server, true, true),
    ] {
        let path = if socket_abstract {
            PathBuf::from(format!("ustack-memif-{}", std::process::id()))
        } else {
            dir.socket()
        };
        let theirs = if ours == MemifRole::Client {
            "server"
        } else {
            "client"
        };
        let vdev = format!(
            "net_memif0,role={theirs},id=3,socket={},socket-abstract={},rsize=10,bsize=2048,\
             zero-copy={}",
            path.display(),
            if socket_abstract { "yes" } else { "no" },
            if zero_copy { "yes" } else { "no" }
        );
        let mut cfg = memif_cfg(&path, ours);
        cfg.interface_id = 3;
        cfg.socket_abstract = socket_abstract;
        let mut cmd = Command::new(&peer);
        cmd.args([vdev.as_str(), "60"])
            .args(zero_copy.then_some("--single-file-segments"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        // DPDK's client connects once, when its port starts: our server goes first.
        let (mut dev, mut dpdk) = if ours == MemifRole::Server {
            let dev = MemifDevice::open(&cfg).unwrap();
            (dev, spawn_command(cmd, "dpdk-client"))
        } else {
            let mut dpdk = spawn_command(cmd, "dpdk-server");
            dpdk.wait_line("peer: started", Duration::from_secs(30), || {});
            (MemifDevice::open(&cfg).unwrap(), dpdk)
        };
        let mut scratch = Batch::with_capacity(64);
        let start = WallInstant::now();
        while !dev.link_up() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no link with DPDK ({ours:?}, abstract {socket_abstract}): {:?}",
                dev.last_error()
            );
            dev.rx_burst(Instant::now(), &mut scratch);
        }
        let (peer_name, peer_if) = dev.peer_names().unwrap();
        println!(
            "ustack {ours:?} <-> DPDK {theirs} (abstract socket {socket_abstract}, zero-copy \
             {zero_copy}): peer {peer_name:?} / {peer_if:?}, queues {:?}, regions {}",
            dev.queues(),
            dev.mapped_regions()
        );
        if zero_copy {
            // DPDK's zero-copy client sends its ring region plus its mbuf memory.
            assert!(dev.mapped_regions() >= 2);
        }
        assert!(peer_name.starts_with("DPDK"), "{peer_name}");
        // DPDK announced nothing: it gets complete checksums.
        assert!(!dev.tx_checksums_elided());
        echo_through(&mut dev, 20_000);
        let stats = dev.memif_stats();
        println!("  {stats:?}");
        assert_eq!(stats.rejected_desc, 0);
        assert_eq!(stats.link.rx_errors, 0);
        // The DPDK process dies: we notice, and free the rings.
        dpdk.kill();
        let start = WallInstant::now();
        while dev.link_up() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "DPDK's death not noticed"
            );
            dev.rx_burst(Instant::now(), &mut scratch);
        }
        assert_eq!(dev.mapped_regions(), 0);
        assert_eq!(dev.lent_buffers(), 0);
    }
}

#[test]
fn several_queue_pairs_carry_flows_in_order() {
    let dir = TestDir::new("queues");
    let socket = dir.socket();
    let mut scfg = memif_cfg(&socket, MemifRole::Server);
    scfg.queues = 2;
    let mut ccfg = memif_cfg(&socket, MemifRole::Client);
    ccfg.queues = 4;
    let mut server = MemifDevice::open(&scfg).unwrap();
    let mut client = MemifDevice::open(&ccfg).unwrap();
    pump_until_up(&mut client, &mut server);
    assert_eq!(client.queues(), Some((2, 2)), "the server's limit wins");
    assert_eq!(server.queues(), Some((2, 2)));
    // IPv4/TCP-shaped frames of 8 flows (source ports), 50 frames each, sequence-numbered.
    let flows = 8u16;
    let per_flow = 50u32;
    for (tx_is_client, tag) in [(true, 0u8), (false, 1u8)] {
        let (tx, rx) = if tx_is_client {
            (&mut client, &mut server)
        } else {
            (&mut server, &mut client)
        };
        let mut out: Batch<PoolBuf> = Batch::with_capacity(1024);
        for seq in 0..per_flow {
            for flow in 0..flows {
                let mut f = tx.tx_alloc().unwrap();
                assert!(f.set_len(80));
                let d = f.data_mut();
                d.fill(tag);
                d[12..14].copy_from_slice(&[0x08, 0x00]);
                d[14] = 0x45;
                d[23] = 6;
                d[26..30].copy_from_slice(&[10, 0, 0, 1]);
                d[30..34].copy_from_slice(&[10, 0, 0, 2]);
                d[34..36].copy_from_slice(&(1000 + flow).to_be_bytes());
                d[36..38].copy_from_slice(&80u16.to_be_bytes());
                d[40..44].copy_from_slice(&seq.to_be_bytes());
                out.push(f).ok().unwrap();
            }
        }
        let total = (flows as u32 * per_flow) as usize;
        let mut next_seq = vec![0u32; flows as usize];
        let mut got = 0;
        let mut rxb: Batch<PoolBuf> = Batch::with_capacity(256);
        let start = WallInstant::now();
        while got < total {
            assert!(start.elapsed() < Duration::from_secs(5), "{got} of {total}");
            tx.tx_burst(Instant::now(), &mut out);
            rx.rx_burst(Instant::now(), &mut rxb);
            while let Some(f) = rxb.pop() {
                let d = f.as_slice();
                assert_eq!(d[0], tag);
                let flow = (u16::from_be_bytes([d[34], d[35]]) - 1000) as usize;
                let seq = u32::from_be_bytes([d[40], d[41], d[42], d[43]]);
                assert_eq!(seq, next_seq[flow], "flow {flow} out of order");
                next_seq[flow] += 1;
                got += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Big frames, chains, and frames built in place

/// A raw memif client (handshake by hand) with a 16-slot ring pair in region 0 and a 256 KiB
/// data region 1, for feeding a server whatever descriptors a test wants.
struct RawClient {
    /// The control connection (dropping it ends the link).
    _sock: SeqPacket,
    rings: SharedRegion,
    data: SharedRegion,
}

const RAW_LOG2: u8 = 4;

impl RawClient {
    fn connect(socket: &Path, mut pump: impl FnMut()) -> RawClient {
        let sock = SeqPacket::connect(&UnixAddr::Path(socket.to_path_buf())).expect("connect");
        let (hello, _) = recv_msg(&sock, &mut pump).unwrap();
        assert!(matches!(hello, Msg::Hello(_)), "{hello:?}");
        send_msg(
            &sock,
            Msg::Init(Init {
                version: proto::VERSION,
                id: 0,
                mode: proto::MODE_ETHERNET,
                secret: [0; 24],
                name: Name::new("raw"),
            }),
            None,
        );
        assert_eq!(recv_msg(&sock, &mut pump).unwrap().0, Msg::Ack);
        let rings =
            SharedRegion::create(2 * ring_len(RAW_LOG2), PageSize::Base4K, "raw-rings").unwrap();
        let data = SharedRegion::create(256 << 10, PageSize::Base4K, "raw-data").unwrap();
        RingView::new(&rings, 0, RAW_LOG2).unwrap().init(0);
        RingView::new(&rings, ring_len(RAW_LOG2), RAW_LOG2)
            .unwrap()
            .init(0);
        for (i, r) in [&rings, &data].into_iter().enumerate() {
            send_msg(
                &sock,
                Msg::AddRegion(AddRegion {
                    index: i as u16,
                    size: r.len() as u64,
                }),
                r.fd(),
            );
            assert_eq!(recv_msg(&sock, &mut pump).unwrap().0, Msg::Ack);
        }
        let efd = sys::eventfd().unwrap();
        for (flags, offset) in [
            (proto::ADD_RING_FLAG_C2S, 0),
            (0, ring_len(RAW_LOG2) as u32),
        ] {
            send_msg(
                &sock,
                Msg::AddRing(AddRing {
                    flags,
                    index: 0,
                    region: 0,
                    offset,
                    log2_ring_size: RAW_LOG2,
                    private_hdr_size: 0,
                }),
                Some(efd.as_fd()),
            );
            assert_eq!(recv_msg(&sock, &mut pump).unwrap().0, Msg::Ack);
        }
        send_msg(&sock, Msg::Connect(Name::new("raw0")), None);
        assert!(matches!(
            recv_msg(&sock, &mut pump).unwrap().0,
            Msg::Connected(_)
        ));
        RawClient {
            _sock: sock,
            rings,
            data,
        }
    }

    fn c2s(&self) -> RingView<'_> {
        RingView::new(&self.rings, 0, RAW_LOG2).unwrap()
    }

    fn s2c(&self) -> RingView<'_> {
        RingView::new(&self.rings, ring_len(RAW_LOG2), RAW_LOG2).unwrap()
    }

    /// Sends `frames` (each written at 4096 * (i + 1) of the data region) in C2S slots from
    /// `slot` on, published together.
    fn send(&self, slot: u16, frames: &[Vec<u8>]) {
        let c2s = self.c2s();
        for (i, f) in frames.iter().enumerate() {
            let off = 4096 * (i + 1);
            assert!(self.data.write(off, f));
            c2s.set_desc(slot + i as u16, &desc(1, off as u32, f.len() as u32, 0));
        }
        c2s.set_head(slot + frames.len() as u16, Ordering::Release);
    }
}

fn desc(region: u16, offset: u32, length: u32, flags: u16) -> Desc {
    Desc {
        flags,
        region,
        length,
        offset,
        metadata: 0,
    }
}

/// Polls the server until the S2C tail reaches `tail`.
fn until_s2c_tail(srv: &mut ServerRig, raw: &RawClient, tail: u16) {
    let start = WallInstant::now();
    while raw.s2c().tail(Ordering::Acquire) != tail {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "S2C tail {} not {tail}: {:?}",
            raw.s2c().tail(Ordering::Acquire),
            srv.dev().memif_stats()
        );
        srv.step();
    }
}

fn is_arp_reply(raw: &RawClient, d: Desc) -> bool {
    let mut got = vec![0u8; d.length as usize];
    d.region == 1
        && d.length >= 42
        && raw.data.read(d.offset as usize, &mut got)
        && got[12..14] == [0x08, 0x06]
        && got[20..22] == [0, 2]
        && got[28..32] == SERVER_IP.octets()
}

/// Buffers a client posts for the server to build frames in: the server uses them only when
/// they are inside the client's regions, clear of its rings and of each other, and long
/// enough; the rest come back empty and are counted; short ones get frames copied in, never
/// written past their length.
#[test]
fn a_hostile_client_cannot_get_frames_built_in_bad_buffers() {
    let dir = TestDir::new("inplace");
    let socket = dir.socket();
    let mut srv = ServerRig::new(&socket);
    let raw = RawClient::connect(&socket, || {
        srv.step();
    });
    assert_eq!(srv.dev().state(), MemifState::Up);
    let s2c = raw.s2c();
    // Slot 0: the client's ring memory; 1: empty; 2: outside region 1; 3: 1000 bytes (shorter
    // than a 1514-byte frame, with nothing adjacent); 4: a good 2048-byte buffer at 64 KiB.
    let posted = [
        desc(0, 0, 2048, 0),
        desc(1, 0x20000, 0, 0),
        desc(1, (256 << 10) - 100, 2048, 0),
        desc(1, 0x30000, 1000, 0),
        desc(1, 0x10000, 2048, 0),
    ];
    for (s, d) in posted.iter().enumerate() {
        s2c.set_desc(s as u16, d);
    }
    // A canary right after the short buffer: never written.
    assert!(raw.data.write(0x30000 + 1000, &[0xEE; 64]));
    s2c.set_head(posted.len() as u16, Ordering::Release);
    raw.send(0, &[arp_request(SERVER_IP)]);
    until_s2c_tail(&mut srv, &raw, 4);
    let stats = srv.dev().memif_stats();
    assert_eq!(
        stats.rejected_desc, 3,
        "ring memory, empty, outside: {stats:?}"
    );
    for s in 0..3 {
        assert_eq!(s2c.desc(s).length, 0, "slot {s} handed back empty");
    }
    assert!(
        is_arp_reply(&raw, s2c.desc(3)),
        "the reply, copied into the short buffer"
    );
    assert_eq!(stats.tx_in_place, 0);
    assert_eq!(stats.tx_copied_bytes, u64::from(s2c.desc(3).length));
    let mut canary = [0u8; 64];
    assert!(raw.data.read(0x30000 + 1000, &mut canary));
    assert_eq!(canary, [0xEE; 64]);

    // Two requests at once: two replies are built before either is sent. Slot 5 overlaps the
    // good buffer of slot 4 lent for the first reply, so the second goes to slot 6.
    s2c.set_desc(5, &desc(1, 0x10000 + 1024, 2048, 0));
    s2c.set_desc(6, &desc(1, 0x18000, 2048, 0));
    s2c.set_head(7, Ordering::Release);
    raw.send(1, &[arp_request(SERVER_IP), arp_request(SERVER_IP)]);
    until_s2c_tail(&mut srv, &raw, 7);
    let stats = srv.dev().memif_stats();
    assert!(is_arp_reply(&raw, s2c.desc(4)));
    assert_eq!(
        s2c.desc(5).length,
        0,
        "the overlapping buffer came back empty"
    );
    assert!(is_arp_reply(&raw, s2c.desc(6)));
    assert_eq!(stats.rejected_desc, 4, "{stats:?}");
    assert_eq!(stats.tx_in_place, 2, "built in place: {stats:?}");
    assert_eq!(stats.link.rx_packets, 3);

    // C2S: a chain whose tail never comes, filling the ring: rejected, every slot handed back.
    let c2s = raw.c2s();
    for s in 3..3 + 16u16 {
        c2s.set_desc(s, &desc(1, 4096, 20, DESC_FLAG_NEXT));
    }
    c2s.set_head(3 + 16, Ordering::Release);
    let start = WallInstant::now();
    while c2s.tail(Ordering::Acquire) != 3 + 16 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "chain not handed back"
        );
        srv.step();
    }
    assert_eq!(srv.dev().memif_stats().rejected_desc, 5);
    assert_eq!(srv.dev().state(), MemifState::Up);
    drop(raw);
}

/// A server and a client with a 65000-byte MTU, the client's buffers smaller than a frame:
/// frames of up to 65014 bytes cross as chains of 2048- or 9216-byte descriptors both ways,
/// and tens of MiB of chunks come back intact.
#[test]
fn chained_64k_frames_carry_chunks_between_ustack_peers() {
    for piece in [2048, 9216] {
        let dir = TestDir::new("chains");
        let socket = dir.socket();
        let mut scfg = memif_cfg(&socket, MemifRole::Server);
        scfg.mtu = 65000;
        let mut srv = ServerRig::with(scfg);
        let mut ccfg = memif_cfg(&socket, MemifRole::Client);
        ccfg.mtu = 65000;
        ccfg.buffer_size = piece;
        ccfg.pool_frames = Some(1024);
        let mut cli = ClientRig::with(ccfg, Duration::from_secs(60));
        cli.wait_link(Some(&mut srv), Duration::from_secs(20))
            .unwrap();
        cli.connect(Some(&mut srv)).unwrap();
        let bytes = cli
            .round_trip(Some(&mut srv), 96, 4 << 20, 7 + piece as u64, 8, |_| {})
            .unwrap();
        let (s, c) = (srv.dev().memif_stats(), cli.dev().memif_stats());
        println!("buffers of {piece}: {bytes} bytes verified\n  server {s:?}\n  client {c:?}");
        assert!(bytes >= 20 << 20, "tens of MiB: {bytes}");
        for st in [s, c] {
            assert_eq!(st.rejected_desc, 0);
            assert_eq!(st.link.rx_errors, 0);
            assert_eq!(st.link.tx_errors, 0);
        }
        // Full-sized segments went as chains each way (a 65014-byte frame takes 32 or 8).
        assert!(
            c.tx_chains > 100 && s.rx_chains == c.tx_chains,
            "C2S chains"
        );
        assert!(
            s.tx_chains > 100 && c.rx_chains == s.tx_chains,
            "S2C chains"
        );
        // The client's posted buffers are one 64 KiB pool buffer apart: never a run of
        // adjacent ones, so the server copied every frame.
        assert_eq!(s.tx_in_place, 0);
        assert_eq!(s.tx_copied_bytes, s.link.tx_bytes);
    }
}

/// Checksums are left out only for a peer that announced it does not verify them. Two ustack
/// peers with defaults leave them out both ways. A client that verifies what it receives
/// (`trust_rx_checksums` off) does not announce it, so the server sends it complete
/// checksums: had it left them out, the client's stack would drop every frame as a bad
/// checksum and the round trip would fail. (The DPDK interop tests cover a foreign peer.)
#[test]
fn checksums_are_left_out_only_for_a_peer_that_does_not_verify_them() {
    for client_verifies in [false, true] {
        let dir = TestDir::new("csum");
        let socket = dir.socket();
        let mut srv = ServerRig::new(&socket);
        let mut ccfg = memif_cfg(&socket, MemifRole::Client);
        ccfg.trust_rx_checksums = !client_verifies;
        let mut cli = ClientRig::with(ccfg, Duration::from_secs(30));
        cli.wait_link(Some(&mut srv), Duration::from_secs(20))
            .unwrap();
        assert_eq!(
            srv.dev().tx_checksums_elided(),
            !client_verifies,
            "server to client"
        );
        // The server does not verify, and said so: the client leaves them out either way.
        assert!(cli.dev().tx_checksums_elided(), "client to server");
        cli.connect(Some(&mut srv)).unwrap();
        let bytes = cli
            .round_trip(Some(&mut srv), 64, 256 << 10, 11, 4, |_| {})
            .unwrap();
        let cs = cli.stack.stats();
        println!("client verifies: {client_verifies}: {bytes} bytes verified; client {cs:?}");
        assert_eq!(cs.rx_bad_checksum, 0);
        assert!(cs.rx_frames > 100, "{cs:?}");
    }
}

/// The copy budget of a memif link between ustack peers, with a 65000-byte MTU (`--mtu 65000` in the examples) in
/// whole 64 KiB buffers: on the server, `Pass::Device` counts exactly the bytes it received
/// (copied out of the client's buffers) and the bytes of the rare frame that could not be
/// built in place; every frame built in place costs no device pass. The client counts none.
#[test]
fn a_server_builds_frames_in_place_and_copies_nothing_to_send() {
    let dir = TestDir::new("copies");
    let socket = dir.socket();
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (socket, stop) = (socket.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut cfg = memif_cfg(&socket, MemifRole::Server);
            cfg.mtu = 65000;
            let mut srv = ServerRig::with(cfg);
            let before = ustack::copies::snapshot();
            while !stop.load(Ordering::Acquire) {
                srv.step();
            }
            (
                ustack::copies::snapshot().since(&before),
                srv.dev().memif_stats(),
            )
        })
    };
    let mut ccfg = memif_cfg(&socket, MemifRole::Client);
    ccfg.mtu = 65000;
    ccfg.buffer_size = 65024;
    ccfg.pool_frames = Some(1024);
    let mut cli = ClientRig::with(ccfg, Duration::from_secs(60));
    cli.wait_link(None, Duration::from_secs(20)).unwrap();
    cli.connect(None).unwrap();
    let before = ustack::copies::snapshot();
    let bytes = cli.round_trip(None, 96, 4 << 20, 11, 8, |_| {}).unwrap();
    let client = ustack::copies::snapshot().since(&before);
    let c = cli.dev().memif_stats();
    drop(cli);
    stop.store(true, Ordering::Release);
    let (server, s) = server.join().unwrap();
    println!("{bytes} bytes verified\n  server copies {server}\n  {s:?}\n  client copies {client}\n  {c:?}");
    assert!(bytes >= 20 << 20);
    assert!(
        s.link.tx_bytes >= bytes / 2,
        "the read phase's data went S2C"
    );
    assert!(
        s.tx_in_place > 0 && s.tx_in_place * 100 >= s.link.tx_packets * 99,
        "{s:?}"
    );
    assert_eq!(
        s.tx_chains + c.tx_chains,
        0,
        "whole frames in whole buffers"
    );
    if ustack::copies::ENABLED {
        use ustack::copies::Pass;
        assert_eq!(
            server.get(Pass::Device),
            s.link.rx_bytes + s.tx_copied_bytes,
            "server: receiving copies, sending in place does not"
        );
        assert_eq!(
            client.get(Pass::Device),
            0,
            "client: its own buffers both ways"
        );
        assert!(server.get(Pass::Frame) >= bytes / 2);
    }
}

/// A server building frames in place in the mbufs a DPDK net_memif client posts (2048-byte
/// buffers, 1514-byte frames), copy and zero-copy client modes.
#[test]
fn in_place_server_with_a_dpdk_client() {
    let dir = TestDir::new("dpdk-inplace");
    let peer = match dpdk_peer(&dir.0) {
        Ok(p) => p,
        Err(e) => {
            common::skip(&e);
            return;
        }
    };
    for zero_copy in [false, true] {
        let path = dir.socket();
        let vdev = format!(
            "net_memif0,role=client,id=3,socket={},socket-abstract=no,rsize=10,bsize=2048,\
             zero-copy={}",
            path.display(),
            if zero_copy { "yes" } else { "no" }
        );
        let mut cfg = memif_cfg(&path, MemifRole::Server);
        cfg.interface_id = 3;
        let mut dev = MemifDevice::open_in_place(&cfg).unwrap();
        let mut cmd = Command::new(&peer);
        cmd.args([vdev.as_str(), "60"])
            .args(zero_copy.then_some("--single-file-segments"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut dpdk = spawn_command(cmd, "dpdk-client");
        let mut scratch = Batch::with_capacity(64);
        let start = WallInstant::now();
        while !dev.link_up() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no link with DPDK: {:?}",
                dev.last_error()
            );
            dev.rx_burst(Instant::now(), &mut scratch);
        }
        echo_through(&mut dev, 20_000);
        let stats = dev.memif_stats();
        println!("in place, DPDK client zero-copy {zero_copy}: {stats:?}");
        assert_eq!(stats.rejected_desc, 0);
        assert_eq!(stats.link.rx_errors, 0);
        assert!(
            stats.tx_in_place * 10 >= stats.link.tx_packets * 9,
            "frames built in DPDK's buffers: {stats:?}"
        );
        dpdk.kill();
        let start = WallInstant::now();
        while dev.link_up() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "DPDK's death not noticed"
            );
            dev.rx_burst(Instant::now(), &mut scratch);
        }
        assert_eq!(dev.mapped_regions(), 0);
    }
}

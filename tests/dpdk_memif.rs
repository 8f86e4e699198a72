//! Two processes, each with its own DPDK EAL and a ustack stack on a `net_memif` port, joined
//! by DPDK's memif PMD (shared memory): a `ChunkServer` in this (the test's) process, a
//! `ChunkClient` in a child process — the test binary itself, running the ignored client entry
//! point of the test (`..._client`, `tests/common/child.rs`). The memif server role starts
//! first; the client connects to it.
//!
//! - `memif_chunks_round_trip_between_two_processes`: 500 chunks, sizes log-uniform from 1 B to
//!   4 MiB, written and read back, every byte compared.
//! - `memif_bench_next_to_kernel_loopback` (`--ignored`): 4 KiB READ ops/s and p50/p99 latency
//!   at depth 1 and at 32 connections x depth 4, and 1 MiB READ throughput, over memif and then
//!   over kernel TCP on loopback (`net::KernelServer`/`KernelClient`) in the same run.
//!
//! Needs root (DPDK, hugepages); under `scripts/test.sh` as root a skip is a failure.

mod common;
#[cfg(feature = "dpdk")]
mod dpdk_support;

#[cfg(not(feature = "dpdk"))]
#[test]
fn dpdk_memif_needs_the_dpdk_feature() {
    common::skip("built without the `dpdk` feature (cargo test --features dpdk)");
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::process::ExitStatus;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant as WallInstant};

    use super::common::child::{self, ChildCommand};
    use super::common::{is_root, skip, Pattern, Rng, Watched};
    use super::dpdk_support::{chunk_content, first_difference, ChunkPlan, CHUNKS, CHUNK_LEN_MAX};
    use ustack::chunk::{
        ChunkClient, ChunkOp, ChunkServer, ClientConfig, Completion, MemStore, ServerConfig,
        Staging, StagingConfig, SubmitError,
    };
    use ustack::dev::dpdk::{DpdkConfig, DpdkDevice};
    use ustack::net::{KernelClient, KernelServer};
    use ustack::proto::{ChunkId, Limits, Reply};
    use ustack::stack::{MacAddr, Stack, StackConfig};
    use ustack::{Instant, PacketDevice, PageSize};

    const SOCKET_ENV: &str = "USTACK_DPDK_TEST_SOCKET";
    const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    const PORT: u16 = 7000;
    static COUNTER: AtomicU32 = AtomicU32::new(0);

    /// The memif port of one side. The socket is abstract (no file), unique per test run.
    fn memif(role: &str, socket: &str) -> DpdkConfig {
        let mac = if role == "server" { 1 } else { 2 };
        DpdkConfig::from_vdev(&format!(
            "net_memif0,role={role},socket={socket},socket-abstract=yes,mac=02:00:00:00:77:0{mac}"
        ))
    }

    fn stack_on(dev: DpdkDevice, ip: Ipv4Addr, sockets: usize) -> Stack<DpdkDevice> {
        let mut cfg = StackConfig::new(ip, 24);
        cfg.mac = Some(MacAddr(dev.mac()));
        cfg.sockets_max = sockets;
        cfg.ring_frames = 512;
        Stack::new(dev, cfg).expect("stack on the memif port")
    }

    /// Runs the server until the child exits; returns its exit status.
    fn serve(
        stack: &mut Stack<DpdkDevice>,
        server: &mut ChunkServer<Arc<MemStore>>,
        child: &mut Watched,
        limit: Duration,
        busy_poll: bool,
    ) -> ExitStatus {
        let start = WallInstant::now();
        let mut idle = 0u32;
        let mut spins = 0u32;
        loop {
            let now = Instant::now();
            let busy = stack.poll(now) | server.poll(stack);
            if busy {
                idle = 0;
            } else {
                idle += 1;
                if !busy_poll && idle > 256 {
                    stack.wait(now, Duration::from_millis(1));
                }
            }
            spins += 1;
            if spins.is_multiple_of(4096) || (!busy_poll && idle > 256) {
                if let Some(status) = child.try_wait() {
                    // Let the last segments out.
                    for _ in 0..1000 {
                        stack.poll(Instant::now());
                        server.poll(stack);
                    }
                    return status;
                }
                assert!(
                    start.elapsed() < limit,
                    "client not done after {limit:?}; server {:?}, stack {:?}",
                    server.stats(),
                    stack.stats()
                );
            }
        }
    }

    fn server_config(connections: usize, large_count: usize) -> ServerConfig {
        ServerConfig {
            connections_max: connections,
            backlog: 4,
            staging: StagingConfig {
                small_len: 64 << 10,
                small_count: 128,
                large_count,
                large_per_connection_max: 4,
                page_size: PageSize::Base4K,
            },
            ..ServerConfig::default()
        }
    }

    /// The server side of a two-process memif test, whose client side is the child entry point
    /// `client_entry`: returns the child's output lines.
    fn memif_server(
        client_entry: &str,
        connections: usize,
        busy_poll: bool,
    ) -> Option<Vec<String>> {
        if !is_root() {
            skip("DPDK needs root (hugepages)");
            return None;
        }
        let socket = format!(
            "ustack-memif-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // The memif server first: the client connects to its socket.
        let dev = DpdkDevice::open(&memif("server", &socket)).expect("memif server port");
        println!(
            "server port {} ({}), mac {:02x?}, tx checksum offload {}",
            dev.info().name,
            dev.info().driver,
            dev.mac(),
            dev.tx_checksum_offload()
        );
        let mut stack = stack_on(dev, SERVER_IP, connections + 8);
        let store = Arc::new(MemStore::new(4 << 30));
        let mut server = ChunkServer::bind(
            &mut stack,
            PORT,
            Arc::clone(&store),
            server_config(connections, 8),
        )
        .expect("chunk server");
        let mut child = ChildCommand::new(client_entry, "client")
            .env(SOCKET_ENV, &socket)
            .spawn();
        let status = serve(
            &mut stack,
            &mut server,
            &mut child,
            Duration::from_secs(600),
            busy_poll,
        );
        let lines = child.lines();
        println!(
            "server: {:?}; stack {:?}; link {:?}",
            server.stats(),
            stack.stats(),
            stack.link_stats()
        );
        assert!(status.success(), "client process failed: {status}");
        Some(lines)
    }

    /// The client side: a stack on a memif client port, once the link is up.
    fn memif_client_stack(sockets: usize) -> Stack<DpdkDevice> {
        let socket = std::env::var(SOCKET_ENV).expect("socket name from the parent");
        let dev = DpdkDevice::open(&memif("client", &socket)).expect("memif client port");
        let start = WallInstant::now();
        while !dev.link_up() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "memif link not up (server socket {socket})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        stack_on(dev, CLIENT_IP, sockets)
    }

    fn server_addr() -> SocketAddrV4 {
        SocketAddrV4::new(SERVER_IP, PORT)
    }

    /// Submits `op` and polls until it completes.
    fn call(stack: &mut Stack<DpdkDevice>, c: &mut ChunkClient, op: ChunkOp<'_>) -> Completion {
        let deadline = WallInstant::now() + Duration::from_secs(120);
        let id = c.submit(op, Instant::now()).expect("submit");
        loop {
            let now = Instant::now();
            stack.poll(now);
            c.poll(stack, now);
            if let Some(done) = c.next_completion() {
                assert_eq!(done.request_id, id);
                return done;
            }
            assert!(
                WallInstant::now() < deadline,
                "no answer; stack {:?}",
                stack.stats()
            );
        }
    }

    #[test]
    fn memif_chunks_round_trip_between_two_processes() {
        let Some(lines) = memif_server("dpdk::memif_chunks_round_trip_client", 2, false) else {
            return;
        };
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("verified {CHUNKS} chunks"))),
            "the client reported no verified run"
        );
    }

    /// Child entry point: the client side of `memif_chunks_round_trip_between_two_processes`.
    #[test]
    #[ignore = "child process of memif_chunks_round_trip_between_two_processes, run by it"]
    fn memif_chunks_round_trip_client() {
        if child::role().is_none() {
            return;
        }
        let mut stack = memif_client_stack(4);
        let cfg = ClientConfig {
            staging: StagingConfig {
                small_len: 64 << 10,
                small_count: 16,
                large_count: 2,
                large_per_connection_max: 2,
                page_size: PageSize::Base4K,
            },
            request_timeout: Duration::from_secs(60),
            ..ClientConfig::default()
        };
        let mut client =
            ChunkClient::connect(&mut stack, server_addr(), &cfg, Instant::now()).expect("connect");
        let mut plan = ChunkPlan::new(0x006d_656d_6966);
        let mut buf = vec![0u8; CHUNK_LEN_MAX];
        let (mut bytes, mut largest, mut smallest) = (0u64, 0usize, usize::MAX);
        let start = WallInstant::now();
        for i in 0..CHUNKS {
            let len = plan.next_len();
            chunk_content(i, &mut buf[..len]);
            let id = ChunkId(0xd9d4_0000 + u128::from(i));
            let w = call(
                &mut stack,
                &mut client,
                ChunkOp::Write {
                    id,
                    offset: 0,
                    data: &buf[..len],
                },
            );
            assert_eq!(
                w.result,
                Ok(Reply::Write {
                    chunk_size: len as u64
                }),
                "WRITE of chunk {i} ({len} B)"
            );
            let r = call(
                &mut stack,
                &mut client,
                ChunkOp::Read {
                    id,
                    offset: 0,
                    len: len as u32,
                },
            );
            assert!(r.result.is_ok(), "READ of chunk {i}: {:?}", r.result);
            if let Some(at) = first_difference(r.data(), &buf[..len]) {
                panic!(
                    "chunk {i} ({len} B) read back {} B, differing from byte {at}",
                    r.data().len()
                );
            }
            bytes += len as u64;
            largest = largest.max(len);
            smallest = smallest.min(len);
        }
        let secs = start.elapsed().as_secs_f64();
        client.close(&mut stack);
        for _ in 0..1000 {
            stack.poll(Instant::now());
        }
        println!(
            "verified {CHUNKS} chunks, {bytes} bytes each way ({smallest}..={largest} B) in {secs:.2} s \
             ({:.0} MB/s written + read); stack {:?}; link {:?}",
            2.0 * bytes as f64 / secs / 1e6,
            stack.stats(),
            stack.device().stats()
        );
    }

    // ------------------------------------------------------------------------------------------
    // Benchmark: memif (two processes) next to kernel TCP on loopback.

    /// Chunks the benchmark reads: 64 of 4 KiB and 8 of 1 MiB.
    fn bench_chunks() -> Vec<(ChunkId, Vec<u8>)> {
        let mut v = Vec::new();
        for k in 0..72u32 {
            let len = if k < 64 { 4 << 10 } else { 1 << 20 };
            let mut data = vec![0u8; len];
            Pattern::new(u64::from(k) ^ 0xbe7c).fill(0, &mut data);
            v.push((ChunkId(0xbe7c_0000 + u128::from(k)), data));
        }
        v
    }

    fn bench_staging() -> StagingConfig {
        StagingConfig {
            small_len: 64 << 10,
            small_count: 256,
            large_count: 8,
            large_per_connection_max: 8,
            page_size: PageSize::Base4K,
        }
    }

    fn bench_client_config() -> ClientConfig {
        ClientConfig {
            limits: Limits {
                payload_len_max: 1 << 20,
                ..Limits::default()
            },
            staging: bench_staging(),
            request_timeout: Duration::from_secs(30),
            ..ClientConfig::default()
        }
    }

    /// Many chunk clients over one transport.
    trait Clients {
        fn submit(&mut self, i: usize, op: ChunkOp<'_>, now: Instant) -> Result<u64, SubmitError>;
        /// Moves data; true if anything happened.
        fn poll(&mut self, now: Instant) -> bool;
        /// Nothing happened for a while: may sleep (ustack with USTACK_BENCH_IDLE=sleep).
        fn idle(&mut self, now: Instant);
        fn next_completion(&mut self, i: usize) -> Option<Completion>;
    }

    /// USTACK_BENCH_IDLE=sleep: ustack's server and client sleep (at most the device's 50 us
    /// `wait_max`) when idle, instead of busy-polling.
    fn idle_sleeps() -> bool {
        std::env::var("USTACK_BENCH_IDLE").as_deref() == Ok("sleep")
    }

    struct UstackClients {
        stack: Stack<DpdkDevice>,
        clients: Vec<ChunkClient>,
    }

    impl Clients for UstackClients {
        fn submit(&mut self, i: usize, op: ChunkOp<'_>, now: Instant) -> Result<u64, SubmitError> {
            self.clients[i].submit(op, now)
        }
        fn poll(&mut self, now: Instant) -> bool {
            let mut busy = self.stack.poll(now);
            for c in &mut self.clients {
                busy |= c.poll(&mut self.stack, now);
            }
            busy
        }
        fn idle(&mut self, now: Instant) {
            if idle_sleeps() {
                self.stack.wait(now, Duration::from_millis(1));
            }
        }
        fn next_completion(&mut self, i: usize) -> Option<Completion> {
            self.clients[i].next_completion()
        }
    }

    struct KernelClients(Vec<KernelClient>);

    impl Clients for KernelClients {
        fn submit(&mut self, i: usize, op: ChunkOp<'_>, now: Instant) -> Result<u64, SubmitError> {
            self.0[i].submit(op, now)
        }
        fn poll(&mut self, now: Instant) -> bool {
            let mut busy = false;
            for c in &mut self.0 {
                busy |= c.poll(now, Duration::ZERO);
            }
            busy
        }
        fn idle(&mut self, _now: Instant) {}
        fn next_completion(&mut self, i: usize) -> Option<Completion> {
            self.0[i].next_completion()
        }
    }

    /// Writes every bench chunk through connection 0.
    fn prefill(c: &mut dyn Clients, chunks: &[(ChunkId, Vec<u8>)]) {
        for (id, data) in chunks {
            let rid = c
                .submit(
                    0,
                    ChunkOp::Write {
                        id: *id,
                        offset: 0,
                        data,
                    },
                    Instant::now(),
                )
                .expect("submit prefill");
            let deadline = WallInstant::now() + Duration::from_secs(30);
            loop {
                c.poll(Instant::now());
                if let Some(done) = c.next_completion(0) {
                    assert_eq!(done.request_id, rid);
                    assert!(done.result.is_ok(), "prefill: {:?}", done.result);
                    break;
                }
                assert!(WallInstant::now() < deadline, "prefill stalled");
            }
        }
    }

    struct PhaseResult {
        ops_s: f64,
        mb_s: f64,
        p50_us: f64,
        p99_us: f64,
        verified: u64,
    }

    /// READs of `size` from `conns` connections, `depth` outstanding each: 0.5 s warm-up, then
    /// `secs` measured. Every answer is compared with the chunk's content.
    fn run_phase(
        c: &mut dyn Clients,
        chunks: &[(ChunkId, Vec<u8>)],
        size: usize,
        conns: usize,
        depth: usize,
        secs: f64,
    ) -> PhaseResult {
        let pick: Vec<usize> = (0..chunks.len())
            .filter(|&k| chunks[k].1.len() == size)
            .collect();
        let mut rng = Rng::new(size as u64 ^ conns as u64);
        let mut inflight: Vec<Vec<(u64, usize, WallInstant)>> = vec![Vec::new(); conns];
        let mut lat_ns: Vec<u64> = Vec::with_capacity(4 << 20);
        let (mut ops, mut verified) = (0u64, 0u64);
        let start = WallInstant::now();
        let warm = start + Duration::from_millis(500);
        let end = warm + Duration::from_secs_f64(secs);
        let mut measuring = false;
        let mut measure_start = warm;
        let mut idle = 0u32;
        loop {
            let wall = WallInstant::now();
            if !measuring && wall >= warm {
                measuring = true;
                measure_start = wall;
            }
            if wall >= end {
                break;
            }
            let now = Instant::now();
            for (i, slots) in inflight.iter_mut().enumerate() {
                while slots.len() < depth {
                    let k = pick[rng.below(pick.len() as u64) as usize];
                    let op = ChunkOp::Read {
                        id: chunks[k].0,
                        offset: 0,
                        len: size as u32,
                    };
                    match c.submit(i, op, now) {
                        Ok(rid) => slots.push((rid, k, WallInstant::now())),
                        Err(SubmitError::NoBuffer) => break,
                        Err(e) => panic!("submit: {e}"),
                    }
                }
            }
            if c.poll(now) {
                idle = 0;
            } else {
                idle += 1;
                if idle > 64 {
                    c.idle(now);
                }
            }
            for (i, slots) in inflight.iter_mut().enumerate() {
                while let Some(done) = c.next_completion(i) {
                    let at = slots
                        .iter()
                        .position(|s| s.0 == done.request_id)
                        .expect("a completion for a request we made");
                    let (_, k, t0) = slots.swap_remove(at);
                    assert!(done.result.is_ok(), "READ: {:?}", done.result);
                    assert!(done.data() == chunks[k].1.as_slice(), "READ data differs");
                    if measuring && t0 >= measure_start {
                        ops += 1;
                        verified += 1;
                        lat_ns.push(t0.elapsed().as_nanos() as u64);
                    }
                }
            }
        }
        // Let the requests still out finish, unmeasured.
        let drain_end = WallInstant::now() + Duration::from_secs(10);
        while inflight.iter().any(|s| !s.is_empty()) && WallInstant::now() < drain_end {
            c.poll(Instant::now());
            for (i, slots) in inflight.iter_mut().enumerate() {
                while let Some(done) = c.next_completion(i) {
                    slots.retain(|s| s.0 != done.request_id);
                }
            }
        }
        let elapsed = end.duration_since(measure_start).as_secs_f64();
        lat_ns.sort_unstable();
        let pct = |p: f64| {
            if lat_ns.is_empty() {
                0.0
            } else {
                let i = ((lat_ns.len() - 1) as f64 * p).round() as usize;
                lat_ns[i] as f64 / 1000.0
            }
        };
        let ops_s = ops as f64 / elapsed;
        PhaseResult {
            ops_s,
            mb_s: ops_s * size as f64 / 1e6,
            p50_us: pct(0.5),
            p99_us: pct(0.99),
            verified,
        }
    }

    /// The three workloads; one RESULT line each.
    fn bench_all(c: &mut dyn Clients, transport: &str, secs: f64) -> Vec<String> {
        let chunks = bench_chunks();
        prefill(c, &chunks);
        let mut out = Vec::new();
        // USTACK_BENCH_PHASES picks some of "4k1", "4k32", "1m" (all by default).
        let phases = std::env::var("USTACK_BENCH_PHASES").unwrap_or_default();
        for (name, size, conns, depth) in [
            ("4k1", 4 << 10, 1, 1),
            ("4k32", 4 << 10, 32, 4),
            ("1m", 1 << 20, 1, 4),
        ] {
            if !phases.is_empty() && !phases.split(',').any(|p| p == name) {
                continue;
            }
            let r = run_phase(c, &chunks, size, conns, depth, secs);
            let line = format!(
                "RESULT transport={transport} op=read size={size} connections={conns} depth={depth} \
                 ops_s={:.0} mb_s={:.1} p50_us={:.1} p99_us={:.1} verified={}",
                r.ops_s, r.mb_s, r.p50_us, r.p99_us, r.verified
            );
            println!("{line}");
            out.push(line);
        }
        out
    }

    fn bench_secs() -> f64 {
        std::env::var("USTACK_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0)
    }

    /// Child entry point: the client side of `memif_bench_next_to_kernel_loopback`.
    #[test]
    #[ignore = "child process of memif_bench_next_to_kernel_loopback, run by it"]
    fn memif_bench_client() {
        if child::role().is_some() {
            let mut stack = memif_client_stack(40);
            let staging = Staging::new(&bench_staging(), 1 << 20).expect("staging");
            let cfg = bench_client_config();
            let now = Instant::now();
            let clients = (0..32)
                .map(|_| {
                    ChunkClient::connect_with_staging(
                        &mut stack,
                        server_addr(),
                        &cfg,
                        staging.clone(),
                        now,
                    )
                    .expect("connect")
                })
                .collect();
            let mut c = UstackClients { stack, clients };
            let start = WallInstant::now();
            while !c.clients.iter().all(ChunkClient::is_connected) {
                c.poll(Instant::now());
                assert!(start.elapsed() < Duration::from_secs(20), "connecting");
            }
            bench_all(&mut c, "ustack+dpdk-memif", bench_secs());
            println!("client stack {:?}", c.stack.stats());
        }
    }

    #[test]
    #[ignore = "benchmark: cargo test --release --features dpdk --test dpdk_memif -- --ignored --nocapture"]
    fn memif_bench_next_to_kernel_loopback() {
        let glibc = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        let busy = !idle_sleeps();
        println!("GLIBC_TUNABLES={glibc:?} (both processes); ustack busy-polls: {busy}");
        let Some(memif_lines) = memif_server("dpdk::memif_bench_client", 36, busy) else {
            return;
        };
        // Kernel TCP on loopback, same binary, same run.
        let store = Arc::new(MemStore::new(1 << 30));
        let mut scfg = server_config(36, 8);
        scfg.limits.payload_len_max = 1 << 20;
        let server = KernelServer::spawn(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            Arc::clone(&store),
            scfg,
        )
        .expect("kernel server");
        let staging = Staging::new(&bench_staging(), 1 << 20).expect("staging");
        let cfg = bench_client_config();
        let clients = (0..32)
            .map(|_| {
                KernelClient::connect_with_staging(server.local_addr(), &cfg, staging.clone())
                    .expect("kernel client")
            })
            .collect();
        let mut c = KernelClients(clients);
        let kernel_lines = bench_all(&mut c, "kernel-tcp-loopback", bench_secs());
        drop(c);
        println!("kernel server {:?}", server.stop());
        println!("\nsummary (GLIBC_TUNABLES={glibc:?}):");
        for l in memif_lines
            .iter()
            .filter(|l| l.starts_with("RESULT"))
            .chain(&kernel_lines)
        {
            println!("{l}");
        }
    }
}

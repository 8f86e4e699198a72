//! The chunk protocol end to end: 4 KiB and 1 MiB READ and WRITE, one request at a time, through
//! two ustack stacks over the in-process simulated link (one thread, virtual time: the figure is
//! the CPU cost of client + server + both stacks) next to the same server code and store over
//! kernel TCP on loopback (server thread + client thread).
//!
//! Also what metrics cost the serving loop (group `metrics`).
//!
//! Run: `cargo bench --bench chunk -- --warm-up-time 1 --measurement-time 5`.
//! Note whether `GLIBC_TUNABLES` was set (PLATFORM.md: it changes copy speed on this machine).
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ustack::chunk::{ChunkClient, ChunkOp, ChunkServer, ClientConfig, MemStore, ServerConfig};
use ustack::dev::sim::{SimConfig, SimLink, SimPort};
use ustack::net::{KernelClient, KernelServer};
use ustack::proto::ChunkId;
use ustack::stack::{MacAddr, Stack, StackConfig};
use ustack::Instant;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

struct SimRig {
    link: SimLink,
    a: Stack<SimPort>,
    b: Stack<SimPort>,
    server: ChunkServer<Arc<MemStore>>,
    client: ChunkClient,
    now: Instant,
}

fn stack_cfg(ip: Ipv4Addr, seed: u64) -> StackConfig {
    let mut c = StackConfig::new(ip, 24);
    c.random_seed = seed;
    c.mac = Some(MacAddr::local_from_seed(seed));
    c.sockets_max = 8;
    c.tcp.rx_buf_len = 1 << 20;
    c.tcp.tx_buf_len = 1 << 20;
    c
}

impl SimRig {
    fn new() -> SimRig {
        let (link, pa, pb) = SimLink::new(SimConfig::default()).unwrap();
        let mut a = Stack::new(pa, stack_cfg(Ipv4Addr::new(10, 0, 0, 1), 1)).unwrap();
        let mut b = Stack::new(pb, stack_cfg(SERVER, 2)).unwrap();
        let cfg = ServerConfig {
            connections_max: 4,
            backlog: 2,
            ..ServerConfig::default()
        };
        let server =
            ChunkServer::bind(&mut b, 7000, Arc::new(MemStore::new(1 << 30)), cfg).unwrap();
        let client = ChunkClient::connect(
            &mut a,
            SocketAddrV4::new(SERVER, 7000),
            &ClientConfig::default(),
            Instant::ZERO,
        )
        .unwrap();
        let mut rig = SimRig {
            link,
            a,
            b,
            server,
            client,
            now: Instant::ZERO,
        };
        while !rig.client.is_connected() {
            rig.step(false);
        }
        rig
    }

    fn step(&mut self, app_busy: bool) {
        let now = self.now;
        let busy = self.a.poll(now)
            | self.b.poll(now)
            | self.server.poll(&mut self.b)
            | self.client.poll(&mut self.a, now);
        if !busy && !app_busy {
            let next = self
                .link
                .next_event(now, [self.a.poll_at(now), self.b.poll_at(now)]);
            self.now = next.unwrap_or(now + Duration::from_micros(1));
        }
    }

    fn call(&mut self, op: ChunkOp<'_>) {
        let id = self.client.submit(op, self.now).unwrap();
        loop {
            self.step(false);
            if let Some(c) = self.client.next_completion() {
                assert_eq!(c.request_id, id);
                assert!(c.result.is_ok(), "{:?}", c.result);
                return;
            }
        }
    }
}

fn ops(c: &mut Criterion) {
    let mut sim = SimRig::new();
    let handle = KernelServer::spawn(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(MemStore::new(1 << 30)),
        ServerConfig::default(),
    )
    .unwrap();
    let mut kernel = KernelClient::connect(handle.local_addr(), &ClientConfig::default()).unwrap();
    for (name, size) in [("4KiB", 4usize << 10), ("1MiB", 1 << 20)] {
        let mut g = c.benchmark_group(format!("chunk_{name}"));
        g.throughput(Throughput::Bytes(size as u64));
        if size > 64 << 10 {
            g.sample_size(30);
        }
        let data = vec![0xa5u8; size];
        let id = ChunkId(size as u128);
        sim.call(ChunkOp::Write {
            id,
            offset: 0,
            data: &data,
        });
        kernel
            .call(ChunkOp::Write {
                id,
                offset: 0,
                data: &data,
            })
            .unwrap();
        g.bench_function(BenchmarkId::new("write", "ustack_sim_link"), |b| {
            b.iter(|| {
                sim.call(ChunkOp::Write {
                    id,
                    offset: 0,
                    data: &data,
                })
            })
        });
        g.bench_function(BenchmarkId::new("write", "kernel_loopback"), |b| {
            b.iter(|| {
                assert!(kernel
                    .call(ChunkOp::Write {
                        id,
                        offset: 0,
                        data: &data
                    })
                    .unwrap()
                    .result
                    .is_ok())
            })
        });
        let read = ChunkOp::Read {
            id,
            offset: 0,
            len: size as u32,
        };
        g.bench_function(BenchmarkId::new("read", "ustack_sim_link"), |b| {
            b.iter(|| sim.call(read))
        });
        g.bench_function(BenchmarkId::new("read", "kernel_loopback"), |b| {
            b.iter(|| assert!(kernel.call(read).unwrap().result.is_ok()))
        });
        g.finish();
    }
    drop(kernel);
    handle.stop();
}

/// What metrics cost the serving loop: `Hub::serve` when nobody asks (every turn), a snapshot
/// (once per scrape or admin `stats`), and encoding it (on the scrape thread, not the loop).
fn metrics(c: &mut Criterion) {
    use ustack::metrics::{encode_openmetrics, Hub, StackServerView};
    let mut sim = SimRig::new();
    let data = vec![0xa5u8; 4096];
    for i in 0..100u128 {
        sim.call(ChunkOp::Write {
            id: ChunkId(i),
            offset: 0,
            data: &data,
        });
    }
    let hub = Hub::new();
    let mut g = c.benchmark_group("metrics");
    let now = sim.now;
    g.bench_function("hub_serve_nothing_asked", |b| {
        b.iter(|| {
            hub.serve(
                now,
                &mut StackServerView {
                    stack: &mut sim.b,
                    server: &sim.server,
                },
            )
        })
    });
    g.bench_function("snapshot_on_the_loop", |b| {
        b.iter(|| {
            hub.publish(
                now,
                &mut StackServerView {
                    stack: &mut sim.b,
                    server: &sim.server,
                },
            )
        })
    });
    let snap = hub.latest().unwrap();
    g.bench_function("encode_on_the_scrape_thread", |b| {
        b.iter(|| encode_openmetrics(&snap, Duration::ZERO).len())
    });
    g.finish();
}

criterion_group!(benches, ops, metrics);
criterion_main!(benches);

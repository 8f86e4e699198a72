//! TCP through two ustack stacks over the simulated link (one thread, virtual time: the figure is
//! the CPU cost of smoltcp + adapter + link), next to the same workload over kernel TCP on
//! loopback (two threads, the kernel doing the work).
//!
//! Run: `cargo bench --bench stack -- --warm-up-time 1 --measurement-time 5`.
//!
//! - `bulk/*`: 16 MiB one way on an established connection (throughput).
//! - `rr_4k/*`: one 4 KiB request answered by a 4 KiB response, one at a time (per exchange).
//!
//! Environment matters here: set (or note the absence of) `GLIBC_TUNABLES` — see PLATFORM.md.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ustack::dev::sim::{SimConfig, SimLink, SimPort};
use ustack::stack::{ConnId, ConnState, MacAddr, Stack, StackConfig};
use ustack::Instant;

const BULK: usize = 16 << 20;
const RR: usize = 4096;

struct Pair {
    link: SimLink,
    a: Stack<SimPort>,
    b: Stack<SimPort>,
    c: ConnId,
    s: ConnId,
    now: Instant,
}

fn cfg(ip: Ipv4Addr, seed: u64) -> StackConfig {
    let mut c = StackConfig::new(ip, 24);
    c.random_seed = seed;
    c.mac = Some(MacAddr::local_from_seed(seed));
    c.sockets_max = 4;
    c
}

/// A stack configuration with room for `idle` extra connections, sharded or not.
fn cfg_idle(ip: Ipv4Addr, seed: u64, idle: usize, sharded: bool) -> StackConfig {
    let mut c = cfg(ip, seed);
    c.sockets_max = idle + 8;
    c.tcp.rx_buf_len = 16 << 10;
    c.tcp.tx_buf_len = 16 << 10;
    if !sharded {
        c.shard_sockets = c.sockets_max;
    }
    c
}

impl Pair {
    fn new() -> Pair {
        Pair::with(
            cfg(Ipv4Addr::new(10, 0, 0, 1), 1),
            cfg(Ipv4Addr::new(10, 0, 0, 2), 2),
            0,
        )
    }

    /// A pair with one active connection and `idle` more connections open and idle.
    fn with(ca: StackConfig, cb: StackConfig, idle: usize) -> Pair {
        let (link, pa, pb) = SimLink::new(SimConfig::default()).unwrap();
        let mut a = Stack::new(pa, ca).unwrap();
        let mut b = Stack::new(pb, cb).unwrap();
        let l = b.listen(9, 4).unwrap();
        let c = a
            .connect(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 9))
            .unwrap();
        let mut p = Pair {
            link,
            a,
            b,
            c,
            s: c,
            now: Instant::ZERO,
        };
        let mut s = None;
        while s.is_none() || p.a.state(c).unwrap() != ConnState::Established {
            p.step(false);
            if s.is_none() {
                s = p.b.accept(l).unwrap();
            }
        }
        p.s = s.unwrap();
        // The idle ones: connected, accepted, then left alone.
        let idle_conns: Vec<ConnId> = (0..idle)
            .map(|_| {
                p.a.connect(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 9))
                    .unwrap()
            })
            .collect();
        let mut accepted = 0;
        while accepted < idle
            || !idle_conns
                .iter()
                .all(|&c| p.a.state(c).unwrap() == ConnState::Established)
        {
            p.step(false);
            while p.b.accept(l).unwrap().is_some() {
                accepted += 1;
            }
        }
        p
    }

    /// Polls both stacks; jumps virtual time when nothing happened.
    fn step(&mut self, app_busy: bool) {
        let busy = self.a.poll(self.now) | self.b.poll(self.now);
        if !busy && !app_busy {
            let timers = [self.a.poll_at(self.now), self.b.poll_at(self.now)];
            let next = self.link.next_event(self.now, timers);
            self.now = next.unwrap_or(self.now + Duration::from_micros(1));
        }
    }

    fn bulk(&mut self, total: usize, buf: &mut [u8]) {
        let (mut sent, mut got) = (0, 0);
        while got < total {
            let mut busy = false;
            if sent < total {
                let n = self
                    .a
                    .send(self.c, &buf[..(total - sent).min(buf.len())])
                    .unwrap();
                sent += n;
                busy |= n > 0;
            }
            let n = self.b.recv(self.s, buf).unwrap();
            got += n;
            busy |= n > 0;
            self.step(busy);
        }
    }

    fn exchange(&mut self, buf: &mut [u8]) {
        let (mut sent, mut got_s, mut back, mut got_c) = (0, 0, 0, 0);
        while got_c < RR {
            let mut busy = false;
            if sent < RR {
                let n = self.a.send(self.c, &buf[sent..RR]).unwrap();
                sent += n;
                busy |= n > 0;
            }
            if got_s < RR {
                let n = self.b.recv(self.s, &mut buf[RR..2 * RR]).unwrap();
                got_s += n;
                busy |= n > 0;
            }
            if back < got_s {
                let n = self.b.send(self.s, &buf[RR..RR + got_s - back]).unwrap();
                back += n;
                busy |= n > 0;
            }
            let n = self.a.recv(self.c, &mut buf[2 * RR..3 * RR]).unwrap();
            got_c += n;
            busy |= n > 0;
            self.step(busy);
        }
    }
}

fn kernel_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    c.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    (c, s)
}

fn bulk(c: &mut Criterion) {
    let mut g = c.benchmark_group("bulk");
    g.throughput(Throughput::Bytes(BULK as u64));
    g.sample_size(20);
    let mut buf = vec![0x5au8; 256 << 10];
    let mut p = Pair::new();
    g.bench_function("ustack_sim_link", |b| b.iter(|| p.bulk(BULK, &mut buf)));

    let (mut client, mut server) = kernel_pair();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<usize>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        while let Ok(total) = go_rx.recv() {
            let mut got = 0;
            while got < total {
                got += server.read(&mut buf).unwrap();
            }
            done_tx.send(()).unwrap();
        }
    });
    g.bench_function("kernel_loopback", |b| {
        b.iter(|| {
            go_tx.send(BULK).unwrap();
            let mut sent = 0;
            while sent < BULK {
                let n = (BULK - sent).min(buf.len());
                client.write_all(&buf[..n]).unwrap();
                sent += n;
            }
            done_rx.recv().unwrap();
        })
    });
    drop(go_tx);
    reader.join().unwrap();
    g.finish();
}

fn request_response(c: &mut Criterion) {
    let mut g = c.benchmark_group("rr_4k");
    g.throughput(Throughput::Elements(1));
    let mut buf = vec![0x11u8; 3 * RR];
    let mut p = Pair::new();
    g.bench_function("ustack_sim_link", |b| b.iter(|| p.exchange(&mut buf)));

    let (mut client, mut server) = kernel_pair();
    let echo = thread::spawn(move || {
        let mut buf = vec![0u8; RR];
        loop {
            if server.read_exact(&mut buf).is_err() {
                return;
            }
            server.write_all(&buf).unwrap();
        }
    });
    g.bench_function("kernel_loopback", |b| {
        b.iter(|| {
            client.write_all(&buf[..RR]).unwrap();
            client.read_exact(&mut buf[RR..2 * RR]).unwrap();
        })
    });
    drop(client);
    echo.join().unwrap();
    g.finish();
}

/// 4 KiB request/response on one connection while 0, 256 or 1,024 other connections sit idle,
/// with the sockets sharded (16 per set, the default) and in one set (smoltcp walks all of them).
fn idle_scaling(c: &mut Criterion) {
    let mut g = c.benchmark_group("rr_4k_idle");
    g.throughput(Throughput::Elements(1));
    let mut buf = vec![0x11u8; 3 * RR];
    for idle in [0usize, 256, 1024] {
        for sharded in [true, false] {
            if idle == 0 && !sharded {
                continue;
            }
            let ca = cfg_idle(Ipv4Addr::new(10, 0, 0, 1), 1, idle, sharded);
            let cb = cfg_idle(Ipv4Addr::new(10, 0, 0, 2), 2, idle, sharded);
            let mut p = Pair::with(ca, cb, idle);
            let name = format!(
                "{}_{idle}_idle",
                if sharded { "sharded" } else { "one_set" }
            );
            g.bench_function(name, |b| b.iter(|| p.exchange(&mut buf)));
        }
    }
    g.finish();
}

criterion_group!(benches, bulk, request_response, idle_scaling);
criterion_main!(benches);

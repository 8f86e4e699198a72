//! memif between two processes: this bench and a child process of its own (the bench binary
//! run again in a role, as the memif tests do: `tests/common/child.rs`, the roles of
//! `tests/memif_support`), next to kernel TCP on loopback.
//!
//! Run: `cargo bench --bench memif_processes -- --warm-up-time 1 --measurement-time 5`.
//!
//! - `memif_processes/stream/{64,1500}`: a burst of 32 frames (an Ethernet header and a
//!   sequence number written, as a packet generator does) sent to a child that counts what it
//!   receives: the rate two processes move frames through the rings. The counts are printed.
//! - `memif_processes/echo/{64,1500}`: frames echoed back by the child, 256 in flight: time per
//!   round trip.
//! - `chunk_read_4k_depth1/memif`: one 4 KiB READ at a time from a chunk server in the child
//!   (memif, ustack's stack at both ends; the client spins 50 us, then sleeps in the device's
//!   wait, woken by the server's eventfd kick);
//!   `chunk_read_4k_depth1/kernel_tcp_loopback`: the same protocol over kernel TCP on loopback
//!   (`ustack::net`, a server thread in this process).
//!
//! The control socket lives in a fresh directory under /tmp, removed at the end.
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/memif_support/mod.rs"]
mod memif_support;

use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use common::child::{self, ChildCommand};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use memif_support::{client_cfg, memif_cfg, server_cfg, spawn_role, ClientRig, TestDir};
use ustack::chunk::{ChunkOp, MemStore};
use ustack::dev::memif::{MemifDevice, MemifRole};
use ustack::proto::ChunkId;
use ustack::{Batch, Frame, Instant, PacketDevice};

const BURST: usize = 32;
/// Frames in flight in the echo loop.
const WINDOW: u64 = 256;

/// A client device on `socket` with its link up.
fn client_device(socket: &std::path::Path) -> MemifDevice {
    let mut dev = MemifDevice::open(&memif_cfg(socket, MemifRole::Client)).expect("memif client");
    let mut scratch = Batch::with_capacity(64);
    let start = WallInstant::now();
    while !dev.link_up() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "memif link not up: {:?}",
            dev.last_error()
        );
        dev.rx_burst(Instant::now(), &mut scratch);
    }
    dev
}

/// Sends one burst of `BURST` frames of `len` bytes, numbered from `*seq`, until the ring has
/// taken them all.
fn stream_burst(
    dev: &mut MemifDevice,
    out: &mut Batch<<MemifDevice as PacketDevice>::Frame>,
    len: usize,
    seq: &mut u64,
) {
    let mut left = BURST;
    while left > 0 {
        while out.len() < left {
            let Some(mut f) = dev.tx_alloc() else { break };
            let _ = f.set_len(len);
            // A header and a sequence number, as a packet generator writes; the rest of the
            // frame is whatever the buffer held.
            let d = f.data_mut();
            d[..12].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
            d[12..14].copy_from_slice(&[0x88, 0xb5]);
            d[14..22].copy_from_slice(&seq.to_le_bytes());
            *seq += 1;
            let _ = out.push(f);
        }
        let n = dev.tx_burst(Instant::now(), out);
        if n == 0 {
            std::thread::yield_now(); // ring full: let the receiver run
        }
        left -= n;
    }
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("memif_processes");
    for len in [64usize, 1500] {
        // Stream: this process sends, the child counts.
        let dir = TestDir::new("bench");
        let socket = dir.socket();
        let mut sink = spawn_role(ChildCommand::main("sink"), &socket);
        sink.wait_for_line(child::READY, Duration::from_secs(30))
            .unwrap();
        let mut dev = client_device(&socket);
        let mut out = Batch::with_capacity(BURST);
        let mut seq = 0u64;
        g.throughput(Throughput::Elements(BURST as u64));
        g.bench_function(BenchmarkId::new("stream", len), |b| {
            b.iter(|| stream_burst(&mut dev, &mut out, len, &mut seq))
        });
        let status = sink.stop(Duration::from_secs(10)).expect("sink exits");
        assert!(status.success());
        let got = sink
            .wait_for_line("child: received", Duration::from_secs(5))
            .unwrap();
        eprintln!("memif stream {len} B: sent {seq} frames; {got}");
        drop(dev);

        // Echo: the child sends every frame back; WINDOW frames in flight.
        let dir = TestDir::new("bench-echo");
        let socket = dir.socket();
        let mut echo = spawn_role(ChildCommand::main("echo"), &socket);
        echo.wait_for_line(child::READY, Duration::from_secs(30))
            .unwrap();
        let mut dev = client_device(&socket);
        let (mut sent, mut back) = (0u64, 0u64);
        let mut rx = Batch::with_capacity(64);
        let mut out = Batch::with_capacity(64);
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("echo", len), |b| {
            b.iter_custom(|iters| {
                let target = back + iters;
                let start = WallInstant::now();
                while back < target {
                    while sent - back < WINDOW && !out.is_full() {
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
                start.elapsed()
            })
        });
        drop(dev);
        assert!(echo
            .stop(Duration::from_secs(10))
            .expect("echo exits")
            .success());
    }
    g.finish();
}

fn chunk_read(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk_read_4k_depth1");
    g.throughput(Throughput::Elements(1));
    let data = vec![7u8; 4096];
    let id = ChunkId(42);
    let read = ChunkOp::Read {
        id,
        offset: 0,
        len: 4096,
    };

    // memif: a chunk server in the child.
    let dir = TestDir::new("bench-read");
    let socket = dir.socket();
    let mut server = spawn_role(ChildCommand::main("chunk-server"), &socket);
    server
        .wait_for_line(child::READY, Duration::from_secs(30))
        .unwrap();
    let mut rig = ClientRig::new(&socket, Duration::from_secs(10));
    rig.wait_link(None, Duration::from_secs(20)).unwrap();
    rig.connect(None).unwrap();
    let write = ChunkOp::Write {
        id,
        offset: 0,
        data: &data,
    };
    rig.client
        .as_mut()
        .unwrap()
        .submit(write, Instant::now())
        .unwrap();
    while rig.client.as_mut().unwrap().next_completion().is_none() {
        rig.step(None);
    }
    g.bench_function("memif", |b| {
        b.iter(|| {
            let client = rig.client.as_mut().unwrap();
            client.submit(read, Instant::now()).unwrap();
            loop {
                rig.step(None);
                if let Some(done) = rig.client.as_mut().unwrap().next_completion() {
                    assert_eq!(done.data().len(), 4096);
                    break;
                }
            }
        })
    });
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
    kc.call(write).unwrap();
    g.bench_function("kernel_tcp_loopback", |b| {
        b.iter(|| {
            let c = kc.call(read).unwrap();
            assert_eq!(c.data().len(), 4096);
        })
    });
    g.finish();
}

criterion_group!(benches, frames, chunk_read);

fn main() {
    // A child process of this bench plays its role and nothing else.
    if let Some(role) = child::role() {
        memif_support::run_child(&role);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

//! Frames through the native memif rings: a client and a server device in this process (the
//! same shared-memory rings two processes use, driven by one thread), next to the kernel moving
//! the same datagrams between two UDP sockets on loopback.
//!
//! Run: `cargo bench --bench memif -- --warm-up-time 1 --measurement-time 5`.
//!
//! - `memif_burst/{64,1514,9014}/memif`: a burst of 32 frames of that size allocated, written
//!   (first and last byte), sent by the client and received and released by the server.
//! - `.../kernel_udp_loopback`: the same 32 payloads sent with `send` and read with `recv` on
//!   a connected UDP socket pair over 127.0.0.1 (one system call per frame each way, as a
//!   datagram socket does without `sendmmsg`).
//!
//! Both are one thread doing both ends, so the figure is CPU time per burst, not latency
//! between cores. The control socket lives in a fresh directory under the temp directory and is
//! removed at the end.
use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::{Duration, Instant as WallInstant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ustack::dev::memif::{MemifConfig, MemifDevice, MemifRole};
use ustack::dev::{Batch, Frame, PacketDevice};
use ustack::Instant;

const BURST: usize = 32;
const SIZES: [usize; 3] = [64, 1514, 9014];

/// A directory of this process's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("ustack-bench-memif-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir for the memif socket");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn memif_pair(dir: &TempDir) -> (MemifDevice, MemifDevice) {
    let socket = dir.0.join("memif.sock");
    let cfg = |role| MemifConfig {
        mtu: 9000,
        buffer_size: 9024,
        ..MemifConfig::new(&socket, role)
    };
    let mut server = MemifDevice::open(&cfg(MemifRole::Server)).expect("memif server");
    let mut client = MemifDevice::open(&cfg(MemifRole::Client)).expect("memif client");
    let mut batch = Batch::with_capacity(BURST);
    let start = WallInstant::now();
    while !(server.link_up() && client.link_up()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "memif pair did not connect: {:?} / {:?}",
            server.last_error(),
            client.last_error()
        );
        server.rx_burst(Instant::now(), &mut batch);
        client.rx_burst(Instant::now(), &mut batch);
        batch.clear();
    }
    (client, server)
}

/// One burst client -> server; returns the bytes the server received.
fn memif_burst(
    tx: &mut MemifDevice,
    rx: &mut MemifDevice,
    out: &mut Batch<<MemifDevice as PacketDevice>::Frame>,
    inb: &mut Batch<<MemifDevice as PacketDevice>::Frame>,
    len: usize,
) -> usize {
    let now = Instant::now();
    for i in 0..BURST {
        let mut f = tx.tx_alloc().expect("memif tx buffer");
        assert!(f.set_len(len));
        let d = f.data_mut();
        d[0] = i as u8;
        d[len - 1] = i as u8;
        if out.push(f).is_err() {
            unreachable!("batch holds a burst");
        }
    }
    let sent = tx.tx_burst(now, out);
    assert_eq!(sent, BURST, "memif ring full");
    let mut got = 0;
    let mut bytes = 0;
    while got < BURST {
        rx.rx_burst(now, inb);
        while let Some(f) = inb.pop() {
            bytes += f.data().len();
            got += 1;
        }
    }
    bytes
}

fn udp_pair() -> (UdpSocket, UdpSocket) {
    let a = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    let b = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    a.connect(b.local_addr().unwrap()).unwrap();
    b.connect(a.local_addr().unwrap()).unwrap();
    // Room for a whole burst of the largest datagrams.
    set_buf(&a, libc::SO_SNDBUF);
    set_buf(&b, libc::SO_RCVBUF);
    (a, b)
}

fn set_buf(s: &UdpSocket, opt: libc::c_int) {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = 4 << 20;
    // SAFETY: a valid socket and a pointer to an int of the size given.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt");
}

fn udp_burst(tx: &UdpSocket, rx: &UdpSocket, buf: &mut [u8], len: usize) -> usize {
    for i in 0..BURST {
        buf[0] = i as u8;
        buf[len - 1] = i as u8;
        assert_eq!(tx.send(&buf[..len]).expect("udp send"), len);
    }
    let mut bytes = 0;
    for _ in 0..BURST {
        bytes += rx.recv(buf).expect("udp recv");
    }
    bytes
}

fn bursts(c: &mut Criterion) {
    let dir = TempDir::new();
    let (mut client, mut server) = memif_pair(&dir);
    let mut out = Batch::with_capacity(BURST);
    let mut inb = Batch::with_capacity(BURST);
    let (ua, ub) = udp_pair();
    let mut buf = vec![0u8; 65536];
    let mut g = c.benchmark_group("memif_burst");
    for len in SIZES {
        g.throughput(Throughput::Bytes((len * BURST) as u64));
        g.bench_with_input(BenchmarkId::new("memif", len), &len, |b, &len| {
            b.iter(|| memif_burst(&mut client, &mut server, &mut out, &mut inb, len))
        });
        g.bench_with_input(
            BenchmarkId::new("kernel_udp_loopback", len),
            &len,
            |b, &len| b.iter(|| udp_burst(&ua, &ub, &mut buf, len)),
        );
    }
    g.finish();
    drop(client);
    drop(server);
}

criterion_group!(benches, bursts);
criterion_main!(benches);

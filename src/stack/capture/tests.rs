//! Captures of real TCP traffic between two stacks on the simulated link, read back with a
//! small pcap reader (and with tcpdump when it is installed).

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::dev::sim::{Faults, SimConfig, SimPort};
use crate::stack::sim_pair::{self, SimPair};
use crate::stack::{ConnId, Stack};

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PORT: u16 = 7000;

/// A fresh directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "ustack-capture-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two stacks on the simulated link (`sim_pair`), with what these tests add.
type Net = SimPair;

impl SimPair {
    fn open(faults: Faults) -> Net {
        let sim = SimConfig {
            queue_frames: 1024,
            ..SimConfig::default()
        }
        .with_seed(7)
        .with_faults(faults);
        SimPair::new(sim, sim_pair::config(A, 1, 4), sim_pair::config(B, 2, 4))
    }

    /// Polls both stacks until `done` says so, jumping the clock over idle time.
    fn drive(&mut self, done: impl FnMut(&mut Stack<SimPort>, &mut Stack<SimPort>) -> bool) {
        self.run_until(Duration::from_secs(120), done)
    }

    /// Polls until nothing is in flight or due (for up to a virtual second).
    fn settle(&mut self) {
        let end = self.now + Duration::from_secs(1);
        while self.now < end {
            let busy = self.a.poll(self.now) | self.b.poll(self.now);
            if !busy && self.link.next_delivery().is_none() {
                return;
            }
            self.now += Duration::from_micros(100);
        }
    }

    /// Sends `len` bytes from `from` to `to` and reads them all there.
    fn transfer(&mut self, from_a: bool, c: ConnId, s: ConnId, len: usize) {
        let (src, dst) = if from_a { (c, s) } else { (s, c) };
        let chunk = [0x5au8; 4096];
        let (mut sent, mut got) = (0, 0);
        let mut buf = [0u8; 8192];
        self.drive(|a, b| {
            let (tx, rx) = if from_a { (a, b) } else { (b, a) };
            while sent < len {
                let n = tx
                    .send(src, &chunk[..(len - sent).min(chunk.len())])
                    .unwrap();
                if n == 0 {
                    break;
                }
                sent += n;
            }
            loop {
                let n = rx.recv(dst, &mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got += n;
            }
            got == len
        });
    }
}

/// One record: (seconds, microseconds, original length, captured bytes).
struct Record {
    secs: u32,
    usecs: u32,
    orig: u32,
    data: Vec<u8>,
}

/// Reads a classic pcap file: checks its global header (snap length `snaplen`, Ethernet).
fn read_pcap(path: &Path, snaplen: u32) -> Vec<Record> {
    let bytes = std::fs::read(path).unwrap();
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u16_at = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap());
    assert!(bytes.len() >= 24, "no global header");
    assert_eq!(
        u32_at(0),
        0xa1b2_c3d4,
        "magic (microseconds, little-endian)"
    );
    assert_eq!((u16_at(4), u16_at(6)), (2, 4), "version");
    assert_eq!((u32_at(8), u32_at(12)), (0, 0), "zone and sigfigs");
    assert_eq!(u32_at(16), snaplen, "snaplen");
    assert_eq!(u32_at(20), 1, "link type Ethernet");
    let mut out = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        assert!(bytes.len() - at >= 16, "truncated record header at {at}");
        let (secs, usecs, incl, orig) = (
            u32_at(at),
            u32_at(at + 4),
            u32_at(at + 8) as usize,
            u32_at(at + 12),
        );
        assert!(usecs < 1_000_000);
        assert!(incl <= orig as usize && incl <= snaplen as usize);
        at += 16;
        assert!(bytes.len() - at >= incl, "truncated record data at {at}");
        out.push(Record {
            secs,
            usecs,
            orig,
            data: bytes[at..at + incl].to_vec(),
        });
        at += incl;
    }
    out
}

/// The IPv4/TCP view of an Ethernet frame: (src, src port, dst, dst port, flags).
fn tcp_of(f: &[u8]) -> Option<(Ipv4Addr, u16, Ipv4Addr, u16, u8)> {
    if f.len() < 14 + 20 + 20 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 6 {
        return None;
    }
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let tcp = &ip[ihl..];
    let port = |at: usize| u16::from_be_bytes([tcp[at], tcp[at + 1]]);
    let addr = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    Some((addr(12), port(0), addr(16), port(2), tcp[13]))
}

/// Records in a file being written: None while one is cut short.
fn whole_records(bytes: &[u8]) -> Option<u64> {
    let mut at = 24;
    let mut n = 0;
    while at < bytes.len() {
        let incl = u32::from_le_bytes(bytes.get(at + 8..at + 12)?.try_into().unwrap());
        at += 16 + incl as usize;
        n += 1;
    }
    (at == bytes.len()).then_some(n)
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn spec(path: PathBuf, packets_max: Option<u64>, bytes_max: Option<u64>) -> CaptureSpec {
    let mut s = CaptureSpec::new(path);
    s.packets_max = packets_max;
    s.bytes_max = bytes_max;
    s
}

fn wall_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits (real time, bounded) until the capture's writer closed the file.
fn wait_ended(stack: &Stack<SimPort>) -> CaptureStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = stack.capture_status().expect("a capture");
        if st.ended.is_some() {
            return st;
        }
        assert!(std::time::Instant::now() < deadline, "never ended: {st:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn captures_a_tcp_connection_both_ways_with_wall_clock_times() {
    let dir = TempDir::new("flow");
    let path = dir.file("flow.pcap");
    let mut net = Net::open(Faults::none());
    assert!(net.a.capture_status().is_none());
    let t0 = wall_secs();
    net.a
        .start_capture(spec(path.clone(), Some(100_000), None))
        .unwrap();
    let running = net.a.capture_status().unwrap();
    assert!(running.running && running.ended.is_none(), "{running:?}");
    assert_eq!(running.path, path);

    let (c, s) = net.connect(PORT, 1);
    net.transfer(true, c, s, 200_000);
    net.transfer(false, c, s, 20_000);
    net.settle();
    let st = net.a.stop_capture().unwrap();
    let t1 = wall_secs();
    assert!(net.a.capture_status().is_none(), "collected");
    assert!(net.a.stop_capture().is_none(), "nothing left to stop");
    assert!(!st.running);
    assert_eq!(st.ended, Some(CaptureEnd::Stopped));
    assert_eq!(st.dropped, 0);

    let recs = read_pcap(&path, 65535);
    assert_eq!(recs.len() as u64, st.packets);
    let bytes: usize = recs.iter().map(|r| r.data.len()).sum();
    assert_eq!(bytes as u64, st.bytes);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        24 + 16 * st.packets + st.bytes
    );
    // Every frame A sent and every frame its device gave it, once each.
    assert_eq!(
        st.packets,
        net.a.stats().tx_frames + net.a.link_stats().rx_packets
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let mut syn = false;
    let (mut a_to_b, mut b_to_a) = (0, 0);
    let mut last = (0, 0);
    for r in &recs {
        assert_eq!(r.orig as usize, r.data.len(), "whole frames");
        let ts = (r.secs, r.usecs);
        assert!(ts >= last, "records in time order");
        last = ts;
        assert!(
            (t0.saturating_sub(2)..=t1 + 2).contains(&u64::from(r.secs)),
            "timestamp {} is wall-clock time (between {t0} and {t1})",
            r.secs
        );
        let Some((src, sport, dst, dport, flags)) = tcp_of(&r.data) else {
            assert_eq!(r.data[12..14], [0x08, 0x06], "not TCP: ARP only");
            continue;
        };
        match (src, dst) {
            (A, B) => {
                assert_eq!(dport, PORT);
                a_to_b += 1;
                syn |= flags & (SYN | ACK) == SYN && sport >= 49152;
            }
            (B, A) => {
                assert_eq!(sport, PORT);
                b_to_a += 1;
            }
            other => panic!("frame between unexpected addresses {other:?}"),
        }
    }
    assert!(syn, "the SYN is captured");
    // 200 kB out in 1460-byte segments, 20 kB back.
    assert!(a_to_b > 137 && b_to_a > 13, "{a_to_b} {b_to_a}");

    // Serving goes on, and a new capture may start.
    net.transfer(true, c, s, 1000);
    net.a
        .start_capture(spec(dir.file("again.pcap"), Some(10), None))
        .unwrap();
}

#[test]
fn malformed_frames_are_captured_before_the_checks() {
    let dir = TempDir::new("bad");
    let path = dir.file("bad.pcap");
    let mut net = Net::open(Faults {
        corrupt: 0.1,
        ..Faults::none()
    });
    net.a
        .start_capture(spec(path.clone(), Some(100_000), None))
        .unwrap();
    let (c, s) = net.connect(PORT, 1);
    net.transfer(false, c, s, 100_000);
    net.settle();
    let st = net.a.stop_capture().unwrap();
    assert!(
        net.a.stats().rx_dropped() > 0,
        "corrupted frames were dropped by the stack: {:?}",
        net.a.stats()
    );
    assert_eq!(st.dropped, 0);
    assert_eq!(
        st.packets,
        net.a.stats().tx_frames + net.a.link_stats().rx_packets,
        "dropped frames are in the capture too"
    );
    assert_eq!(read_pcap(&path, 65535).len() as u64, st.packets);
}

#[test]
fn packet_limit_ends_the_capture_while_traffic_goes_on() {
    let dir = TempDir::new("plimit");
    let path = dir.file("ten.pcap");
    let mut net = Net::open(Faults::none());
    net.a
        .start_capture(spec(path.clone(), Some(10), None))
        .unwrap();
    let (c, s) = net.connect(PORT, 1);
    net.transfer(true, c, s, 100_000);
    let st = wait_ended(&net.a);
    assert_eq!(st.ended, Some(CaptureEnd::PacketLimit));
    assert!(!st.running);
    assert_eq!(st.packets, 10);
    // Traffic goes on; the ended capture takes nothing more and stays to be collected.
    net.transfer(false, c, s, 50_000);
    let err = net
        .a
        .start_capture(spec(dir.file("other.pcap"), Some(10), None))
        .unwrap_err();
    assert!(
        matches!(&err, CaptureError::NotCollected { path: p, end: CaptureEnd::PacketLimit } if *p == path),
        "{err}"
    );
    assert!(err.to_string().contains("stop it"), "{err}");
    let st = net.a.stop_capture().unwrap();
    assert_eq!(
        (st.packets, st.ended.clone()),
        (10, Some(CaptureEnd::PacketLimit))
    );
    let recs = read_pcap(&path, 65535);
    assert_eq!(recs.len(), 10);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        24 + 16 * 10 + st.bytes
    );
    assert!(st.to_string().contains("packet limit reached"), "{st}");
    // Collected: a new capture starts.
    net.a
        .start_capture(spec(dir.file("other.pcap"), Some(10), None))
        .unwrap();
    assert!(net.a.capture_status().unwrap().running);
}

#[test]
fn byte_limit_and_snaplen_bound_the_frame_bytes_written() {
    let dir = TempDir::new("blimit");
    let path = dir.file("bytes.pcap");
    let mut net = Net::open(Faults::none());
    let mut sp = spec(path.clone(), None, Some(20_000));
    sp.snaplen = 1000;
    net.a.start_capture(sp).unwrap();
    let (c, s) = net.connect(PORT, 1);
    net.transfer(true, c, s, 100_000);
    let st = wait_ended(&net.a);
    assert_eq!(st.ended, Some(CaptureEnd::ByteLimit));
    let st = net.a.stop_capture().unwrap();
    assert_eq!(st.ended, Some(CaptureEnd::ByteLimit));
    let recs = read_pcap(&path, 1000);
    let bytes: u64 = recs.iter().map(|r| r.data.len() as u64).sum();
    assert_eq!((recs.len() as u64, bytes), (st.packets, st.bytes));
    assert!(
        bytes <= 20_000 && bytes > 20_000 - 1000,
        "{bytes} bytes: the limit, to within one frame"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        24 + 16 * st.packets + st.bytes
    );
    // Data segments are cut to the snap length, their wire length kept.
    assert!(recs
        .iter()
        .any(|r| r.data.len() == 1000 && r.orig as usize > 1000));
    assert!(recs.iter().all(|r| r.data.len() <= 1000));
}

#[test]
fn bad_requests_are_refused_with_what_to_do() {
    let dir = TempDir::new("errors");
    let mut net = Net::open(Faults::none());

    let err = net
        .a
        .start_capture(CaptureSpec::new(dir.file("x.pcap")))
        .unwrap_err();
    assert!(matches!(err, CaptureError::NoLimit), "{err}");
    assert!(err.to_string().contains("packets_max"), "{err}");

    let err = net
        .a
        .start_capture(spec(dir.file("x.pcap"), None, Some(2 << 30)))
        .unwrap_err();
    assert!(
        matches!(err, CaptureError::LimitTooLarge { what: "bytes_max", asked, ceiling }
            if asked == 2 << 30 && ceiling == CAPTURE_BYTES_CEILING),
        "{err}"
    );
    let err = net
        .a
        .start_capture(spec(dir.file("x.pcap"), Some(0), None))
        .unwrap_err();
    assert!(matches!(err, CaptureError::ZeroLimit { .. }), "{err}");
    let mut sp = spec(dir.file("x.pcap"), Some(10), None);
    sp.snaplen = 0;
    let err = net.a.start_capture(sp).unwrap_err();
    assert!(matches!(err, CaptureError::Snaplen { snaplen: 0 }), "{err}");
    assert!(!dir.file("x.pcap").exists(), "no file for refused specs");

    // A directory that does not exist.
    let missing = dir.file("no-such-dir").join("x.pcap");
    let err = net
        .a
        .start_capture(spec(missing.clone(), Some(10), None))
        .unwrap_err();
    assert!(
        matches!(&err, CaptureError::Create { path, .. } if *path == missing),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&missing.display().to_string()) && msg.contains("directory exists"),
        "{msg}"
    );

    // An existing file is never overwritten.
    let existing = dir.file("existing.pcap");
    std::fs::write(&existing, b"keep me").unwrap();
    let err = net
        .a
        .start_capture(spec(existing.clone(), Some(10), None))
        .unwrap_err();
    assert!(matches!(err, CaptureError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    assert!(net.a.capture_status().is_none());

    // The stack works on.
    let (c, s) = net.connect(PORT, 1);
    net.transfer(true, c, s, 10_000);

    // Twice.
    let first = dir.file("first.pcap");
    net.a
        .start_capture(spec(first.clone(), Some(1000), None))
        .unwrap();
    let err = net
        .a
        .start_capture(spec(dir.file("second.pcap"), Some(1000), None))
        .unwrap_err();
    assert!(
        matches!(&err, CaptureError::AlreadyRunning { path } if *path == first),
        "{err}"
    );
    assert!(err.to_string().contains(&first.display().to_string()));
    assert!(!dir.file("second.pcap").exists());
    net.transfer(true, c, s, 10_000);
    let st = net.a.stop_capture().unwrap();
    assert!(st.packets > 0 && st.ended == Some(CaptureEnd::Stopped));
}

/// A writer that fails once `ok_bytes` were written.
struct Failing {
    ok_bytes: usize,
}

impl Write for Failing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() > self.ok_bytes {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
        }
        self.ok_bytes -= buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_write_error_ends_the_capture_and_serving_goes_on() {
    let mut net = Net::open(Faults::none());
    let path = PathBuf::from("/failing.pcap");
    net.a
        .start_capture_into(
            spec(path.clone(), Some(100_000), None),
            Failing { ok_bytes: 2000 },
        )
        .unwrap();
    let (c, s) = net.connect(PORT, 1);
    net.transfer(true, c, s, 50_000);
    let st = wait_ended(&net.a);
    match &st.ended {
        Some(CaptureEnd::WriteError(e)) => {
            assert!(
                e.contains("/failing.pcap") && e.contains("disk full"),
                "{e}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(!st.running);
    net.transfer(true, c, s, 50_000);
    let st = net.a.stop_capture().unwrap();
    assert!(matches!(st.ended, Some(CaptureEnd::WriteError(_))));
    assert!(st.packets > 0 && st.bytes < 2000, "{st}");
}

#[test]
fn tcpdump_reads_the_capture() {
    let dir = TempDir::new("tcpdump");
    let path = dir.file("flow.pcap");
    let mut net = Net::open(Faults::none());
    net.a
        .start_capture(spec(path.clone(), Some(1000), None))
        .unwrap();
    let (c, s) = net.connect(PORT, 1);
    net.transfer(true, c, s, 10_000);
    net.settle();
    let st = net.a.stop_capture().unwrap();
    let out = match std::process::Command::new("tcpdump")
        .arg("-nr")
        .arg(&path)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            crate::sys::privileged::skip("tcpdump not installed");
            return;
        }
        Err(e) => panic!("cannot run tcpdump: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tcpdump -nr failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(lines.len() as u64, st.packets, "{stdout}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("IP 10.0.0.1.") && l.contains("> 10.0.0.2.7000: Flags [S]")),
        "the SYN: {stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("IP 10.0.0.2.7000 > 10.0.0.1.") && l.contains("Flags [S.]")),
        "the SYN-ACK: {stdout}"
    );
}

#[test]
fn a_dropped_stack_closes_its_capture_file() {
    let dir = TempDir::new("drop");
    let path = dir.file("drop.pcap");
    let mut net = Net::open(Faults::none());
    net.a
        .start_capture(spec(path.clone(), Some(1000), None))
        .unwrap();
    let (c, s) = net.connect(PORT, 1);
    net.transfer(true, c, s, 10_000);
    net.settle();
    let frames = net.a.stats().tx_frames + net.a.link_stats().rx_packets;
    drop(net);
    // The writer finishes in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if whole_records(&std::fs::read(&path).unwrap()) == Some(frames) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "file never completed");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A writer that blocks on its first write until the test opens the gate.
struct Gate {
    open: std::sync::mpsc::Receiver<()>,
    opened: bool,
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.opened {
            let _ = self.open.recv();
            self.opened = true;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_stuck_writer_drops_frames_and_never_stalls_the_stack() {
    let mut net = Net::open(Faults::none());
    let (open, gate) = std::sync::mpsc::channel();
    net.a
        .start_capture_into(
            spec(PathBuf::from("/gate.pcap"), Some(100_000), None),
            Gate {
                open: gate,
                opened: false,
            },
        )
        .unwrap();
    // Far more frames than the ring holds, while the writer is stuck on its first record.
    let (c, s) = net.connect(PORT, 1);
    net.transfer(true, c, s, 4 << 20);
    net.settle();
    let frames = net.a.stats().tx_frames + net.a.link_stats().rx_packets;
    assert!(frames > 2 * CAPTURE_RING_SLOTS as u64, "{frames} frames");
    let st = net.a.capture_status().unwrap();
    assert!(st.running && st.packets == 0, "{st}");
    // The ring held its slots' worth (one may be in the stuck writer's hands); every later
    // frame was dropped.
    assert_eq!(st.dropped, frames - CAPTURE_RING_SLOTS as u64, "{st}");
    open.send(()).unwrap();
    let st = net.a.stop_capture().unwrap();
    assert_eq!(st.ended, Some(CaptureEnd::Stopped));
    assert_eq!(st.packets, CAPTURE_RING_SLOTS as u64, "{st}");
    assert_eq!(st.packets + st.dropped, frames);
    assert!(st.to_string().contains("dropped"), "{st}");
}

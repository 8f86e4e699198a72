//! memif control messages into a real `MemifDevice`, in either role, over its control socket.
//!
//! The harness is the device's peer: a memif *client* when the device is the server, a memif
//! *server* when the device is the client. It speaks through a real unix `SOCK_SEQPACKET`
//! socket (an abstract name per process), so the device's whole control path runs: `recvmsg`
//! with descriptors, message parsing ([`ustack::dev::memif::proto`]), the handshake state
//! machines ([`ustack::dev::memif::control`]), mapping the regions the peer sends, and teardown.
//! Descriptors are real: memory files the harness makes (with the memif ring cookie written
//! where it says), eventfds, `/dev/null`, or a copy of the harness's own socket.
//!
//! Beside the device runs a *model*: the protocol rules written down again from the message
//! table in `proto.rs` and DPDK 22.11's memif documentation, not from the device's code. Every
//! message the harness sends is judged by the model first, and what the device answers must
//! match: ACK (or CONNECTED) exactly when the model accepts; DISCONNECT and a closed socket when
//! it rejects; a closed socket and nothing else for a peer's DISCONNECT or an empty message.
//!
//! # Input format
//!
//! First byte: bit 0 picks the device's role (0 server, 1 client). Then steps, until the input
//! runs out (at most 64). Each starts with an op byte, `op % 16`; integers are little-endian; a
//! field cut short by the end of the input reads as zeros.
//!
//! | op | body | sends or does |
//! |---|---|---|
//! | 0 | `len:u8`, `len` bytes, FD | a message of exactly those bytes (any length) |
//! | 1 | `version:u16`, `id:u32`, `mode:u8`, `n:u8`, `n % 25` secret bytes, FD | INIT |
//! | 2 | `index:u16`, `size:u32`, FD | ADD_REGION |
//! | 3 | `flags:u16`, `index:u16`, `region:u16`, `offset:u32`, `log2:u8`, `hdr:u16`, FD | ADD_RING |
//! | 4 | FD | CONNECT |
//! | 5 | FD | DISCONNECT |
//! | 6 | FD | ACK |
//! | 7 | `min:u16`, `max:u16`, `region:u16`, `s2c:u16`, `c2s:u16`, `log2:u8`, FD | HELLO |
//! | 8 | FD | CONNECTED |
//! | 9 | `ms:u16` | lets `ms` milliseconds pass (the handshake times out after 5 s) |
//! | 10 | `region:u8`, `at:u16`, `n:u8`, `n` bytes | writes into shared region `region` (the peer scribbling on rings and descriptors) |
//! | 11 | `n:u8` | the device sends `n % 16` frames |
//! | 12 | — | the device is a server: another client connects (turned away while one is connected, else the new connection) |
//! | 13, 14, 15 | — | the next message of a correct handshake (INIT, regions, rings, CONNECT as a client; HELLO, ACKs, CONNECTED as a server) |
//!
//! FD (`kind % 5`): 0 none; 1 `pages:u8`, `log2:u8`, `rings:u8`: a memory file of `pages % 64`
//! 4 KiB pages with the ring cookie at `i * ring_len(log2 % 15)` for `i < rings % 9`; 2 an
//! eventfd; 3 `/dev/null`; 4 a copy of the harness's socket.
//!
//! The device's configuration: interface id 7, secret `s3cret`, 2 queues, ring size 2^4 (client),
//! at most 4 regions of at most 1 MiB (server), handshake timeout 5 s.
//!
//! # Checks
//!
//! No panic; every message the device sends is 128 bytes and parses; its answers agree with the
//! model (so no out-of-order message is ever acknowledged: CONNECT before rings, rings before
//! regions, anything before INIT or HELLO...); once connected, the rings and regions in use are
//! those announced and within the configured bounds; counters never go down; every frame the
//! device receives fits the MTU; a DISCONNECT after the peer wrote shared memory gives the
//! reason "Corrupt ring index"; and when the iteration ends, every descriptor is closed (the
//! process has as many open as before).
//!
//! `USTACK_FUZZ_WRITE_SEEDS=DIR` writes the seed inputs (`fuzz/seeds/memif_control/`) into DIR
//! and exits; `USTACK_FUZZ_TRACE=1` prints every exchange.
#![no_main]

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ustack::dev::memif::ring::ring_len;
use ustack::dev::memif::{MemifConfig, MemifDevice, MemifRole, MemifState, MemifStats};
use ustack::mem::PageSize;
use ustack::host::unix_ipc::{self as sys, SeqPacket, SeqPacketListener, UnixAddr};
use ustack::{Batch, Frame, Instant, PacketDevice, PoolBuf};

mod input;
use input::Input;

const MSG_LEN: usize = 128;
const VERSION: u16 = 0x0200;
const COOKIE: u32 = 0x03E3_1F20;
const ID: u32 = 7;
const SECRET: &[u8] = b"s3cret";
const QUEUES: usize = 2;
const LOG2: u8 = 4;
const REGIONS_MAX: usize = 4;
const REGION_LEN_MAX: u64 = 1 << 20;
const HANDSHAKE: Duration = Duration::from_secs(5);
const MASK_INT: u16 = 1;
const STEPS_MAX: usize = 64;

mod ty {
    pub const ACK: u16 = 1;
    pub const HELLO: u16 = 2;
    pub const INIT: u16 = 3;
    pub const ADD_REGION: u16 = 4;
    pub const ADD_RING: u16 = 5;
    pub const CONNECT: u16 = 6;
    pub const CONNECTED: u16 = 7;
    pub const DISCONNECT: u16 = 8;
}


fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A 128-byte message of type `t` with `fields` written from byte 2.
fn msg(t: u16, fields: &[(usize, &[u8])]) -> Vec<u8> {
    let mut b = vec![0u8; MSG_LEN];
    b[..2].copy_from_slice(&t.to_le_bytes());
    for (at, v) in fields {
        b[*at..*at + v.len()].copy_from_slice(v);
    }
    b
}

fn reason_of(b: &[u8]) -> String {
    let r = &b[6..102];
    let end = r.iter().position(|&c| c == 0).unwrap_or(r.len());
    String::from_utf8_lossy(&r[..end]).into_owned()
}

/// A descriptor to send, and what the model knows of it.
enum Fd {
    None,
    /// A memory file: its length, and a handle to read and write it.
    Mem(OwnedFd, u64, File),
    Other(OwnedFd),
}

impl Fd {
    fn owned(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self {
            Fd::None => None,
            Fd::Mem(fd, ..) | Fd::Other(fd) => Some(fd.as_fd()),
        }
    }
}

/// A memory file of `len` bytes with the ring cookie at `i * ring_len(log2)` for `i < rings`.
fn memfd(len: u64, log2: u8, rings: usize) -> Fd {
    let fd = sys::memfd_create("ustack-fuzz-region", None).expect("memfd");
    let file = File::from(fd.try_clone().expect("dup"));
    file.set_len(len).expect("set_len");
    let stride = ring_len(log2) as u64;
    for i in 0..rings as u64 {
        let at = i * stride;
        if at + 4 <= len {
            file.write_at(&COOKIE.to_le_bytes(), at)
                .expect("write cookie");
        }
    }
    Fd::Mem(fd, len, file)
}

fn read_fd(input: &mut Input<'_>, sock: &SeqPacket) -> Fd {
    match input.u8() % 5 {
        0 => Fd::None,
        1 => {
            let pages = u64::from(input.u8() % 64);
            let log2 = input.u8() % 15;
            let rings = usize::from(input.u8() % 9);
            memfd(pages * 4096, log2, rings)
        }
        2 => Fd::Other(sys::eventfd().expect("eventfd")),
        3 => Fd::Other(File::open("/dev/null").expect("/dev/null").into()),
        _ => Fd::Other(
            sock.as_fd()
                .try_clone_to_owned()
                .expect("dup of the socket"),
        ),
    }
}

/// What the model says the device must do with a message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Expect {
    /// Answer ACK.
    Ack,
    /// Answer CONNECTED (server) / the link comes up (client).
    Connected,
    /// Send this many messages (the client's next handshake message).
    Next,
    /// Answer DISCONNECT and close the connection.
    Reject,
    /// Close the connection without a word.
    Hangup,
    /// Nothing.
    Nothing,
}

/// One message the device sent, or the end of the connection.
#[derive(Debug)]
enum Got {
    Msg(Vec<u8>, Option<OwnedFd>),
    Eof,
}

/// Everything the device sent on `sock` by now.
fn collect(sock: &SeqPacket) -> Vec<Got> {
    let mut out = Vec::new();
    loop {
        let mut buf = [0u8; 256];
        match sock.recv(&mut buf) {
            Ok(r) if r.len == 0 => {
                out.push(Got::Eof);
                return out;
            }
            Ok(r) => {
                assert!(
                    r.len == MSG_LEN && !r.truncated && r.extra_fds == 0,
                    "the device sent a message of {} bytes (truncated {}, {} extra fds)",
                    r.len,
                    r.truncated,
                    r.extra_fds
                );
                let t = u16_at(&buf, 0);
                assert!(
                    (ty::ACK..=ty::DISCONNECT).contains(&t),
                    "the device sent a message of unknown type {t}"
                );
                out.push(Got::Msg(buf[..MSG_LEN].to_vec(), r.fd));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return out,
            Err(e) if e.raw_os_error() == Some(104) => {
                // ECONNRESET: the device closed with our message unread.
                out.push(Got::Eof);
                return out;
            }
            Err(e) => panic!("recv on the control socket: {e}"),
        }
    }
}

fn kinds(got: &[Got]) -> Vec<String> {
    got.iter()
        .map(|g| match g {
            Got::Msg(b, fd) => {
                let t = u16_at(b, 0);
                let extra = if t == ty::DISCONNECT {
                    format!(" {:?}", reason_of(b))
                } else {
                    String::new()
                };
                format!("type {t}{extra}{}", if fd.is_some() { " +fd" } else { "" })
            }
            Got::Eof => "EOF".into(),
        })
        .collect()
}

/// When the handshake's time ran out during the last pump, the device answers the message
/// first and then ends the handshake: takes that ending (DISCONNECT "Handshake timeout", EOF)
/// off the end of `got`, and says whether it was there. A handshake that was still running
/// must end so; one the model already ended (reject, hang-up) is left alone.
fn timed_out(got: &mut Vec<Got>, expired: bool, expect: Expect) -> bool {
    if !expired || matches!(expect, Expect::Reject | Expect::Hangup | Expect::Connected) {
        return false;
    }
    let n = got.len();
    let tail_ok = n >= 2
        && matches!(got[n - 1], Got::Eof)
        && matches!(&got[n - 2], Got::Msg(b, None)
            if u16_at(b, 0) == ty::DISCONNECT && reason_of(b) == "Handshake timeout");
    assert!(
        tail_ok,
        "the handshake's time ran out and the device did not end it: got {:?}",
        kinds(got)
    );
    got.truncate(n - 2);
    true
}

fn counters(s: &MemifStats) -> [u64; 20] {
    let MemifStats {
        link,
        rejected_desc,
        bad_ring_index,
        connects,
        reconnects,
        disconnects,
        handshake_failures,
        connect_attempts,
        connections_refused,
        tx_in_place,
        tx_copied_bytes,
        tx_chains,
        rx_chains,
    } = *s;
    [
        link.rx_packets,
        link.rx_bytes,
        link.rx_dropped,
        link.rx_errors,
        link.tx_packets,
        link.tx_bytes,
        link.tx_dropped,
        link.tx_errors,
        rejected_desc,
        bad_ring_index,
        connects,
        reconnects,
        disconnects,
        handshake_failures,
        connect_attempts,
        connections_refused,
        tx_in_place,
        tx_copied_bytes,
        tx_chains,
        rx_chains,
    ]
}

/// `USTACK_FUZZ_TRACE=1`: print every exchange.
fn trace() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("USTACK_FUZZ_TRACE").is_some())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The device and the clock, with the checks common to both roles.
struct Dev {
    dev: MemifDevice,
    now: Instant,
    batch: Batch<PoolBuf>,
    prev: [u64; 20],
}

impl Dev {
    fn open(role: MemifRole, name: &str) -> Dev {
        let mut cfg = MemifConfig::new(name, role);
        cfg.socket_abstract = true;
        cfg.interface_id = ID;
        cfg.secret = Some(String::from_utf8(SECRET.to_vec()).unwrap());
        cfg.queues = QUEUES;
        cfg.ring_size_log2 = LOG2;
        cfg.pool_frames = Some(64);
        cfg.page_size = PageSize::Base4K;
        cfg.regions_max = REGIONS_MAX;
        cfg.region_len_max = REGION_LEN_MAX;
        cfg.handshake_timeout = HANDSHAKE;
        cfg.reconnect_backoff_min = Duration::from_millis(10);
        cfg.reconnect_backoff_max = Duration::from_millis(40);
        cfg.name = "ustack-fuzz".into();
        Dev {
            dev: MemifDevice::open(&cfg).expect("open the memif device"),
            now: Instant::from_millis(1),
            batch: Batch::with_capacity(64),
            prev: [0; 20],
        }
    }

    /// Lets 1 ms pass and runs the device (control plane, then receive).
    fn pump(&mut self) {
        self.now += Duration::from_millis(1);
        self.dev.rx_burst(self.now, &mut self.batch);
        while let Some(f) = self.batch.pop() {
            assert!(
                (14..=1514).contains(&f.data().len()),
                "the device received a frame of {} bytes",
                f.data().len()
            );
        }
        let c = counters(&self.dev.memif_stats());
        for (i, (a, b)) in self.prev.iter().zip(&c).enumerate() {
            assert!(b >= a, "memif counter {i} went down: {a} -> {b}");
        }
        self.prev = c;
        let mapped = self.dev.mapped_regions();
        assert!(mapped <= REGIONS_MAX, "{mapped} regions mapped");
        if let Some((rx, tx)) = self.dev.queues() {
            assert!((1..=QUEUES).contains(&rx) && (1..=QUEUES).contains(&tx));
        }
    }

    /// The device sends `n` frames.
    fn send_frames(&mut self, n: usize) {
        let mut out = Batch::with_capacity(16);
        for i in 0..n {
            let Some(mut f) = self.dev.tx_alloc() else {
                break;
            };
            let len = 60 + (i * 97) % 1400;
            assert!(f.set_len(len));
            f.data_mut()[..12].fill(0xee);
            f.data_mut()[12..14].copy_from_slice(&[0x08, 0x00]);
            let _ = out.push(f);
        }
        while !out.is_empty() {
            if self.dev.tx_burst(self.now, &mut out) == 0 {
                break;
            }
        }
        self.pump();
    }
}

/// The device as a server, the harness as its client.
struct AsClient {
    d: Dev,
    addr: UnixAddr,
    sock: Option<SeqPacket>,
    phase: SPhase,
    /// Regions accepted: claimed size and, for memory files, the harness's handle.
    regions: Vec<(u64, Option<File>)>,
    /// Rings accepted, per direction (0 C2S, 1 S2C): (region, offset, log2).
    rings: [Vec<Option<(usize, u64, u8)>>; 2],
    deadline: Instant,
    /// The harness wrote shared memory: the device may end the link for a corrupt ring.
    scribbled: bool,
    good: usize,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum SPhase {
    Gone,
    AwaitInit,
    Init,
    Up,
}

impl AsClient {
    fn new(name: &str) -> AsClient {
        let d = Dev::open(MemifRole::Server, name);
        let mut c = AsClient {
            d,
            addr: UnixAddr::Abstract(name.as_bytes().to_vec()),
            sock: None,
            phase: SPhase::Gone,
            regions: Vec::new(),
            rings: [vec![None; QUEUES], vec![None; QUEUES]],
            deadline: Instant::ZERO,
            scribbled: false,
            good: 0,
        };
        c.connect();
        c
    }

    /// Connects and takes the HELLO.
    fn connect(&mut self) {
        let sock = SeqPacket::connect(&self.addr).expect("connect to the device");
        self.d.pump();
        let got = collect(&sock);
        match &got[..] {
            [Got::Msg(b, None)] if u16_at(b, 0) == ty::HELLO => {
                assert_eq!(u16_at(b, 34), VERSION, "HELLO min version");
                assert_eq!(u16_at(b, 36), VERSION, "HELLO max version");
                assert_eq!(
                    usize::from(u16_at(b, 38)),
                    REGIONS_MAX - 1,
                    "HELLO max region"
                );
                assert_eq!(usize::from(u16_at(b, 40)), QUEUES - 1, "HELLO max S2C ring");
                assert_eq!(usize::from(u16_at(b, 42)), QUEUES - 1, "HELLO max C2S ring");
                assert!((1..=14).contains(&b[44]), "HELLO max ring size");
            }
            other => panic!("expected HELLO on connecting, got {:?}", kinds(other)),
        }
        assert_eq!(self.d.dev.state(), MemifState::Handshake);
        self.deadline = self.d.now + HANDSHAKE;
        self.sock = Some(sock);
        self.phase = SPhase::AwaitInit;
        self.regions.clear();
        self.rings = [vec![None; QUEUES], vec![None; QUEUES]];
        self.good = 0;
    }

    /// The model: what the device must do with message `b` carrying `fd`.
    fn judge(&mut self, b: &[u8], fd: &Fd) -> Expect {
        if b.is_empty() {
            return Expect::Hangup;
        }
        if b.len() != MSG_LEN {
            return Expect::Reject;
        }
        match (u16_at(b, 0), self.phase) {
            (ty::DISCONNECT, _) => Expect::Hangup,
            (ty::ACK, SPhase::Up) => Expect::Nothing,
            (ty::INIT, SPhase::AwaitInit) => {
                let secret = &b[9..33];
                let end = secret.iter().position(|&c| c == 0).unwrap_or(secret.len());
                let ok = u16_at(b, 2) == VERSION
                    && u32_at(b, 4) == ID
                    && b[8] == 0
                    && &secret[..end] == SECRET;
                if ok {
                    self.phase = SPhase::Init;
                    Expect::Ack
                } else {
                    Expect::Reject
                }
            }
            (ty::ADD_REGION, SPhase::Init) => {
                let (index, size) = (usize::from(u16_at(b, 2)), u64_at(b, 4));
                let Fd::Mem(_, len, file) = fd else {
                    return Expect::Reject;
                };
                let ok = index == self.regions.len()
                    && index < REGIONS_MAX
                    && size > 0
                    && size <= REGION_LEN_MAX
                    && *len >= size;
                if ok {
                    self.regions
                        .push((size, Some(file.try_clone().expect("dup"))));
                    Expect::Ack
                } else {
                    Expect::Reject
                }
            }
            (ty::ADD_RING, SPhase::Init) => {
                let dir = usize::from(u16_at(b, 2) & 1 == 0);
                let index = usize::from(u16_at(b, 4));
                let region = usize::from(u16_at(b, 6));
                let offset = u64::from(u32_at(b, 8));
                let log2 = b[12];
                let ok = !matches!(fd, Fd::None)
                    && u16_at(b, 13) == 0
                    && (1..=14).contains(&log2)
                    && index < QUEUES
                    && self.rings[dir][index].is_none()
                    && region < self.regions.len()
                    // Rings hold 16- and 32-bit atomics: ustack takes 4-byte aligned offsets.
                    && offset % 4 == 0
                    && offset + ring_len(log2) as u64 <= self.regions[region].0;
                if ok {
                    self.rings[dir][index] = Some((region, offset, log2));
                    Expect::Ack
                } else {
                    Expect::Reject
                }
            }
            (ty::CONNECT, SPhase::Init) => {
                for list in &self.rings {
                    let n = list.iter().take_while(|r| r.is_some()).count();
                    if n == 0 || list[n..].iter().any(Option::is_some) {
                        return Expect::Reject;
                    }
                    for (region, offset, _) in list.iter().flatten() {
                        let mut c = [0u8; 4];
                        let ok = match &self.regions[*region].1 {
                            Some(f) => f.read_exact_at(&mut c, *offset).is_ok(),
                            None => false,
                        };
                        if !ok || u32::from_le_bytes(c) != COOKIE {
                            return Expect::Reject;
                        }
                    }
                }
                self.phase = SPhase::Up;
                Expect::Connected
            }
            _ => Expect::Reject,
        }
    }

    /// Sends a message and checks the device's answer against the model.
    fn send(&mut self, b: &[u8], fd: Fd) {
        if self.sock.is_none() {
            return;
        }
        let expect = self.judge(b, &fd);
        let sock = self.sock.as_ref().unwrap();
        match sock.send(b, fd.owned()) {
            Ok(_) => {}
            // The device closed the connection (it may have timed out meanwhile).
            Err(e) if e.raw_os_error() == Some(32) || e.raw_os_error() == Some(104) => {
                self.check(Expect::Hangup);
                return;
            }
            Err(e) => panic!("send on the control socket: {e}"),
        }
        drop(fd);
        self.d.pump();
        self.check(expect);
    }

    /// Checks what the device sent since the last look against `expect`.
    fn check(&mut self, expect: Expect) {
        let Some(sock) = &self.sock else { return };
        let mut got = collect(sock);
        let handshaking = matches!(self.phase, SPhase::AwaitInit | SPhase::Init);
        let expired = timed_out(&mut got, handshaking && self.d.now >= self.deadline, expect);
        let corrupt = |b: &[u8]| reason_of(b) == "Corrupt ring index";
        let ok = match (expect, &got[..]) {
            (Expect::Ack, [Got::Msg(b, None)]) => u16_at(b, 0) == ty::ACK,
            (Expect::Connected, [Got::Msg(b, None)]) => u16_at(b, 0) == ty::CONNECTED,
            (Expect::Reject, [Got::Msg(b, None), Got::Eof]) => u16_at(b, 0) == ty::DISCONNECT,
            (Expect::Hangup, [Got::Eof]) => true,
            (Expect::Nothing, []) => true,
            // Once the peer wrote shared memory, the link may fall for a corrupt ring.
            (_, [Got::Msg(b, None), Got::Eof])
                if self.scribbled && self.phase == SPhase::Up && corrupt(b) =>
            {
                true
            }
            _ => false,
        };
        assert!(
            ok,
            "device as server, phase {:?}: expected {expect:?}, got {:?}",
            self.phase,
            kinds(&got)
        );
        if trace() {
            eprintln!(
                "device as server, phase {:?}: expected {expect:?}, got {:?}",
                self.phase,
                kinds(&got)
            );
        }
        let ended = expired || matches!(got.last(), Some(Got::Eof));
        if ended {
            self.sock = None;
            self.phase = SPhase::Gone;
            assert_eq!(
                self.d.dev.state(),
                MemifState::Idle,
                "the device kept a dead connection"
            );
            assert_eq!(
                self.d.dev.mapped_regions(),
                0,
                "regions stay mapped after teardown"
            );
        } else if expect == Expect::Connected {
            assert_eq!(self.d.dev.state(), MemifState::Up);
            let n = |l: &[Option<(usize, u64, u8)>]| l.iter().flatten().count();
            assert_eq!(
                self.d.dev.queues(),
                Some((n(&self.rings[0]), n(&self.rings[1]))),
                "the rings in use are the rings announced"
            );
            assert_eq!(self.d.dev.mapped_regions(), self.regions.len());
            // The server starts from empty rings and polls C2S.
            for (dir, list) in self.rings.iter().enumerate() {
                for (region, offset, _) in list.iter().flatten() {
                    let f = self.regions[*region].1.as_ref().unwrap();
                    let mut h = [0u8; 66];
                    f.read_exact_at(&mut h, *offset).unwrap();
                    assert_eq!((u16_at(&h, 6), u16_at(&h, 64)), (0, 0), "head, tail reset");
                    if dir == 0 {
                        assert_eq!(u16_at(&h, 4) & MASK_INT, MASK_INT, "C2S polled");
                    }
                }
            }
        } else if self.phase == SPhase::Up {
            assert_eq!(
                self.d.dev.state(),
                MemifState::Up,
                "the link fell without a word"
            );
        }
    }

    /// The next message of a correct handshake.
    fn good(&mut self) {
        if self.sock.is_none() {
            return;
        }
        let ring = |dir: u16, index: u16, offset: u32| {
            let mut f = vec![];
            f.extend_from_slice(&dir.to_le_bytes());
            f.extend_from_slice(&index.to_le_bytes());
            f.extend_from_slice(&0u16.to_le_bytes());
            f.extend_from_slice(&offset.to_le_bytes());
            f.push(LOG2);
            msg(ty::ADD_RING, &[(2, &f)])
        };
        let rl = ring_len(LOG2) as u32;
        let (m, fd) = match self.good {
            0 => {
                let mut secret = [0u8; 24];
                secret[..SECRET.len()].copy_from_slice(SECRET);
                (
                    msg(
                        ty::INIT,
                        &[
                            (2, &VERSION.to_le_bytes()),
                            (4, &ID.to_le_bytes()),
                            (9, &secret),
                            (33, b"fuzz-client"),
                        ],
                    ),
                    Fd::None,
                )
            }
            1 => (
                msg(
                    ty::ADD_REGION,
                    &[(2, &0u16.to_le_bytes()), (4, &4096u64.to_le_bytes())],
                ),
                memfd(4096, LOG2, 2 * QUEUES),
            ),
            2 => (
                msg(
                    ty::ADD_REGION,
                    &[(2, &1u16.to_le_bytes()), (4, &65536u64.to_le_bytes())],
                ),
                memfd(65536, LOG2, 0),
            ),
            3 => (ring(1, 0, 0), Fd::Other(sys::eventfd().unwrap())),
            4 => (ring(1, 1, rl), Fd::Other(sys::eventfd().unwrap())),
            5 => (ring(0, 0, 2 * rl), Fd::Other(sys::eventfd().unwrap())),
            6 => (ring(0, 1, 3 * rl), Fd::Other(sys::eventfd().unwrap())),
            7 => (msg(ty::CONNECT, &[(2, b"fuzz0")]), Fd::None),
            _ => (msg(ty::ACK, &[]), Fd::None),
        };
        self.good += 1;
        self.send(&m, fd);
    }

    fn time(&mut self, ms: u16) {
        self.d.now += Duration::from_millis(u64::from(ms));
        self.d.pump();
        self.check(Expect::Nothing);
    }

    /// Another client: the new connection if none is up, else turned away.
    fn knock(&mut self) {
        if self.sock.is_none() {
            self.connect();
            return;
        }
        let refused_before = self.d.dev.memif_stats().connections_refused;
        let other = SeqPacket::connect(&self.addr).expect("second connect");
        self.d.pump();
        let got = collect(&other);
        assert!(
            matches!(&got[..], [Got::Msg(b, None), ..] if u16_at(b, 0) == ty::DISCONNECT
                && reason_of(b) == "Already connected"),
            "a second client got {:?}",
            kinds(&got)
        );
        assert_eq!(
            self.d.dev.memif_stats().connections_refused,
            refused_before + 1
        );
        self.check(Expect::Nothing);
    }

    fn scribble(&mut self, region: u8, at: u16, bytes: &[u8]) {
        let n = self.regions.len();
        if n == 0 {
            return;
        }
        let (size, file) = &self.regions[usize::from(region) % n];
        if let Some(f) = file {
            let at = u64::from(at) % size;
            let len = bytes.len().min((size - at) as usize);
            f.write_all_at(&bytes[..len], at).unwrap();
            self.scribbled = true;
        }
        self.d.pump();
        self.check(Expect::Nothing);
    }
}

/// The device as a client, the harness as its server.
struct AsServer {
    d: Dev,
    listener: SeqPacketListener,
    sock: Option<SeqPacket>,
    phase: CPhase,
    deadline: Instant,
    /// Negotiated from the last HELLO: ring size, C2S and S2C rings.
    log2: u8,
    want: (usize, usize),
    /// What the device announced so far: regions (size, file), rings per direction.
    regions: Vec<(u64, File)>,
    rings: [usize; 2],
    init_seen: bool,
    scribbled: bool,
    good: usize,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum CPhase {
    Gone,
    AwaitHello,
    Sending,
    ConnectSent,
    Up,
}

impl AsServer {
    fn new(name: &str) -> AsServer {
        let addr = UnixAddr::Abstract(name.as_bytes().to_vec());
        let listener = SeqPacketListener::bind(&addr, 4).expect("bind the harness's socket");
        let d = Dev::open(MemifRole::Client, name);
        let mut s = AsServer {
            d,
            listener,
            sock: None,
            phase: CPhase::Gone,
            deadline: Instant::ZERO,
            log2: 0,
            want: (0, 0),
            regions: Vec::new(),
            rings: [0, 0],
            init_seen: false,
            scribbled: false,
            good: 0,
        };
        s.d.pump();
        s.accept();
        assert!(s.sock.is_some(), "the device connects at once");
        s
    }

    /// Runs the device, and takes the connection it made, if it made one (at once, as a server
    /// does: a connection left waiting would time out in the listener's queue).
    fn pump(&mut self) {
        self.d.pump();
        self.accept();
    }

    /// Takes the device's connection if it made one.
    fn accept(&mut self) {
        if self.sock.is_some() {
            return;
        }
        if let Some(sock) = self.listener.accept().expect("accept") {
            assert_eq!(self.d.dev.state(), MemifState::Handshake);
            self.sock = Some(sock);
            self.phase = CPhase::AwaitHello;
            self.deadline = self.d.now + HANDSHAKE;
            self.regions.clear();
            self.rings = [0, 0];
            self.init_seen = false;
            self.good = 0;
        }
    }

    fn judge(&mut self, b: &[u8]) -> Expect {
        if b.is_empty() {
            return Expect::Hangup;
        }
        if b.len() != MSG_LEN {
            return Expect::Reject;
        }
        match (u16_at(b, 0), self.phase) {
            (ty::DISCONNECT, _) => Expect::Hangup,
            (ty::HELLO, CPhase::AwaitHello) => {
                let (min, max) = (u16_at(b, 34), u16_at(b, 36));
                let log2 = b[44].min(LOG2);
                if min > VERSION || max < VERSION || u16_at(b, 38) < 1 || log2 == 0 {
                    return Expect::Reject;
                }
                self.log2 = log2;
                let n = |v: u16| (usize::from(v) + 1).min(QUEUES);
                self.want = (n(u16_at(b, 42)), n(u16_at(b, 40)));
                self.phase = CPhase::Sending;
                Expect::Next
            }
            (ty::ACK, CPhase::Sending) => Expect::Next,
            (ty::ACK, CPhase::Up) => Expect::Nothing,
            (ty::CONNECTED, CPhase::ConnectSent) => {
                self.phase = CPhase::Up;
                Expect::Connected
            }
            _ => Expect::Reject,
        }
    }

    fn send(&mut self, b: &[u8], fd: Fd) {
        if self.sock.is_none() {
            self.pump();
            return;
        }
        let expect = self.judge(b);
        let sock = self.sock.as_ref().unwrap();
        match sock.send(b, fd.owned()) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(32) || e.raw_os_error() == Some(104) => {
                self.check(Expect::Hangup);
                return;
            }
            Err(e) => panic!("send on the control socket: {e}"),
        }
        drop(fd);
        self.pump();
        self.check(expect);
    }

    /// Checks one message of the client's handshake against the protocol.
    fn check_announcement(&mut self, b: &[u8], fd: Option<OwnedFd>) {
        match u16_at(b, 0) {
            ty::INIT if !self.init_seen => {
                assert_eq!(u16_at(b, 2), VERSION, "INIT version");
                assert_eq!(u32_at(b, 4), ID, "INIT id");
                assert_eq!(b[8], 0, "INIT mode");
                assert_eq!(&b[9..9 + SECRET.len()], SECRET, "INIT secret");
                assert!(fd.is_none(), "INIT with a descriptor");
                self.init_seen = true;
            }
            ty::ADD_REGION => {
                assert!(self.init_seen, "ADD_REGION before INIT");
                assert_eq!(self.rings, [0, 0], "ADD_REGION after a ring");
                let (index, size) = (usize::from(u16_at(b, 2)), u64_at(b, 4));
                assert_eq!(index, self.regions.len(), "regions announced in order");
                assert!(index < 2, "ustack announces two regions");
                let fd = fd.expect("ADD_REGION without its memory file");
                let (len, _) = sys::file_size(fd.as_fd()).unwrap();
                assert!(
                    size > 0 && len >= size,
                    "region {index}: {size} bytes claimed, file of {len}"
                );
                self.regions.push((size, File::from(fd)));
            }
            ty::ADD_RING => {
                assert_eq!(self.regions.len(), 2, "ADD_RING before both regions");
                let dir = usize::from(u16_at(b, 2) & 1 == 0);
                let (index, region, offset, log2) = (
                    usize::from(u16_at(b, 4)),
                    usize::from(u16_at(b, 6)),
                    u64::from(u32_at(b, 8)),
                    b[12],
                );
                assert!(dir == 1 || self.rings[1] == 0, "C2S rings come first");
                assert_eq!(index, self.rings[dir], "ring indexes in order");
                let limit = if dir == 0 { self.want.0 } else { self.want.1 };
                assert!(index < limit, "more rings than the server takes");
                assert_eq!(log2, self.log2, "ring size as negotiated");
                assert_eq!(u16_at(b, 13), 0, "private header");
                assert!(fd.is_some(), "ADD_RING without its eventfd");
                let (size, file) = &self.regions[region];
                assert!(offset % 4 == 0 && offset + ring_len(log2) as u64 <= *size);
                let mut c = [0u8; 4];
                file.read_exact_at(&mut c, offset).unwrap();
                if !self.scribbled {
                    assert_eq!(u32::from_le_bytes(c), COOKIE, "ring without its cookie");
                }
                self.rings[dir] += 1;
            }
            ty::CONNECT => {
                assert_eq!(
                    (self.rings[0], self.rings[1]),
                    self.want,
                    "CONNECT with rings missing"
                );
                assert!(fd.is_none());
                self.phase = CPhase::ConnectSent;
            }
            other => panic!("the client sent message type {other} during its handshake"),
        }
    }

    fn check(&mut self, expect: Expect) {
        let Some(sock) = &self.sock else { return };
        let mut got = collect(sock);
        // Still in the handshake once the model took the message (CONNECTED moved it to Up).
        let handshaking = matches!(
            self.phase,
            CPhase::AwaitHello | CPhase::Sending | CPhase::ConnectSent
        );
        let expired = timed_out(&mut got, handshaking && self.d.now >= self.deadline, expect);
        let corrupt = |b: &[u8]| reason_of(b) == "Corrupt ring index";
        let ok = match (expect, &got[..]) {
            (Expect::Next, [Got::Msg(..)]) => true,
            (Expect::Connected, []) => true,
            (Expect::Reject, [Got::Msg(b, None), Got::Eof]) => u16_at(b, 0) == ty::DISCONNECT,
            (Expect::Hangup, [Got::Eof]) => true,
            (Expect::Nothing, []) => true,
            (_, [Got::Msg(b, None), Got::Eof])
                if self.scribbled && self.phase == CPhase::Up && corrupt(b) =>
            {
                true
            }
            _ => false,
        };
        assert!(
            ok,
            "device as client, phase {:?}: expected {expect:?}, got {:?}",
            self.phase,
            kinds(&got)
        );
        if trace() {
            eprintln!(
                "device as client, phase {:?}: expected {expect:?}, got {:?}",
                self.phase,
                kinds(&got)
            );
        }
        let mut got = got;
        if expect == Expect::Next && got.len() == 1 {
            if let Some(Got::Msg(b, fd)) = got.pop() {
                self.check_announcement(&b, fd);
            }
        }
        if expired || matches!(got.last(), Some(Got::Eof)) {
            self.sock = None;
            self.phase = CPhase::Gone;
            self.init_seen = false;
            assert_ne!(
                self.d.dev.state(),
                MemifState::Up,
                "the device kept a dead link"
            );
            assert_eq!(
                self.d.dev.lent_buffers(),
                0,
                "buffers still lent after teardown"
            );
        } else if expect == Expect::Connected {
            assert_eq!(self.d.dev.state(), MemifState::Up);
            assert_eq!(
                self.d.dev.queues(),
                Some((self.want.1, self.want.0)),
                "the client uses the rings it announced (rx S2C, tx C2S)"
            );
            assert_eq!(self.d.dev.mapped_regions(), 2);
        }
    }

    fn good(&mut self) {
        if self.sock.is_none() {
            self.pump();
            return;
        }
        let m = match self.phase {
            CPhase::AwaitHello => msg(
                ty::HELLO,
                &[
                    (2, b"fuzz-server"),
                    (34, &VERSION.to_le_bytes()),
                    (36, &VERSION.to_le_bytes()),
                    (38, &255u16.to_le_bytes()),
                    (40, &255u16.to_le_bytes()),
                    (42, &255u16.to_le_bytes()),
                    (44, &[14]),
                ],
            ),
            CPhase::Sending => msg(ty::ACK, &[]),
            CPhase::ConnectSent => msg(ty::CONNECTED, &[(2, b"fuzz-server0")]),
            _ => msg(ty::ACK, &[]),
        };
        self.send(&m, Fd::None);
    }

    fn time(&mut self, ms: u16) {
        self.d.now += Duration::from_millis(u64::from(ms));
        self.pump();
        self.check(Expect::Nothing);
        self.accept();
    }

    fn scribble(&mut self, region: u8, at: u16, bytes: &[u8]) {
        let n = self.regions.len();
        if n > 0 {
            let (size, f) = &self.regions[usize::from(region) % n];
            let at = u64::from(at) % size;
            let len = bytes.len().min((size - at) as usize);
            f.write_all_at(&bytes[..len], at).unwrap();
            self.scribbled = true;
        }
        self.pump();
        self.check(Expect::Nothing);
    }
}

/// What both harnesses do.
trait Peer {
    fn sock(&self) -> Option<&SeqPacket>;
    fn send(&mut self, b: &[u8], fd: Fd);
    fn good(&mut self);
    fn time(&mut self, ms: u16);
    fn scribble(&mut self, region: u8, at: u16, bytes: &[u8]);
    fn frames(&mut self, n: usize);
    fn knock(&mut self);
}

impl Peer for AsClient {
    fn sock(&self) -> Option<&SeqPacket> {
        self.sock.as_ref()
    }
    fn send(&mut self, b: &[u8], fd: Fd) {
        AsClient::send(self, b, fd)
    }
    fn good(&mut self) {
        AsClient::good(self)
    }
    fn time(&mut self, ms: u16) {
        AsClient::time(self, ms)
    }
    fn scribble(&mut self, region: u8, at: u16, bytes: &[u8]) {
        AsClient::scribble(self, region, at, bytes)
    }
    fn frames(&mut self, n: usize) {
        self.d.send_frames(n);
        self.check(Expect::Nothing);
    }
    fn knock(&mut self) {
        AsClient::knock(self)
    }
}

impl Peer for AsServer {
    fn sock(&self) -> Option<&SeqPacket> {
        self.sock.as_ref()
    }
    fn send(&mut self, b: &[u8], fd: Fd) {
        AsServer::send(self, b, fd)
    }
    fn good(&mut self) {
        AsServer::good(self)
    }
    fn time(&mut self, ms: u16) {
        AsServer::time(self, ms)
    }
    fn scribble(&mut self, region: u8, at: u16, bytes: &[u8]) {
        AsServer::scribble(self, region, at, bytes)
    }
    fn frames(&mut self, n: usize) {
        self.d.send_frames(n);
        self.check(Expect::Nothing);
        self.accept();
    }
    fn knock(&mut self) {
        // Only a server has other clients knocking.
        self.time(1);
    }
}

/// A descriptor from the input (kind 4, the harness's socket, falls back to an eventfd).
fn fd_from(input: &mut Input<'_>, peer: &dyn Peer) -> Fd {
    match peer.sock() {
        Some(sock) => read_fd(input, sock),
        None => {
            let (a, _b) = SeqPacket::pair().expect("socketpair");
            read_fd(input, &a)
        }
    }
}

fn steps(peer: &mut dyn Peer, input: &mut Input<'_>) {
    for _ in 0..STEPS_MAX {
        if input.done() {
            return;
        }
        let op = input.u8() % 16;
        match op {
            0 => {
                let len = usize::from(input.u8());
                let b = input.bytes_padded(len);
                let fd = fd_from(input, peer);
                peer.send(&b, fd);
            }
            1 => {
                let (version, id, mode) = (input.u16(), input.u32(), input.u8());
                let n = usize::from(input.u8() % 25);
                let secret = input.bytes_padded(n);
                let fd = fd_from(input, peer);
                let m = msg(
                    ty::INIT,
                    &[
                        (2, &version.to_le_bytes()),
                        (4, &id.to_le_bytes()),
                        (8, &[mode]),
                        (9, &secret),
                        (33, b"fuzz"),
                    ],
                );
                peer.send(&m, fd);
            }
            2 => {
                let (index, size) = (input.u16(), u64::from(input.u32()));
                let fd = fd_from(input, peer);
                let m = msg(
                    ty::ADD_REGION,
                    &[(2, &index.to_le_bytes()), (4, &size.to_le_bytes())],
                );
                peer.send(&m, fd);
            }
            3 => {
                let (flags, index, region) = (input.u16(), input.u16(), input.u16());
                let (offset, log2, hdr) = (input.u32(), input.u8(), input.u16());
                let fd = fd_from(input, peer);
                let m = msg(
                    ty::ADD_RING,
                    &[
                        (2, &flags.to_le_bytes()),
                        (4, &index.to_le_bytes()),
                        (6, &region.to_le_bytes()),
                        (8, &offset.to_le_bytes()),
                        (12, &[log2]),
                        (13, &hdr.to_le_bytes()),
                    ],
                );
                peer.send(&m, fd);
            }
            4 | 5 | 6 | 8 => {
                let t = match op {
                    4 => ty::CONNECT,
                    5 => ty::DISCONNECT,
                    6 => ty::ACK,
                    _ => ty::CONNECTED,
                };
                let fd = fd_from(input, peer);
                peer.send(&msg(t, &[(2, b"fuzz0")]), fd);
            }
            7 => {
                let (min, max, region) = (input.u16(), input.u16(), input.u16());
                let (s2c, c2s, log2) = (input.u16(), input.u16(), input.u8());
                let fd = fd_from(input, peer);
                let m = msg(
                    ty::HELLO,
                    &[
                        (2, b"fuzz-server"),
                        (34, &min.to_le_bytes()),
                        (36, &max.to_le_bytes()),
                        (38, &region.to_le_bytes()),
                        (40, &s2c.to_le_bytes()),
                        (42, &c2s.to_le_bytes()),
                        (44, &[log2]),
                    ],
                );
                peer.send(&m, fd);
            }
            9 => {
                let ms = input.u16();
                peer.time(ms);
            }
            10 => {
                let (region, at, n) = (input.u8(), input.u16(), usize::from(input.u8()));
                let bytes = input.bytes_padded(n);
                peer.scribble(region, at, &bytes);
            }
            11 => {
                let n = usize::from(input.u8() % 16);
                peer.frames(n);
            }
            12 => peer.knock(),
            _ => peer.good(),
        }
    }
}

fn run(data: &[u8]) {
    let fds_before = open_fds();
    {
        let name = format!("ustack-fuzz-memif-{}", std::process::id());
        let mut input = Input::new(data);
        if input.u8() & 1 == 0 {
            let mut peer = AsClient::new(&name);
            steps(&mut peer, &mut input);
        } else {
            let mut peer = AsServer::new(&name);
            steps(&mut peer, &mut input);
        }
    }
    let fds_after = open_fds();
    assert_eq!(
        fds_after, fds_before,
        "{fds_before} descriptors open before the iteration, {fds_after} after"
    );
}

/// Writes seed inputs into `dir`: a full handshake in each role, and variations.
fn write_seeds(dir: &str) {
    let good = |role: u8, n: usize, tail: &[u8]| {
        let mut v = vec![role];
        v.extend(std::iter::repeat_n(13u8, n));
        v.extend_from_slice(tail);
        v
    };
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        // Device as server: INIT, two regions, four rings, CONNECT, then ACK, frames, a
        // scribble on the first ring's head, and a DISCONNECT.
        ("server_handshake", good(0, 8, &[])),
        (
            "server_up_frames_scribble",
            good(0, 8, &[11, 4, 10, 0, 6, 0, 2, 0xff, 0xff, 11, 4, 5, 0]),
        ),
        ("server_connect_early", good(0, 3, &[4, 0])),
        ("server_second_client", good(0, 2, &[12, 13])),
        ("server_timeout", good(0, 1, &[9, 0x88, 0x13])),
        (
            "server_bad_secret",
            vec![
                0, 1, 0, 2, 7, 0, 0, 0, 0, 6, b's', b'3', b'c', b'r', b'e', b'x', 0,
            ],
        ),
        // Device as client: HELLO, the ACKs, CONNECTED, then frames and a DISCONNECT.
        ("client_handshake", good(1, 9, &[])),
        (
            "client_up_frames",
            good(1, 9, &[11, 8, 10, 0, 6, 0, 2, 0x34, 0x12, 5, 0]),
        ),
        (
            "client_hello_limits",
            vec![1, 7, 0, 2, 0, 2, 0, 0, 0, 0, 0, 0, 14, 0],
        ),
        ("client_reconnect", good(1, 3, &[5, 0, 9, 50, 0, 13, 13])),
    ];
    std::fs::create_dir_all(dir).expect("seed directory");
    for (name, s) in &seeds {
        std::fs::write(format!("{dir}/{name}"), s).expect("write a seed");
    }
    eprintln!("wrote {} seeds to {dir}", seeds.len());
}

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("USTACK_FUZZ_WRITE_SEEDS") {
            write_seeds(&dir.to_string_lossy());
            std::process::exit(0);
        }
    },
    |data: &[u8]| run(data)
);

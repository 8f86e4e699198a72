//! Frames into the receive path of a `Stack` that is in the middle of things.
//!
//! # The scene (built the same way for every input, in virtual time)
//!
//! Two stacks on a simulated link: the server S (10.0.0.2, the stack under test, on a port
//! wrapped by [`Tap`]) and the client C (10.0.0.1). A third host M (10.0.0.3) exists only as
//! frames the harness injects. Before the input is read, S holds:
//!
//! - listeners on 7000 (backlog 2) and 7001 (backlog 1), sockets armed on every shard;
//! - **H**, a half-open connection: M's SYN to 7000 was answered, M never completes it;
//! - **E1**, C -> S:7000, established, 12 KiB sent each way, one segment of each direction
//!   dropped on the wire (and every copy of it while the scene is built), so both receivers
//!   hold out-of-order data behind a hole and send SACK blocks, and both senders have data in
//!   flight; S has read nothing, so its receive window is partly closed. S sends 300 ms after
//!   C, so the two retransmission timeouts that repair the holes fire apart (see
//!   [`Opts::simultaneous_loss`] for what happens when they fire together);
//! - **E2**, C -> S:7001: S sent 2 KiB and closed; C's ACKs were dropped, so S sits in
//!   FIN-WAIT-1 with data and FIN unacknowledged;
//! - **E3**, S -> C:7100 (S is the client): C sent its FIN, S is in CLOSE-WAIT;
//! - **SS**, S -> M:80: a SYN nobody answers (SYN-SENT);
//! - a connection S -> C:7200 that C refused with a RST (released).
//!
//! Every frame S received or sent while the scene was built is kept (the *capture*), and the
//! harness tracks the sequence numbers of every flow from the frames that really pass.
//!
//! # Input format
//!
//! The input is a sequence of steps, read until it runs out (at most 96 steps). Each step starts
//! with an op byte; `op & 7` selects the step, the other bits modify it. Integers are
//! little-endian; a field cut short by the end of the input reads as zeros.
//!
//! | `op & 7` | name | body | what it injects or does |
//! |---|---|---|---|
//! | 0 | RAW | `len:u16`, `len` bytes | the bytes as a whole Ethernet frame |
//! | 1 | IP | `fix:u8`, `len:u16`, `len` bytes | Ethernet header C -> S (IPv4) + the bytes; `fix` bit 0 sets the IPv4 total length, bit 1 the IPv4 checksum, bit 2 the TCP checksum |
//! | 2 | REPLAY | `idx:u8`, `n:u8`, `n` patches | captured frame `idx % count` that was sent to S, patched |
//! | 3 | LIVE | `flow:u8`, `n:u8`, `n` patches | a fresh segment of a flow with its current sequence and acknowledgement numbers, patched |
//! | 4 | TIME | `delta:u16` | runs the network for `delta` x unit, unit = 1 us, 100 us, 10 ms, 1 s by `op >> 3 & 3` |
//! | 5 | APP | `what:u8` | an application call (below) |
//! | 6 | FLOOD | `count:u8`, `port:u16` | `count % 64 + 1` SYNs from 10.0.0.3-6, source ports from `port`, to 7000 (7001 if `op & 8`) |
//! | 7 | ARP | `op:u8`, `sender:u8`, `mac:u8`, `target:u8` | an ARP packet: operation, sender 10.0.0.`sender` at MAC 02:00:00:00:00:`mac`, target 10.0.0.`target`; broadcast unless `op & 8` |
//!
//! REPLAY and LIVE reseal the frame after patching (IPv4 total length, IPv4 and TCP
//! checksums) unless `op & 8` (then nothing is fixed) or `op & 16` (checksums only, lengths as
//! patched). Checksums matter only outside the fuzz build: cargo-fuzz compiles every crate with
//! `--cfg fuzzing`, and smoltcp's `verify_checksum`, which ustack's adapter uses, then accepts
//! any checksum (so fuzzers get past it). The harness judges frames as the build under test sees
//! them ([`stack_takes`]); the adapter's checksum drops are covered by its unit tests and
//! `tests/bad_frames.rs`. LIVE flows (`flow % 8`): 0 E1, 1 E2, 2 E3 (from C), 3 H (from M), 4 SS (from M:80),
//! 5 a new flow M:50000+`flow >> 3` -> S:7001, 6 the refused flow from C:7200, 7 C's E1 port to
//! S:7002 (nobody listens). A LIVE segment is an ACK with the peer's next sequence number and,
//! as acknowledgement, what the real peer last acknowledged (S's next sequence number for the
//! flows of M): a duplicate ACK until patched.
//!
//! A patch is a tag byte (`tag % 17`) and its value:
//!
//! | tag | value | effect |
//! |---|---|---|
//! | 0 | `u8` | TCP flags byte |
//! | 1 | `i32` | added to the sequence number |
//! | 2 | `i32` | added to the acknowledgement number |
//! | 3 | `u16` | window |
//! | 4 | `n:u8`, `n % 5` x (`l:i32`, `r:i32`) | SACK option, blocks (ack + l, ack + r): out of window, reversed, overlapping as the fuzzer likes |
//! | 5 | `len:u8`, bytes | raw TCP options (`len % 41` bytes, padded) |
//! | 6 | `len:u16`, bytes | payload (`len % 1461` bytes, taken from the input, repeated if short) |
//! | 7 | `at:u8`, `v:u8` | IPv4 header byte `at % 20` |
//! | 8 | `at:u16`, `v:u8` | any frame byte `at % len` |
//! | 9 | `len:u16` | cut the frame to `len % (len + 1)` bytes |
//! | 10 | `src:u16`, `dst:u16` | TCP ports |
//! | 11 | `v:u8` | data offset nibble |
//! | 12 | `v:u16` | urgent pointer, and the URG flag |
//! | 13 | `v:u8` | last byte of the IPv4 source address |
//! | 14 | `v:u16` | options: MSS `v` |
//! | 15 | `v:u8` | options: window scale `v` |
//! | 16 | `a:u32`, `b:u32` | options: timestamps (TSval a, TSecr b) |
//!
//! APP (`what % 8`): 0 S reads E1; 1 C sends 1 KiB on E1; 2 S sends 1 KiB on E1; 3 S accepts
//! and releases every waiting connection; 4 S aborts every accepted connection; 5 C closes E2;
//! 6 S stops listening on 7001, or listens again (backlog `what >> 3 & 3` + 1); 7 S releases E3.
//!
//! # Checks
//!
//! After every step (both stacks polled until idle): no panic; no counter of either stack or
//! device goes down; sockets in use by the handles the harness holds plus `sockets_free()` stay
//! within `sockets_max`; every frame S's device delivered is counted by S (taken or dropped);
//! E1's state only moves forward; bytes C reads are exactly what S sent.
//!
//! At the end the injection stops, both sides send 4 KiB more on E1 and the network runs clean
//! for up to 20 minutes of virtual time. E1 must then carry every byte both ways, the bytes S reads being exactly what C sent, unless
//! an injected frame could legitimately break it (*taint*): a RST that S may accept (only one
//! whose sequence number is exactly S's RCV.NXT, as RFC 5961 3.2 asks and the vendored smoltcp
//! does since its patch 5; with `USTACK_FUZZ_LENIENT_RST=1`, any RST near the window, as
//! smoltcp 0.14 as published took), data
//! or FIN near the window (blind in-window injection: TCP cannot tell), an acknowledgement of
//! data C has not acknowledged (S may drop data C never got), or an ARP packet that moves C's
//! address. A SYN never taints: in a synchronized state it gets a challenge ACK (RFC 5961 4.2).
//! Data injection only lifts the content check of what S reads.
//!
//! `USTACK_FUZZ_WRITE_SEEDS=DIR` makes the target build the scene once, write seed inputs (the
//! captured frames as RAW steps, and typical LIVE steps) into DIR, and exit (that is how
//! `fuzz/seeds/stack_rx/` was made). `USTACK_FUZZ_TRACE=1` prints every frame that passes S's
//! port, with the virtual time: run one input with it to see what happened.
#![no_main]

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ustack::dev::sim::{SimConfig, SimLink, SimPort, SplitMix64};
use ustack::mem::PageSize;
use ustack::stack::{
    ConnError, ConnId, ConnState, ListenerId, MacAddr, Stack, StackConfig, StackStats,
};
use ustack::{Batch, DeviceCaps, Frame, Instant, LinkStats, PacketDevice, PoolBuf};

// The frame builder and parser the scripted-peer tests use too.
#[path = "../../tests/common/frames.rs"]
mod wire;

use wire::{Ends, ACK, FIN, RST, SYN};

mod input;
use input::Input;

/// Whether the stack under test takes the frame past its checksum checks. cargo-fuzz builds
/// every crate with `--cfg fuzzing`, and smoltcp's `verify_checksum` then always says yes
/// (so that fuzzers get past checksums); ustack's adapter verifies checksums with those very
/// functions, so in a fuzz build only the lengths count.
fn stack_takes(f: &[u8]) -> bool {
    if cfg!(fuzzing) {
        wire::lengths_ok(f)
    } else {
        wire::sealed(f)
    }
}

const IP_C: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const IP_S: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const IP_M: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const MAC_M: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const PORT_E1: u16 = 7000;
const PORT_E2: u16 = 7001;
const PORT_E3: u16 = 7100;
const PORT_REFUSED: u16 = 7200;
const PORT_H: u16 = 40000;
const ISN_M: u32 = 0x4d00_0000;
/// What each side sends on E1 while the scene is built, and again at the end.
const SCENE_BYTES: u64 = 12 << 10;
const FINAL_BYTES: u64 = 4 << 10;
const STEPS_MAX: usize = 96;
/// Polls of the two stacks one input may spend running the network (the scene takes about a
/// hundred); past it, TIME steps jump the clock instead of stepping through every event.
const POLL_BUDGET: u64 = 4_000;
/// Rounds of polling at one instant before the harness gives up waiting for both to go idle.
const SETTLE_MAX: usize = 256;
/// Window slack (bytes) around S's receive window within which an injected segment may be
/// taken: covers any error in the harness's view of S's state.
const SLACK: u32 = 1 << 16;

/// A deterministic byte stream: byte `i` depends only on the seed and `i`.
#[derive(Copy, Clone)]
struct Pattern(u64);

impl Pattern {
    fn word(self, w: u64) -> [u8; 8] {
        SplitMix64::mix(self.0 ^ w.wrapping_mul(SplitMix64::GAMMA)).to_le_bytes()
    }

    fn fill(self, at: u64, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            let pos = at + i as u64;
            let word = self.word(pos / 8);
            let start = (pos % 8) as usize;
            let n = (8 - start).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&word[start..start + n]);
            i += n;
        }
    }

    /// Index of the first byte of `data` that differs from the stream at `at`.
    fn mismatch(self, at: u64, data: &[u8]) -> Option<usize> {
        let mut expect = [0u8; 1024];
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min(expect.len());
            self.fill(at + done as u64, &mut expect[..n]);
            if data[done..done + n] != expect[..n] {
                let k = (0..n).find(|&k| data[done + k] != expect[k]).unwrap_or(0);
                return Some(done + k);
            }
            done += n;
        }
        None
    }
}

/// C -> S on E1, and S -> C on E1.
const P_CS: Pattern = Pattern(0xC5);
const P_SC: Pattern = Pattern(0x5C);

/// A flow as S sees it: the remote end and S's port.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Key {
    peer: Ipv4Addr,
    peer_port: u16,
    port: u16,
}

/// Sequence numbers of one flow, as the frames that passed S's port show them.
#[derive(Copy, Clone, Debug, Default)]
struct Track {
    /// S's latest acknowledgement (its RCV.NXT when it sent it), window and window scale.
    s_ack: Option<u32>,
    s_win: u32,
    s_ws: u8,
    /// S's highest sequence number sent (SND.NXT).
    s_nxt: Option<u32>,
    /// The peer's highest sequence number sent toward S (real or injected frames).
    peer_nxt: Option<u32>,
    /// The highest acknowledgement the real peer sent (never from injected frames).
    peer_ack: Option<u32>,
    peer_win: u16,
    /// S's window scale is known only from its SYN.
    peer_syn_seen: bool,
}

/// Frames S's device hands over are these before the wire's.
struct Tap {
    inner: SimPort,
    inject: VecDeque<PoolBuf>,
    /// Frames delivered from `inject`, and injections dropped for want of a buffer.
    injected: u64,
    inject_failed: u64,
    /// Frames handed to the stack (injected or from the wire), and wire frames the scene's
    /// drop rules took.
    delivered: u64,
    rule_dropped: u64,
    /// Wire frames already looked at, waiting for room in the stack's batch.
    held: VecDeque<PoolBuf>,
    tmp: Batch<PoolBuf>,
    tmp_tx: Batch<PoolBuf>,
    /// Print every frame that passes (`USTACK_FUZZ_TRACE=1`), with the time.
    trace: bool,
    now: Instant,
    /// Keep copies of what passes (while the scene is built).
    capture: bool,
    to_s: Vec<Vec<u8>>,
    from_s: Vec<Vec<u8>>,
    /// Drop rules while the scene is built: flows (peer port, S port, direction to S) whose
    /// second data segment is dropped with every copy, and flows dropped whole.
    drops: Vec<DropRule>,
    flows: Vec<(Key, Track)>,
}

#[derive(Copy, Clone, Debug)]
enum Rule {
    /// The second distinct data segment, and every copy of it.
    SecondSegment,
    /// Everything.
    All,
}

#[derive(Copy, Clone, Debug)]
struct DropRule {
    key: Key,
    to_s: bool,
    rule: Rule,
    first: Option<u32>,
    victim: Option<u32>,
}

impl Tap {
    fn new(inner: SimPort) -> Tap {
        let burst = inner.caps().burst_max;
        Tap {
            inner,
            inject: VecDeque::new(),
            injected: 0,
            inject_failed: 0,
            delivered: 0,
            rule_dropped: 0,
            held: VecDeque::new(),
            tmp: Batch::with_capacity(burst),
            tmp_tx: Batch::with_capacity(burst),
            capture: true,
            trace: std::env::var_os("USTACK_FUZZ_TRACE").is_some(),
            now: Instant::ZERO,
            to_s: Vec::new(),
            from_s: Vec::new(),
            drops: Vec::new(),
            flows: Vec::new(),
        }
    }

    /// Queues `bytes` for S (cut to what a buffer holds).
    fn push(&mut self, bytes: &[u8]) {
        let Some(mut buf) = self.inner.pool().alloc() else {
            self.inject_failed += 1;
            return;
        };
        let n = bytes.len().min(buf.capacity());
        assert!(buf.set_len(n));
        buf.data_mut().copy_from_slice(&bytes[..n]);
        self.inject.push_back(buf);
    }

    fn track(&mut self, key: Key) -> &mut Track {
        let i = match self.flows.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.flows.push((key, Track::default()));
                self.flows.len() - 1
            }
        };
        &mut self.flows[i].1
    }

    fn get(&self, key: Key) -> Track {
        self.flows
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, t)| *t)
            .unwrap_or_default()
    }

    /// Learns from a frame toward S; `real` when it came from the wire.
    fn note_to_s(&mut self, f: &[u8], real: bool) {
        let Some(t) = wire::parse_tcp(f) else { return };
        if t.dst != IP_S || !stack_takes(f) {
            return;
        }
        let key = Key {
            peer: t.src,
            peer_port: t.sport,
            port: t.dport,
        };
        let tr = self.track(key);
        let end = t.seq.wrapping_add(t.seq_len());
        if tr.peer_nxt.is_none_or(|n| wire::seq_gt(end, n)) {
            tr.peer_nxt = Some(end);
        }
        if real {
            tr.peer_win = t.window;
            if t.has(ACK) && tr.peer_ack.is_none_or(|a| wire::seq_gt(t.ack, a)) {
                tr.peer_ack = Some(t.ack);
            }
        }
        if t.has(SYN) {
            tr.peer_syn_seen = true;
        }
    }

    /// Learns from a frame S sent.
    fn note_from_s(&mut self, f: &[u8]) {
        let Some(t) = wire::parse_tcp(f) else { return };
        if t.src != IP_S {
            return;
        }
        let ws = wire::window_scale(f, &t);
        let key = Key {
            peer: t.dst,
            peer_port: t.dport,
            port: t.sport,
        };
        let tr = self.track(key);
        if t.has(SYN) {
            tr.s_ws = ws.unwrap_or(0);
        }
        if t.has(ACK) && !t.has(RST) {
            tr.s_ack = Some(t.ack);
            // The window of a SYN is never scaled.
            tr.s_win = if t.has(SYN) {
                u32::from(t.window)
            } else {
                u32::from(t.window) << tr.s_ws
            };
        }
        let end = t.seq.wrapping_add(t.seq_len());
        if tr.s_nxt.is_none_or(|n| wire::seq_gt(end, n)) {
            tr.s_nxt = Some(end);
        }
    }

    /// Whether a drop rule takes this frame.
    fn dropped(&mut self, f: &[u8], to_s: bool) -> bool {
        let Some(t) = wire::parse_tcp(f) else {
            return false;
        };
        let key = if to_s {
            Key {
                peer: t.src,
                peer_port: t.sport,
                port: t.dport,
            }
        } else {
            Key {
                peer: t.dst,
                peer_port: t.dport,
                port: t.sport,
            }
        };
        for d in &mut self.drops {
            if d.key != key || d.to_s != to_s {
                continue;
            }
            match d.rule {
                Rule::All => return true,
                Rule::SecondSegment if t.payload_len > 0 => match (d.first, d.victim) {
                    (None, _) => d.first = Some(t.seq),
                    (Some(first), None) if first != t.seq => {
                        d.victim = Some(t.seq);
                        return true;
                    }
                    (_, Some(v)) if v == t.seq => return true,
                    _ => {}
                },
                Rule::SecondSegment => {}
            }
        }
        false
    }
}

impl PacketDevice for Tap {
    type Frame = PoolBuf;

    fn caps(&self) -> DeviceCaps {
        self.inner.caps()
    }

    fn rx_burst(&mut self, now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
        self.now = now;
        let limit = batch.free().min(self.inner.caps().burst_max);
        let mut n = 0;
        while n < limit {
            let Some(f) = self.inject.pop_front() else {
                break;
            };
            if self.trace {
                eprintln!(
                    "{:>12} inj > S {}",
                    now.as_micros(),
                    wire::describe(f.data())
                );
                eprintln!("             {:02x?}", f.data());
            }
            if let Err(f) = batch.push(f) {
                self.inject.push_front(f);
                break;
            }
            self.injected += 1;
            n += 1;
        }
        if self.held.is_empty() && n < limit {
            self.inner.rx_burst(now, &mut self.tmp);
            while let Some(f) = self.tmp.pop() {
                if self.capture {
                    self.to_s.push(f.data().to_vec());
                }
                if self.trace {
                    eprintln!(
                        "{:>12} C  > S {}",
                        now.as_micros(),
                        wire::describe(f.data())
                    );
                }
                if self.dropped(f.data(), true) {
                    self.rule_dropped += 1;
                } else {
                    self.note_to_s(f.data(), true);
                    self.held.push_back(f);
                }
            }
        }
        while n < limit {
            let Some(f) = self.held.pop_front() else {
                break;
            };
            if let Err(f) = batch.push(f) {
                self.held.push_front(f);
                break;
            }
            n += 1;
        }
        self.delivered += n as u64;
        n
    }

    fn tx_alloc(&mut self) -> Option<PoolBuf> {
        self.inner.tx_alloc()
    }

    fn tx_burst(&mut self, now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
        let mut taken = 0;
        while taken < self.inner.caps().burst_max {
            let Some(f) = batch.pop() else { break };
            taken += 1;
            if self.capture {
                self.from_s.push(f.data().to_vec());
            }
            if self.trace {
                eprintln!(
                    "{:>12} S  >   {}",
                    now.as_micros(),
                    wire::describe(f.data())
                );
            }
            if !self.dropped(f.data(), false) {
                self.note_from_s(f.data());
                let _ = self.tmp_tx.push(f);
            }
        }
        while !self.tmp_tx.is_empty() {
            if self.inner.tx_burst(now, &mut self.tmp_tx) == 0 {
                break;
            }
        }
        self.tmp_tx.clear();
        taken
    }

    fn stats(&self) -> LinkStats {
        let mut s = self.inner.stats();
        s.rx_packets = self.delivered;
        s.rx_dropped += self.rule_dropped;
        s
    }

    fn link_up(&self) -> bool {
        self.inner.link_up()
    }
}


/// Rank of a connection state: it never goes down.
fn rank(s: ConnState) -> u8 {
    match s {
        ConnState::Connecting => 0,
        ConnState::Established => 1,
        ConnState::PeerClosed | ConnState::Closing => 2,
        ConnState::Closed => 3,
    }
}

fn state_of<D: PacketDevice>(st: &mut Stack<D>, c: ConnId) -> ConnState {
    st.state(c)
        .expect("a handle the harness holds is never stale")
}

/// Every counter of the stack, in a fixed order (a new field breaks the build here).
fn stack_counters(s: &StackStats) -> [u64; 24] {
    let StackStats {
        rx_frames,
        rx_runt,
        rx_oversize,
        rx_not_ours,
        rx_unsupported,
        rx_bad_ipv4,
        rx_fragment,
        rx_bad_checksum,
        rx_syn_backlog_full,
        rx_queue_full,
        rx_misdirected,
        arp_fanout_dropped,
        shard_polls,
        tx_frames,
        tx_nobuf,
        tx_queue_full,
        accepted,
        connected,
        sockets_exhausted,
        close_timeouts,
        half_open_evicted,
        half_open_unreachable,
        idle_reaped,
    } = *s;
    [
        rx_frames,
        rx_runt,
        rx_oversize,
        rx_not_ours,
        rx_unsupported,
        rx_bad_ipv4,
        rx_fragment,
        rx_bad_checksum,
        rx_syn_backlog_full,
        rx_queue_full,
        rx_misdirected,
        arp_fanout_dropped,
        shard_polls,
        tx_frames,
        tx_nobuf,
        tx_queue_full,
        accepted,
        connected,
        sockets_exhausted,
        close_timeouts,
        half_open_evicted,
        half_open_unreachable,
        idle_reaped,
        s.rx_dropped(),
    ]
}

fn link_counters(s: &LinkStats) -> [u64; 8] {
    let LinkStats {
        rx_packets,
        rx_bytes,
        rx_dropped,
        rx_errors,
        tx_packets,
        tx_bytes,
        tx_dropped,
        tx_errors,
    } = *s;
    [
        rx_packets, rx_bytes, rx_dropped, rx_errors, tx_packets, tx_bytes, tx_dropped, tx_errors,
    ]
}

fn stack_config(ip: Ipv4Addr, seed: u64, sockets: usize) -> StackConfig {
    let mut c = StackConfig::new(ip, 24);
    c.random_seed = seed;
    c.mac = Some(MacAddr::local_from_seed(seed));
    c.sockets_max = sockets;
    c.shard_sockets = 4;
    c.listeners_max = 4;
    c.tcp.rx_buf_len = 16 << 10;
    c.tcp.tx_buf_len = 16 << 10;
    c.page_size = PageSize::Base4K;
    c.ring_frames = 64;
    c
}

/// Switches from the environment (read once).
#[derive(Copy, Clone, Debug, Default)]
struct Opts {
    /// Only a RST whose sequence number is exactly RCV.NXT may reset E1 (RFC 5961 3.2, the
    /// vendored smoltcp's patch 5); `USTACK_FUZZ_LENIENT_RST=1`: any RST near the window may
    /// (smoltcp 0.14 as published took any in-window RST).
    strict_rst: bool,
    /// `USTACK_FUZZ_SIMULTANEOUS_LOSS=1`: the scene loses E1's segments in both directions at
    /// once, so both retransmission timeouts fire together. smoltcp 0.14 as published then
    /// deadlocked E1: after its timeout each end went back to SND.UNA, so its ACKs carried a
    /// sequence number below the other end's RCV.NXT, and each end dropped the other's ACKs
    /// as out of window, for ever (fixed by the vendored smoltcp's patch 3, which no longer
    /// rewinds; `tests/tcp_regressions.rs` pins it).
    simultaneous_loss: bool,
}

impl Opts {
    fn from_env() -> Opts {
        let on = |name| std::env::var_os(name).is_some_and(|v| v == "1");
        Opts {
            strict_rst: !on("USTACK_FUZZ_LENIENT_RST"),
            simultaneous_loss: on("USTACK_FUZZ_SIMULTANEOUS_LOSS"),
        }
    }
}

/// The two stacks, the handles into the scene, and what the checks remember.
struct Rig {
    link: SimLink,
    c: Stack<SimPort>,
    s: Stack<Tap>,
    now: Instant,
    polls: u64,
    /// The scene is built: the handles are real and the checks on them apply.
    ready: bool,
    opts: Opts,
    c_mac: [u8; 6],
    s_mac: [u8; 6],
    l7000: ListenerId,
    l7001: Option<ListenerId>,
    /// E1 at S and at C.
    s1: ConnId,
    c1: ConnId,
    s2: ConnId,
    c2: ConnId,
    /// E3: S's connection to C:7100, and C's accepted end.
    s3: Option<ConnId>,
    c3: ConnId,
    ss: ConnId,
    /// Connections S accepted from the input.
    accepted: Vec<ConnId>,
    e1_key: Key,
    e2_key: Key,
    e3_key: Key,
    ss_key: Key,
    refused_key: Key,
    /// E1 streams: bytes C queued, S read, S queued, C read.
    c_sent: u64,
    s_got: u64,
    s_sent: u64,
    c_got: u64,
    /// Why E1 may legitimately break, if an injected frame could break it.
    taint: Option<String>,
    /// Data was injected into E1 toward S: what S reads may differ from what C sent.
    data_injected: bool,
    rank_s1: u8,
    rank_c1: u8,
    prev: ([u64; 24], [u64; 24], [u64; 8], [u64; 8]),
    scratch: Vec<u8>,
}

impl Rig {
    /// Builds the scene (see the module docs). Panics if the scene is not what it should be:
    /// that is a harness or stack regression, not something the input did.
    fn new(opts: Opts) -> Rig {
        let sim = SimConfig {
            pool_frames: 384,
            queue_frames: 256,
            page_size: PageSize::Base4K,
            ..SimConfig::default().with_seed(11)
        };
        let (link, pa, pb) = SimLink::new(sim).expect("sim link");
        let c_cfg = stack_config(IP_C, 0xC, 8);
        let s_cfg = stack_config(IP_S, 0x5, 16);
        let (c_mac, s_mac) = (
            c_cfg.mac.expect("set above").0,
            s_cfg.mac.expect("set above").0,
        );
        let mut c = Stack::new(pa, c_cfg).expect("stack C");
        let mut s = Stack::new(Tap::new(pb), s_cfg).expect("stack S");
        let l7000 = s.listen(PORT_E1, 2).expect("listen 7000");
        let l7001 = s.listen(PORT_E2, 1).expect("listen 7001");
        let c_listener = c.listen(PORT_E3, 1).expect("C listens on 7100");
        let c1 = c
            .connect(SocketAddrV4::new(IP_S, PORT_E1))
            .expect("connect E1");
        let c2 = c
            .connect(SocketAddrV4::new(IP_S, PORT_E2))
            .expect("connect E2");
        let s3 = s
            .connect(SocketAddrV4::new(IP_C, PORT_E3))
            .expect("connect E3");
        let refused = s
            .connect(SocketAddrV4::new(IP_C, PORT_REFUSED))
            .expect("connect 7200");
        let mut rig = Rig {
            link,
            c,
            s,
            now: Instant::ZERO,
            polls: 0,
            ready: false,
            opts,
            c_mac,
            s_mac,
            l7000,
            l7001: Some(l7001),
            s1: c1,
            c1,
            s2: c2,
            c2,
            s3: Some(s3),
            c3: c1,
            ss: s3,
            accepted: Vec::new(),
            e1_key: Key {
                peer: IP_C,
                peer_port: 0,
                port: PORT_E1,
            },
            e2_key: Key {
                peer: IP_C,
                peer_port: 0,
                port: PORT_E2,
            },
            e3_key: Key {
                peer: IP_C,
                peer_port: PORT_E3,
                port: 0,
            },
            ss_key: Key {
                peer: IP_M,
                peer_port: 80,
                port: 0,
            },
            refused_key: Key {
                peer: IP_C,
                peer_port: PORT_REFUSED,
                port: 0,
            },
            c_sent: 0,
            s_got: 0,
            s_sent: 0,
            c_got: 0,
            taint: None,
            data_injected: false,
            rank_s1: 1,
            rank_c1: 1,
            prev: ([0; 24], [0; 24], [0; 8], [0; 8]),
            scratch: vec![0; 16 << 10],
        };
        // Handshakes.
        let (mut s1, mut s2, mut c3) = (None, None, None);
        rig.run_until(Duration::from_millis(5), |r| {
            s1 = s1.or(r.s.accept(l7000).expect("accept"));
            s2 = s2.or(r.s.accept(l7001).expect("accept"));
            c3 = c3.or(r.c.accept(c_listener).expect("accept"));
        });
        let (Some(s1), Some(s2), Some(c3)) = (s1, s2, c3) else {
            panic!("scene: handshakes did not complete");
        };
        assert_eq!(state_of(&mut rig.c, c1), ConnState::Established);
        assert_eq!(state_of(&mut rig.s, s3), ConnState::Established);
        assert_eq!(
            rig.s.state(refused),
            Ok(ConnState::Closed),
            "scene: C refuses 7200"
        );
        rig.s
            .release(refused)
            .expect("release the refused connection");
        rig.s1 = s1;
        rig.s2 = s2;
        rig.c3 = c3;
        let port = |st: &mut Stack<Tap>, c| st.remote_addr(c).unwrap().unwrap().port();
        rig.e1_key.peer_port = port(&mut rig.s, s1);
        rig.e2_key.peer_port = port(&mut rig.s, s2);
        rig.e3_key.port = rig.c.remote_addr(c3).unwrap().unwrap().port();
        // The refused flow's port: from the RST C sent.
        let rst = rig
            .s
            .device()
            .to_s
            .iter()
            .filter_map(|f| wire::parse_tcp(f))
            .find(|t| t.sport == PORT_REFUSED && t.has(RST))
            .expect("scene: C's RST");
        rig.refused_key.port = rst.dport;

        // H: M announces itself and asks for 7000, never to answer the SYN-ACK.
        let arp = wire::build_arp(wire::BROADCAST, 1, MAC_M, IP_M, [0; 6], IP_S);
        rig.inject_setup(&arp);
        let syn = wire::build_tcp(
            &rig.ends_from_m(PORT_H, PORT_E1),
            ISN_M,
            0,
            SYN,
            65535,
            &[2, 4, 0x05, 0xb4, 4, 2, 3, 3, 7, 0],
            &[],
        );
        rig.inject_setup(&syn);
        // SS: S asks M:80; M stays silent.
        rig.ss = rig
            .s
            .connect(SocketAddrV4::new(IP_M, 80))
            .expect("connect SS");
        rig.settle();
        let ss_syn = rig
            .s
            .device()
            .from_s
            .iter()
            .filter_map(|f| wire::parse_tcp(f))
            .find(|t| t.dst == IP_M && t.dport == 80)
            .expect("scene: S's SYN to M");
        rig.ss_key.port = ss_syn.sport;

        // Data in flight with holes, E2 into FIN-WAIT-1, E3 into CLOSE-WAIT.
        let (e1, e2) = (rig.e1_key, rig.e2_key);
        let drops = &mut rig.s.device_mut().drops;
        for to_s in [true, false] {
            drops.push(DropRule {
                key: e1,
                to_s,
                rule: Rule::SecondSegment,
                first: None,
                victim: None,
            });
        }
        drops.push(DropRule {
            key: e2,
            to_s: true,
            rule: Rule::All,
            first: None,
            victim: None,
        });
        rig.c.close(c3).expect("C closes E3");
        let mut e2_sent = 0usize;
        let mut e2_closed = false;
        // S starts sending on E1 300 ms after C, so the two retransmission timeouts that repair
        // the holes fire 300 ms apart. When both fire together, smoltcp 0.14 deadlocks E1 (see
        // `Opts::simultaneous_loss`): that scene is kept for the regression input only.
        let s_start = if rig.opts.simultaneous_loss {
            rig.now
        } else {
            rig.now + Duration::from_millis(300)
        };
        let scene_end = s_start + Duration::from_millis(20);
        for until in [s_start, scene_end] {
            rig.run_until(until.saturating_duration_since(rig.now), |r| {
                r.c_sends(SCENE_BYTES - r.c_sent);
                if r.now >= s_start {
                    r.s_sends(SCENE_BYTES - r.s_sent);
                }
                r.c_reads();
                if e2_sent < 2048 {
                    e2_sent += r.s.send(s2, &[0x22; 2048][e2_sent..]).unwrap();
                } else if !e2_closed {
                    r.s.close(s2).expect("S closes E2");
                    e2_closed = true;
                }
                r.c_drain(c2);
                r.c_drain(c3);
            });
        }
        let dev = rig.s.device_mut();
        assert!(
            dev.drops[..2].iter().all(|d| d.victim.is_some()),
            "scene: a segment of E1 was dropped each way: {:?}",
            dev.drops
        );
        dev.drops.clear();
        dev.capture = false;
        let sack_to_s = dev.to_s.iter().any(|f| {
            wire::parse_tcp(f)
                .is_some_and(|t| t.sport == e1.peer_port && wire::has_sack_blocks(f, &t))
        });
        let sack_from_s = dev.from_s.iter().any(|f| {
            wire::parse_tcp(f)
                .is_some_and(|t| t.dport == e1.peer_port && wire::has_sack_blocks(f, &t))
        });
        assert!(
            sack_to_s && sack_from_s,
            "scene: both ends of E1 sent SACK blocks"
        );
        assert_eq!(rig.c_sent, SCENE_BYTES, "scene: C queued its bytes");
        assert_eq!(rig.s_sent, SCENE_BYTES, "scene: S queued its bytes");
        assert!(
            rig.s.send_queue(s1).unwrap() > 0,
            "scene: S has data in flight"
        );
        assert!(
            rig.s.recv_queue(s1).unwrap() > 0,
            "scene: S holds unread data"
        );
        assert_eq!(state_of(&mut rig.s, s2), ConnState::Closing);
        assert_eq!(state_of(&mut rig.s, s3), ConnState::PeerClosed);
        assert_eq!(state_of(&mut rig.s, rig.ss), ConnState::Connecting);
        rig.ready = true;
        rig.check();
        rig
    }

    fn ends_from_m(&self, sport: u16, dport: u16) -> Ends {
        Ends {
            src_mac: MAC_M,
            dst_mac: self.s_mac,
            src: IP_M,
            dst: IP_S,
            sport,
            dport,
        }
    }

    fn ends_from_c(&self, sport: u16, dport: u16) -> Ends {
        Ends {
            src_mac: self.c_mac,
            dst_mac: self.s_mac,
            src: IP_C,
            dst: IP_S,
            sport,
            dport,
        }
    }

    /// A frame the scene injects: captured as sent to S, then delivered.
    fn inject_setup(&mut self, f: &[u8]) {
        let dev = self.s.device_mut();
        dev.to_s.push(f.to_vec());
        dev.note_to_s(f, false);
        dev.push(f);
        self.settle();
    }

    /// Injects a frame from the input, after judging what it may do to E1.
    fn inject(&mut self, f: &[u8]) {
        self.judge(f);
        let dev = self.s.device_mut();
        dev.note_to_s(f, false);
        dev.push(f);
        self.settle();
    }

    /// Taints E1 if `f` is a frame S would take that could legitimately break E1.
    fn judge(&mut self, f: &[u8]) {
        if let Some(a) = wire::parse_arp(f) {
            // An ARP packet naming C's address with another MAC redirects S's frames to C.
            let to_us = f[..6] == self.s_mac || f[..6] == wire::BROADCAST;
            if to_us && a.sender_ip == IP_C && a.sender_mac != self.c_mac && a.target_ip == IP_S {
                self.taint_with(format!("ARP moved C to {:02x?}", a.sender_mac));
            }
            return;
        }
        let Some(t) = wire::parse_tcp(f) else { return };
        let to_us = t.dst_mac == self.s_mac || t.dst_mac == wire::BROADCAST;
        let key = self.e1_key;
        if !to_us
            || !stack_takes(f)
            || f.len() > 1514
            || t.src != key.peer
            || t.dst != IP_S
            || t.sport != key.peer_port
            || t.dport != key.port
            || f[wire::ETH_LEN + 6] & 0x3f != 0
            || f[wire::ETH_LEN + 7] != 0
        {
            // Not E1, or dropped before TCP (bad checksum, fragment, oversize...).
            return;
        }
        let tr = self.s.device().get(key);
        let (Some(rcv_nxt), Some(snd_nxt)) = (tr.s_ack, tr.s_nxt) else {
            self.taint_with("E1 segment before its state is known".into());
            return;
        };
        let wnd = tr.s_win;
        let near = |x: u32| wire::seq_in(x, rcv_nxt.wrapping_sub(SLACK), wnd + 2 * SLACK);
        if t.has(RST) {
            let legit = if self.opts.strict_rst {
                t.seq == rcv_nxt
            } else {
                near(t.seq)
            };
            if legit {
                self.taint_with(format!(
                    "RST seq {} (RCV.NXT {rcv_nxt}, window {wnd})",
                    t.seq
                ));
            }
            return;
        }
        if t.has(SYN) || !t.has(ACK) {
            // A SYN in a synchronized state gets a challenge ACK; a segment without ACK is
            // dropped (RFC 9293 3.10.7.4).
            return;
        }
        let end = t.seq.wrapping_add(t.payload_len as u32);
        if (t.payload_len > 0 || t.has(FIN)) && (near(t.seq) || near(end)) {
            self.data_injected |= t.payload_len > 0;
            self.taint_with(format!(
                "data/FIN seq {}..{end} near S's window (RCV.NXT {rcv_nxt}, window {wnd})",
                t.seq
            ));
            return;
        }
        let acked = tr.peer_ack.unwrap_or(snd_nxt);
        let ack_new = wire::seq_gt(t.ack, acked)
            && wire::seq_in(
                t.ack,
                acked,
                snd_nxt.wrapping_sub(acked).wrapping_add(SLACK),
            );
        if ack_new && (near(t.seq) || near(end)) {
            self.taint_with(format!(
                "ACK {} of data C has not acknowledged (C acked {acked}, SND.NXT {snd_nxt})",
                t.ack
            ));
        }
    }

    fn taint_with(&mut self, why: String) {
        if self.taint.is_none() {
            self.taint = Some(why);
        }
    }

    /// Polls both stacks at `now` until both are idle, then runs the checks.
    fn settle(&mut self) {
        for _ in 0..SETTLE_MAX {
            let busy = self.s.poll(self.now) | self.c.poll(self.now);
            self.polls += 1;
            let again = busy
                || self.s.poll_at(self.now).is_some_and(|t| t <= self.now)
                || self.c.poll_at(self.now).is_some_and(|t| t <= self.now);
            if !again {
                break;
            }
        }
        self.check();
    }

    /// Runs the network until `now + d`, calling `app` at every instant it stops at.
    fn run_until(&mut self, d: Duration, mut app: impl FnMut(&mut Rig)) {
        let end = self.now + d;
        loop {
            self.settle();
            app(self);
            self.settle();
            if self.now >= end {
                return;
            }
            if self.polls > POLL_BUDGET {
                // Out of budget: jump.
                self.now = end;
                continue;
            }
            let timers = [self.s.poll_at(self.now), self.c.poll_at(self.now)];
            let next = self.link.next_event(self.now, timers);
            self.now = next.unwrap_or(end).min(end);
        }
    }

    fn c_sends(&mut self, n: u64) {
        let mut left = n;
        while left > 0 {
            let at = self.c_sent;
            let k = left.min(self.scratch.len() as u64) as usize;
            P_CS.fill(at, &mut self.scratch[..k]);
            match self.c.send(self.c1, &self.scratch[..k]) {
                Ok(0) | Err(_) => return,
                Ok(m) => {
                    self.c_sent += m as u64;
                    left -= m as u64;
                }
            }
        }
    }

    fn s_sends(&mut self, n: u64) {
        let mut left = n;
        while left > 0 {
            let at = self.s_sent;
            let k = left.min(self.scratch.len() as u64) as usize;
            P_SC.fill(at, &mut self.scratch[..k]);
            match self.s.send(self.s1, &self.scratch[..k]) {
                Ok(0) | Err(_) => return,
                Ok(m) => {
                    self.s_sent += m as u64;
                    left -= m as u64;
                }
            }
        }
    }

    /// C reads E1 and checks every byte against what S sent.
    fn c_reads(&mut self) {
        loop {
            let at = self.c_got;
            let r = self
                .c
                .recv_with(self.c1, |d| (d.len(), (d.len(), P_SC.mismatch(at, d))));
            match r {
                Ok((0, _)) | Err(_) => return,
                Ok((n, None)) => self.c_got += n as u64,
                Ok((_, Some(k))) => panic!(
                    "C read a byte on E1 that S never sent, at stream offset {}",
                    at + k as u64
                ),
            }
        }
    }

    /// S reads E1 and checks every byte against what C sent (unless data was injected).
    fn s_reads(&mut self) {
        loop {
            let at = self.s_got;
            let check = !self.data_injected;
            let r = self.s.recv_with(self.s1, |d| {
                let bad = if check { P_CS.mismatch(at, d) } else { None };
                (d.len(), (d.len(), bad))
            });
            match r {
                Ok((0, _)) | Err(_) => return,
                Ok((n, None)) => self.s_got += n as u64,
                Ok((_, Some(k))) => panic!(
                    "S read a byte on E1 that C never sent, at stream offset {} (no data \
                     was injected into E1)",
                    at + k as u64
                ),
            }
        }
    }

    fn c_drain(&mut self, c: ConnId) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.c.recv(c, &mut buf) {
            if n == 0 {
                break;
            }
        }
    }

    /// Handles the harness holds on S's sockets.
    fn s_held(&self) -> usize {
        3 + usize::from(self.s3.is_some()) + self.accepted.len()
    }

    /// The invariants that hold after every step.
    fn check(&mut self) {
        let now = (
            stack_counters(&self.s.stats()),
            stack_counters(&self.c.stats()),
            link_counters(&self.s.link_stats()),
            link_counters(&self.c.link_stats()),
        );
        for (name, a, b) in [
            ("S", &self.prev.0[..], &now.0[..]),
            ("C", &self.prev.1[..], &now.1[..]),
            ("S's device", &self.prev.2[..], &now.2[..]),
            ("C's device", &self.prev.3[..], &now.3[..]),
        ] {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    y >= x,
                    "counter {i} of {name} went down: {x} -> {y}\nS {:?}",
                    self.s.stats()
                );
            }
        }
        self.prev = now;

        if !self.ready {
            return;
        }
        let max = self.s.config().sockets_max;
        let free = self.s.sockets_free();
        assert!(
            free + self.s_held() <= max,
            "S: {free} sockets free + {} held by the harness > sockets_max {max}",
            self.s_held()
        );
        let c_max = self.c.config().sockets_max;
        assert!(
            self.c.sockets_free() + 3 <= c_max,
            "C: sockets over the maximum"
        );

        // Every frame S's device delivered was taken or dropped, and counted (a held SYN is
        // counted again if it expires or finds its shard full).
        let st = self.s.stats();
        let delivered = self.s.link_stats().rx_packets;
        let counted = st.rx_frames + st.rx_dropped();
        let pending = self.s.poll_at(self.now).is_some_and(|t| t <= self.now);
        assert!(
            pending || counted >= delivered,
            "S's device delivered {delivered} frames, S counted {counted}: {st:?}"
        );
        assert!(
            counted <= delivered + st.rx_syn_backlog_full + st.rx_queue_full,
            "S counted {counted} frames, more than the {delivered} delivered: {st:?}"
        );

        let (rs, rc) = (
            rank(state_of(&mut self.s, self.s1)),
            rank(state_of(&mut self.c, self.c1)),
        );
        assert!(
            rs >= self.rank_s1 && rc >= self.rank_c1,
            "E1 went back: S {} -> {rs}, C {} -> {rc}",
            self.rank_s1,
            self.rank_c1
        );
        self.rank_s1 = rs;
        self.rank_c1 = rc;
        if self.taint.is_none() && (rs > 1 || rc > 1) {
            panic!(
                "E1 closed without a frame that could legitimately close it: S {:?}, C {:?}",
                self.s.state(self.s1),
                self.c.state(self.c1)
            );
        }
        self.c_reads();
    }

    /// The APP step.
    fn app(&mut self, what: u8) {
        match what % 8 {
            0 => self.s_reads(),
            1 => self.c_sends(1024),
            2 => self.s_sends(1024),
            3 => {
                self.accept_all();
                for c in self.accepted.drain(..) {
                    self.s.release(c).expect("release an accepted connection");
                }
            }
            4 => {
                for c in self.accepted.drain(..) {
                    self.s.abort(c).expect("abort an accepted connection");
                }
            }
            5 => {
                let _ = self.c.close(self.c2);
            }
            6 => match self.l7001.take() {
                Some(l) => self.s.unlisten(l).expect("unlisten 7001"),
                None => {
                    // May fail when every socket is in use: that is an answer, not a bug.
                    self.l7001 = self.s.listen(PORT_E2, usize::from(what >> 3 & 3) + 1).ok();
                }
            },
            _ => {
                if let Some(c) = self.s3.take() {
                    self.s.release(c).expect("release E3");
                }
            }
        }
        self.settle();
    }

    /// Accepts what waits on S's listeners (bounded by the sockets).
    fn accept_all(&mut self) {
        let ls: Vec<ListenerId> = [Some(self.l7000), self.l7001]
            .into_iter()
            .flatten()
            .collect();
        for l in ls {
            while let Ok(Some(c)) = self.s.accept(l) {
                self.accepted.push(c);
                assert!(self.accepted.len() <= self.s.config().sockets_max);
            }
        }
    }

    /// Releases accepted connections that are over.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.accepted.len() {
            let c = self.accepted[i];
            if matches!(
                self.s.state(c),
                Ok(ConnState::Closed) | Err(ConnError::Stale)
            ) {
                let _ = self.s.release(c);
                self.accepted.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// A LIVE segment of flow `sel`: current numbers, plain ACK.
    fn live(&self, sel: u8) -> Vec<u8> {
        let (key, ends) = match sel % 8 {
            0 => (
                self.e1_key,
                self.ends_from_c(self.e1_key.peer_port, PORT_E1),
            ),
            1 => (
                self.e2_key,
                self.ends_from_c(self.e2_key.peer_port, PORT_E2),
            ),
            2 => (self.e3_key, self.ends_from_c(PORT_E3, self.e3_key.port)),
            3 => {
                let k = Key {
                    peer: IP_M,
                    peer_port: PORT_H,
                    port: PORT_E1,
                };
                (k, self.ends_from_m(PORT_H, PORT_E1))
            }
            4 => (self.ss_key, self.ends_from_m(80, self.ss_key.port)),
            5 => {
                let port = 50000 + u16::from(sel >> 3);
                let k = Key {
                    peer: IP_M,
                    peer_port: port,
                    port: PORT_E2,
                };
                (k, self.ends_from_m(port, PORT_E2))
            }
            6 => (
                self.refused_key,
                self.ends_from_c(PORT_REFUSED, self.refused_key.port),
            ),
            _ => {
                let k = Key {
                    peer: IP_C,
                    peer_port: self.e1_key.peer_port,
                    port: 7002,
                };
                (k, self.ends_from_c(k.peer_port, 7002))
            }
        };
        let tr = self.s.device().get(key);
        let seq = tr.peer_nxt.unwrap_or(ISN_M.wrapping_add(u32::from(sel)));
        // What the real peer acknowledged (a duplicate ACK), else all S sent.
        let ack = tr.peer_ack.or(tr.s_nxt).unwrap_or(0);
        let win = if tr.peer_win == 0 { 1024 } else { tr.peer_win };
        wire::build_tcp(&ends, seq, ack, ACK, win, &[], &[])
    }

    /// The FLOOD step.
    fn flood(&mut self, count: u8, port: u16, to: u16) {
        for i in 0..=usize::from(count % 64) {
            let ip = Ipv4Addr::new(10, 0, 0, 3 + (i % 4) as u8);
            let e = Ends {
                src_mac: [0x02, 0, 0, 0, 0, 3 + (i % 4) as u8],
                dst_mac: self.s_mac,
                src: ip,
                dst: IP_S,
                sport: port.wrapping_add(i as u16),
                dport: to,
            };
            let f = wire::build_tcp(&e, (i as u32) << 20, 0, SYN, 8192, &[2, 4, 5, 0xb4], &[]);
            self.s.device_mut().push(&f);
        }
        self.settle();
    }

    /// The end: clean network, more data both ways, and E1 must carry it all unless tainted.
    fn finish(&mut self) {
        self.s.device_mut().inject.clear();
        self.c_sent = self.c_sent.max(SCENE_BYTES);
        let c_target = self.c_sent + FINAL_BYTES;
        let s_target = self.s_sent + FINAL_BYTES;
        if self.s.device().trace {
            eprintln!("input done at {:?}, {} polls", self.now, self.polls);
        }
        // A budget of its own: the input's may be spent.
        self.polls = 0;
        // A tainted E1 need not recover: run a little for the other checks.
        let limit = Duration::from_secs(if self.taint.is_some() { 30 } else { 1200 });
        let start = self.now;
        let end = start + limit;
        let mut done = false;
        // Past the poll budget, `run_until` jumps the clock a second at a time.
        while !done && self.now < end {
            let step = Duration::from_secs(1).min(end.saturating_duration_since(self.now));
            self.run_until(step, |r| {
                r.c_sends(c_target - r.c_sent);
                r.s_sends(s_target - r.s_sent);
                r.s_reads();
                r.c_reads();
                r.accept_all();
                r.reap();
            });
            done = self.s_got == c_target && self.c_got == s_target;
        }
        if self.s.device().trace {
            eprintln!("end at {:?}, {} polls, done {done}", self.now, self.polls);
        }
        if done || self.taint.is_some() {
            return;
        }
        panic!(
            "E1 did not recover after the input (no frame that could legitimately break it was \
             injected): after {:?} of clean network S read {} of {} bytes, C read {} of {}; \
             S {:?} (send queue {:?}), C {:?} (send queue {:?}); S {:?}",
            self.now.saturating_duration_since(start),
            self.s_got,
            c_target,
            self.c_got,
            s_target,
            self.s.state(self.s1),
            self.s.send_queue(self.s1),
            self.c.state(self.c1),
            self.c.send_queue(self.c1),
            self.s.stats(),
        );
    }
}

/// Applies `n` patches from the input to `f`.
fn patch(f: &mut Vec<u8>, input: &mut Input<'_>, n: u8) {
    for _ in 0..n {
        if input.done() {
            return;
        }
        let tag = input.u8() % 17;
        let tcp = wire::parse_tcp(f);
        match (tag, tcp) {
            (0, Some(t)) => f[t.tcp_at + 13] = input.u8(),
            (1, Some(t)) => {
                let v = t.seq.wrapping_add(input.i32() as u32);
                f[t.tcp_at + 4..t.tcp_at + 8].copy_from_slice(&v.to_be_bytes());
            }
            (2, Some(t)) => {
                let v = t.ack.wrapping_add(input.i32() as u32);
                f[t.tcp_at + 8..t.tcp_at + 12].copy_from_slice(&v.to_be_bytes());
            }
            (3, Some(t)) => {
                let v = input.u16();
                f[t.tcp_at + 14..t.tcp_at + 16].copy_from_slice(&v.to_be_bytes());
            }
            (4, Some(t)) => {
                let n = input.u8() % 5;
                let blocks: Vec<(u32, u32)> = (0..n)
                    .map(|_| {
                        let (l, r) = (input.i32(), input.i32());
                        (t.ack.wrapping_add(l as u32), t.ack.wrapping_add(r as u32))
                    })
                    .collect();
                wire::set_options(f, &wire::sack_option(&blocks));
            }
            (5, Some(_)) => {
                let len = usize::from(input.u8() % 41);
                let o = input.bytes(len).to_vec();
                wire::set_options(f, &o);
            }
            (6, Some(_)) => {
                let len = usize::from(input.u16()) % 1461;
                let src = input.bytes(len);
                let p: Vec<u8> = if src.is_empty() {
                    vec![0x55; len]
                } else {
                    src.iter().copied().cycle().take(len).collect()
                };
                wire::set_payload(f, &p);
            }
            (7, _) => {
                let (at, v) = (usize::from(input.u8() % 20), input.u8());
                if let Some(b) = f.get_mut(wire::ETH_LEN + at) {
                    *b = v;
                }
            }
            (8, _) => {
                let (at, v) = (usize::from(input.u16()), input.u8());
                if !f.is_empty() {
                    let len = f.len();
                    f[at % len] = v;
                }
            }
            (9, _) => {
                let len = usize::from(input.u16()) % (f.len() + 1);
                f.truncate(len);
            }
            (10, Some(t)) => {
                let (s, d) = (input.u16(), input.u16());
                f[t.tcp_at..t.tcp_at + 2].copy_from_slice(&s.to_be_bytes());
                f[t.tcp_at + 2..t.tcp_at + 4].copy_from_slice(&d.to_be_bytes());
            }
            (11, Some(t)) => {
                let v = input.u8();
                f[t.tcp_at + 12] = (v << 4) | (f[t.tcp_at + 12] & 0x0f);
            }
            (12, Some(t)) => {
                let v = input.u16();
                f[t.tcp_at + 13] |= wire::URG;
                f[t.tcp_at + 18..t.tcp_at + 20].copy_from_slice(&v.to_be_bytes());
            }
            (13, _) => {
                let v = input.u8();
                if let Some(b) = f.get_mut(wire::ETH_LEN + 15) {
                    *b = v;
                }
            }
            (14, Some(_)) => {
                let v = input.u16().to_be_bytes();
                wire::set_options(f, &[2, 4, v[0], v[1]]);
            }
            (15, Some(_)) => {
                let v = input.u8();
                wire::set_options(f, &[1, 3, 3, v]);
            }
            (16, Some(_)) => {
                let (a, b) = (input.u32().to_be_bytes(), input.u32().to_be_bytes());
                let mut o = vec![1, 1, 8, 10];
                o.extend_from_slice(&a);
                o.extend_from_slice(&b);
                wire::set_options(f, &o);
            }
            // A TCP patch on a frame that is not TCP: skip its value.
            (1 | 2 | 16, None) => {
                input.u32();
            }
            (3 | 10 | 12 | 14, None) => {
                input.u16();
            }
            _ => {
                input.u8();
            }
        }
    }
}

/// Seals a patched frame as the op byte says.
fn seal(f: &mut [u8], op: u8) {
    if op & 8 == 0 {
        wire::reseal(f, op & 16 == 0);
    }
}

fn run(data: &[u8], opts: Opts) {
    let mut rig = Rig::new(opts);
    let captured = rig.s.device().to_s.clone();
    let mut input = Input::new(data);
    for _ in 0..STEPS_MAX {
        if input.done() {
            break;
        }
        let op = input.u8();
        match op & 7 {
            0 => {
                let len = usize::from(input.u16());
                let f = input.bytes(len).to_vec();
                rig.inject(&f);
            }
            1 => {
                let fix = input.u8();
                let len = usize::from(input.u16());
                let mut f = Vec::with_capacity(wire::ETH_LEN + len);
                f.extend_from_slice(&rig.s_mac);
                f.extend_from_slice(&rig.c_mac);
                f.extend_from_slice(&wire::ETHERTYPE_IPV4.to_be_bytes());
                f.extend_from_slice(input.bytes(len));
                if f.len() >= wire::ETH_LEN + 20 {
                    let ip_len = (f.len() - wire::ETH_LEN).min(0xffff) as u16;
                    if fix & 1 != 0 {
                        f[wire::ETH_LEN + 2..wire::ETH_LEN + 4]
                            .copy_from_slice(&ip_len.to_be_bytes());
                    }
                    if fix & 6 == 6 {
                        wire::reseal(&mut f, false);
                    } else if fix & 2 != 0 {
                        let ihl = usize::from(f[wire::ETH_LEN] & 0x0f) * 4;
                        if ihl >= 20 && wire::ETH_LEN + ihl <= f.len() {
                            f[wire::ETH_LEN + 10..wire::ETH_LEN + 12].fill(0);
                            let c = wire::checksum(0, &f[wire::ETH_LEN..wire::ETH_LEN + ihl]);
                            f[wire::ETH_LEN + 10..wire::ETH_LEN + 12]
                                .copy_from_slice(&c.to_be_bytes());
                        }
                    }
                }
                rig.inject(&f);
            }
            2 => {
                let idx = usize::from(input.u8());
                let n = input.u8();
                let mut f = captured[idx % captured.len()].clone();
                patch(&mut f, &mut input, n);
                seal(&mut f, op);
                rig.inject(&f);
            }
            3 => {
                let sel = input.u8();
                let n = input.u8();
                let mut f = rig.live(sel);
                patch(&mut f, &mut input, n);
                seal(&mut f, op);
                rig.inject(&f);
            }
            4 => {
                let unit = [1, 100, 10_000, 1_000_000][usize::from(op >> 3 & 3)];
                let d = Duration::from_micros(u64::from(input.u16()) * unit);
                rig.run_until(d, |r| {
                    r.c_reads();
                    r.c_drain(r.c2);
                    r.c_drain(r.c3);
                });
            }
            5 => {
                let what = input.u8();
                rig.app(what);
            }
            6 => {
                let (count, port) = (input.u8(), input.u16());
                let to = if op & 8 != 0 { PORT_E2 } else { PORT_E1 };
                rig.flood(count, port, to);
            }
            _ => {
                let (arp_op, sender, mac, target) =
                    (input.u8(), input.u8(), input.u8(), input.u8());
                let dst = if arp_op & 8 != 0 {
                    rig.s_mac
                } else {
                    wire::BROADCAST
                };
                let f = wire::build_arp(
                    dst,
                    u16::from(arp_op & 3),
                    [0x02, 0, 0, 0, 0, mac],
                    Ipv4Addr::new(10, 0, 0, sender),
                    [0; 6],
                    Ipv4Addr::new(10, 0, 0, target),
                );
                rig.inject(&f);
            }
        }
        rig.reap();
    }
    rig.finish();
}

/// Writes seed inputs into `dir`: the captured frames as RAW steps, REPLAY steps, and LIVE
/// steps of the kinds the checks care about.
fn write_seeds(dir: &str) {
    let rig = Rig::new(Opts::default());
    let to_s = &rig.s.device().to_s;
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    let raw = |f: &[u8]| {
        let mut v = vec![0u8];
        v.extend_from_slice(&(f.len() as u16).to_le_bytes());
        v.extend_from_slice(f);
        v
    };
    let time_1ms = [4 | (1 << 3), 10, 0];
    // The captured frames by kind (the first of each).
    let mut kinds: Vec<&str> = Vec::new();
    for f in to_s {
        let kind = match (wire::parse_tcp(f), wire::parse_arp(f)) {
            (Some(t), _) if t.has(RST) => "rst",
            (Some(t), _) if t.has(SYN) && t.has(ACK) => "syn_ack",
            (Some(t), _) if t.has(SYN) => "syn",
            (Some(t), _) if t.has(FIN) => "fin",
            (Some(t), _) if wire::has_sack_blocks(f, &t) => "ack_sack",
            (Some(t), _) if t.payload_len > 0 => "data",
            (Some(_), _) => "ack",
            (None, Some(_)) => "arp",
            _ => "other",
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
            let mut s = raw(f);
            s.extend_from_slice(&time_1ms);
            seeds.push((format!("captured_{kind}"), s));
        }
    }
    // Every captured frame, replayed as is, then time for the stacks to answer.
    let mut all = Vec::new();
    for i in 0..to_s.len().min(255) {
        all.extend_from_slice(&[2, i as u8, 0]);
    }
    all.extend_from_slice(&time_1ms);
    seeds.push(("replay_all".into(), all));
    let live = |flow: u8, patches: &[u8]| {
        let mut v = vec![3, flow, 0];
        let mut n = 0;
        let mut rest = Vec::new();
        let mut i = 0;
        while i < patches.len() {
            let len = patches[i] as usize;
            rest.extend_from_slice(&patches[i + 1..i + 1 + len]);
            n += 1;
            i += 1 + len;
        }
        v[2] = n;
        v.extend_from_slice(&rest);
        v
    };
    let i32b = |x: i32| x.to_le_bytes();
    let mut sack = vec![4u8, 3];
    for (l, r) in [(1460, 2920), (2920, 1460), (-100_000, 100_000)] {
        sack.extend_from_slice(&i32b(l));
        sack.extend_from_slice(&i32b(r));
    }
    let mut sack_patch = vec![sack.len() as u8];
    sack_patch.extend_from_slice(&sack);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("live_e1_ack", live(0, &[])),
        ("live_e1_sack_odd_blocks", live(0, &sack_patch)),
        ("live_e1_rst_exact", live(0, &[2, 0, RST])),
        (
            "live_e1_rst_in_window",
            live(0, &[2, 0, RST | ACK, 5, 1, 100, 0, 0, 0]),
        ),
        ("live_e1_syn", live(0, &[2, 0, SYN | ACK])),
        (
            "live_e1_data",
            live(
                0,
                &[
                    2,
                    0,
                    ACK | 8,
                    19,
                    6,
                    16,
                    0,
                    b'i',
                    b'n',
                    b'j',
                    b'e',
                    b'c',
                    b't',
                    b'e',
                    b'd',
                    b' ',
                    b'b',
                    b'y',
                    b't',
                    b'e',
                    b's',
                    b'!',
                    b'\n',
                ],
            ),
        ),
        ("live_e1_ack_ahead", live(0, &[5, 2, 0x00, 0x10, 0, 0])),
        ("live_e2_fin", live(1, &[2, 0, FIN | ACK])),
        ("live_e3_ack", live(2, &[])),
        ("live_h_completes", live(3, &[])),
        ("live_ss_syn_ack", live(4, &[2, 0, SYN | ACK])),
        ("live_new_syn", live(5, &[2, 0, SYN])),
        ("live_refused_rst", live(6, &[2, 0, RST])),
        ("live_stray", live(7, &[2, 0, FIN | ACK])),
    ];
    for (name, mut s) in cases {
        s.extend_from_slice(&time_1ms);
        seeds.push((name.into(), s));
    }
    // The handshake of H completed, accepted, data, released; a flood; ARP for C's address;
    // E2 closed by C; a long quiet time.
    let mut h = live(3, &[]);
    h.extend_from_slice(&[5, 3]);
    seeds.push(("h_accept_release".into(), h));
    seeds.push((
        "flood".into(),
        vec![6, 63, 0x50, 0xc3, 4 | (2 << 3), 100, 0],
    ));
    seeds.push((
        "arp_spoof_c".into(),
        vec![7, 2, 1, 0x66, 2, 4 | (1 << 3), 10, 0],
    ));
    seeds.push(("app_close_e2".into(), vec![5, 5, 4 | (2 << 3), 200, 0]));
    seeds.push(("quiet_hour".into(), vec![4 | (3 << 3), 0x10, 0x0e]));
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
    |data: &[u8]| {
        static OPTS: std::sync::OnceLock<Opts> = std::sync::OnceLock::new();
        run(data, *OPTS.get_or_init(Opts::from_env));
    }
);

//! Scripted TCP exchanges in virtual time: a real [`Stack`] on one port of the simulated link,
//! and on the other a peer written here that reads and writes raw Ethernet / ARP / IPv4 / TCP
//! frames (`common::frames`). The peer answers ARP for the addresses it owns, and otherwise
//! does exactly what each script says: it loses segments, acknowledges with or without SACK
//! blocks, stays silent, never completes a handshake, or sends RSTs and SYNs into a connection.
//! Each script asserts every segment the stack emits (flags, sequence numbers, lengths) and,
//! where the behaviour is about time, when it leaves relative to `TcpConfig::rto_min`.
//!
//! 1. SACK: ten segments, the fourth lost; one ACK per segment that arrived, with SACK blocks:
//!    exactly the fourth comes back, at once.
//! 2. NewReno (no SACK): two segments lost; the third duplicate ACK brings the first back, the
//!    partial ACK that follows its repair brings the second back at once (no timeout).
//! 3. Retransmission timeout: the peer drops everything; the first unacknowledged segment is
//!    resent at intervals that double from `rto_min`; the peer answers again, the transfer
//!    resumes at once and completes with the right bytes, and a later loss is repaired without
//!    the backed-off timer.
//! 4. Half-open connections: a SYN-RECEIVED socket resends its SYN|ACK
//!    `TcpConfig::synack_retries` times, gives up and takes the next connection; a SYN from an
//!    address that never answers ARP frees its socket once the neighbor is unreachable; a SYN
//!    that finds the backlog full evicts the oldest half-open connection.
//! 5. RFC 5961: an in-window RST not at RCV.NXT and a SYN on an established connection get a
//!    challenge ACK and do not reset it; a RST at RCV.NXT does.
//!
//! 6. Floods: a socket freed from a half-open connection answers the next SYN at once; a
//!    SYN on an established flow reaches its connection, not a listener; an evicted half-open
//!    connection keeps its counters; SYNs from a hundred addresses that answer ARP do not push
//!    an established peer out of the neighbor cache.
//!
//! Several of these found bugs (listed in `vendor/smoltcp/PATCHES.md`, patch 12). The whole
//! file runs in well under a second of real time.

mod common;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::frames::{self as fr, Ends, Tcp, ACK, FIN, PSH, RST, SYN};
use common::{sim_stack_config, Pattern, IP_A, IP_B};
use ustack::dev::sim::{SimConfig, SimLink, SimPort};
use ustack::stack::{ConnError, ConnId, ConnState, ListenerId, Stack, StackConfig};
use ustack::{Batch, Frame, Instant, PacketDevice, PoolBuf};

/// The scripted peer's MAC (for `IP_B` and the other addresses it answers ARP for).
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb2];
/// The link's one-way latency: every frame arrives this long after it was sent.
const LATENCY: Duration = Duration::from_micros(10);
/// The stack's MSS on the simulated link (MTU 1500) and the peer's.
const MSS: usize = 1460;
const PORT: u16 = 7000;
/// The peer's initial sequence number.
const PEER_ISN: u32 = 0x1000_0000;
/// The peer's receive window as it advertises it, and its window scale: 512 KiB.
const PEER_WINDOW: u16 = 8192;
const PEER_SHIFT: u8 = 6;
/// The window on the peer's SYN or SYN|ACK, which is never scaled (RFC 7323).
const PEER_SYN_WINDOW: u16 = u16::MAX;
const US: Duration = Duration::from_micros(1);

/// A TCP segment the stack sent, as the peer received it.
#[derive(Clone, Debug)]
struct Seg {
    /// When it reached the peer (it left the stack [`LATENCY`] earlier).
    at: Instant,
    t: Tcp,
    payload: Vec<u8>,
    sack: Vec<(u32, u32)>,
    mss: Option<u16>,
    shift: Option<u8>,
    sack_ok: bool,
}

impl Seg {
    fn parse(at: Instant, f: &[u8]) -> Option<Seg> {
        let t = fr::parse_tcp(f)?;
        assert!(
            fr::sealed(f),
            "the stack sent a bad checksum or length: {}",
            fr::describe(f)
        );
        Some(Seg {
            at,
            t,
            payload: fr::payload(f, &t).to_vec(),
            sack: fr::sack_blocks(f, &t),
            mss: fr::mss(f, &t),
            shift: fr::window_scale(f, &t),
            sack_ok: fr::sack_permitted(f, &t),
        })
    }

    /// When the stack sent it.
    fn sent(&self) -> Instant {
        before(self.at, LATENCY)
    }

    fn len(&self) -> usize {
        self.payload.len()
    }

    /// Flags and numbers, for failure messages.
    fn line(&self) -> String {
        let mut flags = String::new();
        for (bit, c) in [(SYN, 'S'), (FIN, 'F'), (RST, 'R'), (PSH, 'P'), (ACK, '.')] {
            if self.t.has(bit) {
                flags.push(c);
            }
        }
        format!(
            "at {:?} {}:{} [{flags}] seq {} ack {} win {} len {}{}",
            self.at,
            self.t.dport,
            self.t.sport,
            self.t.seq,
            self.t.ack,
            self.t.window,
            self.len(),
            if self.sack.is_empty() {
                String::new()
            } else {
                format!(" sack {:?}", self.sack)
            }
        )
    }
}

/// The instant `d` before `t`.
fn before(t: Instant, d: Duration) -> Instant {
    Instant::from_micros(t.as_micros() - d.as_micros() as u64)
}

fn lines(segs: &[Seg]) -> String {
    segs.iter().map(|s| s.line() + "\n").collect()
}

/// The stack under test on port A of a simulated link, and the scripted peer on port B.
struct Rig {
    link: SimLink,
    stack: Stack<SimPort>,
    port: SimPort,
    now: Instant,
    rx: Batch<PoolBuf>,
    tx: Batch<PoolBuf>,
    /// Addresses the peer answers ARP requests for.
    owns: Vec<Ipv4Addr>,
    /// ARP requests the stack sent: when they arrived and the address asked for.
    arp_requests: Vec<(Instant, Ipv4Addr)>,
    /// TCP segments that arrived and the script has not taken yet.
    inbox: VecDeque<Seg>,
    /// When the stack was last polled.
    polled: Instant,
}

impl Rig {
    fn new(configure: impl FnOnce(&mut StackConfig)) -> Rig {
        let sim = SimConfig {
            latency: LATENCY,
            ..SimConfig::default()
        };
        let (link, a, port) = SimLink::new(sim).expect("sim link");
        let mut cfg = sim_stack_config(IP_A, 11);
        configure(&mut cfg);
        let stack = Stack::new(a, cfg).expect("stack");
        Rig {
            link,
            stack,
            port,
            now: Instant::ZERO,
            rx: Batch::with_capacity(64),
            tx: Batch::with_capacity(64),
            owns: vec![IP_B],
            arp_requests: Vec::new(),
            inbox: VecDeque::new(),
            polled: Instant::ZERO,
        }
    }

    fn rto_min(&self) -> Duration {
        self.stack.config().tcp.rto_min
    }

    /// Sends a frame from the peer now.
    fn send(&mut self, frame: &[u8]) {
        let mut buf = self.port.tx_alloc().expect("a peer buffer");
        assert!(buf.set_len(frame.len()));
        buf.data_mut().copy_from_slice(frame);
        assert!(self.tx.push(buf).is_ok());
        assert_eq!(self.port.tx_burst(self.now, &mut self.tx), 1);
    }

    /// Takes the frames that reached the peer by now: answers ARP for its addresses, notes
    /// every request, and keeps TCP segments for the script.
    fn receive(&mut self) {
        while self.port.rx_burst(self.now, &mut self.rx) > 0 {
            while let Some(f) = self.rx.pop() {
                let f = f.data().to_vec();
                if let Some(arp) = fr::parse_arp(&f) {
                    if arp.op == 1 {
                        self.arp_requests.push((self.now, arp.target_ip));
                        if self.owns.contains(&arp.target_ip) {
                            self.send(&fr::arp_reply(&arp, PEER_MAC));
                        }
                    }
                } else if let Some(seg) = Seg::parse(self.now, &f) {
                    self.inbox.push_back(seg);
                } else {
                    panic!("the stack sent something else: {}", fr::describe(&f));
                }
            }
        }
    }

    /// One turn: polls the stack and takes what reached the peer; when nothing happened,
    /// moves the clock to the next event (at most to `until`). Returns `false` once the clock
    /// is at `until` with nothing left to do by then.
    fn step(&mut self, until: Instant) -> bool {
        self.polled = self.now;
        let busy = self.stack.poll(self.now);
        self.receive();
        if busy || !self.inbox.is_empty() {
            return true;
        }
        let next = [self.stack.poll_at(self.now), self.link.next_delivery()]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(t) if t <= until => {
                self.now = t.max(self.now + US);
                true
            }
            _ => {
                self.now = self.now.max(until);
                false
            }
        }
    }

    /// Runs the stack and the wire until a segment reaches the peer (returned) or `until`
    /// passes (`None`; the clock is then at `until`).
    fn next(&mut self, until: Instant) -> Option<Seg> {
        loop {
            if let Some(s) = self.inbox.pop_front() {
                return Some(s);
            }
            if !self.step(until) {
                return self.inbox.pop_front();
            }
        }
    }

    /// Every segment that reaches the peer until `until`.
    fn all_until(&mut self, until: Instant) -> Vec<Seg> {
        std::iter::from_fn(|| self.next(until)).collect()
    }

    /// The next segment, which must come before `until`.
    fn expect(&mut self, until: Instant, what: &str) -> Seg {
        let now = self.now;
        self.next(until)
            .unwrap_or_else(|| panic!("{what}: nothing from the stack from {now:?} to {until:?}"))
    }

    /// Runs the stack until `until` with nothing sent to the peer, then asserts nothing came.
    fn quiet_until(&mut self, until: Instant, what: &str) {
        let got = self.all_until(until);
        assert!(got.is_empty(), "{what}: the stack sent\n{}", lines(&got));
    }

    /// Runs the stack until `pred` holds (checked after every poll) or `until` passes, and
    /// returns the time of the poll after which it held. Segments that arrive meanwhile are
    /// kept for the script.
    fn until(
        &mut self,
        until: Instant,
        mut pred: impl FnMut(&mut Stack<SimPort>) -> bool,
    ) -> Option<Instant> {
        if pred(&mut self.stack) {
            return Some(self.now);
        }
        loop {
            let more = self.step(until);
            if pred(&mut self.stack) {
                return Some(self.polled);
            }
            if !more {
                return None;
            }
        }
    }

    fn after(&self, d: Duration) -> Instant {
        self.now + d
    }
}

/// One connection as the peer sees it.
struct Conn {
    /// The peer's end as the sender of its segments (to the stack).
    ends: Ends,
    /// The stack's handle.
    id: ConnId,
    /// The stack's first data byte's sequence number.
    base: u32,
    /// The peer's next sequence number.
    peer_nxt: u32,
    /// What the peer acknowledged last.
    acked: u32,
}

impl Conn {
    /// A segment from the peer, acknowledging `ack`.
    fn segment(&self, flags: u8, seq: u32, ack: u32, opts: &[u8], payload: &[u8]) -> Vec<u8> {
        fr::build_tcp(&self.ends, seq, ack, flags, PEER_WINDOW, opts, payload)
    }

    /// An ACK from the peer of everything up to `ack`, with SACK `blocks`.
    fn ack(&mut self, ack: u32, blocks: &[(u32, u32)]) -> Vec<u8> {
        self.acked = ack;
        let opts = if blocks.is_empty() {
            Vec::new()
        } else {
            fr::sack_option(blocks)
        };
        self.segment(ACK, self.peer_nxt, ack, &opts, &[])
    }

    /// The sequence number of the stack's byte `offset`.
    fn seq(&self, offset: usize) -> u32 {
        self.base.wrapping_add(offset as u32)
    }

    /// The stack's segment `i` of a run of full-sized ones: (sequence number, end).
    fn mss_seg(&self, i: usize) -> (u32, u32) {
        (self.seq(i * MSS), self.seq((i + 1) * MSS))
    }
}

/// The peer's end of a flow from `sport` on `ip` to the stack's `PORT`.
fn peer_ends(rig: &Rig, ip: Ipv4Addr, mac: [u8; 6], sport: u16) -> Ends {
    Ends {
        src_mac: mac,
        dst_mac: rig.stack.mac().0,
        src: ip,
        dst: IP_A,
        sport,
        dport: PORT,
    }
}

/// Options the peer puts on its SYN or SYN|ACK.
fn peer_syn_options(sack: bool) -> Vec<u8> {
    fr::syn_options(MSS as u16, Some(PEER_SHIFT), sack)
}

/// The stack connects to the peer; the peer answers the SYN (offering SACK if `sack`).
fn stack_connects(rig: &mut Rig, sack: bool) -> Conn {
    let id = rig
        .stack
        .connect(SocketAddrV4::new(IP_B, PORT))
        .expect("connect");
    let syn = rig.expect(rig.after(Duration::from_millis(1)), "the stack's SYN");
    assert!(
        syn.t.has(SYN) && !syn.t.has(ACK) && syn.len() == 0,
        "{}",
        syn.line()
    );
    assert_eq!(syn.t.dport, PORT);
    assert_eq!(
        syn.mss,
        Some(MSS as u16),
        "SYN offers the MSS: {}",
        syn.line()
    );
    assert!(
        syn.shift.is_some() && syn.sack_ok,
        "SYN offers window scaling and SACK"
    );
    let ends = Ends {
        src_mac: PEER_MAC,
        dst_mac: rig.stack.mac().0,
        src: IP_B,
        dst: IP_A,
        sport: PORT,
        dport: syn.t.sport,
    };
    let base = syn.t.seq.wrapping_add(1);
    let mut c = Conn {
        ends,
        id,
        base,
        peer_nxt: PEER_ISN.wrapping_add(1),
        acked: base,
    };
    let synack = fr::build_tcp(
        &ends,
        PEER_ISN,
        base,
        SYN | ACK,
        PEER_SYN_WINDOW,
        &peer_syn_options(sack),
        &[],
    );
    rig.send(&synack);
    let ack = rig.expect(rig.after(Duration::from_millis(1)), "the handshake's ACK");
    assert!(
        ack.t.flags == ACK && ack.t.seq == base && ack.t.ack == c.peer_nxt && ack.len() == 0,
        "{}",
        ack.line()
    );
    assert_eq!(rig.stack.state(id), Ok(ConnState::Established));
    c.acked = base;
    c
}

/// The peer connects to the stack's listener from `sport` and completes the handshake.
fn peer_connects(rig: &mut Rig, l: ListenerId, sport: u16, sack: bool) -> Conn {
    let ends = peer_ends(rig, IP_B, PEER_MAC, sport);
    let synack = syn_and_synack(rig, &ends, sack);
    let base = synack.t.seq.wrapping_add(1);
    let peer_nxt = PEER_ISN.wrapping_add(1);
    rig.send(&fr::build_tcp(
        &ends,
        peer_nxt,
        base,
        ACK,
        PEER_WINDOW,
        &[],
        &[],
    ));
    let until = rig.after(Duration::from_millis(1));
    let mut id = None;
    rig.until(until, |st| {
        id = st.accept(l).expect("accept");
        id.is_some()
    })
    .expect("the stack accepts the connection");
    let id = id.unwrap();
    assert_eq!(rig.stack.state(id), Ok(ConnState::Established));
    Conn {
        ends,
        id,
        base,
        peer_nxt,
        acked: base,
    }
}

/// The peer sends a SYN on `ends`; returns the stack's SYN|ACK (asserted to answer it).
fn syn_and_synack(rig: &mut Rig, ends: &Ends, sack: bool) -> Seg {
    rig.send(&fr::build_tcp(
        ends,
        PEER_ISN,
        0,
        SYN,
        PEER_SYN_WINDOW,
        &peer_syn_options(sack),
        &[],
    ));
    let s = rig.expect(rig.after(Duration::from_millis(5)), "the SYN|ACK");
    assert_synack(&s, ends);
    s
}

fn assert_synack(s: &Seg, ends: &Ends) {
    assert!(
        s.t.flags == SYN | ACK
            && s.t.ack == PEER_ISN.wrapping_add(1)
            && s.len() == 0
            && s.t.dst == ends.src
            && s.t.dport == ends.sport,
        "a SYN|ACK to {}:{}: {}",
        ends.src,
        ends.sport,
        s.line()
    );
}

/// `n` full-sized data segments from the stack, in order from byte `first * MSS`, all sent at
/// the same instant (one flight); returns them.
fn expect_flight(rig: &mut Rig, c: &Conn, first: usize, n: usize) -> Vec<Seg> {
    let until = rig.after(Duration::from_millis(1));
    let segs: Vec<Seg> = (0..n)
        .map(|i| rig.expect(until, &format!("data segment {}", first + i)))
        .collect();
    for (i, s) in segs.iter().enumerate() {
        let (seq, end) = c.mss_seg(first + i);
        assert!(
            s.t.seq == seq && s.t.seq.wrapping_add(s.len() as u32) == end && s.t.has(ACK),
            "segment {} should be [{seq}, {end}):\n{}",
            first + i,
            lines(&segs)
        );
        assert_eq!(s.at, segs[0].at, "one flight:\n{}", lines(&segs));
    }
    segs
}

fn pattern_bytes(offset: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    Pattern::new(5961).fill(offset as u64, &mut v);
    v
}

/// Asserts segment `s` is the stack's full-sized segment `i` again, with the right bytes.
fn assert_resent(s: &Seg, c: &Conn, i: usize, what: &str) {
    let (seq, _) = c.mss_seg(i);
    assert!(
        s.t.seq == seq && s.len() == MSS && !s.t.has(SYN | FIN | RST),
        "{what}: expected segment {i} again (seq {seq}, {MSS} bytes), got {}",
        s.line()
    );
    assert_eq!(s.payload, pattern_bytes(i * MSS, MSS), "{what}: its bytes");
}

/// The next segment, before `until`, must be the stack's full-sized segment `i` again, sent
/// as soon as the segment the peer sent at `trigger` arrived (in the poll that read it).
fn expect_repair(rig: &mut Rig, c: &Conn, i: usize, trigger: Instant, until: Instant, what: &str) {
    let s = rig.expect(until, what);
    assert_resent(&s, c, i, what);
    assert_eq!(s.sent(), trigger + LATENCY, "{what}: at once: {}", s.line());
}

/// The peer acknowledges the stack's `n` full-sized segments; the stack then sends nothing
/// more (no repair, no probe, no timeout) and has nothing left to send.
fn ack_all_then_quiet(rig: &mut Rig, c: &mut Conn, n: usize) {
    let f = c.ack(c.mss_seg(n - 1).1, &[]);
    rig.send(&f);
    rig.quiet_until(
        rig.after(10 * rig.rto_min()),
        "after everything was acknowledged",
    );
    assert_eq!(rig.stack.send_queue(c.id), Ok(0));
    let tcp = rig.stack.tcp_stats();
    assert_eq!(
        (tcp.rto_expirations, tcp.tail_loss_probes),
        (0, 0),
        "no timer fired: {tcp:?}"
    );
}

#[test]
fn frames_build_parse_and_checksum() {
    let e = Ends {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src: Ipv4Addr::new(10, 0, 0, 1),
        dst: Ipv4Addr::new(10, 0, 0, 2),
        sport: 1234,
        dport: 80,
    };
    let mut f = fr::build_tcp(
        &e,
        7,
        9,
        SYN | ACK,
        100,
        &fr::syn_options(1460, Some(7), true),
        b"hey",
    );
    assert!(fr::sealed(&f));
    let t = fr::parse_tcp(&f).unwrap();
    assert_eq!((t.seq, t.ack, t.flags, t.payload_len), (7, 9, SYN | ACK, 3));
    assert_eq!((t.src, t.dst, t.sport, t.dport), (e.src, e.dst, 1234, 80));
    assert_eq!(t.seq_len(), 4);
    assert_eq!(fr::mss(&f, &t), Some(1460));
    assert_eq!(fr::window_scale(&f, &t), Some(7));
    assert!(fr::sack_permitted(&f, &t));
    assert_eq!(fr::payload(&f, &t), b"hey");
    fr::set_options(&mut f, &fr::sack_option(&[(1, 2), (5, 9)]));
    fr::reseal(&mut f, true);
    fr::set_payload(&mut f, b"longer payload");
    assert!(!fr::sealed(&f), "patched: lengths and checksums are stale");
    fr::reseal(&mut f, true);
    assert!(fr::sealed(&f));
    let t = fr::parse_tcp(&f).unwrap();
    assert_eq!(fr::sack_blocks(&f, &t), vec![(1, 2), (5, 9)]);
    assert!(fr::has_sack_blocks(&f, &t) && !fr::sack_permitted(&f, &t));
    assert_eq!(fr::mss(&f, &t), None);
    assert_eq!(t.payload_len, 14);
    // One flipped bit anywhere in the IPv4 packet is caught.
    for i in fr::ETH_LEN..f.len() {
        let mut g = f.clone();
        g[i] ^= 0x10;
        assert!(!fr::sealed(&g), "byte {i}");
    }
    // RFC 1071's example: the one's complement sum of these words is 0xddf2.
    assert_eq!(
        fr::checksum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
        !0xddf2
    );
    let rev = e.reversed();
    assert_eq!(
        (rev.src, rev.sport, rev.dst_mac),
        (e.dst, e.dport, e.src_mac)
    );

    let req = fr::build_arp(fr::BROADCAST, 1, e.src_mac, e.src, [0; 6], e.dst);
    let a = fr::parse_arp(&req).unwrap();
    assert_eq!((a.op, a.sender_ip, a.target_ip), (1, e.src, e.dst));
    let reply = fr::parse_arp(&fr::arp_reply(&a, e.dst_mac)).unwrap();
    assert_eq!(
        (reply.op, reply.sender_mac, reply.sender_ip, reply.target_ip),
        (2, e.dst_mac, e.dst, e.src)
    );
    assert!(fr::parse_tcp(&req).is_none() && fr::parse_arp(&f).is_none());
}

/// The stack sends ten segments to a peer that offered SACK; the fourth is lost. The peer
/// acknowledges each segment that arrived (SACK blocks for those past the hole): exactly the
/// fourth is resent, at once (well before `rto_min`), and nothing else.
#[test]
fn sack_hole_gets_exactly_the_hole_retransmitted() {
    let mut rig = Rig::new(|_| {});
    let mut c = stack_connects(&mut rig, true);
    let total = 10 * MSS;
    assert_eq!(rig.stack.send(c.id, &pattern_bytes(0, total)), Ok(total));
    let flight = expect_flight(&mut rig, &c, 0, 10);
    let sent = flight[0].sent();
    // Segment 3 is lost; the others arrive and are acknowledged one by one.
    let hole = 3;
    for i in (0..10).filter(|&i| i != hole) {
        let f = if i < hole {
            c.ack(c.mss_seg(i).1, &[])
        } else {
            c.ack(
                c.mss_seg(hole).0,
                &[(c.mss_seg(hole + 1).0, c.mss_seg(i).1)],
            )
        };
        rig.send(&f);
    }
    // The ACKs reach the stack one latency after they leave; the repair leaves in the poll
    // that reads them, well before `rto_min`.
    let (acks_sent, until) = (rig.now, sent + rig.rto_min());
    expect_repair(&mut rig, &c, hole, acks_sent, until, "the hole");
    // The repair arrives; everything is acknowledged. Nothing else was or is sent.
    ack_all_then_quiet(&mut rig, &mut c, 10);
    let tcp = rig.stack.tcp_stats();
    assert_eq!(
        (tcp.segments_sent, tcp.retransmits_sack, tcp.retransmits()),
        (10, 1, 1),
        "{tcp:?}"
    );
}

/// A peer without SACK: ten segments go out and the third and sixth are lost. The peer
/// acknowledges segments 0 and 1, then gives `dups` duplicate ACKs (for segments 3, 4, 6, ...,
/// as they arrive). Returns the connection and when the duplicates left the peer.
fn newreno_two_holes(rig: &mut Rig, dups: usize) -> (Conn, Instant) {
    let mut c = stack_connects(rig, false);
    let total = 10 * MSS;
    assert_eq!(rig.stack.send(c.id, &pattern_bytes(0, total)), Ok(total));
    let flight = expect_flight(rig, &c, 0, 10);
    assert!(flight.iter().all(|s| s.sack.is_empty()));
    let hole = c.mss_seg(NEWRENO_HOLES.0).0;
    let mut acks = vec![c.mss_seg(0).1, c.mss_seg(1).1];
    acks.extend(std::iter::repeat_n(hole, dups));
    for a in acks {
        let f = c.ack(a, &[]);
        rig.send(&f);
    }
    (c, rig.now)
}

/// The segments [`newreno_two_holes`] loses.
const NEWRENO_HOLES: (usize, usize) = (2, 5);

/// [`newreno_two_holes`] with the six duplicate ACKs of a receiver: the first hole comes
/// back at once, and nothing else follows.
fn newreno_first_repair(rig: &mut Rig) -> Conn {
    let (c, dups_sent) = newreno_two_holes(rig, 6);
    let until = rig.after(Duration::from_millis(1));
    expect_repair(
        rig,
        &c,
        NEWRENO_HOLES.0,
        dups_sent,
        until,
        "the first repair",
    );
    // Nothing else: there is no new data, and the other hole is not known yet.
    rig.quiet_until(
        rig.after(Duration::from_micros(500)),
        "after the first repair",
    );
    c
}

/// The first hole comes back at once when the duplicate ACKs of the six segments that arrived
/// after it come in (one burst, as a receiver sends them), and nothing else is sent.
#[test]
fn newreno_duplicate_acks_resend_the_first_hole() {
    let mut rig = Rig::new(|_| {});
    let mut c = newreno_first_repair(&mut rig);
    ack_all_then_quiet(&mut rig, &mut c, 10);
    let tcp = rig.stack.tcp_stats();
    assert_eq!((tcp.retransmits_fast, tcp.retransmits()), (1, 1), "{tcp:?}");
}

/// RFC 5681 3.2: the third duplicate ACK resends the missing segment at once, whether or not
/// more duplicates follow (here the other three come 500 us later).
#[test]
fn newreno_third_duplicate_ack_resends_the_hole_at_once() {
    let mut rig = Rig::new(|_| {});
    let (mut c, dups_sent) = newreno_two_holes(&mut rig, 3);
    let until = rig.after(Duration::from_micros(500));
    expect_repair(
        &mut rig,
        &c,
        NEWRENO_HOLES.0,
        dups_sent,
        until,
        "three duplicate ACKs",
    );
    for _ in 0..3 {
        let f = c.ack(c.mss_seg(NEWRENO_HOLES.0).0, &[]);
        rig.send(&f);
    }
    rig.quiet_until(rig.after(Duration::from_micros(500)), "more duplicate ACKs");
}

/// After the first repair (as in [`newreno_duplicate_acks_resend_the_first_hole`]), the peer
/// holds segments 0-4 and acknowledges up to the second hole: that partial ACK brings the
/// second hole back at once, without waiting for a timeout (RFC 6582 3.2 step 5).
#[test]
fn newreno_partial_ack_retransmits_the_next_hole() {
    let mut rig = Rig::new(|_| {});
    let mut c = newreno_first_repair(&mut rig);
    // The repair arrives: the peer holds 0-4, and acknowledges up to the second hole.
    let partial = c.ack(c.mss_seg(NEWRENO_HOLES.1).0, &[]);
    rig.send(&partial);
    let partial_sent = rig.now;
    let until = rig.after(rig.rto_min());
    expect_repair(
        &mut rig,
        &c,
        NEWRENO_HOLES.1,
        partial_sent,
        until,
        "a partial ACK",
    );
    ack_all_then_quiet(&mut rig, &mut c, 10);
    let tcp = rig.stack.tcp_stats();
    assert_eq!((tcp.retransmits_fast, tcp.retransmits()), (2, 2), "{tcp:?}");
    assert_eq!(tcp.fast_recoveries, 1, "one recovery episode: {tcp:?}");
}

/// Interval `i` of `times` (from `times[i]` to `times[i + 1]`).
fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The stack (a server here) sends forty segments' worth; the peer drops everything for a
/// while. The first unacknowledged segment is resent at intervals that double, the first one
/// `rto_min` after the last transmission (a tail loss probe of the flight's last segment). Then the
/// peer answers again: the transfer resumes at once (every later segment leaves as an ACK
/// arrives, none on a timer) and completes with the right bytes. Finally one more segment
/// and its first repair are lost: the second repair comes within a few `rto_min`, so the
/// round-trip samples of the resumed transfer ended the back-off (it had reached 320 ms).
#[test]
fn rto_backs_off_and_recovers() {
    let mut rig = Rig::new(|_| {});
    let rto_min = rig.rto_min();
    let l = rig.stack.listen(PORT, 1).expect("listen");
    let mut c = peer_connects(&mut rig, l, 40000, true);
    let total = 40 * MSS;
    assert_eq!(rig.stack.send(c.id, &pattern_bytes(0, total)), Ok(total));
    let flight = expect_flight(&mut rig, &c, 0, 10);
    // The peer loses everything until six timeouts have passed.
    let probe = rig.expect(flight[0].at + rto_min, "a tail loss probe");
    assert!(
        probe.t.seq == c.mss_seg(9).0 && probe.len() == MSS,
        "the probe resends the flight's last segment: {}",
        probe.line()
    );
    let timeouts = 6;
    let mut sent = vec![probe.sent()];
    for k in 0..timeouts {
        let r = rig.expect(
            rig.after(rto_min * (2 << k)),
            &format!("retransmission {}", k + 1),
        );
        assert_resent(&r, &c, 0, &format!("retransmission {}", k + 1));
        sent.push(r.sent());
    }
    let gaps = gaps(&sent);
    assert!(
        gaps[0] >= rto_min && gaps[0] < rto_min + Duration::from_millis(1),
        "the first timeout is rto_min ({rto_min:?}) after the last transmission: {gaps:?}"
    );
    for w in gaps.windows(2) {
        let ratio = w[1].as_secs_f64() / w[0].as_secs_f64();
        assert!(
            (1.9..=2.1).contains(&ratio),
            "each timeout twice the last: {gaps:?}"
        );
    }
    let tcp = rig.stack.tcp_stats();
    assert_eq!(
        (
            tcp.rto_expirations,
            tcp.retransmits_rto,
            tcp.tail_loss_probes
        ),
        (timeouts as u64, timeouts as u64, 1),
        "{tcp:?}"
    );

    // The last retransmission arrives and the peer answers again, acknowledging each
    // in-order segment as it arrives (it kept nothing it dropped).
    let resumed = rig.now;
    let mut got = pattern_bytes(0, MSS);
    let mut nxt = c.mss_seg(1).0;
    rig.send(&c.ack(nxt, &[]));
    let mut acks_at = vec![rig.now];
    while got.len() < total {
        let s = rig.expect(
            resumed + rto_min,
            "the rest of the transfer, with no timeout",
        );
        assert!(
            acks_at.iter().any(|&a| a + LATENCY == s.sent()),
            "sent when an ACK arrived, not on a timer: {}",
            s.line()
        );
        if s.t.seq == nxt {
            got.extend_from_slice(&s.payload);
            nxt = nxt.wrapping_add(s.len() as u32);
        }
        rig.send(&c.ack(nxt, &[]));
        acks_at.push(rig.now);
    }
    assert!(
        got == pattern_bytes(0, total),
        "the bytes delivered are the bytes sent"
    );
    rig.quiet_until(rig.after(10 * rto_min), "after the transfer");
    let tcp = rig.stack.tcp_stats();
    assert_eq!(
        tcp.rto_expirations, timeouts as u64,
        "no timeout since: {tcp:?}"
    );

    // One more segment; it and its first repair are lost.
    let more = pattern_bytes(total, MSS);
    assert_eq!(rig.stack.send(c.id, &more), Ok(MSS));
    let first = rig.expect(rig.after(Duration::from_millis(1)), "one more segment");
    assert!(
        first.t.seq == nxt && first.payload == more,
        "{}",
        first.line()
    );
    let repair1 = rig.expect(first.at + 2 * rto_min, "its first repair");
    assert_eq!(repair1.t.seq, nxt, "{}", repair1.line());
    let repair2 = rig.expect(first.at + 4 * rto_min, "its second repair");
    assert!(
        repair2.t.seq == nxt && repair2.payload == more,
        "{}",
        repair2.line()
    );
    rig.send(&c.ack(nxt.wrapping_add(MSS as u32), &[]));
    rig.quiet_until(rig.after(10 * rto_min), "after the last repair");
    assert_eq!(rig.stack.send_queue(c.id), Ok(0));
}

/// A stack with one socket (`sockets_max`), listening on `PORT` with a backlog of one.
fn one_socket_listener(sockets: usize) -> (Rig, ListenerId) {
    let mut rig = Rig::new(|c| c.sockets_max = sockets);
    let l = rig.stack.listen(PORT, 1).expect("listen");
    (rig, l)
}

/// The peer's ACK completing the handshake that `synack` answered.
fn handshake_ack(ends: &Ends, synack: &Seg) -> Vec<u8> {
    let ack = synack.t.seq.wrapping_add(1);
    fr::build_tcp(
        ends,
        PEER_ISN.wrapping_add(1),
        ack,
        ACK,
        PEER_WINDOW,
        &[],
        &[],
    )
}

/// Asserts `s` is a RST answering a segment that acknowledged `ack` (RFC 793: its sequence
/// number is that acknowledgement) on the flow `ends`.
fn assert_rst(s: &Seg, ends: &Ends, ack: u32) {
    assert!(
        s.t.has(RST) && s.t.seq == ack && s.t.dport == ends.sport && s.len() == 0,
        "a RST to {}:{}: {}",
        ends.src,
        ends.sport,
        s.line()
    );
}

/// How the half-open connection of [`syn_received_gives_up_after_synack_retries`] ends when
/// the peer finally completes the handshake `late` after its first SYN|ACK.
fn late_handshake(late: Duration) -> (Rig, ListenerId, Ends, Vec<Seg>) {
    let (mut rig, l) = one_socket_listener(1);
    let ends = peer_ends(&rig, IP_B, PEER_MAC, 41000);
    let synack = syn_and_synack(&mut rig, &ends, true);
    let mut segs = vec![synack.clone()];
    segs.extend(rig.all_until(synack.sent() + late));
    rig.send(&handshake_ack(&ends, &synack));
    segs.extend(rig.all_until(rig.after(Duration::from_millis(1))));
    (rig, l, ends, segs)
}

/// A SYN-RECEIVED socket resends its SYN|ACK `TcpConfig::synack_retries` times (RTO from
/// 1 s, doubling), then gives up 7 s after the first: an ACK completing the handshake a moment
/// before that is taken, a moment after it gets a RST. The socket (the stack's only one) then
/// takes a new connection from another port.
#[test]
fn syn_received_gives_up_after_synack_retries() {
    let margin = Duration::from_millis(10);
    let give_up = Duration::from_secs(7);

    // Completed just in time: the handshake was still open.
    let (mut rig, l, ends, segs) = late_handshake(give_up - margin);
    let retries = usize::from(rig.stack.config().tcp.synack_retries);
    assert_eq!(retries, 2, "the default");
    assert_eq!(
        segs.len(),
        1 + retries,
        "SYN|ACKs and nothing else:\n{}",
        lines(&segs)
    );
    for s in &segs {
        assert_synack(s, &ends);
        assert_eq!(s.t.seq, segs[0].t.seq, "the same SYN|ACK again");
    }
    let sent: Vec<Instant> = segs.iter().map(Seg::sent).collect();
    assert_eq!(
        gaps(&sent),
        [Duration::from_secs(1), Duration::from_secs(2)],
        "the SYN|ACK's timeout starts at 1 s and doubles:\n{}",
        lines(&segs)
    );
    let c = rig.stack.accept(l).expect("accept");
    let c = c.expect("a handshake completed 10 ms before the give-up is accepted");
    assert_eq!(rig.stack.state(c), Ok(ConnState::Established));

    // Completed too late: the socket listens again and answers with a RST.
    let (mut rig, l, ends, segs) = late_handshake(give_up + margin);
    let (synacks, rest) = segs.split_at(1 + retries);
    assert!(
        synacks.iter().all(|s| s.t.flags == SYN | ACK),
        "{}",
        lines(&segs)
    );
    assert_eq!(
        rest.len(),
        1,
        "one answer to the late ACK:\n{}",
        lines(&segs)
    );
    assert_rst(&rest[0], &ends, synacks[0].t.seq.wrapping_add(1));
    assert_eq!(rig.stack.accept(l).expect("accept"), None);
    let tcp = rig.stack.tcp_stats();
    // (The socket also counts a handshake timeout, `Counters::handshake_timeouts` in the TCP
    // engine, which `TcpStats` does not sum yet.)
    assert_eq!(
        tcp.rto_expirations, retries as u64,
        "one per resend: {tcp:?}"
    );
    let st = rig.stack.stats();
    assert_eq!(
        (
            st.half_open_evicted,
            st.half_open_unreachable,
            st.rx_syn_backlog_full
        ),
        (0, 0, 0),
        "{st:?}"
    );
    // The only socket takes the next connection.
    let c = peer_connects(&mut rig, l, 41001, true);
    assert_eq!(rig.stack.send(c.id, b"hello"), Ok(5));
    let s = rig.expect(
        rig.after(Duration::from_millis(1)),
        "data on the new connection",
    );
    assert!(s.payload == b"hello" && s.t.seq == c.base, "{}", s.line());
}

/// A SYN from an address that never answers ARP: the stack asks three times, 250 ms apart,
/// never sends that address anything else, and gives the socket back as soon as the address
/// is deemed unreachable (250 ms after the last request). The socket then serves a real peer.
#[test]
fn half_open_to_an_address_without_arp_is_dropped_when_unreachable() {
    let (mut rig, l) = one_socket_listener(1);
    let ghost = Ipv4Addr::new(10, 0, 0, 77);
    let ends = peer_ends(&rig, ghost, [0x02, 0, 0, 0, 0, 0x77], 41000);
    rig.send(&fr::build_tcp(
        &ends,
        PEER_ISN,
        0,
        SYN,
        PEER_SYN_WINDOW,
        &peer_syn_options(true),
        &[],
    ));
    let syn_sent = rig.now;
    let freed = rig
        .until(rig.after(Duration::from_secs(3)), |st| {
            st.stats().half_open_unreachable > 0
        })
        .expect("the half-open connection is dropped");
    let asked: Vec<Instant> = rig
        .arp_requests
        .iter()
        .filter(|&&(_, ip)| ip == ghost)
        .map(|&(at, _)| at)
        .collect();
    assert_eq!(asked.len(), 3, "three ARP requests: {:?}", rig.arp_requests);
    let first_request = before(asked[0], LATENCY);
    assert_eq!(
        first_request,
        syn_sent + LATENCY,
        "asked when the SYN arrived"
    );
    assert_eq!(
        gaps(&asked),
        [Duration::from_millis(250); 2],
        "250 ms apart: {asked:?}"
    );
    assert_eq!(
        freed - first_request,
        Duration::from_millis(750),
        "dropped 250 ms after the last request"
    );
    // Nothing else went to that address, then or later.
    rig.quiet_until(rig.after(Duration::from_secs(3)), "after the drop");
    assert_eq!(rig.arp_requests.len(), 3, "{:?}", rig.arp_requests);
    let st = rig.stack.stats();
    assert_eq!(
        (st.half_open_unreachable, st.half_open_evicted),
        (1, 0),
        "{st:?}"
    );
    // The only socket takes a real connection.
    let c = peer_connects(&mut rig, l, 41001, true);
    assert_eq!(rig.stack.state(c.id), Ok(ConnState::Established));
}

/// Backlog one, two sockets: two SYNs nobody completes take both. Once both are past the
/// eviction grace (10 ms before any handshake was timed), a third SYN evicts the older
/// half-open connection at once (its SYN|ACK goes out without waiting); the younger survives
/// and completes; the evicted one's late ACK gets a RST.
#[test]
fn a_syn_finding_the_backlog_full_evicts_the_oldest_half_open() {
    let (mut rig, l) = one_socket_listener(2);
    let ends: Vec<Ends> = (41001..=41003)
        .map(|p| peer_ends(&rig, IP_B, PEER_MAC, p))
        .collect();
    let synack1 = syn_and_synack(&mut rig, &ends[0], true);
    rig.quiet_until(rig.after(Duration::from_millis(1)), "the first half-open");
    let synack2 = syn_and_synack(&mut rig, &ends[1], true);
    rig.quiet_until(
        rig.after(Duration::from_millis(11)),
        "both half-open past the grace",
    );
    assert_eq!(rig.stack.sockets_free(), 0);
    assert_eq!(rig.stack.stats().half_open_evicted, 0);
    // The third SYN is answered at once: the first half-open connection made room.
    let syn3_sent = rig.now;
    let synack3 = syn_and_synack(&mut rig, &ends[2], true);
    assert_eq!(synack3.sent(), syn3_sent + LATENCY, "{}", synack3.line());
    let st = rig.stack.stats();
    assert_eq!(
        (st.half_open_evicted, st.rx_syn_backlog_full),
        (1, 0),
        "{st:?}"
    );
    // The third and the second complete; the first is gone.
    let mut accepted = Vec::new();
    for (e, s) in [(&ends[2], &synack3), (&ends[1], &synack2)] {
        rig.send(&handshake_ack(e, s));
        let until = rig.after(Duration::from_millis(1));
        let mut c = None;
        rig.until(until, |st| {
            c = st.accept(l).expect("accept");
            c.is_some()
        })
        .unwrap_or_else(|| panic!("the handshake from port {} completes", e.sport));
        let c = c.unwrap();
        assert_eq!(
            rig.stack.remote_addr(c),
            Ok(Some(SocketAddrV4::new(e.src, e.sport)))
        );
        accepted.push(c);
    }
    rig.send(&handshake_ack(&ends[0], &synack1));
    let rst = rig.expect(
        rig.after(Duration::from_millis(1)),
        "an answer to the evicted",
    );
    assert_rst(&rst, &ends[0], synack1.t.seq.wrapping_add(1));
    rig.quiet_until(rig.after(Duration::from_millis(10)), "after the RST");
    assert_eq!(rig.stack.stats().half_open_evicted, 1);
}

/// A burst of real clients: two half-open connections fill the listener (backlog one), and a
/// third SYN arrives while they are young. It evicts neither (their ACKs are on the way) but
/// waits, and takes the socket the first completed (and accepted) handshake frees; all three
/// connect and nobody gets a RST.
#[test]
fn a_burst_of_real_clients_does_not_evict_itself() {
    let (mut rig, l) = one_socket_listener(3);
    let ends: Vec<Ends> = (41001..=41003)
        .map(|p| peer_ends(&rig, IP_B, PEER_MAC, p))
        .collect();
    let synack1 = syn_and_synack(&mut rig, &ends[0], true);
    let synack2 = syn_and_synack(&mut rig, &ends[1], true);
    rig.send(&fr::build_tcp(
        &ends[2],
        PEER_ISN,
        0,
        SYN,
        PEER_SYN_WINDOW,
        &peer_syn_options(true),
        &[],
    ));
    rig.quiet_until(rig.after(Duration::from_millis(2)), "the third SYN waits");
    assert_eq!(rig.stack.stats().half_open_evicted, 0);
    let mut accepted = Vec::new();
    rig.send(&handshake_ack(&ends[0], &synack1));
    let until = rig.after(Duration::from_millis(1));
    rig.until(until, |st| {
        accepted.extend(st.accept(l).expect("accept"));
        !accepted.is_empty()
    })
    .expect("the first handshake completes");
    let synack3 = rig.expect(
        rig.after(Duration::from_millis(5)),
        "the SYN|ACK to the third client",
    );
    assert_synack(&synack3, &ends[2]);
    rig.send(&handshake_ack(&ends[1], &synack2));
    rig.send(&handshake_ack(&ends[2], &synack3));
    let until = rig.after(Duration::from_millis(5));
    rig.until(until, |st| {
        while let Some(c) = st.accept(l).expect("accept") {
            accepted.push(c);
        }
        accepted.len() == 3
    })
    .unwrap_or_else(|| panic!("{} of 3 connected", accepted.len()));
    rig.quiet_until(rig.after(Duration::from_millis(10)), "no RST");
    let st = rig.stack.stats();
    assert_eq!(
        (st.half_open_evicted, st.rx_syn_backlog_full),
        (0, 0),
        "{st:?}"
    );
}

/// Half-open connections from an address that completed a handshake lately are evicted last:
/// with the backlog full of one from the known client (older) and one from an address never
/// seen (younger), both past the short grace, a new SYN evicts the stranger's. The known
/// client's handshake still completes.
#[test]
fn a_known_clients_half_open_connection_is_evicted_last() {
    let (mut rig, l) = one_socket_listener(3);
    let first = peer_connects(&mut rig, l, 41001, true);
    let stranger = Ipv4Addr::new(10, 0, 0, 88);
    rig.owns.push(stranger);
    let known = peer_ends(&rig, IP_B, PEER_MAC, 41002);
    let unknown = peer_ends(&rig, stranger, [0x02, 0, 0, 0, 0, 0x88], 41003);
    let synack_known = syn_and_synack(&mut rig, &known, true);
    rig.quiet_until(rig.after(Duration::from_millis(1)), "the known half-open");
    let synack_unknown = syn_and_synack(&mut rig, &unknown, true);
    rig.quiet_until(
        rig.after(Duration::from_millis(20)),
        "both past the short grace",
    );
    let third = peer_ends(&rig, IP_B, PEER_MAC, 41004);
    let synack3 = syn_and_synack(&mut rig, &third, true);
    assert_eq!(rig.stack.stats().half_open_evicted, 1);
    rig.send(&handshake_ack(&unknown, &synack_unknown));
    let rst = rig.expect(rig.after(Duration::from_millis(1)), "the stranger's RST");
    assert_rst(&rst, &unknown, synack_unknown.t.seq.wrapping_add(1));
    let mut accepted = 0;
    rig.send(&handshake_ack(&known, &synack_known));
    rig.send(&handshake_ack(&third, &synack3));
    let until = rig.after(Duration::from_millis(5));
    rig.until(until, |st| {
        while st.accept(l).expect("accept").is_some() {
            accepted += 1;
        }
        accepted == 2
    })
    .unwrap_or_else(|| panic!("{accepted} of 2 connected"));
    assert_eq!(rig.stack.state(first.id), Ok(ConnState::Established));
}

/// An established connection (the stack is the server) after the peer sent 100 bytes.
fn established_with_data(rig: &mut Rig, sport: u16) -> Conn {
    let l = rig.stack.listen(PORT, 1).expect("listen");
    let mut c = peer_connects(rig, l, sport, true);
    let data = pattern_bytes(7, 100);
    rig.send(&c.segment(ACK | PSH, c.peer_nxt, c.base, &[], &data));
    c.peer_nxt = c.peer_nxt.wrapping_add(100);
    let ack = rig.expect(rig.after(Duration::from_millis(1)), "the ACK of the data");
    assert!(
        ack.t.flags == ACK && ack.t.ack == c.peer_nxt && ack.len() == 0,
        "{}",
        ack.line()
    );
    let mut buf = [0u8; 200];
    assert_eq!(rig.stack.recv(c.id, &mut buf), Ok(100));
    assert_eq!(&buf[..100], &data[..]);
    c
}

/// Asserts the next segment is a challenge ACK on `c` (our next sequence number, the peer's
/// next one acknowledged, no data), that nothing follows, and that `c` is still established.
fn expect_challenge_ack(rig: &mut Rig, c: &Conn, what: &str) {
    let s = rig.expect(rig.after(Duration::from_millis(1)), what);
    assert!(
        s.t.flags == ACK && s.t.seq == c.base && s.t.ack == c.peer_nxt && s.len() == 0,
        "{what}: a challenge ACK (seq {}, ack {}): {}",
        c.base,
        c.peer_nxt,
        s.line()
    );
    rig.quiet_until(rig.after(Duration::from_millis(5)), what);
    assert_eq!(rig.stack.state(c.id), Ok(ConnState::Established), "{what}");
}

/// RFC 5961 3.2 on an established connection (the stack is the server): a RST inside the
/// receive window but not at RCV.NXT gets a challenge ACK and does not reset; another within
/// the same second is dropped silently (challenge ACKs are rate-limited) and counted; a
/// second later the next one gets a challenge ACK again; data still flows both ways; a RST
/// exactly at RCV.NXT resets, silently.
#[test]
fn rfc5961_in_window_rst_gets_a_challenge_ack() {
    let mut rig = Rig::new(|_| {});
    let mut c = established_with_data(&mut rig, 42000);
    rig.send(&c.segment(RST, c.peer_nxt.wrapping_add(1000), 0, &[], &[]));
    expect_challenge_ack(&mut rig, &c, "an in-window RST");
    assert_eq!(rig.stack.tcp_stats().challenge_acks, 1);
    rig.send(&c.segment(RST, c.peer_nxt.wrapping_add(2000), 0, &[], &[]));
    rig.quiet_until(
        rig.after(Duration::from_millis(5)),
        "a second in-window RST",
    );
    assert_eq!(rig.stack.state(c.id), Ok(ConnState::Established));
    assert_eq!(rig.stack.tcp_stats().challenge_acks, 2);
    rig.quiet_until(rig.after(Duration::from_secs(1)), "idle");
    rig.send(&c.segment(RST | ACK, c.peer_nxt.wrapping_add(3000), c.base, &[], &[]));
    expect_challenge_ack(&mut rig, &c, "an in-window RST a second later");
    assert_eq!(rig.stack.tcp_stats().challenge_acks, 3);

    // The connection still works both ways.
    assert_eq!(rig.stack.send(c.id, b"still here"), Ok(10));
    let s = rig.expect(rig.after(Duration::from_millis(1)), "data from the stack");
    assert!(
        s.t.seq == c.base && s.payload == b"still here",
        "{}",
        s.line()
    );
    let more = pattern_bytes(107, 50);
    rig.send(&c.segment(ACK, c.peer_nxt, c.base.wrapping_add(10), &[], &more));
    c.peer_nxt = c.peer_nxt.wrapping_add(50);
    let ack = rig.expect(rig.after(Duration::from_millis(1)), "the ACK of more data");
    assert!(
        ack.t.flags == ACK && ack.t.ack == c.peer_nxt,
        "{}",
        ack.line()
    );
    let mut buf = [0u8; 100];
    assert_eq!(rig.stack.recv(c.id, &mut buf), Ok(50));
    assert_eq!(&buf[..50], &more[..]);

    // A RST at RCV.NXT resets, silently.
    rig.send(&c.segment(RST, c.peer_nxt, 0, &[], &[]));
    rig.quiet_until(rig.after(Duration::from_millis(5)), "after an exact RST");
    assert_eq!(rig.stack.state(c.id), Ok(ConnState::Closed));
    assert_eq!(rig.stack.recv(c.id, &mut buf), Err(ConnError::Reset));
    assert_eq!(rig.stack.tcp_stats().challenge_acks, 3);
}

/// RFC 5961 4.2: a SYN on an established connection (a client that restarted and reuses the
/// port sends one, without ACK) gets a challenge ACK, whatever its sequence number, and does
/// not reset the connection.
#[test]
fn rfc5961_syn_on_an_established_connection_gets_a_challenge_ack() {
    let mut rig = Rig::new(|_| {});
    let c = established_with_data(&mut rig, 42000);
    let syn_opts = peer_syn_options(true);
    rig.send(&c.segment(SYN, c.peer_nxt.wrapping_add(5000), 0, &syn_opts, &[]));
    expect_challenge_ack(&mut rig, &c, "a SYN on an established connection");
    assert_eq!(rig.stack.tcp_stats().challenge_acks, 1);
}

/// A SYN on the 4-tuple of an established connection belongs to that connection (RFC 5961
/// 4.2: a challenge ACK), never to a listening socket of the same port, wherever the stack
/// keeps the two. Here the listener was re-armed in the socket slot a closed connection left,
/// ahead of the established one.
#[test]
fn a_syn_on_an_established_flow_is_not_taken_by_a_listener() {
    let mut rig = Rig::new(|c| c.sockets_max = 4);
    let l = rig.stack.listen(PORT, 1).expect("listen");
    let a = peer_connects(&mut rig, l, 43001, true);
    let b = peer_connects(&mut rig, l, 43002, true);
    // A closes; its socket's slot goes to the listener when the next connection arrives.
    rig.stack.abort(a.id).expect("abort");
    let rst = rig.expect(rig.after(Duration::from_millis(1)), "A's RST");
    assert!(rst.t.has(RST), "{}", rst.line());
    let _c = peer_connects(&mut rig, l, 43003, true);
    rig.quiet_until(rig.after(Duration::from_millis(5)), "three connections");
    rig.send(&b.segment(
        SYN,
        b.peer_nxt.wrapping_add(5000),
        0,
        &peer_syn_options(true),
        &[],
    ));
    expect_challenge_ack(&mut rig, &b, "a SYN on B's flow");
    assert_eq!(rig.stack.accept(l).expect("accept"), None);
}

/// `Stack::tcp_stats` sums the events of every connection the stack had, so it never goes
/// down: not when a half-open connection whose SYN|ACK was resent is evicted.
#[test]
fn tcp_stats_keep_what_an_evicted_half_open_connection_did() {
    let (mut rig, _l) = one_socket_listener(1);
    let first = peer_ends(&rig, IP_B, PEER_MAC, 41001);
    let synack = syn_and_synack(&mut rig, &first, true);
    let resent = rig.all_until(synack.at + Duration::from_millis(1500));
    assert_eq!(resent.len(), 1, "one SYN|ACK resent:\n{}", lines(&resent));
    let before = rig.stack.tcp_stats();
    assert_eq!(before.rto_expirations, 1, "{before:?}");
    let second = peer_ends(&rig, IP_B, PEER_MAC, 41002);
    syn_and_synack(&mut rig, &second, true);
    assert_eq!(rig.stack.stats().half_open_evicted, 1);
    let after = rig.stack.tcp_stats();
    assert!(
        after.rto_expirations >= before.rto_expirations,
        "went down: {before:?} -> {after:?}"
    );
}

/// A listening socket freed from a half-open connection to an address that never answers ARP
/// (evicted here by the next SYN, the stack having one socket) answers the SYN it takes at
/// once: the wait for the old peer's address is not the new peer's.
#[test]
fn a_socket_freed_from_a_ghost_answers_the_next_syn_at_once() {
    let (mut rig, l) = one_socket_listener(1);
    let ghost = Ipv4Addr::new(10, 0, 0, 77);
    let ghost_ends = peer_ends(&rig, ghost, [0x02, 0, 0, 0, 0, 0x77], 41000);
    let syn = fr::build_tcp(
        &ghost_ends,
        PEER_ISN,
        0,
        SYN,
        PEER_SYN_WINDOW,
        &peer_syn_options(true),
        &[],
    );
    rig.send(&syn);
    rig.quiet_until(
        rig.after(Duration::from_millis(20)),
        "waiting for the ghost (past the eviction grace)",
    );
    assert_eq!(rig.arp_requests.len(), 1, "{:?}", rig.arp_requests);
    // A real client: its SYN evicts the ghost's half-open connection and takes the socket.
    let ends = peer_ends(&rig, IP_B, PEER_MAC, 41001);
    let syn_sent = rig.now;
    let synack = syn_and_synack(&mut rig, &ends, true);
    assert_eq!(rig.stack.stats().half_open_evicted, 1);
    assert!(
        synack.at - syn_sent < Duration::from_millis(1),
        "answered at once, not {:?} later",
        synack.at - syn_sent
    );
    rig.send(&handshake_ack(&ends, &synack));
    let until = rig.after(Duration::from_millis(1));
    assert!(rig
        .until(until, |st| st.accept(l).unwrap().is_some())
        .is_some());
}

/// The peer's side of `c` for [`a_flood_of_arp_answers_does_not_cut_off_an_established_peer`]:
/// runs the stack until `until`, acknowledging what arrives on `c`; returns how many bytes the
/// peer holds, noting when each 100-byte message (written at `written_at[k]`) completed.
fn serve_peer(
    rig: &mut Rig,
    c: &Conn,
    until: Instant,
    has: &mut usize,
    arrived: &mut Vec<Instant>,
) {
    for s in rig.all_until(until) {
        if s.t.dst != IP_B || s.t.dport != c.ends.sport || s.len() == 0 {
            continue;
        }
        let end = s.t.seq.wrapping_sub(c.base) as usize + s.len();
        if s.t.seq.wrapping_sub(c.base) as usize <= *has && end > *has {
            *has = end;
            while arrived.len() < *has / 100 {
                arrived.push(s.at);
            }
        }
        let ack = c.base.wrapping_add(*has as u32);
        rig.send(&fr::build_tcp(
            &c.ends,
            c.peer_nxt,
            ack,
            ACK,
            PEER_WINDOW,
            &[],
            &[],
        ));
    }
}

/// An established peer keeps being served while SYNs come from a hundred other addresses of
/// the subnet that answer ARP and never complete (2 a millisecond for 2 s): each 100 bytes the
/// stack writes on the connection every 100 ms reach the peer within 5 ms.
#[test]
fn a_flood_of_arp_answers_does_not_cut_off_an_established_peer() {
    let mut rig = Rig::new(|c| c.sockets_max = 8);
    let l = rig.stack.listen(PORT, 2).expect("listen");
    let c = peer_connects(&mut rig, l, 42000, true);
    let spoofed: Vec<Ipv4Addr> = (100..200).map(|h| Ipv4Addr::new(10, 0, 0, h)).collect();
    rig.owns.extend(&spoofed);
    let start = rig.now;
    let (mut has, mut arrived, mut written_at) = (0, Vec::new(), Vec::new());
    for ms in 0..2000u64 {
        let now = start + Duration::from_millis(ms);
        for k in 0..2 {
            let port = 20000 + (2 * ms + k) as u16;
            let ip = spoofed[usize::from(port) % spoofed.len()];
            let ends = peer_ends(&rig, ip, PEER_MAC, port);
            let opts = peer_syn_options(true);
            rig.send(&fr::build_tcp(
                &ends,
                PEER_ISN,
                0,
                SYN,
                PEER_SYN_WINDOW,
                &opts,
                &[],
            ));
        }
        if ms % 100 == 0 {
            let msg = pattern_bytes(100 * written_at.len(), 100);
            assert_eq!(rig.stack.send(c.id, &msg), Ok(100));
            written_at.push(now);
        }
        serve_peer(
            &mut rig,
            &c,
            now + Duration::from_millis(1),
            &mut has,
            &mut arrived,
        );
    }
    let until = rig.after(Duration::from_secs(3));
    serve_peer(&mut rig, &c, until, &mut has, &mut arrived);
    let delays: Vec<Duration> = written_at
        .iter()
        .zip(arrived.iter().chain(std::iter::repeat(&until)))
        .map(|(w, a)| *a - *w)
        .collect();
    assert!(
        delays.iter().all(|d| *d <= Duration::from_millis(5)),
        "each message's delay: {delays:?}; ARP requests {}; {:?}",
        rig.arp_requests.len(),
        rig.stack.stats()
    );
}

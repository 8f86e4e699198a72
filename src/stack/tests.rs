//! Stack tests over a minimal lossless in-memory wire (the full simulator with faults lives in
//! `dev::sim` and is exercised by tests/sim_tcp.rs).

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::dev::{Batch, ChecksumCaps, DeviceCaps, LinkStats, PacketDevice};
use crate::mem::{BufPool, PageSize, PoolBuf};

pub(super) type Queue = Arc<Mutex<VecDeque<PoolBuf>>>;

/// A device over two queues of frames (what it receives, what it sends).
pub(super) struct Wire {
    pub(super) pool: BufPool,
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    pub(super) stats: LinkStats,
}

impl Wire {
    /// A device receiving from `rx` and sending to `tx`.
    pub(super) fn over(rx: &Queue, tx: &Queue) -> Wire {
        Wire {
            pool: BufPool::with_capacity(1024, 2048, 128, PageSize::Base4K).unwrap(),
            rx: rx.clone(),
            tx: tx.clone(),
            stats: LinkStats::default(),
        }
    }
}

fn wire_pair() -> (Wire, Wire) {
    let (a, b): (Queue, Queue) = Default::default();
    (Wire::over(&a, &b), Wire::over(&b, &a))
}

impl PacketDevice for Wire {
    type Frame = PoolBuf;
    fn caps(&self) -> DeviceCaps {
        DeviceCaps {
            mtu: 1500,
            burst_max: 32,
            checksum: ChecksumCaps::default(),
        }
    }
    fn rx_burst(&mut self, _now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
        let mut q = self.rx.lock().unwrap();
        let mut n = 0;
        while !batch.is_full() && n < 32 {
            let Some(f) = q.pop_front() else { break };
            self.stats.rx_packets += 1;
            let _ = batch.push(f);
            n += 1;
        }
        n
    }
    fn tx_alloc(&mut self) -> Option<PoolBuf> {
        self.pool.alloc()
    }
    fn tx_burst(&mut self, _now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
        let mut q = self.tx.lock().unwrap();
        let mut n = 0;
        while let Some(f) = batch.pop() {
            self.stats.tx_packets += 1;
            q.push_back(f);
            n += 1;
        }
        n
    }
    fn stats(&self) -> LinkStats {
        self.stats
    }
}

pub(super) const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub(super) const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

pub(super) fn cfg(ip: Ipv4Addr, seed: u64) -> StackConfig {
    super::sim_pair::config(ip, seed, 8)
}

struct Pair {
    a: Stack<Wire>,
    b: Stack<Wire>,
    now: Instant,
}

impl Pair {
    fn new() -> Pair {
        Pair::tuned(|_| {})
    }

    /// Two stacks on [`cfg`] with `tune` applied to both configurations.
    fn tuned(tune: impl Fn(&mut StackConfig)) -> Pair {
        let mk = |ip, seed| {
            let mut c = cfg(ip, seed);
            tune(&mut c);
            c
        };
        let (wa, wb) = wire_pair();
        Pair {
            a: Stack::new(wa, mk(A, 1)).unwrap(),
            b: Stack::new(wb, mk(B, 2)).unwrap(),
            now: Instant::ZERO,
        }
    }

    /// Polls both stacks until `done` or a virtual-time limit.
    fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&mut Stack<Wire>, &mut Stack<Wire>) -> bool,
    ) {
        let end = self.now + limit;
        while self.now < end {
            let busy = self.a.poll(self.now) | self.b.poll(self.now);
            if done(&mut self.a, &mut self.b) {
                return;
            }
            if !busy {
                let next = [self.a.poll_at(self.now), self.b.poll_at(self.now)]
                    .into_iter()
                    .flatten()
                    .min()
                    // Nothing scheduled: the test's own closure may still have work.
                    .unwrap_or(self.now + Duration::from_millis(1));
                self.now = next.max(self.now + Duration::from_micros(1));
            }
        }
        panic!(
            "not done within {limit:?} of virtual time\nA: {:?} {:?}\nB: {:?} {:?}",
            self.a.stats(),
            self.a.link_stats(),
            self.b.stats(),
            self.b.link_stats()
        );
    }

    /// Polls both stacks for `span` of virtual time.
    fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        while self.now < end {
            let busy = self.a.poll(self.now) | self.b.poll(self.now);
            if !busy {
                let next = [self.a.poll_at(self.now), self.b.poll_at(self.now)]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(end);
                self.now = next.max(self.now + Duration::from_micros(1)).min(end);
            }
        }
    }
}

#[test]
fn connect_accept_transfer_close_recycle() {
    let mut p = Pair::new();
    let l = p.b.listen(7000, 2).unwrap();
    assert_eq!(p.b.sockets_free(), 6, "backlog of 2 armed");
    let c = p.a.connect(SocketAddrV4::new(B, 7000)).unwrap();
    assert_eq!(p.a.state(c).unwrap(), ConnState::Connecting);
    assert_eq!(
        p.a.send(c, b"early").unwrap(),
        0,
        "no room before the handshake"
    );
    let mut s = None;
    p.run_until(Duration::from_secs(5), |a, b| {
        if s.is_none() {
            s = b.accept(l).unwrap();
        }
        s.is_some() && a.state(c).unwrap() == ConnState::Established
    });
    let s = s.unwrap();
    assert_eq!(p.b.remote_addr(s).unwrap().map(|r| *r.ip()), Some(A));

    // 1 MiB each way, through 64 KiB buffers.
    let data: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let (mut sent_a, mut sent_b, mut got_a, mut got_b) = (0, 0, Vec::new(), Vec::new());
    let mut buf = vec![0; 8192];
    p.run_until(Duration::from_secs(30), |a, b| {
        sent_a += a.send(c, &data[sent_a..]).unwrap();
        sent_b += b.send(s, &data[sent_b..]).unwrap();
        let n = a.recv(c, &mut buf).unwrap();
        got_a.extend_from_slice(&buf[..n]);
        let n = b.recv(s, &mut buf).unwrap();
        got_b.extend_from_slice(&buf[..n]);
        got_a.len() == data.len() && got_b.len() == data.len()
    });
    assert!(got_a == data && got_b == data);

    // Graceful close from the client; the server sees EOF, closes and releases.
    p.a.close(c).unwrap();
    p.run_until(Duration::from_secs(5), |_, b| {
        b.recv(s, &mut buf) == Err(ConnError::Eof)
    });
    assert_eq!(p.b.state(s).unwrap(), ConnState::PeerClosed);
    p.b.release(s).unwrap();
    assert_eq!(p.b.state(s), Err(ConnError::Stale));
    p.a.release(c).unwrap();
    p.run_until(Duration::from_secs(5), |a, b| {
        a.sockets_free() == 8 && b.sockets_free() == 6
    });
    assert_eq!(p.b.stats().accepted, 1);
    assert_eq!(p.a.stats().rx_dropped(), 0);
}

#[test]
fn backlog_is_bounded_and_rearmed() {
    let mut p = Pair::new();
    let l = p.b.listen(7001, 2).unwrap();
    let conns: Vec<ConnId> = (0..4)
        .map(|_| p.a.connect(SocketAddrV4::new(B, 7001)).unwrap())
        .collect();
    p.run_until(Duration::from_secs(5), |a, _| {
        conns
            .iter()
            .filter(|&&c| a.state(c).unwrap() == ConnState::Established)
            .count()
            >= 2
    });
    // Run a little longer: at most `backlog` wait in the queue, the rest stay in the handshake.
    p.run_for(Duration::from_millis(500));
    let mut accepted = Vec::new();
    while let Some(c) = p.b.accept(l).unwrap() {
        accepted.push(c);
    }
    assert_eq!(accepted.len(), 2);
    // Accepting made room: the remaining two complete.
    let mut more = 0;
    p.run_until(Duration::from_secs(10), |_, b| {
        while b.accept(l).unwrap().is_some() {
            more += 1;
        }
        more == 2
    });
    assert!(conns
        .iter()
        .all(|&c| p.a.state(c).unwrap() == ConnState::Established));
}

#[test]
fn sockets_run_out_cleanly() {
    let mut p = Pair::new();
    let remote = SocketAddrV4::new(B, 9);
    let conns: Vec<ConnId> = (0..8).map(|_| p.a.connect(remote).unwrap()).collect();
    assert!(matches!(
        p.a.connect(remote),
        Err(StackError::NoSockets { max: 8 })
    ));
    // Nobody listens on B:9: each connection is reset.
    p.run_until(Duration::from_secs(5), |a, _| {
        conns
            .iter()
            .all(|&c| a.state(c).unwrap() == ConnState::Closed)
    });
    let mut buf = [0; 4];
    assert_eq!(p.a.recv(conns[0], &mut buf), Err(ConnError::Reset));
    assert_eq!(p.a.send(conns[0], b"x"), Err(ConnError::Reset));
    for c in conns {
        p.a.release(c).unwrap();
    }
    p.run_until(Duration::from_secs(1), |a, _| a.sockets_free() == 8);
    assert!(p.a.connect(remote).is_ok());
}

#[test]
fn bad_config_is_rejected_with_reasons() {
    let (w, _) = wire_pair();
    let mut c = cfg(A, 1);
    c.tcp.rx_buf_len = 1500;
    let e = Stack::new(w, c).err().unwrap().to_string();
    assert!(
        e.contains("tcp.rx_buf_len") && e.contains("4x the MSS"),
        "{e}"
    );
    let (w, _) = wire_pair();
    let mut c = cfg(A, 1);
    c.mtu = Some(9000);
    let e = Stack::new(w, c).err().unwrap().to_string();
    assert!(e.contains("larger than the device's MTU"), "{e}");
    let (w, _) = wire_pair();
    let mut c = cfg(A, 1);
    c.rx_budget = 0;
    let e = Stack::new(w, c).err().unwrap().to_string();
    assert!(e.contains("rx_budget"), "{e}");
    let (w, _) = wire_pair();
    let mut c = cfg(A, 1);
    c.mac = Some(MacAddr([1, 2, 3, 4, 5, 6]));
    assert!(Stack::new(w, c)
        .err()
        .unwrap()
        .to_string()
        .contains("unicast"));
}

#[test]
fn listener_errors() {
    let mut p = Pair::new();
    let l = p.b.listen(80, 1).unwrap();
    assert!(matches!(p.b.listen(80, 1), Err(StackError::PortInUse(80))));
    p.b.unlisten(l).unwrap();
    assert!(matches!(p.b.accept(l), Err(StackError::Stale)));
    p.b.poll(Instant::ZERO);
    assert_eq!(p.b.sockets_free(), 8);
    assert!(p.b.listen(80, 1).is_ok());
}

#[test]
fn flows_are_steered_to_their_shards() {
    // Four shards of two sockets: listeners and connections spread over them.
    let mut p = Pair::tuned(|c| c.shard_sockets = 2);
    assert_eq!(p.a.shard_count(), 4);
    let l = p.b.listen(7002, 4).unwrap();
    let conns: Vec<ConnId> = (0..4)
        .map(|_| p.a.connect(SocketAddrV4::new(B, 7002)).unwrap())
        .collect();
    let mut accepted = Vec::new();
    p.run_until(Duration::from_secs(30), |a, b| {
        while let Some(s) = b.accept(l).unwrap() {
            accepted.push(s);
        }
        accepted.len() == 4
            && conns
                .iter()
                .all(|&c| a.state(c).unwrap() == ConnState::Established)
    });
    let shards: std::collections::HashSet<usize> = accepted.iter().map(|c| c.shard()).collect();
    assert!(
        shards.len() > 1,
        "connections spread over shards: {accepted:?}"
    );
    // Each connection echoes its own 64 KiB, so a misrouted segment would show.
    let mut done = [0usize; 4];
    let mut buf = vec![0u8; 4096];
    let data: Vec<Vec<u8>> = (0..4u8).map(|k| vec![k + 1; 65536]).collect();
    let mut sent = [0usize; 4];
    p.run_until(Duration::from_secs(30), |a, b| {
        for (k, &c) in conns.iter().enumerate() {
            sent[k] += a.send(c, &data[k][sent[k]..]).unwrap();
        }
        for &s in &accepted {
            let n = b.recv(s, &mut buf).unwrap();
            let mut off = 0;
            while off < n {
                off += b.send(s, &buf[off..n]).unwrap();
            }
        }
        for (k, &c) in conns.iter().enumerate() {
            let n = a.recv(c, &mut buf).unwrap();
            assert!(
                buf[..n].iter().all(|&x| x == k as u8 + 1),
                "connection {k} got another's bytes"
            );
            done[k] += n;
        }
        done.iter().all(|&d| d == 65536)
    });
    assert_eq!(p.a.stats().rx_dropped() + p.b.stats().rx_dropped(), 0);
}

#[test]
fn one_frame_per_poll_still_moves_everything_and_idle_polls_leave_the_epoch_alone() {
    // rx_budget 1: frames wait in the adapter between polls, and poll_at must say so (the
    // loop below only polls again when poll_at asks, or the test would stall in virtual time).
    let mut p = Pair::tuned(|c| {
        c.rx_budget = 1;
        c.shard_sockets = 2;
    });
    let l = p.b.listen(7003, 2).unwrap();
    let c = p.a.connect(SocketAddrV4::new(B, 7003)).unwrap();
    let mut s = None;
    p.run_until(Duration::from_secs(10), |a, b| {
        if s.is_none() {
            s = b.accept(l).unwrap();
        }
        s.is_some() && a.state(c).unwrap() == ConnState::Established
    });
    let s = s.unwrap();
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let (mut sent, mut got) = (0, Vec::new());
    let mut buf = vec![0u8; 8192];
    p.run_until(Duration::from_secs(30), |a, b| {
        sent += a.send(c, &data[sent..]).unwrap();
        let n = b.recv(s, &mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
        got.len() == data.len()
    });
    assert!(
        got == data,
        "the stream arrived intact through one-frame polls"
    );
    assert_eq!(p.b.stats().rx_dropped(), 0);

    // Quiet now: polls with nothing to do poll no shard, so the epochs stand still...
    p.run_for(Duration::from_millis(50));
    let (e, es) = (p.b.epoch(), p.b.shard_epoch(s.shard()));
    p.b.poll(p.now);
    p.b.poll(p.now);
    assert_eq!((p.b.epoch(), p.b.shard_epoch(s.shard())), (e, es));
    // ...and using the connection moves them on the next poll.
    assert_eq!(p.b.send(s, b"x").unwrap(), 1);
    p.b.poll(p.now);
    assert!(p.b.epoch() > e && p.b.shard_epoch(s.shard()) > es);

    // Several segments arrive at once: B takes one per poll and asks to be polled again now,
    // so a loop that sleeps until poll_at does not sleep on frames it already has.
    p.run_for(Duration::from_millis(50));
    assert!(p.a.send(c, &data[..32 * 1024]).unwrap() > 8192);
    p.a.poll(p.now);
    p.b.poll(p.now);
    assert_eq!(p.b.poll_at(p.now), Some(p.now));
}

#[test]
fn due_set_lists_each_marked_shard_once() {
    let mut d = DueSet::new(4);
    assert!(!d.any());
    d.mark(2);
    d.mark(2);
    d.mark(0);
    assert_eq!((d.listed_len(), d.listed(0), d.listed(1)), (2, 2, 0));
    assert!(d.any() && d.is(2) && !d.is(1));
    // Cleared shards stay listed until forgotten, and are skipped by `any`.
    d.unmark(2);
    d.unmark(0);
    assert!(!d.any());
    d.mark(2);
    assert_eq!(d.listed_len(), 3);
    d.forget_listed(2);
    assert_eq!((d.listed_len(), d.listed(0)), (1, 2));
    // A walk over every shard rebuilds the list from the flags.
    d.mark_all();
    d.unmark(1);
    d.relist();
    assert_eq!(d.list, vec![0, 2, 3]);
    // Marking never lists more than a clear-to-set change per shard.
    for _ in 0..100 {
        for i in 0..4 {
            d.mark(i);
        }
    }
    assert_eq!(d.listed_len(), 4);
}

#[test]
fn rss_steered_connections_take_ports_whose_replies_reach_their_queue() {
    use crate::dev::rss::{self, RssConfig, RssSteer, MICROSOFT_KEY};
    let rss = RssConfig::new(&MICROSOFT_KEY, 4).unwrap();
    let steer = RssSteer {
        rss: rss.clone(),
        queue: 3,
    };
    // A queue the table does not name is refused.
    let (w, _) = wire_pair();
    let mut c = cfg(A, 1);
    c.rss_steer = Some(RssSteer {
        rss: rss.clone(),
        queue: 4,
    });
    let e = Stack::new(w, c).err().unwrap().to_string();
    assert!(
        e.contains("rss_steer.queue") && e.contains("queue 4"),
        "{e}"
    );

    let mut p = Pair::tuned(|c| {
        c.sockets_max = 64;
        c.rss_steer = Some(steer.clone());
    });
    assert!(p.a.shard_count() > 1);
    // One connection completes its handshake: the steered port is an ordinary one.
    let l = p.b.listen(7010, 1).unwrap();
    let first = p.a.connect(SocketAddrV4::new(B, 7010)).unwrap();
    p.run_until(Duration::from_secs(5), |a, _| {
        a.state(first).unwrap() == ConnState::Established
    });
    assert!(p.b.accept(l).unwrap().is_some());
    // 50 more, to two remote ports, without running the link: nothing is released, so every
    // port differs from the others towards the same remote.
    for k in 0..50 {
        p.a.connect(SocketAddrV4::new(B, 7010 + k % 2)).unwrap();
    }
    let mut conns = Vec::new();
    p.a.connections(p.now, &mut conns);
    assert_eq!(conns.len(), 51);
    let mut seen = std::collections::HashSet::new();
    for info in &conns {
        let remote = info.remote.unwrap();
        let port = info.local.port();
        assert!(seen.insert((remote, port)), "{remote} from {port} twice");
        let reply = rss::ipv4_tcp_input(*remote.ip(), A, remote.port(), port);
        let queue = rss.queue_of(rss::toeplitz(&MICROSOFT_KEY, &reply));
        assert_eq!(queue, 3, "replies from {remote} to port {port}");
    }
}

//! Per-core shards on one link: a client stack and two server shards (same address), with a
//! switch in the test steering the client's frames as a NIC's RSS would (ARP to queue 0, TCP
//! by the flow), then mis-steering one flow.

use std::net::SocketAddrV4;
use std::time::Duration;

use super::tests::{cfg, Queue, Wire, A, B};
use super::*;
use crate::mem::PoolBuf;

/// The client's TCP source port, if `f` is a TCP frame.
fn src_port(f: &PoolBuf) -> Option<u16> {
    let d = f.as_slice();
    (d.len() >= 38 && d[12..14] == [8, 0] && d[23] == 6).then(|| {
        let ihl = usize::from(d[14] & 0x0f) * 4;
        u16::from_be_bytes([d[14 + ihl], d[15 + ihl]])
    })
}

struct Net {
    client: Stack<Wire>,
    shards: [Stack<Wire>; 2],
    from_client: Queue,
    to_client: Queue,
    to_shard: [Queue; 2],
    now: Instant,
}

/// Two server shards (same address and MAC, as queues of one NIC) on `to_shard`, one set.
fn server_shards(to_shard: &[Queue; 2], to_client: &Queue, seed: u64) -> [Stack<Wire>; 2] {
    let mut links = CoreShards::new(2).into_iter();
    [0, 1].map(|i| {
        let mut c = cfg(B, seed + i as u64);
        c.mac = Some(MacAddr([2, 0, 0, 0, 0, 0xb]));
        let mut s = Stack::new(Wire::over(&to_shard[i], to_client), c).unwrap();
        s.join_cores(links.next().unwrap());
        s
    })
}

impl Net {
    fn new() -> Net {
        let (from_client, to_client): (Queue, Queue) = Default::default();
        let to_shard: [Queue; 2] = Default::default();
        let client = Stack::new(Wire::over(&to_client, &from_client), cfg(A, 1)).unwrap();
        let shards = server_shards(&to_shard, &to_client, 2);
        Net {
            client,
            shards,
            from_client,
            to_client,
            to_shard,
            now: Instant::ZERO,
        }
    }

    /// Moves the client's frames to the shards: ARP (anything not TCP) to shard 0, TCP by
    /// `steer(source port)`.
    fn switch(&mut self, steer: &dyn Fn(u16) -> usize) {
        let mut q = self.from_client.lock().unwrap();
        while let Some(f) = q.pop_front() {
            let to = src_port(&f).map_or(0, steer);
            self.to_shard[to].lock().unwrap().push_back(f);
        }
    }

    fn run_until(&mut self, steer: &dyn Fn(u16) -> usize, mut done: impl FnMut(&mut Net) -> bool) {
        let end = self.now + Duration::from_secs(60);
        while !done(self) {
            assert!(self.now < end, "not done in 60 s of virtual time");
            let mut busy = self.client.poll(self.now);
            self.switch(steer);
            for s in &mut self.shards {
                busy |= s.poll(self.now);
            }
            if !busy {
                self.now += Duration::from_millis(1);
            }
        }
    }
}

fn by_parity(port: u16) -> usize {
    usize::from(port % 2)
}

#[test]
fn each_shard_serves_the_flows_steered_to_it_and_learns_arp_from_the_other() {
    let mut net = Net::new();
    let l = [0, 1].map(|i| net.shards[i].listen(7000, 8).unwrap());
    let server = SocketAddrV4::new(B, 7000);
    let conns: Vec<ConnId> = (0..8)
        .map(|_| net.client.connect(server).unwrap())
        .collect();
    let mut accepted: [Vec<ConnId>; 2] = Default::default();
    net.run_until(&by_parity, |n| {
        for ((shard, l), acc) in n.shards.iter_mut().zip(l).zip(&mut accepted) {
            while let Some(c) = shard.accept(l).unwrap() {
                acc.push(c);
            }
        }
        conns
            .iter()
            .all(|&c| n.client.state(c).unwrap() == ConnState::Established)
    });
    // Both shards took connections; only shard 0 ever saw ARP from the wire, so shard 1
    // answered its SYNs with what shard 0 posted it.
    assert!(
        !accepted[0].is_empty() && !accepted[1].is_empty(),
        "{accepted:?}"
    );
    assert_eq!(accepted[0].len() + accepted[1].len(), 8);
    for s in &net.shards {
        assert_eq!(s.stats().rx_misdirected, 0);
        assert_eq!(s.stats().arp_fanout_dropped, 0);
    }
}

#[test]
fn a_mis_steered_flow_is_dropped_and_counted_not_reset_and_recovers() {
    let mut net = Net::new();
    let l = [0, 1].map(|i| net.shards[i].listen(7000, 8).unwrap());
    let c = net.client.connect(SocketAddrV4::new(B, 7000)).unwrap();
    let mut owner = None;
    net.run_until(&by_parity, |n| {
        for (i, (shard, l)) in n.shards.iter_mut().zip(l).enumerate() {
            if let Some(s) = shard.accept(l).unwrap() {
                owner = Some((i, s));
            }
        }
        owner.is_some() && n.client.state(c).unwrap() == ConnState::Established
    });
    let (own, sc) = owner.unwrap();
    let other = 1 - own;
    // Steering changes: the flow's segments now reach the other shard.
    assert_eq!(net.client.send(c, b"hello").unwrap(), 5);
    let wrong = move |_: u16| other;
    net.run_until(&wrong, |n| n.shards[other].stats().rx_misdirected >= 2);
    assert_eq!(
        net.client.state(c).unwrap(),
        ConnState::Established,
        "reset by the wrong shard"
    );
    assert_eq!(net.shards[own].recv_queue(sc).unwrap(), 0);
    // Steering comes back: the retransmission reaches the owner.
    let mut got = Vec::new();
    net.run_until(&by_parity, |n| {
        let mut buf = [0u8; 16];
        let k = n.shards[own].recv(sc, &mut buf).unwrap();
        got.extend_from_slice(&buf[..k]);
        got.len() >= 5
    });
    assert_eq!(got, b"hello");
    assert_eq!(net.shards[own].stats().rx_misdirected, 0);
}

/// A segment of a flow no shard took (the server restarted under an open connection) is
/// answered with a reset, as a lone stack answers it, so the peer learns at once.
#[test]
fn a_segment_of_a_flow_no_shard_took_is_reset() {
    let mut net = Net::new();
    let l = [0, 1].map(|i| net.shards[i].listen(7000, 8).unwrap());
    let c = net.client.connect(SocketAddrV4::new(B, 7000)).unwrap();
    let mut taken = false;
    net.run_until(&by_parity, |n| {
        for (shard, l) in n.shards.iter_mut().zip(l) {
            taken |= shard.accept(l).unwrap().is_some();
        }
        taken && n.client.state(c).unwrap() == ConnState::Established
    });
    // The server restarts: fresh shards, a fresh owner table, the same queues.
    net.shards = server_shards(&net.to_shard, &net.to_client, 10);
    assert_eq!(net.client.send(c, b"after the restart").unwrap(), 17);
    net.run_until(&by_parity, |n| {
        n.client.state(c).unwrap() == ConnState::Closed
    });
    assert_eq!(net.shards[0].stats().rx_misdirected, 0);
    assert_eq!(net.shards[1].stats().rx_misdirected, 0);
}

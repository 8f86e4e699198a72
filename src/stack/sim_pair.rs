//! For the stack's own tests: two stacks joined by the simulated link, driven in virtual time.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use crate::dev::sim::{SimConfig, SimLink, SimPort};
use crate::mem::PageSize;
use crate::stack::{ConnId, ConnState, MacAddr, Stack, StackConfig};
use crate::time::Instant;

/// A configuration for `ip` with a MAC and random numbers from `seed`, `sockets` sockets,
/// 64 KiB TCP buffers and ordinary pages.
pub(crate) fn config(ip: Ipv4Addr, seed: u64, sockets: usize) -> StackConfig {
    let mut c = StackConfig::new(ip, 24);
    c.random_seed = seed;
    c.mac = Some(MacAddr::local_from_seed(seed));
    c.sockets_max = sockets;
    c.tcp.rx_buf_len = 64 << 10;
    c.tcp.tx_buf_len = 64 << 10;
    c.page_size = PageSize::Base4K;
    c
}

/// Stacks `a` and `b` on the two ports of one simulated link.
pub(crate) struct SimPair {
    pub link: SimLink,
    pub a: Stack<SimPort>,
    pub b: Stack<SimPort>,
    pub now: Instant,
}

impl SimPair {
    /// The link `sim` (1,024 pool frames, ordinary pages) between stacks on `a` and `b`.
    pub fn new(sim: SimConfig, a: StackConfig, b: StackConfig) -> SimPair {
        let (link, pa, pb) = SimLink::new(SimConfig {
            pool_frames: 1024,
            page_size: PageSize::Base4K,
            ..sim
        })
        .unwrap();
        SimPair {
            link,
            a: Stack::new(pa, a).unwrap(),
            b: Stack::new(pb, b).unwrap(),
            now: Instant::ZERO,
        }
    }

    /// Polls both stacks until `done`, jumping the clock to the next timer or delivery when
    /// both are idle; panics past `limit` of virtual time.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&mut Stack<SimPort>, &mut Stack<SimPort>) -> bool,
    ) {
        let end = self.now + limit;
        loop {
            let busy = self.a.poll(self.now) | self.b.poll(self.now);
            if done(&mut self.a, &mut self.b) {
                return;
            }
            assert!(self.now < end, "not done within {limit:?} of virtual time");
            if !busy {
                let timers = [self.a.poll_at(self.now), self.b.poll_at(self.now)];
                let next = self.link.next_event(self.now, timers);
                self.now = next.unwrap_or(self.now + Duration::from_millis(1)).min(end);
            }
        }
    }

    /// A listener on B's `port` (with `backlog`), a connection from A to it, established:
    /// (A's connection, B's).
    pub fn connect(&mut self, port: u16, backlog: usize) -> (ConnId, ConnId) {
        let l = self.b.listen(port, backlog).unwrap();
        let b_ip = self.b.ipv4();
        let c = self.a.connect(SocketAddrV4::new(b_ip, port)).unwrap();
        let mut s = None;
        self.run_until(Duration::from_secs(120), |a, b| {
            if s.is_none() {
                s = b.accept(l).unwrap();
            }
            s.is_some() && a.state(c).unwrap() == ConnState::Established
        });
        (c, s.unwrap())
    }
}

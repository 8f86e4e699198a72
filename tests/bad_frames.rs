//! Malformed frames thrown at a live stack in the middle of a transfer: every one is dropped and
//! counted under its reason, nothing panics, and the transfer completes intact.

mod common;

use std::time::Duration;

use common::{connect_pair, sim_stack_config, Pattern, Rng, SimNet, Step, IP_A, IP_B};
use ustack::dev::sim::{SimConfig, SimPort};
use ustack::stack::StackStats;
use ustack::{Batch, DeviceCaps, Frame, Instant, LinkStats, PacketDevice, PoolBuf};

/// The kinds of bad frame, each with the counter that must take it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Bad {
    Runt,
    Oversize,
    NotOurs,
    Unsupported,
    LyingIpv4Length,
    Ipv4Checksum,
    TcpChecksum,
    Fragment,
    TruncatedTcp,
    Garbage,
}

const KINDS: [Bad; 10] = [
    Bad::Runt,
    Bad::Oversize,
    Bad::NotOurs,
    Bad::Unsupported,
    Bad::LyingIpv4Length,
    Bad::Ipv4Checksum,
    Bad::TcpChecksum,
    Bad::Fragment,
    Bad::TruncatedTcp,
    Bad::Garbage,
];

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for w in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 + TCP frame from A to B on port 5001 (checksums right unless spoiled).
fn tcp_frame(dst_mac: [u8; 6], payload_len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = 20 + 20 + payload_len;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&IP_A.octets());
    ip.extend_from_slice(&IP_B.octets());
    let c = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5001u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10; // ACK
    tcp.extend(std::iter::repeat_n(0xab, payload_len));
    // Pseudo-header checksum.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&IP_A.octets());
    pseudo.extend_from_slice(&IP_B.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    pseudo.extend_from_slice(&tcp);
    let c = ipv4_checksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&tcp);
    f
}

fn build(kind: Bad, mac: [u8; 6], rng: &mut Rng) -> Vec<u8> {
    match kind {
        Bad::Runt => vec![0xee; 1 + rng.below(13) as usize],
        Bad::Oversize => {
            let mut f = tcp_frame(mac, 1500 - 40);
            f.push(0); // one byte over mtu + 14
            f
        }
        Bad::NotOurs => tcp_frame([0x02, 0x55, 0, 0, 0, 1], 10),
        Bad::Unsupported => {
            let mut f = tcp_frame(mac, 10);
            f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            f
        }
        Bad::LyingIpv4Length => {
            let mut f = tcp_frame(mac, 10);
            f[16..18].copy_from_slice(&1400u16.to_be_bytes());
            let c = ipv4_checksum(&{
                let mut h = f[14..34].to_vec();
                h[10] = 0;
                h[11] = 0;
                h
            });
            f[24..26].copy_from_slice(&c.to_be_bytes());
            f
        }
        Bad::Ipv4Checksum => {
            let mut f = tcp_frame(mac, 10);
            f[24] ^= 0x01;
            f
        }
        Bad::TcpChecksum => {
            let mut f = tcp_frame(mac, 100);
            let i = 54 + rng.below(100) as usize;
            f[i] ^= 1 << rng.below(8);
            f
        }
        Bad::Fragment => {
            let mut f = tcp_frame(mac, 10);
            f[20] = 0x20; // more fragments
            f[24] = 0;
            f[25] = 0;
            let c = ipv4_checksum(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
            f
        }
        Bad::TruncatedTcp => {
            // An IPv4 packet that claims TCP but holds only 8 bytes of it.
            let mut f = tcp_frame(mac, 0);
            f.truncate(14 + 20 + 8);
            f[16..18].copy_from_slice(&28u16.to_be_bytes());
            f[24] = 0;
            f[25] = 0;
            let c = ipv4_checksum(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
            f
        }
        Bad::Garbage => {
            // Our MAC, an IPv4 ethertype, then random bytes.
            let len = 14 + 20 + rng.below(1400) as usize;
            let mut f: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            f[..6].copy_from_slice(&mac);
            f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            f
        }
    }
}

/// Port B of the link, with bad frames slipped into what it receives.
struct Injecting {
    inner: SimPort,
    mac: [u8; 6],
    rng: Rng,
    enabled: bool,
    calls: u64,
    injected: Vec<(Bad, u64)>,
}

impl PacketDevice for Injecting {
    type Frame = PoolBuf;
    fn caps(&self) -> DeviceCaps {
        self.inner.caps()
    }
    fn rx_burst(&mut self, now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
        self.calls += 1;
        let mut n = 0;
        if self.enabled && self.calls.is_multiple_of(7) && !batch.is_full() {
            let kind = KINDS[self.rng.below(KINDS.len() as u64) as usize];
            let bytes = build(kind, self.mac, &mut self.rng);
            if let Some(mut buf) = self.inner.pool().alloc() {
                assert!(
                    buf.set_len(bytes.len()),
                    "test frame of {} bytes fits a buffer",
                    bytes.len()
                );
                buf.data_mut().copy_from_slice(&bytes);
                if batch.push(buf).is_ok() {
                    n += 1;
                    match self.injected.iter_mut().find(|(k, _)| *k == kind) {
                        Some((_, c)) => *c += 1,
                        None => self.injected.push((kind, 1)),
                    }
                }
            }
        }
        n + self.inner.rx_burst(now, batch)
    }
    fn tx_alloc(&mut self) -> Option<PoolBuf> {
        self.inner.tx_alloc()
    }
    fn tx_burst(&mut self, now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
        self.inner.tx_burst(now, batch)
    }
    fn stats(&self) -> LinkStats {
        self.inner.stats()
    }
}

/// The counter that must take each kind (garbage may land in any of them).
fn counter(kind: Bad, s: &StackStats) -> (&'static str, u64) {
    match kind {
        Bad::Runt => ("rx_runt", s.rx_runt),
        Bad::Oversize => ("rx_oversize", s.rx_oversize),
        Bad::NotOurs => ("rx_not_ours", s.rx_not_ours),
        Bad::Unsupported => ("rx_unsupported", s.rx_unsupported),
        Bad::LyingIpv4Length | Bad::TruncatedTcp => ("rx_bad_ipv4", s.rx_bad_ipv4),
        Bad::Ipv4Checksum | Bad::TcpChecksum => ("rx_bad_checksum", s.rx_bad_checksum),
        Bad::Fragment => ("rx_fragment", s.rx_fragment),
        Bad::Garbage => ("any", s.rx_dropped()),
    }
}

#[test]
fn malformed_frames_are_dropped_counted_and_harmless() {
    let seed = 5;
    let b_mac = sim_stack_config(IP_B, seed + 1)
        .mac
        .expect("set by sim_stack_config")
        .0;
    let wrap = |port: SimPort, is_a: bool| Injecting {
        inner: port,
        mac: b_mac,
        rng: Rng::new(77),
        enabled: !is_a,
        calls: 0,
        injected: Vec::new(),
    };
    let mut net = SimNet::with_wrap(SimConfig::default().with_seed(seed), seed, wrap);
    let (s, c) = connect_pair(&mut net, 5001).expect("connect");

    let total: u64 = 8 << 20;
    let pat = Pattern::new(9);
    let (mut sent, mut got) = (0u64, 0u64);
    let mut scratch = vec![0u8; 16 << 10];
    net.drive(Duration::from_secs(3600), |a, b, _| {
        if sent < total {
            sent += a
                .send_with(c, |buf| {
                    let n = buf.len().min((total - sent) as usize);
                    pat.fill(sent, &mut buf[..n]);
                    (n, n as u64)
                })
                .map_err(|e| e.to_string())?;
        }
        let n = b
            .recv_with(s, |d| match pat.mismatch(got, d, &mut scratch) {
                Some(i) => (0, Err(format!("byte {} differs", got + i as u64))),
                None => (d.len(), Ok(d.len() as u64)),
            })
            .map_err(|e| e.to_string())??;
        got += n;
        Ok(if got == total {
            Step::Done(())
        } else if n > 0 {
            Step::Busy
        } else {
            Step::Idle
        })
    })
    .expect("transfer intact despite the bad frames");

    let st = net.b.stats();
    let injected = &net.b.device().injected;
    let total_injected: u64 = injected.iter().map(|(_, c)| c).sum();
    println!("injected {injected:?}\nB stats {st:?}");
    assert_eq!(
        injected.len(),
        KINDS.len(),
        "every kind was thrown: {injected:?}"
    );
    // Each kind lands in its own counter (garbage in any: the total must still match).
    for kind in KINDS.iter().filter(|&&k| k != Bad::Garbage) {
        let (name, value) = counter(*kind, &st);
        let thrown: u64 = injected
            .iter()
            .filter(|(k, _)| *k != Bad::Garbage && counter(*k, &st).0 == name)
            .map(|(_, c)| c)
            .sum();
        assert!(value >= thrown, "{name}: {thrown} thrown, {value} counted");
    }
    assert_eq!(
        st.rx_dropped(),
        total_injected,
        "every bad frame dropped and counted once"
    );
    assert_eq!(net.a.stats().rx_dropped(), 0, "A saw no bad frames");
}

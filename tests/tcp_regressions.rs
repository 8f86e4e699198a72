//! TCP failures the fuzz targets found in the TCP engine (smoltcp), each reproduced with two
//! stacks on the simulated link, and fixed in the vendored smoltcp (vendor/smoltcp/PATCHES.md).
//! A new one goes in `#[ignore]`d until the engine is fixed.

mod common;

use std::time::Duration;

use common::{connect_pair, Pattern, SimNet, Step};
use ustack::dev::sim::{SimConfig, SimPort};
use ustack::{Batch, DeviceCaps, Frame, Instant, LinkStats, PacketDevice, PoolBuf};

/// Sequence number and payload length of an Ethernet + IPv4 + TCP frame.
fn tcp_seq_len(f: &[u8]) -> Option<(u32, usize)> {
    if f.len() < 54 || f[12..14] != [0x08, 0x00] || f[23] != 6 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let tcp = 14 + ihl;
    let doff = usize::from(f.get(tcp + 12)? >> 4) * 4;
    let seq = u32::from_be_bytes(f.get(tcp + 4..tcp + 8)?.try_into().ok()?);
    Some((seq, total.checked_sub(ihl + doff)?))
}

/// Drops, in one direction, the second data segment and every copy of it until `until`.
#[derive(Default)]
struct DropSecond {
    first: Option<u32>,
    victim: Option<u32>,
    dropped: u64,
}

impl DropSecond {
    fn takes(&mut self, f: &[u8], now: Instant, until: Instant) -> bool {
        let Some((seq, len)) = tcp_seq_len(f) else {
            return false;
        };
        if now >= until || len == 0 {
            return false;
        }
        match (self.first, self.victim) {
            (None, _) => self.first = Some(seq),
            (Some(first), None) if first != seq => self.victim = Some(seq),
            _ => {}
        }
        let take = self.victim == Some(seq);
        self.dropped += u64::from(take);
        take
    }
}

/// Port B, losing one segment each way while `until` has not come.
struct Lossy {
    inner: SimPort,
    active: bool,
    until: Instant,
    rx: DropSecond,
    tx: DropSecond,
    tmp: Batch<PoolBuf>,
}

impl PacketDevice for Lossy {
    type Frame = PoolBuf;
    fn caps(&self) -> DeviceCaps {
        self.inner.caps()
    }
    fn rx_burst(&mut self, now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
        let n = self.inner.rx_burst(now, &mut self.tmp);
        let mut kept = 0;
        for _ in 0..n {
            let f = self.tmp.pop().expect("frame");
            if !(self.active && self.rx.takes(f.data(), now, self.until)) && batch.push(f).is_ok() {
                kept += 1;
            }
        }
        kept
    }
    fn tx_alloc(&mut self) -> Option<PoolBuf> {
        self.inner.tx_alloc()
    }
    fn tx_burst(&mut self, now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
        let mut taken = 0;
        while taken < self.inner.caps().burst_max {
            let Some(f) = batch.pop() else { break };
            taken += 1;
            if !(self.active && self.tx.takes(f.data(), now, self.until)) {
                let _ = self.tmp.push(f);
            }
        }
        while !self.tmp.is_empty() && self.inner.tx_burst(now, &mut self.tmp) > 0 {}
        self.tmp.clear();
        taken
    }
    fn stats(&self) -> LinkStats {
        self.inner.stats()
    }
}

/// Both ends send 12 KiB at once; one segment of each direction is lost (with its fast
/// retransmissions), so both ends recover by their retransmission timeout, at the same time.
///
/// smoltcp 0.14 as published deadlocked: after its timeout each end went back to SND.UNA and
/// resent one segment, so the ACKs it sends carry a sequence number below the other end's RCV.NXT (which
/// moved past the hole with the retransmission and the SACKed data). Each end then drops the
/// other's ACKs as out of window (RFC 9293 3.10.7.4) without looking at their acknowledgement,
/// and both retransmit the same segment for ever (1.2 s in, each has received 4,968 bytes of
/// 12,288, and stays there). Found by `fuzz/fuzz_targets/stack_rx.rs` (its scene with
/// `USTACK_FUZZ_SIMULTANEOUS_LOSS=1`). Fixed by the vendored smoltcp's patch 3: an RTO no longer
/// rewinds SND.NXT, so ACKs keep the highest sequence number sent and stay in the peer's window.
#[test]
fn simultaneous_timeouts_in_both_directions_recover() {
    let wrap = |inner: SimPort, is_a: bool| Lossy {
        tmp: Batch::with_capacity(inner.caps().burst_max),
        inner,
        active: !is_a,
        until: Instant::ZERO,
        rx: DropSecond::default(),
        tx: DropSecond::default(),
    };
    let mut net = SimNet::with_wrap(SimConfig::default().with_seed(3), 3, wrap);
    let (s, c) = connect_pair(&mut net, 5001).expect("connect");
    // Lose segments for the next 20 ms only.
    net.b.device_mut().until = net.now + Duration::from_millis(20);
    const TOTAL: u64 = 12 << 10;
    let (pa, pb) = (Pattern::new(1), Pattern::new(2));
    let (mut a_sent, mut b_sent, mut a_got, mut b_got) = (0u64, 0u64, 0u64, 0u64);
    let mut scratch = vec![0u8; 16 << 10];
    let r = net.drive(Duration::from_secs(120), |a, b, _| {
        for (st, conn, sent, pat) in [(&mut *a, c, &mut a_sent, pa), (&mut *b, s, &mut b_sent, pb)]
        {
            if *sent < TOTAL {
                *sent += st
                    .send_with(conn, |buf| {
                        let n = buf.len().min((TOTAL - *sent) as usize);
                        pat.fill(*sent, &mut buf[..n]);
                        (n, n as u64)
                    })
                    .map_err(|e| e.to_string())?;
            }
        }
        for (st, conn, got, pat) in [(&mut *b, s, &mut b_got, pa), (&mut *a, c, &mut a_got, pb)] {
            let at = *got;
            let n = st
                .recv_with(conn, |d| match pat.mismatch(at, d, &mut scratch) {
                    Some(i) => (0, Err(format!("byte {} differs", at + i as u64))),
                    None => (d.len(), Ok(d.len() as u64)),
                })
                .map_err(|e| e.to_string())??;
            *got += n;
        }
        Ok(if a_got == TOTAL && b_got == TOTAL {
            Step::Done(())
        } else {
            Step::Idle
        })
    });
    let dev = net.b.device();
    assert!(
        dev.rx.dropped > 0 && dev.tx.dropped > 0,
        "one segment was lost each way ({} and {} copies)",
        dev.rx.dropped,
        dev.tx.dropped
    );
    r.unwrap_or_else(|e| {
        panic!(
            "{e}: A received {a_got} of {TOTAL} bytes, B {b_got}; send queues A {:?}, B {:?}",
            net.a.send_queue(c),
            net.b.send_queue(s)
        )
    });
}

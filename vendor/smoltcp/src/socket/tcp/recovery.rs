// Loss recovery for the TCP sender (a patch on top of smoltcp 0.14: see PATCHES.md, patch 3).
//
// Heads up! Before working on this file read RFC 8985 (RACK-TLP), RFC 6675 (SACK-based loss
// recovery), RFC 6582 (NewReno), RFC 3042 (limited transmit) and RFC 2883 (D-SACK).
//
// The sender keeps a record of every data segment it sent and that is not yet cumulatively
// acknowledged (`TxLog`): where it starts, how long it is, when it was last sent, and whether
// the receiver has selectively acknowledged it, whether it is deemed lost, and whether it was
// retransmitted. The records partition `SND.UNA..SND.NXT` (control flags aside) in sequence
// order, so SACK blocks and ACKs find their records by binary search.
//
// From those records:
// - SACK blocks mark records delivered (the scoreboard); a retransmission never resends them.
// - RACK (RFC 8985) deems a record lost once a segment sent after it was delivered and the
//   reordering window has passed since; that also finds lost retransmissions, which RFC 6675
//   alone leaves to the retransmission timer.
// - Without SACK, three duplicate ACKs deem the first record lost, and during recovery every
//   partial ACK deems the next one lost (NewReno, RFC 6582).
// - An RTO deems every record not selectively acknowledged lost: they are resent in order as
//   the congestion window allows, never the data the peer holds (no go-back-N).
// - A tail loss probe (RFC 8985 section 7) repairs the loss of the last segments of a flight,
//   which no later delivery can reveal, in about two round trips instead of an RTO.

use crate::time::{Duration, Instant};
use crate::wire::TcpSeqNumber;

/// The most data segments a socket keeps in flight. A full log stops new data until ACKs
/// free records (bounded memory: 16 bytes a record). 512 segments hold 724 KiB of 1448-byte
/// segments, more than the 256 KiB - 1 MiB send buffers ustack uses at that MSS need.
pub(crate) const TX_LOG_LEN: usize = 512;

/// Delivered by a SACK block.
const SACKED: u8 = 1;
/// Deemed lost and not yet resent.
const LOST: u8 = 2;
/// Sent more than once.
const RETRANS: u8 = 4;

/// Why a segment was resent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(crate) enum LossCause {
    /// The retransmission timer expired.
    Rto,
    /// Duplicate ACKs (three), or a partial ACK during recovery (NewReno), without SACK.
    DupAck,
    /// SACK information: RACK's time-based rule.
    Sack,
}

/// One data segment sent and not yet cumulatively acknowledged.
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(crate) struct Seg {
    seq: u32,
    len: u32,
    /// When it was last sent: microseconds, wrapping (ages are compared, never instants).
    xmit_us: u32,
    flags: u8,
    /// Why it is deemed lost (valid with `LOST`).
    cause: u8,
}

impl Seg {
    pub(crate) fn seq(&self) -> TcpSeqNumber {
        TcpSeqNumber(self.seq as i32)
    }

    pub(crate) fn end(&self) -> TcpSeqNumber {
        self.seq() + self.len as usize
    }

    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    fn is(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    pub(crate) fn is_retransmitted(&self) -> bool {
        self.is(RETRANS)
    }

    /// How long ago it was (last) sent, in microseconds.
    pub(crate) fn age_us(&self, now: Instant) -> u32 {
        age_us(clock_us(now), self.xmit_us)
    }

    fn loss_cause(&self) -> LossCause {
        match self.cause {
            0 => LossCause::Rto,
            1 => LossCause::DupAck,
            _ => LossCause::Sack,
        }
    }
}

fn cause_code(c: LossCause) -> u8 {
    match c {
        LossCause::Rto => 0,
        LossCause::DupAck => 1,
        LossCause::Sack => 2,
    }
}

/// Microseconds on a wrapping 32-bit clock.
fn clock_us(now: Instant) -> u32 {
    now.total_micros() as u32
}

/// How long ago `xmit_us` was, at `now_us` (valid for up to 71 minutes).
fn age_us(now_us: u32, xmit_us: u32) -> u32 {
    now_us.wrapping_sub(xmit_us)
}

/// The segments in flight, oldest sequence first, in a fixed ring.
#[derive(Debug)]
pub(crate) struct TxLog {
    segs: [Seg; TX_LOG_LEN],
    head: usize,
    len: usize,
    /// Bytes of records marked `SACKED`.
    sacked_bytes: usize,
    /// Records marked `SACKED`.
    sacked_segs: usize,
    /// Bytes of records marked `LOST` (awaiting retransmission).
    lost_bytes: usize,
    /// Records marked `LOST`, and the first of them may be at or after this index.
    lost_segs: usize,
    lost_hint: usize,
}

/// What one ACK told the scoreboard.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Delivered {
    /// Bytes newly acknowledged or selectively acknowledged.
    pub(crate) bytes: usize,
    /// A segment sent once only was delivered after a later one: the network reorders.
    pub(crate) reordered: bool,
}

impl TxLog {
    pub(crate) const fn new() -> TxLog {
        TxLog {
            segs: [Seg {
                seq: 0,
                len: 0,
                xmit_us: 0,
                flags: 0,
                cause: 0,
            }; TX_LOG_LEN],
            head: 0,
            len: 0,
            sacked_bytes: 0,
            sacked_segs: 0,
            lost_bytes: 0,
            lost_segs: 0,
            lost_hint: 0,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
        self.sacked_bytes = 0;
        self.sacked_segs = 0;
        self.lost_bytes = 0;
        self.lost_segs = 0;
        self.lost_hint = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len == TX_LOG_LEN
    }

    pub(crate) fn sacked_bytes(&self) -> usize {
        self.sacked_bytes
    }

    pub(crate) fn sacked_segs(&self) -> usize {
        self.sacked_segs
    }

    pub(crate) fn lost_bytes(&self) -> usize {
        self.lost_bytes
    }

    pub(crate) fn has_lost(&self) -> bool {
        self.lost_segs > 0
    }

    fn slot(&self, i: usize) -> usize {
        (self.head + i) % TX_LOG_LEN
    }

    pub(crate) fn get(&self, i: usize) -> &Seg {
        &self.segs[self.slot(i)]
    }

    fn get_mut(&mut self, i: usize) -> &mut Seg {
        let s = self.slot(i);
        &mut self.segs[s]
    }

    /// The end of the last record (`SND.NXT` for data), if any.
    pub(crate) fn end(&self) -> Option<TcpSeqNumber> {
        (self.len > 0).then(|| self.get(self.len - 1).end())
    }

    /// Records a new segment `seq..seq+len` sent at `now`. It must follow the last record.
    pub(crate) fn push(&mut self, seq: TcpSeqNumber, len: usize, now: Instant) -> bool {
        if self.is_full() || len == 0 {
            return false;
        }
        debug_assert!(self.end().is_none_or(|end| end == seq));
        let s = self.slot(self.len);
        self.segs[s] = Seg {
            seq: seq.0 as u32,
            len: len as u32,
            xmit_us: clock_us(now),
            flags: 0,
            cause: 0,
        };
        self.len += 1;
        true
    }

    /// The index of the first record that ends after `seq`.
    fn first_ending_after(&self, seq: TcpSeqNumber) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.get(mid).end() <= seq {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn unmark_lost(&mut self, i: usize) {
        let seg = self.get_mut(i);
        if seg.is(LOST) {
            seg.flags &= !LOST;
            let len = seg.len();
            self.lost_bytes -= len;
            self.lost_segs -= 1;
        }
    }

    /// Marks record `i` lost (for `cause`), unless it is delivered or already marked.
    /// Returns whether it was newly marked.
    pub(crate) fn mark_lost(&mut self, i: usize, cause: LossCause) -> bool {
        let seg = self.get_mut(i);
        if seg.is(SACKED) || seg.is(LOST) {
            return false;
        }
        seg.flags |= LOST;
        seg.cause = cause_code(cause);
        let len = seg.len();
        self.lost_bytes += len;
        self.lost_segs += 1;
        self.lost_hint = self.lost_hint.min(i);
        true
    }

    /// Forgets every loss mark (the losses were found spurious).
    pub(crate) fn unmark_all_lost(&mut self) {
        for i in 0..self.len {
            self.unmark_lost(i);
        }
    }

    /// Marks every record not delivered lost (after an RTO). Returns how many were marked.
    /// Whether the record at `SND.UNA` is marked selectively acknowledged. After a
    /// retransmission timeout that means the peer reneged, or a forged SACK claimed it.
    pub(crate) fn head_sacked(&self) -> bool {
        self.len > 0 && self.get(0).is(SACKED)
    }

    /// Forgets every selective acknowledgment (RFC 2018 section 8): what the peer holds is
    /// then known only from its cumulative ACK.
    pub(crate) fn forget_sacks(&mut self) {
        for i in 0..self.len {
            self.get_mut(i).flags &= !SACKED;
        }
        self.sacked_bytes = 0;
        self.sacked_segs = 0;
    }

    pub(crate) fn mark_all_lost(&mut self, cause: LossCause) -> usize {
        (0..self.len).filter(|&i| self.mark_lost(i, cause)).count()
    }

    /// The first record deemed lost and not yet resent.
    pub(crate) fn first_lost(&mut self) -> Option<usize> {
        if self.lost_segs == 0 {
            self.lost_hint = self.len;
            return None;
        }
        let found = (self.lost_hint..self.len).find(|&i| self.get(i).is(LOST));
        debug_assert!(
            found.is_some(),
            "lost_segs counts a record that is not there"
        );
        self.lost_hint = found.unwrap_or(self.len);
        found
    }

    /// The first record resent and not yet acknowledged in any way (a probe in recovery
    /// resends it).
    pub(crate) fn first_retransmitted_unsacked(&self) -> Option<usize> {
        (0..self.len).find(|&i| {
            let seg = self.get(i);
            seg.is(RETRANS) && !seg.is(SACKED) && !seg.is(LOST)
        })
    }

    /// The last record the peer has not selectively acknowledged (a tail loss probe resends it).
    pub(crate) fn last_unsacked(&self) -> Option<usize> {
        (0..self.len).rev().find(|&i| !self.get(i).is(SACKED))
    }

    /// Records that record `i` was sent again at `now`; returns why it was deemed lost, if it was.
    pub(crate) fn on_retransmit(&mut self, i: usize, now: Instant) -> Option<LossCause> {
        let was_lost = self.get(i).is(LOST);
        self.unmark_lost(i);
        let seg = self.get_mut(i);
        seg.flags |= RETRANS;
        seg.xmit_us = clock_us(now);
        was_lost.then(|| seg.loss_cause())
    }

    /// Removes the records `ack` covers (trimming one it covers in part); each one not
    /// delivered before goes to `delivered`, which also hears of reordering (`fack`: the
    /// highest sequence delivered so far).
    pub(crate) fn ack(
        &mut self,
        ack: TcpSeqNumber,
        fack: Option<TcpSeqNumber>,
        mut delivered: impl FnMut(&Seg),
    ) -> Delivered {
        let mut out = Delivered::default();
        while self.len > 0 {
            let seg = *self.get(0);
            if seg.end() <= ack {
                if seg.is(SACKED) {
                    self.sacked_bytes -= seg.len();
                    self.sacked_segs -= 1;
                } else {
                    self.unmark_lost(0);
                    out.bytes += seg.len();
                    out.reordered |= !seg.is(RETRANS) && fack.is_some_and(|f| seg.end() < f);
                    delivered(&seg);
                }
                self.head = (self.head + 1) % TX_LOG_LEN;
                self.len -= 1;
                self.lost_hint = self.lost_hint.saturating_sub(1);
            } else {
                if seg.seq() < ack {
                    // Acknowledged in part: the rest stays in flight.
                    let cut = (ack - seg.seq()) as u32;
                    let was_lost = seg.is(LOST);
                    let was_sacked = seg.is(SACKED);
                    let s = self.get_mut(0);
                    s.seq = ack.0 as u32;
                    s.len -= cut;
                    if was_lost {
                        self.lost_bytes -= cut as usize;
                    }
                    if was_sacked {
                        self.sacked_bytes -= cut as usize;
                    }
                    out.bytes += cut as usize;
                }
                break;
            }
        }
        if self.len == 0 {
            self.head = 0;
            self.lost_hint = 0;
        }
        out
    }

    /// Marks the records wholly inside `left..right` delivered; each newly marked goes to
    /// `delivered`. The block must lie within the records (the caller checks).
    pub(crate) fn sack(
        &mut self,
        left: TcpSeqNumber,
        right: TcpSeqNumber,
        fack: Option<TcpSeqNumber>,
        mut delivered: impl FnMut(&Seg),
    ) -> Delivered {
        let mut out = Delivered::default();
        let mut i = self.first_ending_after(left);
        while i < self.len {
            let seg = *self.get(i);
            if seg.end() > right {
                break;
            }
            if seg.seq() >= left && !seg.is(SACKED) {
                self.unmark_lost(i);
                self.get_mut(i).flags |= SACKED;
                self.sacked_bytes += seg.len();
                self.sacked_segs += 1;
                out.bytes += seg.len();
                out.reordered |= !seg.is(RETRANS) && fack.is_some_and(|f| seg.end() < f);
                delivered(&seg);
            }
            i += 1;
        }
        out
    }

    /// Whether `left..right` covers a record that was retransmitted (for D-SACK accounting).
    pub(crate) fn covers_retransmission(&self, left: TcpSeqNumber, right: TcpSeqNumber) -> bool {
        let mut i = self.first_ending_after(left);
        while i < self.len {
            let seg = self.get(i);
            if seg.seq() >= right {
                break;
            }
            if seg.is(RETRANS) {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// RACK (RFC 8985 section 6): the most recently sent segment known to be delivered.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(crate) struct Rack {
    /// Whether a delivery was seen since the connection (re)started.
    has: bool,
    /// When that segment was (last) sent, and where it ends.
    xmit_us: u32,
    end_seq: TcpSeqNumber,
    /// Its round trip time, and the least round trip seen.
    rtt_us: u32,
    min_rtt_us: u32,
    /// The highest sequence delivered (acknowledged or selectively acknowledged), once data
    /// was delivered.
    pub(crate) fack: Option<TcpSeqNumber>,
    /// Reordering was seen on this connection: wait a reordering window before deeming loss.
    pub(crate) reordering_seen: bool,
    /// The reordering window, in quarters of the least RTT (grows with D-SACKs).
    reo_wnd_mult: u8,
    /// Recoveries left before `reo_wnd_mult` goes back to 1.
    reo_wnd_persist: u8,
    /// Until the ACK passes this, further D-SACKs do not grow the window again.
    dsack_round: Option<TcpSeqNumber>,
}

impl Rack {
    pub(crate) const fn new() -> Rack {
        Rack {
            has: false,
            xmit_us: 0,
            end_seq: TcpSeqNumber(0),
            rtt_us: 0,
            min_rtt_us: u32::MAX,
            fack: None,
            reordering_seen: false,
            reo_wnd_mult: 1,
            reo_wnd_persist: 0,
            dsack_round: None,
        }
    }

    /// The least round trip seen, if any.
    pub(crate) fn min_rtt(&self) -> Option<Duration> {
        (self.min_rtt_us != u32::MAX).then(|| Duration::from_micros(self.min_rtt_us as u64))
    }

    /// RFC 8985 6.2 step 2: a segment was delivered at `now`.
    pub(crate) fn on_delivered(&mut self, seg: &Seg, now: Instant) {
        let now_us = clock_us(now);
        let rtt = age_us(now_us, seg.xmit_us);
        if seg.is_retransmitted() && self.min_rtt_us != u32::MAX && rtt < self.min_rtt_us {
            // Too soon for the retransmission: the ACK is for the first transmission, whose
            // time is gone. Not a usable sample (RFC 8985 6.2 step 2).
            return;
        }
        if !seg.is_retransmitted() {
            self.min_rtt_us = self.min_rtt_us.min(rtt);
        }
        self.note_delivered_up_to(seg.end());
        // The most recently sent of all delivered; ties broken by sequence.
        let newer = !self.has
            || age_us(now_us, seg.xmit_us) < age_us(now_us, self.xmit_us)
            || (seg.xmit_us == self.xmit_us && seg.end() > self.end_seq);
        if newer {
            self.has = true;
            self.xmit_us = seg.xmit_us;
            self.end_seq = seg.end();
            self.rtt_us = rtt;
        }
    }

    /// Data up to `seq` was delivered (a cumulative ACK, or a segment).
    pub(crate) fn note_delivered_up_to(&mut self, seq: TcpSeqNumber) {
        if self.fack.is_none_or(|f| seq > f) {
            self.fack = Some(seq);
        }
    }

    /// RFC 8985 6.2 step 4 (D-SACK part): a D-SACK arrived with the ACK at `snd_una`.
    pub(crate) fn on_dsack(&mut self, snd_una: TcpSeqNumber, snd_nxt: TcpSeqNumber) {
        if self.dsack_round.is_some_and(|r| snd_una >= r) {
            self.dsack_round = None;
        }
        if self.dsack_round.is_none() {
            self.dsack_round = Some(snd_nxt);
            self.reo_wnd_mult = self.reo_wnd_mult.saturating_add(1).min(16);
            self.reo_wnd_persist = 16;
        }
    }

    /// A recovery episode ended.
    pub(crate) fn on_recovery_end(&mut self) {
        if self.reo_wnd_persist > 0 {
            self.reo_wnd_persist -= 1;
            if self.reo_wnd_persist == 0 {
                self.reo_wnd_mult = 1;
            }
        }
    }

    /// RFC 8985 6.2 step 4: the reordering window, in microseconds.
    fn reo_wnd_us(&self, in_recovery: bool, sacked_segs: usize, srtt_us: Option<u32>) -> u32 {
        if !self.reordering_seen && (in_recovery || sacked_segs >= 3) {
            return 0;
        }
        let min_rtt = if self.min_rtt_us == u32::MAX {
            0
        } else {
            self.min_rtt_us
        };
        let wnd = (min_rtt / 4).saturating_mul(self.reo_wnd_mult as u32);
        match srtt_us {
            Some(srtt) => wnd.min(srtt),
            None => wnd,
        }
    }

    /// RFC 8985 6.2 step 5: marks lost every record sent before the most recently delivered
    /// one that has waited longer than an RTT and the reordering window. Returns how many
    /// were marked, and when the earliest of the others is due (a reordering timer).
    pub(crate) fn detect_loss(
        &self,
        log: &mut TxLog,
        now: Instant,
        in_recovery: bool,
        srtt_us: Option<u32>,
    ) -> (usize, Option<Instant>) {
        if !self.has {
            return (0, None);
        }
        let now_us = clock_us(now);
        let reo_wnd = self.reo_wnd_us(in_recovery, log.sacked_segs, srtt_us);
        let wait = self.rtt_us.saturating_add(reo_wnd);
        let rack_age = age_us(now_us, self.xmit_us);
        let (mut marked, mut next): (usize, Option<u32>) = (0, None);
        for i in 0..log.len() {
            let seg = *log.get(i);
            if seg.seq() >= self.end_seq {
                break;
            }
            if seg.is(SACKED) || seg.is(LOST) {
                continue;
            }
            let age = age_us(now_us, seg.xmit_us);
            let sent_before = age > rack_age || (age == rack_age && seg.end() <= self.end_seq);
            if !sent_before {
                continue;
            }
            if age >= wait {
                if log.mark_lost(i, LossCause::Sack) {
                    marked += 1;
                }
            } else {
                let left = wait - age;
                next = Some(next.map_or(left, |n| n.min(left)));
            }
        }
        (
            marked,
            next.map(|us| now + Duration::from_micros(us as u64)),
        )
    }
}

/// Counters of one socket's sender (and a few of its receiver), for operators: why data was
/// sent again and what the peer told us.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Counters {
    /// Data segments sent for the first time.
    pub segments_sent: u64,
    /// Segments resent because the retransmission timer expired.
    pub retransmits_rto: u64,
    /// Segments resent after duplicate ACKs or partial ACKs (no SACK: RFC 5681, RFC 6582).
    pub retransmits_fast: u64,
    /// Segments resent because SACK information showed them lost (RFC 8985, RFC 6675).
    pub retransmits_sack: u64,
    /// Tail loss probes sent (RFC 8985 section 7), new data or a resent last segment.
    pub tail_loss_probes: u64,
    /// Retransmissions the peer reported it already had (D-SACK, RFC 2883): spurious.
    pub spurious_retransmits: u64,
    /// Retransmission timeouts.
    pub rto_expirations: u64,
    /// Loss recovery episodes entered without a timeout.
    pub fast_recoveries: u64,
    /// Loss episodes (fast or timeout) undone because the peer reported every
    /// retransmission in them spurious (D-SACK): the congestion window was restored.
    pub recoveries_undone: u64,
    /// SACK blocks ignored: outside the data in flight, reversed, or beyond what was sent.
    pub sack_blocks_ignored: u64,
    /// Segments whose RST or SYN did not carry the exact expected sequence number, or whose
    /// ACK acknowledged data never sent: answered with a (rate-limited) challenge ACK or
    /// dropped (RFC 5961).
    pub challenge_acks: u64,
    /// Duplicate segments received (reported to the peer as D-SACK).
    pub duplicates_received: u64,
    /// Handshakes given up after `set_syn_retries` retransmissions of the SYN or SYN|ACK.
    pub handshake_timeouts: u64,
    /// Bytes of our data the peer acknowledged (cumulatively: `SND.UNA`'s advance, the SYN and
    /// FIN excluded; SACKed bytes count once the cumulative ACK covers them).
    pub bytes_acked: u64,
    /// In-order payload bytes taken: queued in the receive buffer or given to the receive
    /// sink, each once (out-of-order data counts when the hole before it fills; duplicates
    /// and the FIN never).
    pub bytes_received: u64,
}

impl Counters {
    /// All retransmissions of data, whatever the cause.
    pub fn retransmits(&self) -> u64 {
        self.retransmits_rto + self.retransmits_fast + self.retransmits_sack
    }

    /// Adds `other` to these counters.
    pub fn add(&mut self, other: &Counters) {
        self.segments_sent += other.segments_sent;
        self.retransmits_rto += other.retransmits_rto;
        self.retransmits_fast += other.retransmits_fast;
        self.retransmits_sack += other.retransmits_sack;
        self.tail_loss_probes += other.tail_loss_probes;
        self.spurious_retransmits += other.spurious_retransmits;
        self.rto_expirations += other.rto_expirations;
        self.fast_recoveries += other.fast_recoveries;
        self.recoveries_undone += other.recoveries_undone;
        self.sack_blocks_ignored += other.sack_blocks_ignored;
        self.challenge_acks += other.challenge_acks;
        self.duplicates_received += other.duplicates_received;
        self.handshake_timeouts += other.handshake_timeouts;
        self.bytes_acked += other.bytes_acked;
        self.bytes_received += other.bytes_received;
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn seq(n: usize) -> TcpSeqNumber {
        TcpSeqNumber(1000) + n
    }

    fn t(ms: u64) -> Instant {
        Instant::from_micros((ms * 1000) as i64)
    }

    /// Ten 100-byte segments sent 1 ms apart.
    fn ten() -> TxLog {
        let mut log = TxLog::new();
        for i in 0..10 {
            assert!(log.push(seq(i * 100), 100, t(i as u64)));
        }
        log
    }

    #[test]
    fn ack_removes_and_trims() {
        let mut log = ten();
        let mut got = 0;
        let d = log.ack(seq(250), None, |_| got += 1);
        assert_eq!(got, 2);
        assert_eq!(d.bytes, 250);
        assert_eq!(log.len(), 8);
        assert_eq!(log.get(0).seq(), seq(250));
        assert_eq!(log.get(0).len(), 50);
        assert_eq!(log.end(), Some(seq(1000)));
        log.ack(seq(1000), None, |_| {});
        assert!(log.is_empty());
    }

    #[test]
    fn sack_marks_whole_records_only() {
        let mut log = ten();
        // 350..720 covers records 4..=6 wholly, 3 and 7 in part.
        let d = log.sack(seq(350), seq(720), None, |_| {});
        assert_eq!(d.bytes, 300);
        assert_eq!(log.sacked_bytes(), 300);
        assert_eq!(log.sacked_segs(), 3);
        // Again: nothing new.
        assert_eq!(log.sack(seq(350), seq(720), None, |_| {}).bytes, 0);
        // The cumulative ACK past them gives back their bytes without counting them again.
        let d = log.ack(seq(800), Some(seq(700)), |_| {});
        assert_eq!(d.bytes, 500);
        assert_eq!(log.sacked_bytes(), 0);
    }

    #[test]
    fn lost_records_are_found_in_order_and_cleared_by_delivery() {
        let mut log = ten();
        assert!(log.mark_lost(5, LossCause::Sack));
        assert!(log.mark_lost(2, LossCause::DupAck));
        assert!(!log.mark_lost(2, LossCause::Sack));
        assert_eq!(log.lost_bytes(), 200);
        assert_eq!(log.first_lost(), Some(2));
        assert_eq!(log.on_retransmit(2, t(20)), Some(LossCause::DupAck));
        assert_eq!(log.first_lost(), Some(5));
        // A SACK of the other lost record clears it: it is never resent.
        log.sack(seq(500), seq(600), None, |_| {});
        assert_eq!(log.first_lost(), None);
        assert_eq!(log.lost_bytes(), 0);
        // After an RTO everything not delivered is lost: 9 records (one is SACKed).
        assert_eq!(log.mark_all_lost(LossCause::Rto), 9);
        assert_eq!(log.first_lost(), Some(0));
        log.ack(seq(300), Some(seq(600)), |_| {});
        assert_eq!(log.first_lost(), Some(0));
        assert_eq!(log.get(0).seq(), seq(300));
        assert_eq!(log.lost_bytes(), 600);
    }

    #[test]
    fn full_log_refuses_more() {
        let mut log = TxLog::new();
        for i in 0..TX_LOG_LEN {
            assert!(log.push(seq(i), 1, t(0)));
        }
        assert!(log.is_full());
        assert!(!log.push(seq(TX_LOG_LEN), 1, t(0)));
        log.ack(seq(1), None, |_| {});
        assert!(log.push(seq(TX_LOG_LEN), 1, t(0)));
        // The ring wrapped: order and lookup still hold.
        assert_eq!(log.get(TX_LOG_LEN - 1).seq(), seq(TX_LOG_LEN));
        let d = log.sack(seq(TX_LOG_LEN - 1), seq(TX_LOG_LEN + 1), None, |_| {});
        assert_eq!(d.bytes, 2);
    }

    #[test]
    fn rack_marks_segments_sent_before_a_delivered_one() {
        let mut log = ten();
        let mut rack = Rack::new();
        // Segment 6 (sent at 6 ms) is SACKed at 10 ms: RTT 4 ms.
        let now = t(10);
        log.sack(seq(600), seq(700), rack.fack, |s| rack.on_delivered(s, now));
        // Segments 0..=5 were sent before it. Reordering not seen, one SACKed segment:
        // reordering window min_rtt / 4 = 1 ms. Waits RTT + 1 ms = 5 ms after each was sent.
        let (marked, next) = rack.detect_loss(&mut log, now, false, None);
        // Sent at 0..=5 ms, ages 10..5 ms: all at least 5 ms.
        assert_eq!(marked, 6);
        assert_eq!(next, None);
        // Segments sent after the delivered one are not judged.
        assert_eq!(log.first_lost(), Some(0));
        assert!(!log.get(7).is(LOST));
    }

    #[test]
    fn rack_after_reordering_uses_a_quarter_rtt_window() {
        let mut log = ten();
        let mut rack = Rack::new();
        rack.reordering_seen = true;
        // Segment 9 (sent at 9 ms) SACKed at 9.5 ms: RTT 0.5 ms, reordering window 125 us.
        let now = Instant::from_micros(9_500);
        log.sack(seq(900), seq(1000), rack.fack, |s| {
            rack.on_delivered(s, now)
        });
        let (marked, next) = rack.detect_loss(&mut log, now, false, None);
        // Segment 8 was sent 1.5 ms ago (>= 625 us): lost; 0..=7 too.
        assert_eq!(marked, 9);
        assert_eq!(next, None);
    }

    #[test]
    fn rack_waits_for_reordering() {
        let mut log = ten();
        let mut rack = Rack::new();
        rack.reordering_seen = true;
        // D-SACKs grew the window to 8 quarters of the least RTT.
        rack.reo_wnd_mult = 8;
        // Segment 9 (sent at 9 ms) SACKed at 10 ms: RTT 1 ms; window 2 ms.
        let now = t(10);
        log.sack(seq(900), seq(1000), rack.fack, |s| {
            rack.on_delivered(s, now)
        });
        let (marked, next) = rack.detect_loss(&mut log, now, false, None);
        // Each must be 3 ms old: 0..=7 (ages 10..3 ms) are; 8 (2 ms) is due at 11 ms.
        assert_eq!(marked, 8);
        assert_eq!(next, Some(t(11)));
        assert!(!log.get(8).is(LOST));
        let (marked, next) = rack.detect_loss(&mut log, t(11), false, None);
        assert_eq!((marked, next), (1, None));
    }

    #[test]
    fn reordering_is_detected() {
        let mut log = ten();
        let mut rack = Rack::new();
        let now = t(10);
        let d = log.sack(seq(500), seq(600), rack.fack, |s| rack.on_delivered(s, now));
        assert!(!d.reordered);
        // Segment 2 arrives late, never resent: reordering.
        let d = log.sack(seq(200), seq(300), rack.fack, |s| rack.on_delivered(s, now));
        assert!(d.reordered);
    }

    #[test]
    fn retransmission_acked_too_soon_is_not_a_sample() {
        let mut log = ten();
        let mut rack = Rack::new();
        log.sack(seq(900), seq(1000), rack.fack, |s| {
            rack.on_delivered(s, t(10))
        });
        assert_eq!(rack.min_rtt(), Some(Duration::from_millis(1)));
        log.mark_lost(0, LossCause::Sack);
        log.on_retransmit(0, t(10));
        let before = (rack.xmit_us, rack.end_seq);
        // ACKed 100 us after the retransmission: the original was acknowledged.
        log.ack(seq(100), rack.fack, |s| {
            rack.on_delivered(s, Instant::from_micros(10_100))
        });
        assert_eq!((rack.xmit_us, rack.end_seq), before);
    }
}

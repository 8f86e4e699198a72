use crate::{socket::tcp::RttEstimator, time::Instant};

use super::Controller;

const DEFAULT_MSS: usize = 1024;

#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Reno {
    cwnd: usize,
    mss: usize,
    ssthresh: usize,
    rwnd: usize,

    in_fast_recovery: bool,
    // Set on RTO, cleared when new data is ACKed. While set, further RTOs
    // are retransmissions of the same segment and must not reduce ssthresh
    // again (RFC 5681 section 3.1).
    in_rto_recovery: bool,
    // The window and threshold before the last loss episode, for `undo_loss`.
    prior: Option<(usize, usize)>,
    // Nothing acknowledged or lost yet: the window is the initial window of the MSS.
    initial: bool,
    // In the slow start after a retransmission timeout (RFC 3465 counts 1 MSS per ACK there).
    rto_slow_start: bool,
    // Loss-proportional decrease (patch 11): the share of data lost, an average over rounds of
    // about one window (x 1024), and this round's counts. `None`: Reno's halving.
    proportional: Option<LossShare>,
}

/// The share of data a connection loses, tracked as DCTCP tracks its share of ECN marks.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
struct LossShare {
    /// The average share lost, in units of `SHARE_ONE` (starts at 1: the first loss halves,
    /// as Reno does).
    alpha: u32,
    acked: usize,
    lost: usize,
    /// Bytes acknowledged that end the current round (the window when it began).
    round: usize,
}

/// DCTCP's gain for the average (RFC 8257: 1/16).
const SHARE_GAIN_SHIFT: u32 = 4;

/// The share lost is kept in units of 1/2^20 (so the average can decay to a few per million).
const SHARE_ONE: u64 = 1 << 20;

impl Reno {
    pub fn new() -> Self {
        Reno {
            cwnd: DEFAULT_MSS * 2,
            mss: DEFAULT_MSS,
            ssthresh: usize::MAX,
            rwnd: 64 * DEFAULT_MSS,
            in_fast_recovery: false,
            in_rto_recovery: false,
            prior: None,
            initial: true,
            rto_slow_start: false,
            proportional: None,
        }
    }

    /// Reno's growth, with a decrease on loss in proportion to the share of data lost: the
    /// window is multiplied by `1 - share / 2`, the share being a moving average (gain 1/16)
    /// of the bytes lost over the bytes sent, per round of about one window. That is DCTCP's
    /// rule (RFC 8257) with losses in place of ECN marks: a loss that costs a large part of
    /// the window (a queue overflowing) halves it, as Reno does; isolated losses on a path
    /// that drops a steady small share of segments (a lossy link, corruption) barely shrink
    /// it. The average starts at 1, so a new connection's first loss halves the window.
    pub fn new_loss_proportional() -> Self {
        Reno {
            proportional: Some(LossShare {
                alpha: SHARE_ONE as u32,
                acked: 0,
                lost: 0,
                round: 0,
            }),
            ..Reno::new()
        }
    }

    /// Whether the decrease is loss-proportional (`new_loss_proportional`).
    pub fn is_loss_proportional(&self) -> bool {
        self.proportional.is_some()
    }

    /// The window after a loss episode that began with `in_flight` bytes outstanding.
    fn decreased(&self, in_flight: usize) -> usize {
        match self.proportional {
            None => in_flight >> 1,
            Some(share) => {
                let cut = (self.cwnd as u64 * share.alpha as u64 / (2 * SHARE_ONE)) as usize;
                self.cwnd.saturating_sub(cut)
            }
        }
        .max(2 * self.mss)
    }
}

impl Controller for Reno {
    fn window(&self) -> usize {
        self.cwnd
    }

    fn on_ack(&mut self, _now: Instant, len: usize, _in_flight: usize, _rtt: &RttEstimator) {
        // RFC 5681 only acts on ACKs of new data. The socket also notifies us
        // of accepted segments that acknowledge nothing (window updates, data
        // segments from the remote): those must not exit fast recovery nor
        // grow the window.
        if len == 0 {
            return;
        }

        // New data was ACKed: a timer-based loss episode, if any, is over.
        self.in_rto_recovery = false;
        self.initial = false;

        if let Some(share) = &mut self.proportional {
            share.acked += len;
            if share.acked >= share.round {
                // A round is over: fold its share lost into the average.
                let sent = (share.acked + share.lost).max(1);
                let frac = ((share.lost as u64 * SHARE_ONE) / sent as u64).min(SHARE_ONE) as u32;
                share.alpha =
                    share.alpha - (share.alpha >> SHARE_GAIN_SHIFT) + (frac >> SHARE_GAIN_SHIFT);
                share.acked = 0;
                share.lost = 0;
                share.round = self.cwnd;
            }
        }

        // The window holds during fast recovery; the socket says when it ends
        // (`on_recovery_end`), not the first ACK of new data (NewReno, RFC 6582).
        if self.in_fast_recovery {
            return;
        }

        // Appropriate Byte Counting (RFC 3465): the window grows by the bytes acknowledged,
        // not per ACK, so a receiver that acknowledges every second segment (delayed ACKs)
        // or several at once does not slow the growth down.
        let inc = if self.cwnd < self.ssthresh {
            // Slow start: by the bytes acknowledged, at most 2 MSS per ACK (RFC 3465's L), or
            // 1 MSS in the slow start that follows a timeout.
            let limit = if self.rto_slow_start { 1 } else { 2 };
            len.min(limit * self.mss)
        } else {
            self.rto_slow_start = false;
            // Congestion avoidance: by ~1 MSS per window of bytes acknowledged (per RTT).
            (self.mss.saturating_mul(len.min(self.cwnd)) / self.cwnd).max(1)
        };

        self.cwnd = self.cwnd.saturating_add(inc).min(self.rwnd).max(self.mss);
    }

    fn on_loss(&mut self, _now: Instant, in_flight: usize) {
        self.initial = false;
        // Only cut window size on first entrance to fast recovery. No inflation: the
        // socket subtracts what the peer holds from what is in flight (RFC 6675).
        if !self.in_fast_recovery {
            if !self.in_rto_recovery {
                self.prior = Some((self.cwnd, self.ssthresh));
            }
            self.ssthresh = self.decreased(in_flight);
            self.cwnd = self.ssthresh.min(self.rwnd).max(self.mss);

            self.in_fast_recovery = true;
        }
    }

    fn undo_loss(&mut self, _now: Instant) {
        if let Some((cwnd, ssthresh)) = self.prior.take() {
            self.cwnd = self.cwnd.max(cwnd).min(self.rwnd).max(self.mss);
            self.ssthresh = self.ssthresh.max(ssthresh);
            self.in_fast_recovery = false;
            self.in_rto_recovery = false;
        }
    }

    fn on_recovery_end(&mut self, _now: Instant) {
        if self.in_fast_recovery {
            self.in_fast_recovery = false;
            self.cwnd = self.ssthresh.min(self.rwnd).max(self.mss);
        }
    }

    fn on_rto(&mut self, _now: Instant, in_flight: usize) {
        self.initial = false;
        // RFC 5681: when the retransmission timer fires for a segment that has
        // already been retransmitted by the timer (no new data was ACKed since
        // the previous RTO), ssthresh is held constant.
        if !self.in_rto_recovery {
            if !self.in_fast_recovery {
                self.prior = Some((self.cwnd, self.ssthresh));
            }
            self.ssthresh = (in_flight >> 1).max(2 * self.mss);
            self.in_rto_recovery = true;
        }

        // cwnd collapses to the loss window (1 MSS) and we re-enter slow start.
        self.cwnd = self.mss;
        self.rto_slow_start = true;

        // Major loss has occurred, ensure we move from fast recovery (if in it) to slow start.
        self.in_fast_recovery = false
    }

    fn on_lost(&mut self, bytes: usize) {
        if let Some(share) = &mut self.proportional {
            share.lost += bytes;
        }
    }

    fn set_mss(&mut self, mss: usize) {
        self.mss = mss;
        if self.initial {
            self.cwnd = super::initial_window(mss);
        }
    }

    fn set_remote_window(&mut self, remote_window: usize) {
        if self.rwnd < remote_window {
            self.rwnd = remote_window;
        }
    }
}

#[cfg(test)]
mod test {
    use crate::time::Instant;

    use super::*;

    const MSS: usize = 1024;

    fn ack(reno: &mut Reno, len: usize, now: Instant) {
        reno.on_ack(now, len, reno.window().saturating_sub(MSS), &rtte())
    }

    fn rtte() -> RttEstimator {
        RttEstimator::default()
    }

    #[test]
    fn congestion_avoidance_works() {
        let mut reno = Reno::new();
        reno.set_mss(MSS);
        reno.cwnd = MSS * 32;
        reno.ssthresh = MSS * 16;

        // CA should grow at less than 1 MSS per ACK.
        for i in 0..10 {
            let initial_cwnd = reno.window();
            ack(&mut reno, MSS, Instant::from_millis(i));
            assert!(reno.window() < initial_cwnd + MSS);
        }

        // CA should cap at the receive window
        reno.cwnd = reno.rwnd - 1;
        ack(&mut reno, MSS, Instant::from_millis(20));
        assert_eq!(reno.window(), reno.rwnd);
    }

    #[test]
    fn fast_recovery_works() {
        let mut reno = Reno::new();
        reno.set_mss(MSS);
        reno.cwnd = MSS * 32;

        // duplicate ACKs do not change the window: the socket counts what left the network
        let initial_cwnd = reno.window();
        for _ in 0..3 {
            reno.on_dup_ack(Instant::from_millis(0), MSS, initial_cwnd);
        }
        assert_eq!(reno.window(), initial_cwnd);

        // a loss recovery episode starts: the window is reduced once, without inflation (the
        // socket subtracts what the peer holds from what is in flight, RFC 6675)
        let in_flight = initial_cwnd / 2;
        let expected_ssthresh = in_flight / 2;
        reno.on_loss(Instant::from_millis(0), in_flight);
        assert_eq!(reno.ssthresh, expected_ssthresh);
        assert_eq!(reno.cwnd, expected_ssthresh);
        assert!(reno.in_fast_recovery);

        // during recovery neither duplicate ACKs, nor further losses, nor ACKs of new data
        // (partial ACKs, RFC 6582) change the window
        for i in 0..3 {
            reno.on_dup_ack(Instant::from_millis(i), MSS, reno.window());
            reno.on_loss(Instant::from_millis(i), reno.window());
            ack(&mut reno, MSS, Instant::from_millis(i));
            assert_eq!(reno.window(), expected_ssthresh);
            assert_eq!(reno.ssthresh, expected_ssthresh);
            assert!(reno.in_fast_recovery);
        }

        // the socket ends the episode: the window is ssthresh and grows again
        reno.on_recovery_end(Instant::from_millis(10));
        assert_eq!(reno.window(), reno.ssthresh);
        assert!(!reno.in_fast_recovery);
    }

    #[test]
    fn slow_start_works() {
        let mut reno = Reno::new();
        reno.set_mss(MSS);
        reno.cwnd = MSS * 32;
        reno.ssthresh = MSS * 16;

        // we enter recovery upon major loss (an RTO)
        // window should become to 1MSS
        // sstresh should become half the in-flight bytes
        let initial_cwnd = reno.window();
        let inflight = initial_cwnd;
        reno.on_rto(Instant::from_millis(0), initial_cwnd);
        assert_eq!(reno.ssthresh, inflight / 2);
        assert_eq!(reno.window(), MSS);

        // slow start grows by at most the MSS per ack
        let initial_cwnd = reno.window();
        for i in 0..10 {
            let initial_cwnd = reno.window();
            let now = Instant::from_millis(i);
            ack(&mut reno, MSS * 2, now);
            assert_eq!(reno.window(), initial_cwnd + MSS);
        }
        assert_eq!(reno.window(), initial_cwnd + MSS * 10);

        // slow start uses the number of ACKed bytes if they're less than the MSS
        let initial_cwnd = reno.window();
        for i in 0..10 {
            let initial_cwnd = reno.window();
            let now = Instant::from_millis(10 + i);
            ack(&mut reno, MSS / 2, now);
            assert_eq!(reno.window(), initial_cwnd + MSS / 2);
        }
        assert_eq!(reno.window(), initial_cwnd + MSS / 2 * 10);

        // slow start transitions to congestion avoidance at ssthresh
        let initial_cwnd = reno.window();
        reno.ssthresh = initial_cwnd + MSS;
        ack(&mut reno, MSS, Instant::from_millis(30));
        assert_eq!(reno.window(), initial_cwnd + MSS);
        assert_eq!(reno.ssthresh, initial_cwnd + MSS);

        // slow start transitions to congestion avoidance at ssthresh
        // CA is slower growth so should be less than 1MSS per ACK
        let initial_cwnd = reno.window();
        ack(&mut reno, MSS, Instant::from_millis(30));
        assert!(reno.window() < initial_cwnd + MSS);
    }

    #[test]
    fn progress_to_ca_via_rto() {
        let mut reno = Reno::new();
        reno.set_mss(MSS);

        let mut time = 0;

        // slow start from default state
        let initial_cwnd = reno.window();
        for _ in 0..30 {
            time += 1;
            ack(&mut reno, MSS, Instant::from_millis(time));
        }
        assert_eq!(reno.window(), initial_cwnd + MSS * 30);
        assert!(reno.window() < reno.ssthresh);

        // rto: cwnd resets to MSS, ssthresh becomes half in-flight bytes
        let rto_cwnd = reno.window();
        reno.on_rto(Instant::from_millis(time), rto_cwnd);
        assert_eq!(reno.window(), MSS);
        assert_eq!(reno.ssthresh, rto_cwnd / 2);

        // slow start again until cwnd reaches new ssthresh
        while reno.window() < reno.ssthresh {
            time += 1;
            let initial_cwnd = reno.window();
            ack(&mut reno, MSS, Instant::from_millis(time));
            assert_eq!(reno.window(), initial_cwnd + MSS);
        }
        assert_eq!(reno.window(), reno.ssthresh);

        // ca: each ack at or above ssthresh grows by less than MSS
        time += 1;
        let initial_cwnd = reno.window();
        ack(&mut reno, MSS, Instant::from_millis(time));
        assert!(reno.window() > initial_cwnd);
        assert!(reno.window() < initial_cwnd + MSS);
    }

    #[test]
    fn progress_to_ca_via_loss() {
        let mut reno = Reno::new();
        reno.set_mss(MSS);

        let mut time = 0;

        // slow start from default state
        let initial_cwnd = reno.window();
        for _ in 0..30 {
            time += 1;
            ack(&mut reno, MSS, Instant::from_millis(time));
        }
        assert_eq!(reno.window(), initial_cwnd + MSS * 30);
        assert!(reno.window() < reno.ssthresh);

        // loss: ssthresh and cwnd are reduced once, no inflation
        time += 1;
        let loss_cwnd = reno.window();
        let expected_ssthresh = loss_cwnd / 2;
        reno.on_loss(Instant::from_millis(time), loss_cwnd);
        assert_eq!(reno.ssthresh, expected_ssthresh);
        assert_eq!(reno.window(), expected_ssthresh);
        assert!(reno.in_fast_recovery);

        // duplicate and partial ACKs hold the window
        for _ in 0..9 {
            time += 1;
            reno.on_dup_ack(Instant::from_millis(time), MSS, reno.cwnd);
            ack(&mut reno, MSS, Instant::from_millis(time));
            assert_eq!(reno.window(), expected_ssthresh);
        }

        // the end of recovery leaves cwnd at ssthresh
        time += 1;
        reno.on_recovery_end(Instant::from_millis(time));
        assert_eq!(reno.window(), expected_ssthresh);
        assert!(!reno.in_fast_recovery);

        // ca: each ack at or above ssthresh grows by less than MSS
        time += 1;
        let initial_cwnd = reno.window();
        ack(&mut reno, MSS, Instant::from_millis(time));
        assert!(reno.window() > initial_cwnd);
        assert!(reno.window() < initial_cwnd + MSS);
    }

    #[test]
    fn zero_length_ack_does_not_exit_fast_recovery() {
        let mut reno = Reno::new();
        reno.set_mss(MSS);
        reno.cwnd = MSS * 32;

        reno.on_loss(Instant::from_millis(0), reno.cwnd);
        assert!(reno.in_fast_recovery);

        let cwnd = reno.window();
        let ssthresh = reno.ssthresh;

        // Accepted segments that acknowledge no new data (window updates,
        // data segments from the remote) must not end fast recovery or
        // change the window.
        ack(&mut reno, 0, Instant::from_millis(1));
        assert!(reno.in_fast_recovery);
        assert_eq!(reno.window(), cwnd);
        assert_eq!(reno.ssthresh, ssthresh);

        // Nor does an ACK of new data (a partial ACK): the socket ends recovery.
        ack(&mut reno, MSS, Instant::from_millis(2));
        assert!(reno.in_fast_recovery);
        assert_eq!(reno.window(), cwnd);
        reno.on_recovery_end(Instant::from_millis(3));
        assert!(!reno.in_fast_recovery);
        assert_eq!(reno.window(), ssthresh);
    }

    #[test]
    fn zero_length_ack_does_not_grow_window() {
        let mut reno = Reno::new();
        reno.set_mss(MSS);

        // Slow start.
        let cwnd = reno.window();
        ack(&mut reno, 0, Instant::from_millis(0));
        assert_eq!(reno.window(), cwnd);

        // Congestion avoidance.
        reno.cwnd = MSS * 32;
        reno.ssthresh = MSS * 16;
        ack(&mut reno, 0, Instant::from_millis(1));
        assert_eq!(reno.window(), MSS * 32);
    }

    #[test]
    fn repeated_rto_holds_ssthresh() {
        let mut reno = Reno::new();
        reno.set_mss(MSS);
        reno.cwnd = MSS * 32;

        // First RTO halves ssthresh based on the flight size.
        reno.on_rto(Instant::from_millis(0), MSS * 32);
        assert_eq!(reno.ssthresh, MSS * 16);
        assert_eq!(reno.window(), MSS);

        // Until new data is ACKed, further RTOs are retransmissions of the
        // same segment and must hold ssthresh constant instead of collapsing
        // it towards the minimum.
        reno.on_rto(Instant::from_millis(1), MSS);
        assert_eq!(reno.ssthresh, MSS * 16);
        assert_eq!(reno.window(), MSS);

        // Once new data is ACKed, the next RTO is a fresh loss detection
        // and reduces ssthresh again.
        ack(&mut reno, MSS, Instant::from_millis(2));
        reno.on_rto(Instant::from_millis(3), MSS * 4);
        assert_eq!(reno.ssthresh, MSS * 2);
    }

    #[test]
    fn test_reno() {
        let remote_window = 64 * 1024;
        let now = Instant::from_millis(0);

        for i in 0..10 {
            for j in 0..9 {
                let mut reno = Reno::new();
                reno.set_mss(1480);

                // Set remote window.
                reno.set_remote_window(remote_window);

                reno.on_ack(now, 4096, reno.window(), &RttEstimator::default());

                let mut n = i;
                for _ in 0..j {
                    n *= i;
                }

                if i & 1 == 0 {
                    reno.on_rto(now, reno.window());
                } else {
                    reno.on_loss(now, reno.window());
                }

                let elapsed = Instant::from_millis(1000);
                reno.on_ack(elapsed, n, reno.window(), &RttEstimator::default());

                let cwnd = reno.window();
                println!("Reno: elapsed = {}, cwnd = {}", elapsed, cwnd);

                assert!(cwnd >= reno.mss);
                assert!(reno.window() <= remote_window);
            }
        }
    }

    #[test]
    fn byte_counting_with_delayed_acks() {
        // RFC 3465: an ACK of two segments grows the window as two ACKs of one would.
        let mut reno = Reno::new();
        reno.set_mss(MSS);
        let start = reno.window();
        ack(&mut reno, 2 * MSS, Instant::from_millis(0));
        assert_eq!(reno.window(), start + 2 * MSS);
        // ...but no more than 2 MSS per ACK (a stretch ACK).
        ack(&mut reno, 8 * MSS, Instant::from_millis(1));
        assert_eq!(reno.window(), start + 4 * MSS);

        // Congestion avoidance: a window's worth of bytes acknowledged, in ACKs of two
        // segments, grows the window by about one segment, as many ACKs of one would.
        reno.cwnd = 32 * MSS;
        reno.ssthresh = 16 * MSS;
        for i in 0..16 {
            ack(&mut reno, 2 * MSS, Instant::from_millis(2 + i));
        }
        let grown = reno.window() - 32 * MSS;
        assert!((MSS * 9 / 10..=MSS).contains(&grown), "grew {grown}");
    }

    #[test]
    fn loss_proportional_decrease() {
        let mut reno = Reno::new_loss_proportional();
        reno.set_mss(MSS);
        reno.cwnd = 100 * MSS;
        // The share starts at 1: the first loss halves the window, as Reno would.
        reno.on_lost(MSS);
        reno.on_loss(Instant::from_millis(0), 100 * MSS);
        assert_eq!(reno.window(), 50 * MSS);
        reno.on_recovery_end(Instant::from_millis(1));

        // Rounds of a window each with no loss bring the share down (gain 1/16)...
        reno.cwnd = 100 * MSS;
        for i in 0..80 {
            ack(&mut reno, 100 * MSS, Instant::from_millis(2 + i));
        }
        let alpha = reno.proportional.unwrap().alpha as u64;
        assert!(alpha < SHARE_ONE / 100, "share {alpha}/{SHARE_ONE}");
        // ...so that one segment lost in a window barely shrinks it.
        let cwnd = reno.window();
        reno.on_lost(MSS);
        reno.on_loss(Instant::from_millis(100), cwnd);
        assert!(
            reno.window() >= cwnd * 99 / 100,
            "{} from {cwnd}",
            reno.window()
        );
        reno.on_recovery_end(Instant::from_millis(101));

        // Rounds losing a third of what was sent (a queue overflowing) raise the share
        // towards 1/3 (1/48 after one round): the decrease follows, towards a sixth.
        let cwnd = reno.window();
        for i in 0..64 {
            reno.on_lost(cwnd / 2);
            ack(&mut reno, cwnd, Instant::from_millis(200 + i));
        }
        let alpha = reno.proportional.unwrap().alpha as u64;
        assert!(
            (SHARE_ONE / 4..=SHARE_ONE / 3).contains(&alpha),
            "share {alpha}/{SHARE_ONE}"
        );
        let cwnd = reno.window();
        reno.on_loss(Instant::from_millis(300), cwnd);
        assert!(
            reno.window() <= cwnd * 7 / 8,
            "{} from {cwnd}",
            reno.window()
        );
        // Plain Reno is unaffected by the loss accounting.
        let mut plain = Reno::new();
        plain.set_mss(MSS);
        plain.cwnd = 100 * MSS;
        plain.on_lost(MSS);
        plain.on_loss(Instant::from_millis(0), 100 * MSS);
        assert_eq!(plain.window(), 50 * MSS);
    }

    #[test]
    fn initial_window_is_ten_segments() {
        // RFC 6928: min(10 * MSS, max(2 * MSS, 14600)).
        let mut reno = Reno::new();
        reno.set_mss(1460);
        assert_eq!(reno.window(), 14600);
        let mut reno = Reno::new();
        reno.set_mss(536);
        assert_eq!(reno.window(), 5360);
        let mut reno = Reno::new();
        reno.set_mss(8960);
        assert_eq!(reno.window(), 2 * 8960);
        // Once data was acknowledged, a new MSS leaves the window alone.
        reno.on_ack(Instant::from_millis(0), 8960, 0, &rtte());
        let cwnd = reno.window();
        reno.set_mss(1460);
        assert_eq!(reno.window(), cwnd);
    }

    #[test]
    fn reno_min_cwnd() {
        let remote_window = 64 * 1024;
        let now = Instant::from_millis(0);

        let mut reno = Reno::new();
        reno.set_remote_window(remote_window);

        for _ in 0..100 {
            reno.on_rto(now, reno.window());
            assert!(reno.window() >= reno.mss);
        }
    }

    #[test]
    fn reno_set_rwnd() {
        let mut reno = Reno::new();
        reno.set_remote_window(64 * 1024 * 1024);

        println!("{reno:?}");
    }
}

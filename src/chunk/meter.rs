//! What a chunk server measures per request: answers by op and status, and how long requests
//! took (service time: header in to answer ready; storage time: the store call alone), in
//! fixed-bucket histograms.
//!
//! Service time is read on the serving loop's clock (`ServeCtx::now`: on a ustack server the
//! stack's time, read once per poll), so a request answered within the poll that received its
//! header counts as 0 (the first bucket): what the histogram shows is time spent waiting for
//! payload, buffers, queue room and store calls, not the microsecond of processing. Store-call
//! time is read around each call on the thread that makes it.
//!
//! Everything here is plain counters owned by the serving loop (no atomics, no allocation):
//! recording a request is an increment and a bucket search over [`BUCKETS_US`]. The metrics
//! endpoint reads them from snapshots the loop takes when asked (`crate::metrics`).

use std::time::Duration;

use crate::proto::{Op, Status};

/// The ops counted, in this order; [`OP_OTHER`] counts frames rejected before their op was known.
pub const OPS: [Op; 6] = Op::ALL;
/// Slots of the op axis: the six ops and "other".
pub const OP_SLOTS: usize = 7;
/// The op slot of a rejected frame whose op is unknown or could not be read.
pub const OP_OTHER: usize = 6;
/// Slots of the status axis: every status this version knows.
pub const STATUS_SLOTS: usize = Status::ALL.len();

/// The op slot of `op`.
pub fn op_slot(op: Op) -> usize {
    op.code() as usize - 1
}

/// The name of op slot `i` as a metric label (`ping`, `write`, ..., `other`).
pub fn op_label(i: usize) -> &'static str {
    match i {
        0 => "ping",
        1 => "write",
        2 => "read",
        3 => "delete",
        4 => "stat",
        5 => "list",
        _ => "other",
    }
}

/// Upper bounds of the histogram buckets, in microseconds (1 us to 10 s, 1-2-5 steps); a
/// last bucket takes everything slower.
pub const BUCKETS_US: [u64; 22] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
    200_000, 500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000,
];

/// A latency histogram: counts per bucket of [`BUCKETS_US`] (not cumulative; the last slot is
/// above the last bound) and the sum of all durations.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: [u64; BUCKETS_US.len() + 1],
    sum_ns: u64,
}

impl Histogram {
    /// Adds `other`'s counts to these (per-core shards summed).
    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
    }

    /// Counts one duration.
    #[inline]
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.counts[i] += 1;
        self.sum_ns = self
            .sum_ns
            .saturating_add(d.as_nanos().min(u128::from(u64::MAX)) as u64);
    }

    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Their sum.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns)
    }

    /// `(upper bound, durations at or below it)` for each bucket, cumulative as Prometheus
    /// wants them; the last has no bound (`None`, "+Inf") and holds [`Histogram::count`].
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<Duration>, u64)> + '_ {
        let mut acc = 0;
        self.counts.iter().enumerate().map(move |(i, &c)| {
            acc += c;
            (BUCKETS_US.get(i).map(|&us| Duration::from_micros(us)), acc)
        })
    }

    /// The duration below which a fraction `q` (0..=1) of the counted ones fall, as the upper
    /// bound of the bucket that holds it (`None` if nothing was counted, or it is in the last,
    /// unbounded bucket).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        self.cumulative()
            .find(|&(_, acc)| acc >= rank)
            .and_then(|(b, _)| b)
    }

    /// Adds `other`'s counts to these (for summing shards or ops).
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }
}

/// Per-request measurements of a server: answers by op and status, service and storage time by
/// op.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RequestMeter {
    answers: [[u64; STATUS_SLOTS]; OP_SLOTS],
    service: [Histogram; OP_SLOTS],
    storage: [Histogram; OP_SLOTS],
}

impl Default for RequestMeter {
    fn default() -> RequestMeter {
        RequestMeter {
            answers: [[0; STATUS_SLOTS]; OP_SLOTS],
            service: [Histogram::default(); OP_SLOTS],
            storage: [Histogram::default(); OP_SLOTS],
        }
    }
}

impl RequestMeter {
    /// Adds `other`'s answers and times to these (per-core shards summed).
    pub fn add(&mut self, other: &RequestMeter) {
        for (a, b) in self.answers.iter_mut().zip(&other.answers) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        for (a, b) in self.service.iter_mut().zip(&other.service) {
            a.add(b);
        }
        for (a, b) in self.storage.iter_mut().zip(&other.storage) {
            a.add(b);
        }
    }

    /// Counts an answer of `status` to a request of op slot `op` (see [`op_slot`]), whose
    /// header came `service` ago (`None`: not timed, e.g. a frame rejected before it had one).
    #[inline]
    pub fn answered(&mut self, op: usize, status: Status, service: Option<Duration>) {
        let op = op.min(OP_OTHER);
        self.answers[op][status.code() as usize] += 1;
        if let Some(d) = service {
            self.service[op].record(d);
        }
    }

    /// Counts a store call of op slot `op` that took `d`.
    #[inline]
    pub fn stored(&mut self, op: usize, d: Duration) {
        self.storage[op.min(OP_OTHER)].record(d);
    }

    /// Answers to requests of op slot `op` with `status`.
    pub fn answers(&self, op: usize, status: Status) -> u64 {
        self.answers[op.min(OP_OTHER)][status.code() as usize]
    }

    /// Answers with `status`, whatever the op.
    pub fn answers_with(&self, status: Status) -> u64 {
        self.answers
            .iter()
            .map(|row| row[status.code() as usize])
            .sum()
    }

    /// Answers to requests of op slot `op`, whatever the status.
    pub fn answers_to(&self, op: usize) -> u64 {
        self.answers[op.min(OP_OTHER)].iter().sum()
    }

    /// Service times (header in to answer ready) of op slot `op`.
    pub fn service(&self, op: usize) -> &Histogram {
        &self.service[op.min(OP_OTHER)]
    }

    /// Store call times of op slot `op`.
    pub fn storage(&self, op: usize) -> &Histogram {
        &self.storage[op.min(OP_OTHER)]
    }

    /// Every status but OK with its count, most frequent first, zeros left out: the error
    /// breakdown a human line prints.
    pub fn errors_by_status(&self) -> Vec<(Status, u64)> {
        let mut v: Vec<(Status, u64)> = Status::ALL[1..]
            .iter()
            .map(|&s| (s, self.answers_with(s)))
            .filter(|&(_, n)| n > 0)
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.code().cmp(&b.0.code())));
        v
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &RequestMeter) {
        for (a, b) in self.answers.iter_mut().zip(other.answers.iter()) {
            for (x, y) in a.iter_mut().zip(b.iter()) {
                *x += y;
            }
        }
        for (a, b) in self.service.iter_mut().zip(other.service.iter()) {
            a.merge(b);
        }
        for (a, b) in self.storage.iter_mut().zip(other.storage.iter()) {
            a.merge(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_what_they_say() {
        let mut h = Histogram::default();
        h.record(Duration::from_nanos(300)); // <= 1 us
        h.record(Duration::from_micros(1)); // <= 1 us
        h.record(Duration::from_micros(3)); // <= 5 us
        h.record(Duration::from_millis(7)); // <= 10 ms
        h.record(Duration::from_secs(30)); // +Inf
        let c: Vec<_> = h.cumulative().collect();
        assert_eq!(c.len(), BUCKETS_US.len() + 1);
        assert_eq!(c[0], (Some(Duration::from_micros(1)), 2));
        assert_eq!(c[2], (Some(Duration::from_micros(5)), 3));
        assert_eq!(c[12], (Some(Duration::from_millis(10)), 4));
        assert_eq!(c[BUCKETS_US.len()], (None, 5));
        assert_eq!(h.count(), 5);
        assert_eq!(
            h.sum(),
            Duration::from_nanos(300)
                + Duration::from_micros(4)
                + Duration::from_millis(7)
                + Duration::from_secs(30)
        );
        assert_eq!(h.quantile(0.5), Some(Duration::from_micros(5)));
        assert_eq!(h.quantile(0.8), Some(Duration::from_millis(10)));
        assert_eq!(h.quantile(1.0), None);
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn answers_count_by_op_and_status() {
        let mut m = RequestMeter::default();
        m.answered(
            op_slot(Op::Read),
            Status::Ok,
            Some(Duration::from_micros(4)),
        );
        m.answered(op_slot(Op::Read), Status::NotFound, None);
        m.answered(op_slot(Op::Write), Status::Corrupt, None);
        m.answered(op_slot(Op::Write), Status::Corrupt, None);
        m.answered(99, Status::Malformed, None);
        assert_eq!(m.answers(op_slot(Op::Read), Status::Ok), 1);
        assert_eq!(m.answers_to(op_slot(Op::Read)), 2);
        assert_eq!(m.answers(OP_OTHER, Status::Malformed), 1);
        assert_eq!(
            m.errors_by_status(),
            vec![
                (Status::Corrupt, 2),
                (Status::NotFound, 1),
                (Status::Malformed, 1)
            ]
        );
        assert_eq!(m.service(op_slot(Op::Read)).count(), 1);
        let mut sum = RequestMeter::default();
        sum.merge(&m);
        sum.merge(&m);
        assert_eq!(sum.answers_with(Status::Corrupt), 4);
        for (i, op) in OPS.iter().enumerate() {
            assert_eq!(op_slot(*op), i);
        }
    }
}

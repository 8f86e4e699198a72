//! Eyes for operators: a Prometheus endpoint, an admin socket with a connection view and packet
//! capture on demand, and the human-readable counters the example servers print.
//!
//! A kernel-bypass stack hides its traffic from `ss`, `netstat`, `tcpdump` and `/proc/net/snmp`,
//! so it brings its own. The serving loop owns every counter (no atomics on the packet path);
//! other threads get at them by asking:
//!
//! - A [`Hub`] is shared by the loop and by the threads that serve operators. Those threads
//!   post a question ([`Ask`]) on a bounded queue and raise a flag; the loop calls
//!   [`Hub::serve`] every turn, which costs one relaxed atomic load while nobody asks, and
//!   answers what was posted from the state it owns ([`Observed`]): a [`Snapshot`] of every
//!   counter, the connection list, or a capture command.
//! - [`MetricsEndpoint`] serves `GET /metrics` (the OpenMetrics text format, through the
//!   `prometheus-client` crate) over kernel TCP on an admin address, from its own thread; each
//!   scrape asks the loop for a fresh snapshot and, if the loop does not answer within
//!   [`SNAPSHOT_WAIT`] (it is stuck in a long call), serves the last one with its age.
//! - [`AdminServer`] listens on a unix socket (owner-only) for one-line commands (`stats`,
//!   `connections`, `capture start PATH --packets N`, ...); [`admin_request`] is its client
//!   (`chunkctl admin`).
//!
//! Neither thread ever blocks the loop: the loop never waits for them (replies go through
//! channels with room for the one answer), the queue of questions is bounded ([`ASKS_MAX`]),
//! and slow or abandoned clients cost only their own thread's time (timeouts on every read and
//! write). The metric names, their labels and what each means are listed in
//! `docs/MONITORING.md`; `docs/monitoring/` has a Grafana dashboard and a Prometheus scrape
//! configuration.

mod acceptors;
mod admin;
mod fan_in;
mod http;
mod prom;
mod snapshot;
mod text;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

pub use admin::{admin_request, AdminError, AdminServer, ADMIN_LINE_MAX};
pub use fan_in::HubFanIn;
pub use http::{MetricsEndpoint, MetricsError};
pub use prom::{encode_openmetrics, openmetrics_to_text};
pub use snapshot::{
    DeviceDetail, DeviceView, KernelServerView, Observed, ProcessView, Snapshot, StackServerView,
    StackView,
};
pub use text::{errors_breakdown, human_lines};

use crate::stack::{CaptureSpec, CaptureStatus, ConnInfo};
use crate::time::Instant;

/// Questions waiting for the loop at most; more are refused at once ("busy").
pub const ASKS_MAX: usize = 8;

/// How long a scrape or admin command waits for the loop to answer before it gives up (a
/// scrape then serves the last snapshot).
pub const SNAPSHOT_WAIT: Duration = Duration::from_millis(500);

/// A question for the serving loop.
#[derive(Debug)]
pub enum Ask {
    /// Every counter, now.
    Snapshot,
    /// The connection list (`ss -ti`).
    Connections,
    /// Start a packet capture.
    CaptureStart(CaptureSpec),
    /// Stop the capture (and collect one that ended by itself).
    CaptureStop,
    /// How the capture stands.
    CaptureStatus,
}

/// The loop's answer to an [`Ask`].
#[derive(Debug)]
pub enum Answer {
    /// For [`Ask::Snapshot`].
    Snapshot(Arc<Snapshot>),
    /// For [`Ask::Connections`].
    Connections(Vec<ConnInfo>),
    /// For the capture questions: the capture's status (`None`: no capture), or why the
    /// command failed.
    Capture(Result<Option<CaptureStatus>, String>),
    /// The transport cannot do this (e.g. a connection list on kernel TCP), in words.
    Unsupported(String),
}

struct Posted {
    ask: Ask,
    reply: SyncSender<Answer>,
}

struct HubShared {
    /// Raised when something is posted; the loop looks at nothing else while it is down.
    asked: AtomicBool,
    asks: ArrayQueue<Posted>,
    latest: Mutex<Option<Arc<Snapshot>>>,
    started: Instant,
    snapshots: AtomicU64,
}

/// Where operator threads ask the serving loop for its counters (see the module docs). Clone
/// it into each thread; the loop keeps one and calls [`Hub::serve`].
#[derive(Clone)]
pub struct Hub {
    shared: Arc<HubShared>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub::new()
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("asks", &self.shared.asks.len())
            .field("snapshots", &self.shared.snapshots.load(Ordering::Relaxed))
            .finish()
    }
}

impl Hub {
    /// A hub with nothing asked yet.
    pub fn new() -> Hub {
        Hub {
            shared: Arc::new(HubShared {
                asked: AtomicBool::new(false),
                asks: ArrayQueue::new(ASKS_MAX),
                latest: Mutex::new(None),
                started: Instant::now(),
                snapshots: AtomicU64::new(0),
            }),
        }
    }

    /// Whether an operator thread asked something the loop has not answered yet: one relaxed
    /// load. [`Hub::serve`] looks at it first; a loop that must build its [`Observed`] view
    /// can look first and build it only then.
    #[inline]
    pub fn is_asked(&self) -> bool {
        self.shared.asked.load(Ordering::Relaxed)
    }

    /// The serving loop's side: answers what operator threads asked, from `obs`. Call it
    /// every turn of the loop; while nothing is asked it is one relaxed load. Returns whether
    /// it answered anything.
    #[inline]
    pub fn serve(&self, now: Instant, obs: &mut dyn Observed) -> bool {
        if !self.shared.asked.load(Ordering::Relaxed) {
            return false;
        }
        self.serve_slow(now, obs)
    }

    #[cold]
    fn serve_slow(&self, now: Instant, obs: &mut dyn Observed) -> bool {
        // Acquire pairs with the asker's Release: what it pushed before raising the flag is
        // visible to the pops below. Lowered before popping, so a question posted meanwhile
        // raises it again for the next turn.
        self.shared.asked.swap(false, Ordering::AcqRel);
        let mut any = false;
        while let Some(p) = self.shared.asks.pop() {
            any = true;
            let answer = match p.ask {
                Ask::Snapshot => Answer::Snapshot(self.publish(now, obs)),
                Ask::Connections => match obs.connections(now) {
                    Ok(list) => Answer::Connections(list),
                    Err(why) => Answer::Unsupported(why),
                },
                Ask::CaptureStart(spec) => {
                    Answer::Capture(obs.capture_start(spec).and_then(|()| obs.capture_status()))
                }
                Ask::CaptureStop => Answer::Capture(obs.capture_stop()),
                Ask::CaptureStatus => Answer::Capture(obs.capture_status()),
            };
            // The asker may have given up (its channel is gone): nothing to do then. The
            // channel has room for this one answer, so this never blocks.
            let _ = p.reply.try_send(answer);
        }
        any
    }

    /// Takes a snapshot from `obs` and makes it the latest (what a scrape serves when the loop
    /// does not answer in time). The loop may call this on its own, e.g. for its periodic
    /// report.
    pub fn publish(&self, now: Instant, obs: &mut dyn Observed) -> Arc<Snapshot> {
        let mut snap = obs.snapshot(now);
        snap.uptime = now.saturating_duration_since(self.shared.started);
        snap.sequence = self.shared.snapshots.fetch_add(1, Ordering::Relaxed) + 1;
        let snap = Arc::new(snap);
        if let Ok(mut latest) = self.shared.latest.lock() {
            *latest = Some(snap.clone());
        }
        snap
    }

    /// The last snapshot published, if any.
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.shared.latest.lock().ok().and_then(|l| l.clone())
    }

    /// Operator side: posts `ask` and waits up to `wait` for the loop's answer. `Err` says why
    /// there is none (the queue of questions is full, or the loop did not answer in time).
    pub fn ask(&self, ask: Ask, wait: Duration) -> Result<Answer, AskError> {
        let rx = self.post(ask)?;
        rx.recv_timeout(wait).map_err(|_| AskError::NoAnswer(wait))
    }

    fn post(&self, ask: Ask) -> Result<Receiver<Answer>, AskError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.shared
            .asks
            .push(Posted { ask, reply: tx })
            .map_err(|_| AskError::Busy)?;
        self.shared.asked.store(true, Ordering::Release);
        Ok(rx)
    }

    /// Operator side: a fresh snapshot if the loop answers within `wait`, else the last one
    /// published (`None` if there is none yet).
    pub fn snapshot(&self, wait: Duration) -> Option<Arc<Snapshot>> {
        match self.ask(Ask::Snapshot, wait) {
            Ok(Answer::Snapshot(s)) => Some(s),
            _ => self.latest(),
        }
    }

    /// Seconds since the hub was made, as the loop's clock counts them.
    pub fn uptime(&self) -> Duration {
        Instant::now().saturating_duration_since(self.shared.started)
    }
}

/// Why a question got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AskError {
    /// [`ASKS_MAX`] questions are already waiting.
    #[error("the server has {ASKS_MAX} requests from operators waiting already; try again")]
    Busy,
    /// The loop did not answer in time.
    #[error(
        "the serving loop did not answer within {0:?} (it may be stuck in a long call); try again"
    )]
    NoAnswer(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_bounded_and_time_out_when_the_loop_does_not_answer() {
        let hub = Hub::new();
        let waiting: Vec<_> = (0..ASKS_MAX)
            .map(|_| hub.post(Ask::Connections).expect("room"))
            .collect();
        assert!(matches!(hub.post(Ask::Connections), Err(AskError::Busy)));
        assert!(matches!(
            hub.ask(Ask::Snapshot, Duration::from_millis(1)),
            Err(AskError::Busy)
        ));
        drop(waiting);
        // Nobody serves: the questions stay queued, and a snapshot falls back to none.
        assert!(hub.snapshot(Duration::from_millis(1)).is_none());
        assert!(hub.latest().is_none());
        assert!(AskError::NoAnswer(Duration::from_millis(5))
            .to_string()
            .contains("did not answer"));
    }
}

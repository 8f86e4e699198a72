//! One front [`Hub`] for the serving loops of per-core shards, each with a hub of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::stack::{CaptureSpec, CaptureStatus, ConnInfo};
use crate::time::Instant;

use super::snapshot::{Observed, Snapshot};
use super::{Answer, Ask, Hub, SNAPSHOT_WAIT};

/// How often the fan-in thread looks at the front hub while nobody asks.
const IDLE_LOOK: Duration = Duration::from_millis(1);

/// Answers a front hub (the one the metrics endpoint and the admin socket ask) for several
/// serving loops, each answering a hub of its own: a snapshot is the shards' snapshots summed
/// ([`Snapshot::add`]), the connection list theirs put together. Packet capture is per shard
/// and refused here. Runs on a thread of its own, which looks at the front hub every
/// millisecond while nobody asks; it stops when this is dropped.
pub struct HubFanIn {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HubFanIn {
    /// Starts answering `front` from `shards`.
    pub fn start(front: Hub, shards: Vec<Hub>) -> std::io::Result<HubFanIn> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ustack-hub-fan-in".into())
            .spawn(move || {
                let mut view = Shards { hubs: shards };
                while !flag.load(Ordering::Relaxed) {
                    if !front.serve(Instant::now(), &mut view) {
                        std::thread::sleep(IDLE_LOOK);
                    }
                }
            })?;
        Ok(HubFanIn {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HubFanIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for HubFanIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubFanIn").finish_non_exhaustive()
    }
}

/// The shards' hubs, as one [`Observed`].
struct Shards {
    hubs: Vec<Hub>,
}

const NO_CAPTURE: &str = "packet capture is per core and not offered with several cores yet: \
                          capture on the interface (tcpdump), or serve from one core";

impl Observed for Shards {
    fn snapshot(&mut self, _now: Instant) -> Snapshot {
        let mut sum: Option<Snapshot> = None;
        for h in &self.hubs {
            // A shard that does not answer in time counts with its last snapshot.
            let Some(s) = h.snapshot(SNAPSHOT_WAIT) else {
                continue;
            };
            match &mut sum {
                None => sum = Some((*s).clone()),
                Some(t) => t.add(&s),
            }
        }
        sum.unwrap_or_default()
    }

    fn connections(&mut self, _now: Instant) -> Result<Vec<ConnInfo>, String> {
        let mut all = Vec::new();
        for (i, h) in self.hubs.iter().enumerate() {
            match h.ask(Ask::Connections, SNAPSHOT_WAIT) {
                Ok(Answer::Connections(list)) => all.extend(list),
                Ok(Answer::Unsupported(why)) => return Err(why),
                Ok(_) => {}
                Err(e) => return Err(format!("core shard {i}: {e}")),
            }
        }
        Ok(all)
    }

    fn capture_start(&mut self, _spec: CaptureSpec) -> Result<(), String> {
        Err(NO_CAPTURE.into())
    }

    fn capture_stop(&mut self) -> Result<Option<CaptureStatus>, String> {
        Err(NO_CAPTURE.into())
    }

    fn capture_status(&mut self) -> Result<Option<CaptureStatus>, String> {
        Ok(None)
    }
}

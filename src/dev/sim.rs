//! A simulated Ethernet link: two [`SimPort`]s in one process, joined by a wire with a clock and
//! seeded faults.
//!
//! # Model
//!
//! [`SimLink::new`] gives a control handle ([`SimLink`]) and two ports, A and B, each a
//! [`PacketDevice`]. A frame sent on one port with [`PacketDevice::tx_burst`] is put *in flight*
//! toward the other port and becomes *due* at
//!
//! ```text
//! due = now + latency + uniform(0 ..= jitter)  [+ reorder_delay if the frame is reordered]
//! ```
//!
//! where `now` is the time the sender passed to `tx_burst`. [`PacketDevice::rx_burst`] on the
//! other port hands over the frames whose due time is `<= now`, earliest due first, ties in send
//! order. Frames are never copied on the way: the [`PoolBuf`] handle itself moves from the
//! sender's pool, through the wire, to the receiver, and returns to the sender's pool when the
//! receiver drops it.
//!
//! # Time
//!
//! The link has no clock of its own: it only compares the instants its callers pass in. Driven
//! with [`Instant::now`] from two threads it behaves like a wire with a fixed latency (ports are
//! `Send`). Driven with virtual time from one thread, a driver polls both sides and, when
//! neither has work, jumps its clock straight to the earliest of its own timers and
//! [`SimLink::next_delivery`] ([`SimLink::next_event`]); a run of minutes of simulated TCP then
//! takes milliseconds.
//!
//! # Faults
//!
//! [`Faults`] holds four probabilities in `[0, 1]`, decided per frame at send time:
//!
//! - **loss**: the frame is dropped on the wire (it still counts as sent by the sender).
//! - **duplicate**: a second, clean copy is made with [`PoolBuf::try_clone`] from the sender's
//!   pool and put in flight with its own jitter. When the pool (or the in-flight queue) has no
//!   room for the copy, no copy is made and [`DirectionStats::duplicate_skipped`] counts it.
//! - **corrupt**: exactly one uniformly chosen bit of the original frame is flipped (the copy
//!   made by *duplicate* stays clean). One flipped bit is always caught by the Internet
//!   checksum, so a correct stack must drop the frame; this is why the ports advertise no
//!   checksum offload ([`ChecksumCaps`] all false).
//! - **reorder**: the frame gets `reorder_delay` extra latency, so frames sent after it overtake
//!   it. Jitter alone can also reorder frames; only the frames given the extra delay are counted.
//!
//! Loss is decided first (a lost frame gets no other fault), then duplicate, corrupt and reorder
//! independently. [`Faults::standard`] is the mix the stack's tests use: 5% loss, 5% reorder,
//! 1% duplication, 0.1% corruption.
//!
//! Besides faults, a frame is dropped (and counted) when the link is down
//! ([`SimLink::set_up`]; taking the link down also drops everything in flight), when
//! `queue_frames` frames are already in flight in that direction (like a full NIC queue: the
//! sender's `tx_dropped`), or when it is longer than `mtu + 14` bytes (the sender's `tx_errors`).
//! `tx_burst` consumes every frame it looks at, whatever happens to it, so it always returns how
//! many frames it took off the batch (up to `burst_max`).
//!
//! # Determinism
//!
//! The per-frame decisions are [`FaultDice::roll`]'s, shared with the fault relay
//! (`examples/faultwire.rs`, see [`crate::dev::faults`]), so a fault mix means the same on the
//! simulated link and on a real one.
//!
//! Each direction draws from its own [`SplitMix64`] stream derived from [`SimConfig::seed`], and
//! every frame offered to `tx_burst` consumes exactly the same number of draws, whatever
//! happens to it. So the faults of the n-th frame sent A->B depend only on the seed and n. The
//! contract: the same configuration and the same sequence of calls (same `now`s, same frames,
//! same order) give the same delivered frames, at the same times, with the same [`SimStats`].
//! A single-threaded virtual-time driver therefore replays a run exactly from its seed. Two
//! threads on the real clock get the same per-frame decisions but their interleaving is not
//! reproducible.
//!
//! # Resources
//!
//! Everything is allocated by [`SimLink::new`]: each port's pool of `pool_frames` transmit
//! buffers ([`BufPool`] on [`SimConfig::page_size`] pages, 2 MiB hugepages by default, falling
//! back to base pages by itself), and each direction's in-flight queue of `queue_frames`
//! entries. Nothing is allocated per frame. Each direction's state sits behind its own mutex,
//! taken once per burst.
//!
//! ```
//! use ustack::dev::sim::{Faults, SimConfig, SimLink};
//! use ustack::dev::{Batch, Frame, PacketDevice};
//! use ustack::time::Instant;
//!
//! let cfg = SimConfig { pool_frames: 64, queue_frames: 64, ..SimConfig::default() };
//! let (link, mut a, mut b) = SimLink::new(cfg.with_seed(1).with_faults(Faults::none()))?;
//! let mut out = Batch::with_capacity(32);
//! let mut frame = a.tx_alloc().unwrap();
//! assert!(frame.set_len(60));
//! out.push(frame).unwrap();
//! let now = Instant::ZERO;
//! assert_eq!(a.tx_burst(now, &mut out), 1);
//!
//! let due = link.next_delivery().unwrap(); // now + latency
//! let mut inb = Batch::with_capacity(32);
//! assert_eq!(b.rx_burst(now, &mut inb), 0); // not yet
//! assert_eq!(b.rx_burst(due, &mut inb), 1);
//! assert_eq!(inb.pop().unwrap().data().len(), 60);
//! # Ok::<(), ustack::dev::sim::SimError>(())
//! ```

use std::collections::binary_heap::PeekMut;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub use crate::dev::faults::{Faults, SplitMix64};

use crate::dev::faults::{flip_bit, BadProbability, FaultDice};
use crate::dev::{Batch, ChecksumCaps, DeviceCaps, LinkStats, PacketDevice, ETH_HEADER_LEN};
use crate::mem::{BufPool, MemError, PageSize, PoolBuf};
use crate::time::Instant;

/// The smallest IP MTU a port accepts (the IPv4 minimum).
pub const MTU_MIN: usize = 68;
/// The largest IP MTU a port accepts (jumbo frames).
pub const MTU_MAX: usize = 9216;
/// Headroom reserved in front of each transmit buffer.
const HEADROOM: usize = 128;
/// Buffers are at least this long (headroom included).
const BUF_LEN_MIN: usize = 2048;

/// Configuration of a simulated link. Both directions behave alike, each with its own random
/// stream.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Seed of the fault and jitter decisions: the same seed and calls replay the same run.
    pub seed: u64,
    /// Fault probabilities.
    pub faults: Faults,
    /// Time from send to due, before jitter.
    pub latency: Duration,
    /// Upper bound of the uniform extra delay each frame gets (whole microseconds).
    pub jitter: Duration,
    /// Extra delay of a reordered frame, so that later frames overtake it.
    pub reorder_delay: Duration,
    /// The most frames in flight per direction; more are dropped (`tx_dropped`).
    pub queue_frames: usize,
    /// Transmit buffers per port (frames in flight, duplicates and frames held by the receiver
    /// all count until dropped); [`PacketDevice::tx_alloc`] returns `None` past it.
    pub pool_frames: usize,
    /// IP MTU in bytes; frames are at most `mtu + 14` bytes. Between [`MTU_MIN`] and [`MTU_MAX`].
    pub mtu: usize,
    /// The most frames one `rx_burst` or `tx_burst` call moves.
    pub burst_max: usize,
    /// Page size wanted for each port's buffer pool (falls back to base pages by itself).
    /// Programs that build many short-lived links, like the fuzz targets, take
    /// [`PageSize::Base4K`] so they neither hold nor fault in hugepages other processes need.
    pub page_size: PageSize,
}

impl Default for SimConfig {
    /// Seed 0, no faults, 10 us latency, no jitter, 100 us reorder delay, 4096 frames in flight
    /// per direction, 8192 buffers per port, MTU 1500, bursts of 32, pools on 2 MiB pages.
    fn default() -> SimConfig {
        SimConfig {
            seed: 0,
            faults: Faults::none(),
            latency: Duration::from_micros(10),
            jitter: Duration::ZERO,
            reorder_delay: Duration::from_micros(100),
            queue_frames: 4096,
            pool_frames: 8192,
            mtu: 1500,
            burst_max: 32,
            page_size: PageSize::Huge2M,
        }
    }
}

impl SimConfig {
    /// This configuration with another seed.
    pub fn with_seed(self, seed: u64) -> SimConfig {
        SimConfig { seed, ..self }
    }

    /// This configuration with other faults.
    pub fn with_faults(self, faults: Faults) -> SimConfig {
        SimConfig { faults, ..self }
    }

    /// The buffer length (headroom included) that holds a frame of `mtu + 14` bytes.
    fn buf_len(&self) -> usize {
        (self.mtu + ETH_HEADER_LEN + HEADROOM)
            .next_multiple_of(64)
            .max(BUF_LEN_MIN)
    }

    fn validate(&self) -> Result<(), SimError> {
        self.faults.check()?;
        for (field, value) in [
            ("queue_frames", self.queue_frames),
            ("pool_frames", self.pool_frames),
            ("burst_max", self.burst_max),
        ] {
            if value == 0 {
                return Err(SimError::Zero { field });
            }
        }
        if !(MTU_MIN..=MTU_MAX).contains(&self.mtu) {
            return Err(SimError::BadMtu {
                mtu: self.mtu,
                min: MTU_MIN,
                max: MTU_MAX,
            });
        }
        Ok(())
    }
}

/// One end of the link.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The first port returned by [`SimLink::new`].
    A,
    /// The second port returned by [`SimLink::new`].
    B,
}

impl Side {
    /// The other end.
    pub const fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// Index of the direction this side transmits on (0 = A->B, 1 = B->A).
    const fn tx_lane(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    const fn rx_lane(self) -> usize {
        self.peer().tx_lane()
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::A => "A",
            Side::B => "B",
        })
    }
}

/// Errors from building a simulated link.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A fault probability outside `[0, 1]` (or NaN).
    #[error("fault probability `{fault}` is {value}: give a number between 0.0 and 1.0")]
    BadProbability {
        /// Which fault.
        fault: &'static str,
        /// The value given.
        value: f64,
    },
    /// A size that must be at least 1 was 0.
    #[error("SimConfig::{field} is 0: it must be at least 1")]
    Zero {
        /// Which field.
        field: &'static str,
    },
    /// The MTU is outside the supported range.
    #[error("SimConfig::mtu is {mtu}: it must be between {min} and {max}")]
    BadMtu {
        /// The value given.
        mtu: usize,
        /// Smallest accepted.
        min: usize,
        /// Largest accepted.
        max: usize,
    },
    /// A port's buffer pool could not be built.
    #[error(
        "cannot build the buffer pool of port {side} ({frames} buffers of {buf_len} bytes): \
         {source}; lower SimConfig::pool_frames or free memory"
    )]
    Pool {
        /// Which port.
        side: Side,
        /// Buffers asked for.
        frames: usize,
        /// Bytes per buffer.
        buf_len: usize,
        /// What the memory layer said.
        #[source]
        source: MemError,
    },
}

impl From<BadProbability> for SimError {
    fn from(e: BadProbability) -> SimError {
        SimError::BadProbability {
            fault: e.fault,
            value: e.value,
        }
    }
}

/// Counters of one direction of the link. Every frame offered to `tx_burst` ends up in exactly
/// one of `too_long`, `dropped_down`, `dropped_full`, `lost`, or goes in flight; frames in
/// flight are later `delivered` or `dropped_down` (when the link goes down).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Frames offered to `tx_burst` (each consumed its random draws).
    pub offered: u64,
    /// Frames (copies included) handed to the receiver by `rx_burst`.
    pub delivered: u64,
    /// Frames lost on the wire.
    pub lost: u64,
    /// Extra copies put in flight.
    pub duplicated: u64,
    /// Duplications that did not happen: no free buffer in the pool or no room in the queue.
    pub duplicate_skipped: u64,
    /// Frames given the reorder delay.
    pub reordered: u64,
    /// Frames with one bit flipped.
    pub corrupted: u64,
    /// Frames sent while the link was down, or in flight when it went down.
    pub dropped_down: u64,
    /// Frames dropped because `queue_frames` were already in flight.
    pub dropped_full: u64,
    /// Frames longer than `mtu + 14` bytes, refused.
    pub too_long: u64,
    /// Frames in flight when the snapshot was taken (not a counter).
    pub in_flight: u64,
}

impl DirectionStats {
    fn add(&self, o: &DirectionStats) -> DirectionStats {
        DirectionStats {
            offered: self.offered + o.offered,
            delivered: self.delivered + o.delivered,
            lost: self.lost + o.lost,
            duplicated: self.duplicated + o.duplicated,
            duplicate_skipped: self.duplicate_skipped + o.duplicate_skipped,
            reordered: self.reordered + o.reordered,
            corrupted: self.corrupted + o.corrupted,
            dropped_down: self.dropped_down + o.dropped_down,
            dropped_full: self.dropped_full + o.dropped_full,
            too_long: self.too_long + o.too_long,
            in_flight: self.in_flight + o.in_flight,
        }
    }
}

/// Counters of the whole link, per direction.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Frames sent by port A toward port B.
    pub a_to_b: DirectionStats,
    /// Frames sent by port B toward port A.
    pub b_to_a: DirectionStats,
}

impl SimStats {
    /// Both directions added up.
    pub fn total(&self) -> DirectionStats {
        self.a_to_b.add(&self.b_to_a)
    }

    /// The direction that `side` transmits on.
    pub fn sent_by(&self, side: Side) -> &DirectionStats {
        match side {
            Side::A => &self.a_to_b,
            Side::B => &self.b_to_a,
        }
    }
}

/// A frame on the wire.
struct InFlight {
    due: Instant,
    /// Order of entry into this direction: breaks ties between equal due times.
    seq: u64,
    frame: PoolBuf,
}

impl InFlight {
    fn key(&self) -> (Instant, u64) {
        (self.due, self.seq)
    }
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    /// Reversed, so that the max-heap pops the earliest (due, seq) first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.key().cmp(&self.key())
    }
}

/// One direction of the wire.
struct Lane {
    faults: Faults,
    queue: BinaryHeap<InFlight>,
    dice: FaultDice,
    next_seq: u64,
    stats: DirectionStats,
}

impl Lane {
    /// Puts a frame in flight; the caller checked there is room.
    fn push(&mut self, due: Instant, frame: PoolBuf) {
        debug_assert!(self.queue.len() < self.queue.capacity());
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(InFlight { due, seq, frame });
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|f| f.due)
    }

    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            in_flight: self.queue.len() as u64,
            ..self.stats
        }
    }
}

struct Shared {
    cfg: SimConfig,
    up: AtomicBool,
    /// Index 0: A->B, 1: B->A.
    lanes: [Mutex<Lane>; 2],
    /// Signalled when a frame enters the lane of the same index.
    arrived: [Condvar; 2],
}

impl Shared {
    /// Locks a lane. A panic while holding the lock leaves the lane consistent (every update is
    /// a counter or a whole push/pop), so a poisoned lock is used as is.
    fn lane(&self, idx: usize) -> MutexGuard<'_, Lane> {
        self.lanes[idx].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Control handle of a simulated link: bring it down and up, read its counters, find the next
/// delivery time. Cheap to clone; it shares the link with the ports.
#[derive(Clone)]
pub struct SimLink {
    shared: Arc<Shared>,
}

impl SimLink {
    /// Builds a link and its two ports, allocating every buffer and queue up front.
    pub fn new(cfg: SimConfig) -> Result<(SimLink, SimPort, SimPort), SimError> {
        cfg.validate()?;
        let lanes = FaultDice::pair(cfg.seed).map(|dice| {
            Mutex::new(Lane {
                faults: cfg.faults,
                queue: BinaryHeap::with_capacity(cfg.queue_frames),
                dice,
                next_seq: 0,
                stats: DirectionStats::default(),
            })
        });
        let shared = Arc::new(Shared {
            cfg,
            up: AtomicBool::new(true),
            lanes,
            arrived: [Condvar::new(), Condvar::new()],
        });
        let a = SimPort::new(Arc::clone(&shared), Side::A)?;
        let b = SimPort::new(Arc::clone(&shared), Side::B)?;
        tracing::debug!(?cfg, "simulated link created");
        Ok((SimLink { shared }, a, b))
    }

    /// The configuration the link was built with (its `faults` are the initial ones: see
    /// [`SimLink::faults`]).
    pub fn config(&self) -> &SimConfig {
        &self.shared.cfg
    }

    /// Changes the faults of both directions for the frames sent from now on (frames in
    /// flight keep theirs). Part of the call sequence that a replay must repeat.
    pub fn set_faults(&self, faults: Faults) -> Result<(), SimError> {
        faults.check()?;
        for idx in 0..2 {
            self.shared.lane(idx).faults = faults;
        }
        Ok(())
    }

    /// The faults in force (A->B; both directions are set together).
    pub fn faults(&self) -> Faults {
        self.shared.lane(0).faults
    }

    /// Brings the link up or down. Going down drops every frame in flight (counted in
    /// `dropped_down`); while down, everything sent is dropped and counted.
    pub fn set_up(&self, up: bool) {
        let was = self.shared.up.swap(up, AtomicOrdering::AcqRel);
        if was && !up {
            for idx in 0..2 {
                let mut lane = self.shared.lane(idx);
                let n = lane.queue.len() as u64;
                lane.queue.clear();
                lane.stats.dropped_down += n;
            }
        }
        if was != up {
            tracing::debug!(up, "simulated link state changed");
        }
    }

    /// Whether the link is up.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(AtomicOrdering::Acquire)
    }

    /// A snapshot of the counters of both directions.
    pub fn stats(&self) -> SimStats {
        SimStats {
            a_to_b: self.shared.lane(0).snapshot(),
            b_to_a: self.shared.lane(1).snapshot(),
        }
    }

    /// The earliest due time of any frame in flight, in either direction; `None` when the wire
    /// is empty. A virtual-time driver with nothing else to do jumps its clock here.
    pub fn next_delivery(&self) -> Option<Instant> {
        let ab = self.shared.lane(0).next_due();
        let ba = self.shared.lane(1).next_due();
        match (ab, ba) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        }
    }

    /// Where a virtual-time driver moves its clock when neither side has work: the earliest of
    /// `timers` (each stack's `poll_at(now)`) and [`SimLink::next_delivery`], at least 1 us
    /// after `now` so that time always moves. `None` when nothing is due: the driver then
    /// chooses how far to go (a small step, or its deadline).
    ///
    /// ```
    /// # use ustack::dev::sim::{SimConfig, SimLink};
    /// # use ustack::Instant;
    /// # let (link, _a, _b) = SimLink::new(SimConfig::default())?;
    /// let now = Instant::from_micros(10);
    /// let timers = [Some(Instant::from_micros(500)), None];
    /// assert_eq!(link.next_event(now, timers), Some(Instant::from_micros(500)));
    /// assert_eq!(link.next_event(now, [Some(now)]), Some(Instant::from_micros(11)));
    /// assert_eq!(link.next_event(now, [None]), None); // nothing in flight either
    /// # Ok::<(), ustack::dev::sim::SimError>(())
    /// ```
    pub fn next_event(
        &self,
        now: Instant,
        timers: impl IntoIterator<Item = Option<Instant>>,
    ) -> Option<Instant> {
        timers
            .into_iter()
            .flatten()
            .chain(self.next_delivery())
            .min()
            .map(|t| t.max(now + Duration::from_micros(1)))
    }
}

impl fmt::Debug for SimLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimLink")
            .field("up", &self.is_up())
            .field("config", &self.shared.cfg)
            .finish()
    }
}

/// One end of a simulated link: a [`PacketDevice`] whose frames are [`PoolBuf`]s from the
/// port's own pool. `Send`, so the two ports can run on two threads.
pub struct SimPort {
    shared: Arc<Shared>,
    side: Side,
    pool: BufPool,
    stats: LinkStats,
}

impl SimPort {
    fn new(shared: Arc<Shared>, side: Side) -> Result<SimPort, SimError> {
        let cfg = shared.cfg;
        let buf_len = cfg.buf_len();
        let pool = BufPool::with_capacity(cfg.pool_frames, buf_len, HEADROOM, cfg.page_size)
            .map_err(|source| SimError::Pool {
                side,
                frames: cfg.pool_frames,
                buf_len,
                source,
            })?;
        Ok(SimPort {
            shared,
            side,
            pool,
            stats: LinkStats::default(),
        })
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The port's transmit buffer pool (for its counters).
    pub fn pool(&self) -> &BufPool {
        &self.pool
    }

    /// The earliest due time of the frames in flight toward this port.
    pub fn next_rx_due(&self) -> Option<Instant> {
        self.shared.lane(self.side.rx_lane()).next_due()
    }

    fn pool_full(&self) -> bool {
        self.pool.stats().in_use >= self.shared.cfg.pool_frames
    }
}

impl fmt::Debug for SimPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimPort")
            .field("side", &self.side)
            .field("stats", &self.stats)
            .field("pool", &self.pool)
            .finish()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl PacketDevice for SimPort {
    type Frame = PoolBuf;

    fn caps(&self) -> DeviceCaps {
        DeviceCaps {
            mtu: self.shared.cfg.mtu,
            burst_max: self.shared.cfg.burst_max,
            // The link corrupts frames on purpose: the stack must check every checksum.
            checksum: ChecksumCaps::default(),
        }
    }

    fn rx_burst(&mut self, now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
        let limit = batch.free().min(self.shared.cfg.burst_max);
        if limit == 0 {
            return 0;
        }
        let mut lane = self.shared.lane(self.side.rx_lane());
        let mut n = 0;
        while n < limit {
            let Some(top) = lane.queue.peek_mut() else {
                break;
            };
            if top.due > now {
                break;
            }
            let frame = PeekMut::pop(top).frame;
            let len = frame.len() as u64;
            if batch.push(frame).is_err() {
                // Cannot happen: at most `free()` frames are pushed.
                self.stats.rx_dropped += 1;
                break;
            }
            lane.stats.delivered += 1;
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += len;
            n += 1;
        }
        n
    }

    /// A buffer from this port's pool with empty data, or `None` when `pool_frames` buffers are
    /// in use (in flight, held by the receiver, or not yet sent).
    fn tx_alloc(&mut self) -> Option<PoolBuf> {
        if self.pool_full() {
            return None;
        }
        self.pool.alloc()
    }

    /// Takes up to `burst_max` frames off the front of `batch` and returns how many it took.
    /// Every frame taken is put in flight, lost, or dropped and counted (see the module docs):
    /// unlike a real NIC, nothing is left in the batch for a retry.
    fn tx_burst(&mut self, now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
        let cfg = self.shared.cfg;
        let limit = batch.len().min(cfg.burst_max);
        if limit == 0 {
            return 0;
        }
        let frame_len_max = cfg.mtu + ETH_HEADER_LEN;
        let jitter_us = micros(cfg.jitter);
        let up = self.shared.up.load(AtomicOrdering::Acquire);
        let lane_idx = self.side.tx_lane();
        let mut lane = self.shared.lane(lane_idx);
        let mut queued = false;
        let mut n = 0;
        while n < limit {
            let Some(mut frame) = batch.pop() else {
                break;
            };
            n += 1;
            let faults = lane.faults;
            let fate = lane.dice.roll(&faults, jitter_us);
            lane.stats.offered += 1;
            let len = frame.len();
            if len > frame_len_max {
                lane.stats.too_long += 1;
                self.stats.tx_errors += 1;
                continue;
            }
            if !up {
                lane.stats.dropped_down += 1;
                self.stats.tx_dropped += 1;
                continue;
            }
            let room = cfg.queue_frames - lane.queue.len();
            if room == 0 {
                lane.stats.dropped_full += 1;
                self.stats.tx_dropped += 1;
                continue;
            }
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += len as u64;
            if fate.lost {
                lane.stats.lost += 1;
                continue;
            }
            let sent = now + cfg.latency;
            // The copy is taken before corruption, so it stays clean.
            let copy = if fate.duplicate {
                let copy = if room >= 2 && !self.pool_full() {
                    frame.try_clone()
                } else {
                    None
                };
                if copy.is_none() {
                    lane.stats.duplicate_skipped += 1;
                }
                copy
            } else {
                None
            };
            if let Some(bit) = fate.corrupt_bit {
                if flip_bit(frame.as_mut_slice(), bit) {
                    lane.stats.corrupted += 1;
                }
            }
            let mut due = sent + Duration::from_micros(fate.jitter_us);
            if fate.reorder {
                due += cfg.reorder_delay;
                lane.stats.reordered += 1;
            }
            lane.push(due, frame);
            if let Some(copy) = copy {
                lane.push(sent + Duration::from_micros(fate.copy_jitter_us), copy);
                lane.stats.duplicated += 1;
            }
            queued = true;
        }
        drop(lane);
        if queued {
            self.shared.arrived[lane_idx].notify_all();
        }
        n
    }

    fn stats(&self) -> LinkStats {
        self.stats
    }

    fn link_up(&self) -> bool {
        self.shared.up.load(AtomicOrdering::Acquire)
    }

    /// Blocks until a frame is in flight toward this port (it may not be due yet) or `timeout`
    /// passes; returns at once if one already is. This waits in *real* time: a virtual-time
    /// driver should not call it.
    fn wait(&mut self, timeout: Duration) {
        let idx = self.side.rx_lane();
        let lane = self.shared.lane(idx);
        if lane.queue.is_empty() {
            let _ =
                self.shared.arrived[idx].wait_timeout_while(lane, timeout, |l| l.queue.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::Frame;

    const LATENCY_US: u64 = 10;

    /// A small link: fast to build in tests.
    fn cfg(seed: u64, faults: Faults) -> SimConfig {
        SimConfig {
            seed,
            faults,
            latency: Duration::from_micros(LATENCY_US),
            pool_frames: 512,
            queue_frames: 512,
            ..SimConfig::default()
        }
    }

    fn link(seed: u64, faults: Faults) -> (SimLink, SimPort, SimPort) {
        SimLink::new(cfg(seed, faults)).unwrap()
    }

    /// A frame of `len` bytes whose first 8 bytes are `id` and the rest a pattern.
    fn frame(port: &mut SimPort, id: u64, len: usize) -> PoolBuf {
        let mut f = port.tx_alloc().expect("pool has room");
        assert!(f.set_len(len));
        for (i, b) in f.as_mut_slice().iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(id as u8);
        }
        f.as_mut_slice()[..8].copy_from_slice(&id.to_le_bytes());
        f
    }

    fn id_of(f: &PoolBuf) -> u64 {
        u64::from_le_bytes(f.data()[..8].try_into().unwrap())
    }

    /// Sends frames `ids` from `port` at `now`, in bursts.
    fn send(port: &mut SimPort, now: Instant, ids: std::ops::Range<u64>, len: usize) -> usize {
        let mut batch = Batch::with_capacity(32);
        let mut taken = 0;
        for id in ids {
            let f = frame(port, id, len);
            if batch.push(f).is_err() {
                taken += port.tx_burst(now, &mut batch);
                assert!(batch.is_empty());
                batch.push(frame(port, id, len)).unwrap();
            }
        }
        while !batch.is_empty() {
            taken += port.tx_burst(now, &mut batch);
        }
        taken
    }

    /// Receives everything due at `now`, as (id, data).
    fn recv(port: &mut SimPort, now: Instant) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut batch = Batch::with_capacity(32);
        while port.rx_burst(now, &mut batch) > 0 {
            while let Some(f) = batch.pop() {
                out.push((id_of(&f), f.data().to_vec()));
            }
        }
        out
    }

    /// One microsecond before `t`.
    fn before(t: Instant) -> Instant {
        Instant::from_micros(t.as_micros() - 1)
    }

    fn far() -> Instant {
        Instant::from_millis(10_000)
    }

    #[test]
    fn splitmix_matches_reference_and_spreads() {
        // Reference value of SplitMix64 seeded with 0.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
        let mut r = SplitMix64::new(42);
        let mut hits = [0u32; 10];
        for _ in 0..10_000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
            hits[(x * 10.0) as usize] += 1;
            assert!(r.below(7) < 7);
        }
        assert!(hits.iter().all(|&h| (850..1150).contains(&h)), "{hits:?}");
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn config_is_validated() {
        let bad = |c: SimConfig| SimLink::new(c).unwrap_err();
        let c = cfg(0, Faults::none());
        assert!(matches!(
            bad(c.with_faults(Faults::none().with_loss(1.5))),
            SimError::BadProbability { fault: "loss", .. }
        ));
        assert!(matches!(
            bad(c.with_faults(Faults::none().with_corrupt(f64::NAN))),
            SimError::BadProbability {
                fault: "corrupt",
                ..
            }
        ));
        assert!(matches!(
            bad(SimConfig {
                queue_frames: 0,
                ..c
            }),
            SimError::Zero {
                field: "queue_frames"
            }
        ));
        assert!(matches!(
            bad(SimConfig { mtu: 20, ..c }),
            SimError::BadMtu { mtu: 20, .. }
        ));
        // A jumbo MTU gets buffers long enough.
        let (_l, mut a, _b) = SimLink::new(SimConfig {
            mtu: 9000,
            pool_frames: 4,
            ..c
        })
        .unwrap();
        assert_eq!(a.caps().frame_len_max(), 9014);
        assert!(a.tx_alloc().unwrap().capacity() >= 9014);
    }

    #[test]
    fn perfect_link_delivers_in_order_at_due_time() {
        let (link, mut a, mut b) = link(1, Faults::none());
        let caps = a.caps();
        assert_eq!(caps.mtu, 1500);
        assert_eq!(caps.burst_max, 32);
        assert_eq!(caps.checksum, ChecksumCaps::default());
        let t0 = Instant::from_micros(1000);
        assert_eq!(send(&mut a, t0, 0..100, 64), 100);
        let due = t0 + Duration::from_micros(LATENCY_US);
        assert_eq!(link.next_delivery(), Some(due));
        assert_eq!(b.next_rx_due(), Some(due));
        assert_eq!(a.next_rx_due(), None);
        assert!(recv(&mut b, before(due)).is_empty());
        let got = recv(&mut b, due);
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            (0..100).collect::<Vec<_>>()
        );
        assert_eq!(link.next_delivery(), None);
        assert!(recv(&mut a, far()).is_empty(), "nothing went B->A");
        let s = link.stats();
        assert_eq!(s.a_to_b.offered, 100);
        assert_eq!(s.a_to_b.delivered, 100);
        assert_eq!(s.b_to_a, DirectionStats::default());
        assert_eq!(a.stats().tx_packets, 100);
        assert_eq!(a.stats().tx_bytes, 6400);
        assert_eq!(b.stats().rx_packets, 100);
        assert_eq!(b.stats().rx_bytes, 6400);
        // Frames went back to A's pool when B dropped them.
        assert_eq!(a.pool().stats().in_use, 0);
    }

    #[test]
    fn rx_burst_respects_burst_max_and_batch_room() {
        let (_link, mut a, mut b) = link(1, Faults::none());
        send(&mut a, Instant::ZERO, 0..50, 64);
        let mut small = Batch::with_capacity(5);
        assert_eq!(b.rx_burst(far(), &mut small), 5);
        assert_eq!(b.rx_burst(far(), &mut small), 0, "batch is full");
        let mut big = Batch::with_capacity(100);
        assert_eq!(b.rx_burst(far(), &mut big), 32, "burst_max");
        assert_eq!(b.rx_burst(far(), &mut big), 13);
    }

    #[test]
    fn jitter_stays_within_bounds_and_due_order_holds() {
        let c = SimConfig {
            jitter: Duration::from_micros(50),
            ..cfg(3, Faults::none())
        };
        let (link, mut a, mut b) = SimLink::new(c).unwrap();
        let t0 = Instant::ZERO;
        send(&mut a, t0, 0..200, 64);
        let lo = t0 + Duration::from_micros(LATENCY_US);
        let hi = lo + Duration::from_micros(50);
        assert!(recv(&mut b, before(lo)).is_empty());
        let mut seen = 0;
        let mut last_due = Instant::ZERO;
        while let Some(due) = link.next_delivery() {
            assert!(due >= lo && due <= hi, "{due:?}");
            assert!(due >= last_due);
            last_due = due;
            seen += recv(&mut b, due).len();
        }
        assert_eq!(seen, 200);
    }

    /// A scripted two-way run under the standard faults with jitter; returns what was delivered
    /// (time, side, bytes) and the stats.
    fn scripted_run(seed: u64) -> (Vec<(Instant, Side, Vec<u8>)>, SimStats) {
        let c = SimConfig {
            jitter: Duration::from_micros(20),
            ..cfg(seed, Faults::standard().with_corrupt(0.05))
        };
        let (link, mut a, mut b) = SimLink::new(c).unwrap();
        let mut log = Vec::new();
        let mut now = Instant::ZERO;
        for round in 0..40u64 {
            send(
                &mut a,
                now,
                round * 10..round * 10 + 10,
                60 + round as usize,
            );
            send(&mut b, now, 1000 + round * 5..1000 + round * 5 + 5, 100);
            if round == 20 {
                link.set_up(false);
                send(&mut a, now, 0..3, 60);
                link.set_up(true);
            }
            now += Duration::from_micros(7);
            for (port, side) in [(&mut a, Side::A), (&mut b, Side::B)] {
                for (_, data) in recv(port, now) {
                    log.push((now, side, data));
                }
            }
        }
        while let Some(t) = link.next_delivery() {
            now = t;
            for (port, side) in [(&mut a, Side::A), (&mut b, Side::B)] {
                for (_, data) in recv(port, now) {
                    log.push((now, side, data));
                }
            }
        }
        (log, link.stats())
    }

    #[test]
    fn same_seed_replays_exactly_and_other_seeds_differ() {
        let (log1, stats1) = scripted_run(7);
        let (log2, stats2) = scripted_run(7);
        assert_eq!(stats1, stats2);
        assert!(log1 == log2, "same seed gave different deliveries");
        let t = stats1.total();
        assert!(
            t.lost > 0 && t.reordered > 0 && t.corrupted > 0 && t.dropped_down > 0,
            "{t:?}"
        );
        let (log3, stats3) = scripted_run(8);
        assert!(
            log1 != log3 || stats1 != stats3,
            "another seed gave the same run"
        );
        // Every frame offered is accounted for.
        for s in [stats1.a_to_b, stats1.b_to_a] {
            assert_eq!(s.in_flight, 0);
            assert_eq!(
                s.offered + s.duplicated,
                s.delivered + s.lost + s.dropped_down + s.dropped_full + s.too_long
            );
        }
    }

    #[test]
    fn directions_have_independent_streams() {
        // Loss decisions A->B must not be the same sequence as B->A.
        let (link, mut a, mut b) = link(5, Faults::none().with_loss(0.5));
        send(&mut a, Instant::ZERO, 0..64, 64);
        send(&mut b, Instant::ZERO, 0..64, 64);
        let ga: Vec<u64> = recv(&mut b, far()).iter().map(|g| g.0).collect();
        let gb: Vec<u64> = recv(&mut a, far()).iter().map(|g| g.0).collect();
        assert_ne!(ga, gb);
        let s = link.stats();
        assert_eq!(s.a_to_b.lost + s.a_to_b.delivered, 64);
    }

    #[test]
    fn loss_all_and_none() {
        let (link, mut a, mut b) = link(1, Faults::none().with_loss(1.0));
        send(&mut a, Instant::ZERO, 0..50, 64);
        assert!(recv(&mut b, far()).is_empty());
        assert_eq!(link.stats().a_to_b.lost, 50);
        assert_eq!(a.stats().tx_packets, 50, "a lost frame was still sent");

        let (link, mut a, mut b) = self::link(1, Faults::none().with_loss(0.0));
        send(&mut a, Instant::ZERO, 0..50, 64);
        assert_eq!(recv(&mut b, far()).len(), 50);
        assert_eq!(link.stats().a_to_b.lost, 0);
    }

    #[test]
    fn loss_rate_is_about_right() {
        let (link, mut a, mut b) = link(11, Faults::standard());
        let mut now = Instant::ZERO;
        for round in 0..100 {
            send(&mut a, now, round * 100..round * 100 + 100, 64);
            now += Duration::from_millis(1);
            recv(&mut b, now);
        }
        let s = link.stats().a_to_b;
        assert!((400..600).contains(&s.lost), "{s:?}"); // 5% of 10000
        assert!((400..600).contains(&s.reordered), "{s:?}");
        assert!((60..150).contains(&s.duplicated), "{s:?}");
        assert!(s.corrupted < 30, "{s:?}");
    }

    #[test]
    fn duplicate_all_and_none() {
        let (link, mut a, mut b) = link(1, Faults::none().with_duplicate(1.0));
        send(&mut a, Instant::ZERO, 0..20, 64);
        let got = recv(&mut b, far());
        assert_eq!(got.len(), 40);
        for id in 0..20 {
            let copies: Vec<_> = got.iter().filter(|g| g.0 == id).collect();
            assert_eq!(copies.len(), 2);
            assert_eq!(copies[0].1, copies[1].1);
        }
        let s = link.stats().a_to_b;
        assert_eq!(
            (s.duplicated, s.delivered, s.duplicate_skipped),
            (20, 40, 0)
        );
        assert_eq!(a.stats().tx_packets, 20, "copies are made by the wire");
        assert_eq!(b.stats().rx_packets, 40);

        let (link, mut a, mut b) = self::link(1, Faults::none().with_duplicate(0.0));
        send(&mut a, Instant::ZERO, 0..20, 64);
        assert_eq!(recv(&mut b, far()).len(), 20);
        assert_eq!(link.stats().a_to_b.duplicated, 0);
    }

    #[test]
    fn duplicate_is_skipped_when_pool_is_empty() {
        let c = SimConfig {
            pool_frames: 4,
            ..cfg(1, Faults::none().with_duplicate(1.0))
        };
        let (link, mut a, mut b) = SimLink::new(c).unwrap();
        // Two frames in flight plus their two copies fill the pool of four.
        assert_eq!(send(&mut a, Instant::ZERO, 0..2, 64), 2);
        assert!(a.tx_alloc().is_none());
        assert_eq!(link.stats().a_to_b.duplicated, 2);
        let got = recv(&mut b, far());
        assert_eq!(got.len(), 4);
        drop(got);
        // Now hold three buffers: the fourth frame is sent but has no buffer for a copy.
        let mut batch = Batch::with_capacity(4);
        let held: Vec<_> = (0..3).map(|i| frame(&mut a, 10 + i, 64)).collect();
        batch.push(frame(&mut a, 99, 64)).unwrap();
        assert_eq!(a.tx_burst(Instant::ZERO, &mut batch), 1);
        let s = link.stats().a_to_b;
        assert_eq!((s.duplicated, s.duplicate_skipped), (2, 1));
        assert_eq!(recv(&mut b, far()).len(), 1);
        drop(held);
    }

    #[test]
    fn corruption_flips_exactly_one_bit() {
        let (link, mut a, mut b) = link(9, Faults::none().with_corrupt(1.0));
        let len = 200;
        send(&mut a, Instant::ZERO, 0..300, len);
        let got = recv(&mut b, far());
        assert_eq!(got.len(), 300);
        let mut positions = std::collections::HashSet::new();
        for (i, (_, data)) in got.iter().enumerate() {
            // Rebuild what was sent (ids are in order: no reordering, no jitter).
            let mut f = frame(&mut a, i as u64, len);
            let sent = f.as_mut_slice().to_vec();
            let diff: u32 = sent
                .iter()
                .zip(data)
                .map(|(x, y)| (x ^ y).count_ones())
                .sum();
            assert_eq!(diff, 1, "frame {i}");
            let pos = sent.iter().zip(data).position(|(x, y)| x != y).unwrap();
            positions.insert(pos);
        }
        assert!(
            positions.len() > 100,
            "flipped bits are spread over the frame"
        );
        assert_eq!(link.stats().a_to_b.corrupted, 300);

        let (link, mut a, mut b) = self::link(9, Faults::none().with_corrupt(0.0));
        send(&mut a, Instant::ZERO, 0..50, len);
        for (i, (_, data)) in recv(&mut b, far()).iter().enumerate() {
            assert_eq!(*data, frame(&mut a, i as u64, len).data().to_vec());
        }
        assert_eq!(link.stats().a_to_b.corrupted, 0);
    }

    #[test]
    fn duplicate_copy_stays_clean_when_original_is_corrupted() {
        let faults = Faults::none().with_duplicate(1.0).with_corrupt(1.0);
        let (_link, mut a, mut b) = link(2, faults);
        send(&mut a, Instant::ZERO, 0..1, 128);
        let got = recv(&mut b, far());
        assert_eq!(got.len(), 2);
        let clean = frame(&mut a, 0, 128).data().to_vec();
        assert_eq!(got.iter().filter(|g| g.1 == clean).count(), 1);
    }

    #[test]
    fn reordering_lets_a_later_frame_overtake() {
        let (link, mut a, mut b) = link(1, Faults::none().with_reorder(1.0));
        let delay = link.config().reorder_delay;
        send(&mut a, Instant::ZERO, 0..1, 64);
        link.set_faults(Faults::none()).unwrap();
        send(&mut a, Instant::from_micros(1), 1..2, 64);
        let lat = Duration::from_micros(LATENCY_US);
        assert_eq!(link.stats().a_to_b.reordered, 1);
        // Frame 1 is due at 1 us + latency, frame 0 only at latency + reorder_delay.
        assert_eq!(link.next_delivery(), Some(Instant::from_micros(1) + lat));
        let order: Vec<u64> = recv(&mut b, far()).iter().map(|g| g.0).collect();
        assert_eq!(order, vec![1, 0]);

        // Probability 1: every frame gets exactly the extra delay; 0: none does.
        for (p, extra) in [(1.0, delay), (0.0, Duration::ZERO)] {
            let (link, mut a, mut b) = self::link(2, Faults::none().with_reorder(p));
            send(&mut a, Instant::ZERO, 0..20, 64);
            let due = Instant::ZERO + lat + extra;
            assert!(recv(&mut b, before(due)).is_empty());
            assert_eq!(recv(&mut b, due).len(), 20);
            assert_eq!(link.stats().a_to_b.reordered, if p > 0.5 { 20 } else { 0 });
        }
    }

    #[test]
    fn set_faults_is_validated_and_applies_to_both_directions() {
        let (link, mut a, mut b) = link(1, Faults::none());
        assert!(matches!(
            link.set_faults(Faults::none().with_loss(-0.1)),
            Err(SimError::BadProbability { fault: "loss", .. })
        ));
        link.set_faults(Faults::none().with_loss(1.0)).unwrap();
        assert_eq!(link.faults(), Faults::none().with_loss(1.0));
        send(&mut a, Instant::ZERO, 0..4, 64);
        send(&mut b, Instant::ZERO, 0..4, 64);
        assert_eq!(link.stats().total().lost, 8);
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let c = SimConfig {
            queue_frames: 10,
            ..cfg(1, Faults::none())
        };
        let (link, mut a, mut b) = SimLink::new(c).unwrap();
        assert_eq!(
            send(&mut a, Instant::ZERO, 0..15, 64),
            15,
            "all taken off the batch"
        );
        let s = link.stats().a_to_b;
        assert_eq!((s.dropped_full, s.in_flight), (5, 10));
        let st = a.stats();
        assert_eq!((st.tx_packets, st.tx_dropped), (10, 5));
        assert_eq!(
            a.pool().stats().in_use,
            10,
            "dropped frames went back to the pool"
        );
        let ids: Vec<u64> = recv(&mut b, far()).iter().map(|g| g.0).collect();
        assert_eq!(ids, (0..10).collect::<Vec<_>>());
        // Room again.
        assert_eq!(send(&mut a, Instant::ZERO, 20..25, 64), 5);
        assert_eq!(recv(&mut b, far()).len(), 5);
    }

    #[test]
    fn link_down_drops_everything_until_up() {
        let (link, mut a, mut b) = link(1, Faults::none());
        send(&mut a, Instant::ZERO, 0..5, 64);
        assert!(link.is_up() && a.link_up());
        link.set_up(false);
        assert!(!link.is_up() && !b.link_up());
        assert_eq!(link.next_delivery(), None, "in-flight frames dropped");
        send(&mut a, Instant::ZERO, 5..10, 64);
        send(&mut b, Instant::ZERO, 0..3, 64);
        assert!(recv(&mut b, far()).is_empty());
        assert!(recv(&mut a, far()).is_empty());
        let s = link.stats();
        assert_eq!((s.a_to_b.dropped_down, s.b_to_a.dropped_down), (10, 3));
        assert_eq!(a.stats().tx_dropped, 5);
        link.set_up(true);
        send(&mut a, Instant::ZERO, 10..12, 64);
        let ids: Vec<u64> = recv(&mut b, far()).iter().map(|g| g.0).collect();
        assert_eq!(ids, vec![10, 11]);
    }

    #[test]
    fn tx_alloc_is_none_when_pool_is_exhausted() {
        let c = SimConfig {
            pool_frames: 3,
            ..cfg(1, Faults::none())
        };
        let (_link, mut a, mut b) = SimLink::new(c).unwrap();
        let held: Vec<_> = (0..3).map(|_| a.tx_alloc().unwrap()).collect();
        assert!(a.tx_alloc().is_none());
        assert!(b.tx_alloc().is_some(), "each port has its own pool");
        drop(held);
        // Buffers in flight and held by the receiver count too.
        send(&mut a, Instant::ZERO, 0..3, 64);
        assert!(a.tx_alloc().is_none());
        let mut batch = Batch::with_capacity(8);
        assert_eq!(b.rx_burst(far(), &mut batch), 3);
        assert!(a.tx_alloc().is_none());
        batch.clear();
        assert!(a.tx_alloc().is_some());
    }

    #[test]
    fn too_long_frame_is_a_tx_error() {
        let c = SimConfig {
            mtu: 1000,
            ..cfg(1, Faults::none())
        };
        let (link, mut a, mut b) = SimLink::new(c).unwrap();
        send(&mut a, Instant::ZERO, 0..1, 1015);
        send(&mut a, Instant::ZERO, 1..2, 1014);
        assert_eq!(recv(&mut b, far()).len(), 1);
        assert_eq!(a.stats().tx_errors, 1);
        assert_eq!(link.stats().a_to_b.too_long, 1);
    }

    #[test]
    fn ports_work_from_two_threads_on_the_real_clock() {
        let (link, mut a, mut b) = link(1, Faults::none());
        const N: u64 = 20_000;
        let rx = std::thread::spawn(move || {
            let mut batch = Batch::with_capacity(32);
            let mut next = 0u64;
            while next < N {
                if b.rx_burst(Instant::now(), &mut batch) == 0 {
                    b.wait(Duration::from_millis(1));
                }
                while let Some(f) = batch.pop() {
                    assert_eq!(id_of(&f), next);
                    next += 1;
                }
            }
            b
        });
        let mut batch = Batch::with_capacity(32);
        let mut id = 0;
        // A failed assertion ends the receiver early: stop sending then, and join reports it.
        while id < N && !rx.is_finished() {
            while id < N && !batch.is_full() {
                match a.tx_alloc() {
                    Some(mut f) => {
                        assert!(f.set_len(64));
                        f.as_mut_slice()[..8].copy_from_slice(&id.to_le_bytes());
                        batch.push(f).unwrap();
                        id += 1;
                    }
                    None => break,
                }
            }
            if a.tx_burst(Instant::now(), &mut batch) == 0 {
                std::thread::yield_now();
            }
            // Stay under the queue bound so nothing is dropped.
            while link.stats().a_to_b.in_flight > 256 && !rx.is_finished() {
                std::thread::yield_now();
            }
        }
        let b = rx.join().unwrap();
        assert_eq!(b.stats().rx_packets, N);
        assert_eq!(link.stats().a_to_b.dropped_full, 0);
    }

    #[test]
    fn pools_take_the_page_size_asked() {
        let c = SimConfig {
            page_size: PageSize::Base4K,
            ..cfg(1, Faults::none())
        };
        let (_link, a, b) = SimLink::new(c).unwrap();
        assert_eq!(a.pool().page_size(), PageSize::Base4K);
        assert_eq!(b.pool().page_size(), PageSize::Base4K);
    }

    #[test]
    fn ports_are_send() {
        fn is_send<T: Send>() {}
        is_send::<SimPort>();
        is_send::<SimLink>();
    }
}

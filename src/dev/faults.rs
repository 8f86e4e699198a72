//! Seeded link faults: what can go wrong with a frame, decided per frame from a seed, and a
//! bounded fault engine for one direction of a real wire.
//!
//! Two users share the decisions made here, so a fault mix means the same thing in both:
//!
//! - the simulated link ([`crate::dev::sim`]), which puts each decided frame in flight in
//!   virtual time;
//! - the user-space relay `examples/faultwire.rs`, which forwards real Ethernet frames between
//!   two interfaces (AF_PACKET) through one [`FaultLane`] per direction.
//!
//! # Decisions
//!
//! [`Faults`] holds four probabilities. [`FaultDice::roll`] decides one frame's [`FrameFate`]:
//! loss first (a lost frame gets no other fault), then duplication, reordering and corruption
//! independently. Every roll consumes exactly seven draws of a [`SplitMix64`] stream, used or
//! not, so the fate of the n-th frame depends only on the seed and n: the same seed and the same
//! frame sequence give the same decisions. [`FaultDice::pair`] derives the two directions' dice
//! from one seed.
//!
//! # The lane of a real wire
//!
//! [`FaultLane::offer`] applies a fate to a frame received from the wire and hands what is to
//! be sent on to a callback:
//!
//! - **loss**: nothing is sent;
//! - **duplicate**: a clean copy is sent at once, before the original;
//! - **corrupt**: one bit of the IPv4 packet (header or payload, never the Ethernet header or
//!   trailing padding) is flipped, so the IPv4 header checksum or the TCP/UDP checksum catches
//!   it. Frames that are not IPv4 (ARP above all, which has no checksum) are left intact and
//!   counted in [`LaneStats::corrupt_skipped`];
//! - **reorder**: the frame is held back for `reorder_delay` and released by
//!   [`FaultLane::release`], so frames that arrive meanwhile overtake it. The hold queue is
//!   bounded ([`LaneConfig::hold_frames`]); when it is full the frame goes at once and
//!   [`LaneStats::reorder_overflow`] counts it.
//!
//! Every frame is also counted by source MAC address ([`LaneStats`] and [`FaultLane::macs`]),
//! so a benchmark can tell how many frames each endpoint sent. Everything is allocated by
//! [`FaultLane::new`]; nothing is allocated per frame.
//!
//! [`WireReport`] writes and reads the counters of both lanes as one line of `key=value` pairs,
//! the form the relay prints when it stops.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use crate::dev::ETH_HEADER_LEN;
use crate::time::Instant;

/// A SplitMix64 pseudo-random generator: tiny, fast, and good enough to decide faults.
///
/// Public so tests built on a link can draw reproducible data from the same kind of seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The step between successive states (the golden ratio in 64-bit fixed point).
    pub const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    /// A generator starting from `seed` (any value is fine, zero included).
    pub const fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits: the state advances by [`GAMMA`](Self::GAMMA) and is
    /// [`mix`](Self::mix)ed.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        Self::mix(self.state)
    }

    /// The output function: 64 well-spread bits from any 64. A counter-based stream, whose
    /// word `i` is computed on its own (a test pattern checked at any offset), is
    /// `mix(seed ^ i * GAMMA)`.
    #[inline]
    pub const fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform number in `[0, 1)` with 53 random bits.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A number in `[0, n)` (0 when `n == 0`), by multiply-shift: the bias is below `n / 2^64`.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Fault probabilities, each in `[0, 1]`, decided independently per frame.
///
/// The default is no faults. See the [module docs](self) for what each one does.
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability that a frame is dropped on the wire.
    pub loss: f64,
    /// Probability that a frame arrives twice.
    pub duplicate: f64,
    /// Probability that a frame is held back so that later frames overtake it.
    pub reorder: f64,
    /// Probability that one bit of a frame is flipped.
    pub corrupt: f64,
}

/// A fault probability outside `[0, 1]` (or NaN).
#[derive(Copy, Clone, Debug, PartialEq, thiserror::Error)]
#[error("fault probability `{fault}` is {value}: give a number between 0.0 and 1.0")]
pub struct BadProbability {
    /// Which fault.
    pub fault: &'static str,
    /// The value given.
    pub value: f64,
}

impl Faults {
    /// No faults: a perfect wire.
    pub const fn none() -> Faults {
        Faults {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            corrupt: 0.0,
        }
    }

    /// The stack tests' standard mix: 5% loss, 5% reorder, 1% duplication, 0.1% corruption.
    pub const fn standard() -> Faults {
        Faults {
            loss: 0.05,
            duplicate: 0.01,
            reorder: 0.05,
            corrupt: 0.001,
        }
    }

    /// These faults with loss probability `p`.
    pub const fn with_loss(self, p: f64) -> Faults {
        Faults { loss: p, ..self }
    }

    /// These faults with duplication probability `p`.
    pub const fn with_duplicate(self, p: f64) -> Faults {
        Faults {
            duplicate: p,
            ..self
        }
    }

    /// These faults with reordering probability `p`.
    pub const fn with_reorder(self, p: f64) -> Faults {
        Faults { reorder: p, ..self }
    }

    /// These faults with corruption probability `p`.
    pub const fn with_corrupt(self, p: f64) -> Faults {
        Faults { corrupt: p, ..self }
    }

    /// Checks that every probability is in `[0, 1]`.
    pub fn check(&self) -> Result<(), BadProbability> {
        for (fault, value) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("corrupt", self.corrupt),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(BadProbability { fault, value });
            }
        }
        Ok(())
    }
}

/// What happens to one frame, as decided by [`FaultDice::roll`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameFate {
    /// The frame is dropped. When set, every other fault is off.
    pub lost: bool,
    /// A second, clean copy is sent.
    pub duplicate: bool,
    /// The frame is delayed so that later frames overtake it.
    pub reorder: bool,
    /// One bit is flipped: the raw draw that picks it (see [`flip_bit`]).
    pub corrupt_bit: Option<u64>,
    /// Extra delay of the frame, uniform in `0 ..= jitter_us` (the simulated link's jitter).
    pub jitter_us: u64,
    /// Extra delay of the duplicate, drawn like `jitter_us`.
    pub copy_jitter_us: u64,
}

/// The seeded per-frame decisions of one direction of a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultDice {
    rng: SplitMix64,
}

impl FaultDice {
    /// Dice drawing from a stream that starts at `seed`.
    pub const fn new(seed: u64) -> FaultDice {
        FaultDice {
            rng: SplitMix64::new(seed),
        }
    }

    /// The two directions' dice of a link with this seed (first: A to B, or left to right),
    /// each its own stream derived from `seed`.
    pub fn pair(seed: u64) -> [FaultDice; 2] {
        let mut root = SplitMix64::new(seed);
        let first = root.next_u64();
        let second = root.next_u64();
        [FaultDice::new(first), FaultDice::new(second)]
    }

    /// Decides the next frame's fate under `faults`, with jitter up to `jitter_us`.
    ///
    /// Always consumes the same number of draws, whatever the outcome.
    pub fn roll(&mut self, faults: &Faults, jitter_us: u64) -> FrameFate {
        let rng = &mut self.rng;
        let loss = rng.next_f64();
        let duplicate = rng.next_f64();
        let reorder = rng.next_f64();
        let corrupt = rng.next_f64();
        let bit = rng.next_u64();
        let span = jitter_us.saturating_add(1);
        let jitter_us = rng.below(span);
        let copy_jitter_us = rng.below(span);
        let lost = loss < faults.loss;
        FrameFate {
            lost,
            duplicate: !lost && duplicate < faults.duplicate,
            reorder: !lost && reorder < faults.reorder,
            corrupt_bit: (!lost && corrupt < faults.corrupt).then_some(bit),
            jitter_us,
            copy_jitter_us,
        }
    }
}

/// Flips the bit of `data` that the draw `bit` picks (uniformly over its bits); `false` and
/// nothing changed when `data` is empty.
pub fn flip_bit(data: &mut [u8], bit: u64) -> bool {
    if data.is_empty() {
        return false;
    }
    let bit = bit % (data.len() as u64 * 8);
    data[(bit / 8) as usize] ^= 1 << (bit % 8);
    true
}

/// EtherType of IPv4.
const ETHERTYPE_IPV4: u16 = 0x0800;

/// The bytes of the IPv4 packet in an Ethernet frame (no VLAN tag): from the IP header to the
/// IP total length, without trailing padding; `None` when the frame is not IPv4 or too short.
pub fn ipv4_packet_mut(frame: &mut [u8]) -> Option<&mut [u8]> {
    if frame.len() < ETH_HEADER_LEN + 20 {
        return None;
    }
    if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &mut frame[ETH_HEADER_LEN..];
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let len = total.clamp(20, ip.len());
    Some(&mut ip[..len])
}

/// An Ethernet (MAC) address.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let mut mac = [0u8; 6];
        let mut parts = s.trim().split(':');
        for byte in &mut mac {
            let part = parts
                .next()
                .ok_or_else(|| format!("{s:?}: a MAC address has 6 bytes (aa:bb:cc:dd:ee:ff)"))?;
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| format!("{s:?}: {part:?} is not a hex byte"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?}: a MAC address has 6 bytes"));
        }
        Ok(Mac(mac))
    }
}

/// Frames and bytes seen from one source MAC address.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct MacCount {
    /// The source address.
    pub mac: Mac,
    /// Frames it sent (as seen by the lane, before any fault).
    pub frames: u64,
    /// Bytes in those frames.
    pub bytes: u64,
}

/// Counters of one direction. Every frame offered ends up dropped (lost), or forwarded at once,
/// or held and later forwarded (or still held); duplicates add forwarded frames.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct LaneStats {
    /// Frames offered to the lane.
    pub seen: u64,
    /// Bytes in those frames.
    pub seen_bytes: u64,
    /// Frames handed on to be sent (duplicates and released held frames included).
    pub forwarded: u64,
    /// Frames dropped by the loss fault.
    pub dropped: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Frames held back (reordered).
    pub reordered: u64,
    /// Frames that were to be held back but went at once: the hold queue was full.
    pub reorder_overflow: u64,
    /// Frames with one bit flipped.
    pub corrupted: u64,
    /// Frames chosen for corruption that were not IPv4, forwarded intact.
    pub corrupt_skipped: u64,
    /// Frames held back and not released yet (not a counter).
    pub held: u64,
    /// Frames from source addresses beyond the table's size ([`LaneConfig::macs_max`]).
    pub other_mac_frames: u64,
    /// Frames longer than the receive buffers, dropped by the relay before the lane saw them
    /// (counted by the relay, not the lane).
    pub truncated: u64,
    /// Frames the relay could not send (the interface's queue stayed full).
    pub send_failed: u64,
    /// Frames the kernel dropped before the relay read them (its socket buffer was full):
    /// losses the seed did not decide.
    pub kernel_drops: u64,
}

/// Configuration of one [`FaultLane`].
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct LaneConfig {
    /// The faults.
    pub faults: Faults,
    /// How long a reordered frame is held back.
    pub reorder_delay: Duration,
    /// The most frames held back at once; more are forwarded at once.
    pub hold_frames: usize,
    /// The longest frame the lane holds (bytes, Ethernet header included).
    pub frame_len_max: usize,
    /// Source MAC addresses counted one by one; frames from more go to
    /// [`LaneStats::other_mac_frames`].
    pub macs_max: usize,
}

impl Default for LaneConfig {
    /// No faults, 100 us reorder delay, 256 frames held at most, frames up to 9216 + 14 bytes,
    /// 16 source addresses.
    fn default() -> LaneConfig {
        LaneConfig {
            faults: Faults::none(),
            reorder_delay: Duration::from_micros(100),
            hold_frames: 256,
            frame_len_max: 9216 + ETH_HEADER_LEN,
            macs_max: 16,
        }
    }
}

/// Frames held back, released in arrival order (the delay is the same for all, so arrival
/// order is due order). A fixed ring of slots, allocated once.
struct HoldQueue {
    slots: Vec<u8>,
    slot_len: usize,
    /// (due, length) per slot.
    meta: Vec<(Instant, usize)>,
    head: usize,
    len: usize,
}

impl HoldQueue {
    fn new(frames: usize, slot_len: usize) -> HoldQueue {
        HoldQueue {
            slots: vec![0; frames * slot_len],
            slot_len,
            meta: vec![(Instant::ZERO, 0); frames],
            head: 0,
            len: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.meta.len()
    }

    /// Copies `frame` in, due at `due`; `false` when full or the frame is too long.
    fn push(&mut self, due: Instant, frame: &[u8]) -> bool {
        if self.len == self.capacity() || frame.len() > self.slot_len {
            return false;
        }
        let i = (self.head + self.len) % self.capacity();
        let at = i * self.slot_len;
        self.slots[at..at + frame.len()].copy_from_slice(frame);
        self.meta[i] = (due, frame.len());
        self.len += 1;
        true
    }

    fn next_due(&self) -> Option<Instant> {
        (self.len > 0).then(|| self.meta[self.head].0)
    }

    /// The oldest frame if it is due by `now`, removed from the queue.
    fn pop_due(&mut self, now: Instant) -> Option<&[u8]> {
        let (due, len) = *self.meta.get(self.head).filter(|_| self.len > 0)?;
        if due > now {
            return None;
        }
        let at = self.head * self.slot_len;
        self.head = (self.head + 1) % self.capacity();
        self.len -= 1;
        Some(&self.slots[at..at + len])
    }
}

/// One direction of a faulty wire: seeded decisions, the reorder hold queue, the counters.
pub struct FaultLane {
    dice: FaultDice,
    cfg: LaneConfig,
    hold: HoldQueue,
    stats: LaneStats,
    macs: Vec<MacCount>,
}

impl FaultLane {
    /// A lane drawing its decisions from `dice`, with every buffer allocated now
    /// (`hold_frames × frame_len_max` bytes for the hold queue).
    pub fn new(dice: FaultDice, cfg: LaneConfig) -> Result<FaultLane, BadProbability> {
        cfg.faults.check()?;
        Ok(FaultLane {
            dice,
            hold: HoldQueue::new(cfg.hold_frames, cfg.frame_len_max),
            cfg,
            stats: LaneStats::default(),
            macs: Vec::with_capacity(cfg.macs_max),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LaneConfig {
        &self.cfg
    }

    /// Passes one frame received from the wire through the faults: `emit` is called with each
    /// frame to send now (none, one, or two with a duplicate). `frame` may be changed in place
    /// (corruption).
    pub fn offer(&mut self, now: Instant, frame: &mut [u8], emit: &mut dyn FnMut(&[u8])) {
        self.stats.seen += 1;
        self.stats.seen_bytes += frame.len() as u64;
        self.count_source(frame);
        let fate = self.dice.roll(&self.cfg.faults, 0);
        if fate.lost {
            self.stats.dropped += 1;
            return;
        }
        if fate.duplicate {
            // The copy goes first, before the original can be corrupted.
            emit(frame);
            self.stats.duplicated += 1;
            self.stats.forwarded += 1;
        }
        if let Some(bit) = fate.corrupt_bit {
            let flipped = ipv4_packet_mut(frame).is_some_and(|ip| flip_bit(ip, bit));
            if flipped {
                self.stats.corrupted += 1;
            } else {
                self.stats.corrupt_skipped += 1;
            }
        }
        if fate.reorder {
            if self.hold.push(now + self.cfg.reorder_delay, frame) {
                self.stats.reordered += 1;
                self.stats.held += 1;
                return;
            }
            self.stats.reorder_overflow += 1;
        }
        emit(frame);
        self.stats.forwarded += 1;
    }

    /// Hands the held frames that are due by `now` to `emit`, oldest first; returns how many.
    pub fn release(&mut self, now: Instant, emit: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Some(frame) = self.hold.pop_due(now) {
            emit(frame);
            n += 1;
        }
        self.stats.held -= n as u64;
        self.stats.forwarded += n as u64;
        n
    }

    /// When the next held frame is due, if any.
    pub fn next_release(&self) -> Option<Instant> {
        self.hold.next_due()
    }

    /// The counters.
    pub fn stats(&self) -> &LaneStats {
        &self.stats
    }

    /// The counters, for the relay's own additions (truncated, send_failed, kernel_drops).
    pub fn stats_mut(&mut self) -> &mut LaneStats {
        &mut self.stats
    }

    /// Frames and bytes per source MAC address, in order of first appearance.
    pub fn macs(&self) -> &[MacCount] {
        &self.macs
    }

    fn count_source(&mut self, frame: &[u8]) {
        let Some(src) = frame.get(6..12) else {
            self.stats.other_mac_frames += 1;
            return;
        };
        let mut mac = [0u8; 6];
        mac.copy_from_slice(src);
        let len = frame.len() as u64;
        if let Some(c) = self.macs.iter_mut().find(|c| c.mac.0 == mac) {
            c.frames += 1;
            c.bytes += len;
        } else if self.macs.len() < self.cfg.macs_max {
            self.macs.push(MacCount {
                mac: Mac(mac),
                frames: 1,
                bytes: len,
            });
        } else {
            self.stats.other_mac_frames += 1;
        }
    }

    /// Appends this lane's counters to `out` as ` PREFIX.KEY=VALUE` pairs (each with a leading
    /// space), source addresses as ` PREFIX.src.MAC.frames=N PREFIX.src.MAC.bytes=N`.
    pub fn write_kv(&self, prefix: &str, out: &mut String) {
        let s = &self.stats;
        for (key, value) in [
            ("seen", s.seen),
            ("seen_bytes", s.seen_bytes),
            ("forwarded", s.forwarded),
            ("dropped", s.dropped),
            ("duplicated", s.duplicated),
            ("reordered", s.reordered),
            ("reorder_overflow", s.reorder_overflow),
            ("corrupted", s.corrupted),
            ("corrupt_skipped", s.corrupt_skipped),
            ("held", s.held),
            ("other_mac_frames", s.other_mac_frames),
            ("truncated", s.truncated),
            ("send_failed", s.send_failed),
            ("kernel_drops", s.kernel_drops),
        ] {
            let _ = write!(out, " {prefix}.{key}={value}");
        }
        for c in &self.macs {
            let _ = write!(
                out,
                " {prefix}.src.{m}.frames={f} {prefix}.src.{m}.bytes={b}",
                m = c.mac,
                f = c.frames,
                b = c.bytes
            );
        }
    }
}

impl fmt::Debug for FaultLane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultLane")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats)
            .field("macs", &self.macs)
            .finish()
    }
}

/// The relay's report: one line `FAULTWIRE key=value key=value ...`, as written by the relay
/// when it stops, read back into numbers.
///
/// Keys of the two directions start with `l2r.` (left to right) and `r2l.`; see
/// [`FaultLane::write_kv`] for the rest. Non-numeric values (the fault settings) are kept as
/// text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WireReport {
    values: BTreeMap<String, String>,
}

impl WireReport {
    /// The word the report line starts with.
    pub const TAG: &'static str = "FAULTWIRE";

    /// Reads the last report line in `text` (other lines are ignored).
    pub fn parse(text: &str) -> Result<WireReport, String> {
        let line = text
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(Self::TAG))
            .ok_or_else(|| format!("no `{}` line in the relay's report", Self::TAG))?;
        let mut values = BTreeMap::new();
        for kv in line.split_whitespace() {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("{kv:?} in the relay's report is not KEY=VALUE"))?;
            values.insert(k.to_string(), v.to_string());
        }
        Ok(WireReport { values })
    }

    /// The value of `key` as text.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The value of `key` as a number, `None` when absent or not a whole number.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.text(key)?.parse().ok()
    }

    /// The value of `key`, 0 when absent.
    pub fn count(&self, key: &str) -> u64 {
        self.get(key).unwrap_or(0)
    }

    /// Frames sent by `mac`, over both directions.
    pub fn frames_from(&self, mac: Mac) -> u64 {
        ["l2r", "r2l"]
            .iter()
            .map(|d| self.count(&format!("{d}.src.{mac}.frames")))
            .sum()
    }

    /// The counter `key` of both directions added up (e.g. `"dropped"`).
    pub fn total(&self, key: &str) -> u64 {
        self.count(&format!("l2r.{key}")) + self.count(&format!("r2l.{key}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_frame(src: u8, len: usize, id: u16) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xee]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
        let total = (len - ETH_HEADER_LEN) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[18..20].copy_from_slice(&id.to_be_bytes());
        f
    }

    fn id_of(f: &[u8]) -> u16 {
        u16::from_be_bytes([f[18], f[19]])
    }

    fn lane(seed: u64, faults: Faults) -> FaultLane {
        FaultLane::new(
            FaultDice::new(seed),
            LaneConfig {
                faults,
                hold_frames: 8,
                frame_len_max: 2048,
                macs_max: 2,
                ..LaneConfig::default()
            },
        )
        .unwrap()
    }

    /// Offers frames with ids `ids` at `now`, returns the ids emitted.
    fn offer(l: &mut FaultLane, now: Instant, ids: std::ops::Range<u16>) -> Vec<u16> {
        let mut out = Vec::new();
        for id in ids {
            let mut f = ipv4_frame(1, 100, id);
            l.offer(now, &mut f, &mut |e| out.push(id_of(e)));
        }
        out
    }

    #[test]
    fn same_seed_same_fates_and_streams_differ() {
        let f = Faults::standard().with_corrupt(0.2);
        let run = |seed| {
            let mut d = FaultDice::new(seed);
            (0..2000).map(|_| d.roll(&f, 7)).collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        let [mut a, mut b] = FaultDice::pair(3);
        let fa: Vec<_> = (0..64).map(|_| a.roll(&f, 0)).collect();
        let fb: Vec<_> = (0..64).map(|_| b.roll(&f, 0)).collect();
        assert_ne!(fa, fb);
    }

    #[test]
    fn a_lost_frame_gets_no_other_fault_and_draws_are_fixed() {
        let all = Faults {
            loss: 1.0,
            duplicate: 1.0,
            reorder: 1.0,
            corrupt: 1.0,
        };
        let fate = FaultDice::new(1).roll(&all, 0);
        assert!(fate.lost && !fate.duplicate && !fate.reorder && fate.corrupt_bit.is_none());
        // Whatever the probabilities, the n-th roll draws from the same place in the stream.
        let mut x = FaultDice::new(9);
        let mut y = FaultDice::new(9);
        x.roll(&all, 100);
        y.roll(&Faults::none(), 0);
        assert_eq!(x, y);
    }

    #[test]
    fn corruption_stays_inside_the_ipv4_packet() {
        let mut l = lane(5, Faults::none().with_corrupt(1.0));
        for id in 0..500 {
            // 60-byte frame carrying a 40-byte IP packet: 6 bytes of padding.
            let mut f = ipv4_frame(1, 60, id);
            f[16..18].copy_from_slice(&40u16.to_be_bytes());
            let clean = f.clone();
            let mut out = Vec::new();
            l.offer(Instant::ZERO, &mut f, &mut |e| out.push(e.to_vec()));
            let got = &out[0];
            let diff: Vec<usize> = (0..60).filter(|&i| got[i] != clean[i]).collect();
            assert_eq!(diff.len(), 1, "{diff:?}");
            assert!((14..54).contains(&diff[0]), "flipped byte {}", diff[0]);
            assert_eq!((got[diff[0]] ^ clean[diff[0]]).count_ones(), 1);
        }
        assert_eq!(l.stats().corrupted, 500);
        // ARP (no checksum) is never corrupted.
        let mut arp = ipv4_frame(1, 60, 0);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let clean = arp.clone();
        let mut out = Vec::new();
        l.offer(Instant::ZERO, &mut arp, &mut |e| out.push(e.to_vec()));
        assert_eq!(out, vec![clean]);
        assert_eq!(l.stats().corrupt_skipped, 1);
    }

    #[test]
    fn duplicate_copy_is_clean_and_goes_first() {
        let mut l = lane(2, Faults::none().with_duplicate(1.0).with_corrupt(1.0));
        let mut f = ipv4_frame(1, 200, 7);
        let clean = f.clone();
        let mut out = Vec::new();
        l.offer(Instant::ZERO, &mut f, &mut |e| out.push(e.to_vec()));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], clean);
        assert_ne!(out[1], clean);
        let s = l.stats();
        assert_eq!((s.forwarded, s.duplicated, s.corrupted), (2, 1, 1));
    }

    #[test]
    fn reordered_frames_are_overtaken_and_released_when_due() {
        let mut l = lane(1, Faults::none().with_reorder(1.0));
        let t0 = Instant::from_micros(1000);
        assert!(offer(&mut l, t0, 0..1).is_empty());
        assert_eq!(l.next_release(), Some(t0 + Duration::from_micros(100)));
        l.cfg.faults = Faults::none();
        assert_eq!(
            offer(&mut l, t0 + Duration::from_micros(10), 1..3),
            vec![1, 2]
        );
        let mut out = Vec::new();
        assert_eq!(
            l.release(t0 + Duration::from_micros(99), &mut |e| out.push(id_of(e))),
            0
        );
        assert_eq!(
            l.release(t0 + Duration::from_micros(100), &mut |e| out.push(id_of(e))),
            1
        );
        assert_eq!(out, vec![0]);
        assert_eq!(l.next_release(), None);
        let s = l.stats();
        assert_eq!((s.seen, s.forwarded, s.reordered, s.held), (3, 3, 1, 0));
    }

    #[test]
    fn a_full_hold_queue_forwards_at_once() {
        let mut l = lane(1, Faults::none().with_reorder(1.0));
        let out = offer(&mut l, Instant::ZERO, 0..10);
        // 8 slots: frames 8 and 9 go at once.
        assert_eq!(out, vec![8, 9]);
        let s = *l.stats();
        assert_eq!((s.reordered, s.reorder_overflow, s.held), (8, 2, 8));
        let mut rel = Vec::new();
        l.release(Instant::from_millis(1000), &mut |e| rel.push(id_of(e)));
        assert_eq!(rel, (0..8).collect::<Vec<_>>());
        // The ring wraps around.
        let out = offer(&mut l, Instant::from_millis(2000), 10..15);
        assert!(out.is_empty());
        let mut rel = Vec::new();
        l.release(Instant::from_millis(3000), &mut |e| rel.push(id_of(e)));
        assert_eq!(rel, (10..15).collect::<Vec<_>>());
    }

    #[test]
    fn loss_rate_and_accounting() {
        let mut l = lane(11, Faults::standard());
        let mut now = Instant::ZERO;
        let mut emitted = 0u64;
        for round in 0..100u16 {
            emitted += offer(&mut l, now, round * 100..round * 100 + 100).len() as u64;
            now += Duration::from_millis(1);
            emitted += l.release(now, &mut |_| {}) as u64;
        }
        let s = *l.stats();
        assert!((400..600).contains(&s.dropped), "{s:?}");
        assert!((400..600).contains(&s.reordered), "{s:?}");
        assert!((60..150).contains(&s.duplicated), "{s:?}");
        assert_eq!(s.forwarded, emitted);
        assert_eq!(s.seen + s.duplicated, s.forwarded + s.dropped + s.held);
    }

    #[test]
    fn sources_are_counted_up_to_the_bound() {
        let mut l = lane(1, Faults::none());
        for src in [1u8, 2, 1, 3, 1] {
            let mut f = ipv4_frame(src, 100, 0);
            l.offer(Instant::ZERO, &mut f, &mut |_| {});
        }
        let macs = l.macs();
        assert_eq!(macs.len(), 2);
        assert_eq!(
            (macs[0].mac.0[5], macs[0].frames, macs[0].bytes),
            (1, 3, 300)
        );
        assert_eq!((macs[1].mac.0[5], macs[1].frames), (2, 1));
        assert_eq!(l.stats().other_mac_frames, 1);
    }

    #[test]
    fn report_round_trip() {
        let mut l = lane(1, Faults::none().with_loss(0.5));
        for _ in 0..10 {
            let mut f = ipv4_frame(4, 100, 0);
            l.offer(Instant::ZERO, &mut f, &mut |_| {});
        }
        let mut line = format!("{} seed=1 loss=0.5", WireReport::TAG);
        l.write_kv("l2r", &mut line);
        let text = format!("faultwire: stopping\n{line}\n");
        let r = WireReport::parse(&text).unwrap();
        assert_eq!(r.text("loss"), Some("0.5"));
        assert_eq!(r.count("l2r.seen"), 10);
        assert_eq!(r.total("dropped"), l.stats().dropped);
        let mac: Mac = "02:00:00:00:00:04".parse().unwrap();
        assert_eq!(r.frames_from(mac), 10);
        assert_eq!(r.count("l2r.src.02:00:00:00:00:04.bytes"), 1000);
        assert!(WireReport::parse("nothing here").is_err());
        assert!("02:00:00:00:00".parse::<Mac>().is_err());
        assert!("02:00:00:00:00:zz".parse::<Mac>().is_err());
    }

    #[test]
    fn probabilities_are_checked() {
        let bad = Faults::none().with_reorder(1.5);
        assert_eq!(
            bad.check(),
            Err(BadProbability {
                fault: "reorder",
                value: 1.5
            })
        );
        assert!(FaultLane::new(
            FaultDice::new(0),
            LaneConfig {
                faults: bad,
                ..LaneConfig::default()
            }
        )
        .is_err());
        assert!(Faults::none().with_loss(f64::NAN).check().is_err());
    }
}

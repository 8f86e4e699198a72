//! On-demand packet capture from a running [`Stack`](super::Stack): switched on with
//! [`Stack::start_capture`](super::Stack::start_capture), off with [`Stack::stop_capture`](super::Stack::stop_capture), read with `tcpdump -r`.
//!
//! The design, limits and timestamps are described on [`CaptureSpec`], which is what users
//! see (this module is private; its items are re-exported by `crate::stack`).

use std::fmt;

use std::io::{self, Write};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_queue::ArrayQueue;

use crate::dev::pcap::{emit_record_header_snaplen, SNAPLEN};
use crate::dev::{Batch, Frame, PacketDevice};
use crate::time::Instant;

/// Slots of the ring between the polling thread and the writer: frames the writer may be
/// behind by before frames are dropped.
pub const CAPTURE_RING_SLOTS: usize = 1024;
/// The largest `bytes_max` accepted (1 GiB), and the byte limit of a capture limited by packets
/// only.
pub const CAPTURE_BYTES_CEILING: u64 = 1 << 30;
/// The largest `packets_max` accepted (their record headers alone are 160 MB).
pub const CAPTURE_PACKETS_CEILING: u64 = 10_000_000;
/// How long [`Stack::stop_capture`](super::Stack::stop_capture) waits for the writer to write what it holds and close the
/// file.
pub const CAPTURE_STOP_WAIT: Duration = Duration::from_secs(5);

/// How long the writer sleeps when the ring is empty (it is woken sooner when the ring fills).
const WRITER_NAP: Duration = Duration::from_millis(10);
/// The writer's file buffer.
pub(super) const WRITER_BUF: usize = 256 << 10;

/// What to capture, where, and when to stop: the argument of [`Stack::start_capture`](super::Stack::start_capture).
///
/// # What is captured
///
/// Every frame the stack takes from its device, *before* any check (so runts, bad checksums and
/// frames for other hosts are in the file, as tcpdump would show them), and every frame the
/// device accepts for transmission, at the moment it takes it. Each frame is recorded once, in
/// the order the stack handled it. The file is a classic libpcap file (the format of
/// [`crate::dev::pcap`]): microsecond timestamps, link type Ethernet, snap length
/// [`CaptureSpec::snaplen`].
///
/// # The data path never waits
///
/// [`Stack::start_capture`](super::Stack::start_capture) allocates a ring of [`CAPTURE_RING_SLOTS`] slots, each as long as
/// the snap length (or the device's longest frame, if shorter), and starts a writer thread.
/// For each frame, the polling thread takes a free slot from a lock-free queue, copies the frame
/// (up to the snap length) into it and hands it to the writer over a second queue; the writer
/// writes the record through a buffered file and gives the slot back. No allocation, lock or
/// system call per frame. When no slot is free (the writer is behind), the frame is not captured
/// and [`CaptureStatus::dropped`] counts it, like tcpdump's "dropped by kernel". When no capture
/// runs, the hook costs one branch.
///
/// # Timestamps
///
/// Records carry wall-clock time (seconds since the UNIX epoch), as tcpdump users expect: the
/// wall clock is read once at start, and each frame's time is the stack's `now` (the time
/// passed to [`Stack::poll`](super::Stack::poll)) moved by that offset. So the dates are right to within the time
/// since the poll before the start (microseconds in a busy-polling server), intervals between
/// frames are the stack's own, and a virtual-time run shows its virtual intervals from the
/// real start date.
///
/// # Limits
///
/// An on-demand capture must never fill a disk, so one limit at least is required
/// ([`CaptureError::NoLimit`]), and neither may pass a ceiling ([`CAPTURE_PACKETS_CEILING`],
/// [`CAPTURE_BYTES_CEILING`]; a capture limited by packets only also stops at
/// [`CAPTURE_BYTES_CEILING`] bytes). `packets_max` counts records written; `bytes_max` counts
/// the frame bytes written (each record's captured length, after the snap length cut). A frame
/// whose bytes would take the total past `bytes_max` is not written and ends the capture, so
/// the file is exactly `24 + 16 × packets + bytes` long, at most
/// `24 + 16 × packets + bytes_max`. When a limit is reached the capture takes no more frames,
/// the writer writes what it holds and closes the file, and [`CaptureStatus::ended`] says why;
/// the capture stays to be collected by [`Stack::stop_capture`](super::Stack::stop_capture) before another may start.
///
/// # Errors
///
/// The file is created, with mode 0600, and its global header written by
/// [`Stack::start_capture`](super::Stack::start_capture) itself, so a bad path is reported at once and the stack goes on. An
/// existing file is never overwritten ([`CaptureError::Exists`]): the command may run as root.
/// A write error later (disk full) ends the capture with the error in its status; serving goes
/// on.
///
/// ```no_run
/// # use ustack::stack::{CaptureSpec, Stack};
/// # fn f<D: ustack::PacketDevice>(stack: &mut Stack<D>) -> Result<(), Box<dyn std::error::Error>> {
/// let mut spec = CaptureSpec::new("/tmp/x.pcap");
/// spec.packets_max = Some(1000);
/// stack.start_capture(spec)?;
/// // ... keep polling ...
/// if let Some(status) = stack.stop_capture() {
///     println!("{status}");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureSpec {
    /// The pcap file to create; it must not exist.
    pub path: PathBuf,
    /// End after this many frames (records) are written.
    pub packets_max: Option<u64>,
    /// End before the frame bytes written (each record's captured length) would pass this.
    pub bytes_max: Option<u64>,
    /// The most bytes of each frame written, 1 to 65535 (default 65535: whole frames).
    pub snaplen: usize,
}

impl CaptureSpec {
    /// A capture into `path` with no limit yet (set `packets_max` or `bytes_max`: one is
    /// required) and whole frames.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CaptureSpec {
            path: path.into(),
            packets_max: None,
            bytes_max: None,
            snaplen: SNAPLEN,
        }
    }

    /// Checks the limits; returns (packets, bytes) limits to apply.
    pub(super) fn limits(&self) -> Result<(u64, u64), CaptureError> {
        if self.snaplen == 0 || self.snaplen > SNAPLEN {
            return Err(CaptureError::Snaplen {
                snaplen: self.snaplen,
            });
        }
        if self.packets_max.is_none() && self.bytes_max.is_none() {
            return Err(CaptureError::NoLimit);
        }
        for (what, limit, ceiling) in [
            ("packets_max", self.packets_max, CAPTURE_PACKETS_CEILING),
            ("bytes_max", self.bytes_max, CAPTURE_BYTES_CEILING),
        ] {
            match limit {
                Some(0) => return Err(CaptureError::ZeroLimit { what }),
                Some(asked) if asked > ceiling => {
                    return Err(CaptureError::LimitTooLarge {
                        what,
                        asked,
                        ceiling,
                    })
                }
                _ => {}
            }
        }
        Ok((
            self.packets_max.unwrap_or(u64::MAX),
            self.bytes_max.unwrap_or(CAPTURE_BYTES_CEILING),
        ))
    }
}

/// Why a capture ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureEnd {
    /// `packets_max` records were written.
    PacketLimit,
    /// The next frame would have taken the bytes written past `bytes_max` (or the ceiling).
    ByteLimit,
    /// [`Stack::stop_capture`](super::Stack::stop_capture) stopped it (or the stack was dropped).
    Stopped,
    /// Writing the file failed (the message names the file and the OS error); the records
    /// before the error are in the file.
    WriteError(String),
}

impl fmt::Display for CaptureEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureEnd::PacketLimit => f.write_str("packet limit reached"),
            CaptureEnd::ByteLimit => f.write_str("byte limit reached"),
            CaptureEnd::Stopped => f.write_str("stopped"),
            CaptureEnd::WriteError(e) => write!(f, "write error: {e}"),
        }
    }
}

/// Where a capture stands.
#[derive(Clone, Debug)]
pub struct CaptureStatus {
    /// The file.
    pub path: PathBuf,
    /// Frames written (records); final once `running` is false.
    pub packets: u64,
    /// Frame bytes written (the sum of the records' captured lengths; the file is
    /// `24 + 16 × packets + bytes` bytes long).
    pub bytes: u64,
    /// Frames not captured because the writer was behind (every slot of the ring was full).
    pub dropped: u64,
    /// The writer has not closed the file yet. Still true after [`Stack::stop_capture`](super::Stack::stop_capture) only if
    /// the writer did not finish within [`CAPTURE_STOP_WAIT`] (it finishes in the background).
    pub running: bool,
    /// Why it ended, once the file is closed.
    pub ended: Option<CaptureEnd>,
}

impl fmt::Display for CaptureStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "capture to {}: {} packets, {} bytes of frames written, {} dropped (writer behind)",
            self.path.display(),
            self.packets,
            self.bytes,
            self.dropped
        )?;
        match (&self.ended, self.running) {
            (Some(end), _) => write!(f, "; ended: {end}"),
            (None, true) => f.write_str("; running"),
            (None, false) => f.write_str("; ended"),
        }
    }
}

/// Errors from [`Stack::start_capture`](super::Stack::start_capture). Nothing was started, and the stack goes on.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Neither `packets_max` nor `bytes_max` was given.
    #[error(
        "a capture needs a limit so it cannot fill the disk: give packets_max (e.g. 1000), \
         bytes_max (e.g. 100000000, at most {CAPTURE_BYTES_CEILING}) or both; it ends by itself \
         when one is reached"
    )]
    NoLimit,
    /// A limit of zero.
    #[error("{what} = 0 would capture nothing: give a positive limit")]
    ZeroLimit {
        /// `packets_max` or `bytes_max`.
        what: &'static str,
    },
    /// A limit over its ceiling.
    #[error(
        "{what} = {asked} is over the ceiling of {ceiling} for an on-demand capture: ask for \
         less (or capture several files one after the other)"
    )]
    LimitTooLarge {
        /// `packets_max` or `bytes_max`.
        what: &'static str,
        /// The limit asked for.
        asked: u64,
        /// The largest accepted.
        ceiling: u64,
    },
    /// A snap length of 0 or over 65535.
    #[error("snaplen {snaplen} is out of range: give 1 to 65535 bytes per frame")]
    Snaplen {
        /// The snap length asked for.
        snaplen: usize,
    },
    /// A capture is running.
    #[error(
        "a capture to {} is already running: stop it first, then start the new one",
        path.display()
    )]
    AlreadyRunning {
        /// Its file.
        path: PathBuf,
    },
    /// A capture ended by itself and was not collected.
    #[error(
        "the capture to {} ended ({end}) and was not collected: stop it to read its final \
         status, then start the new one",
        path.display()
    )]
    NotCollected {
        /// Its file.
        path: PathBuf,
        /// Why it ended.
        end: CaptureEnd,
    },
    /// The file exists.
    #[error(
        "refusing to overwrite {}: the file exists; choose a new name or remove the old file",
        path.display()
    )]
    Exists {
        /// The path tried.
        path: PathBuf,
    },
    /// The file could not be created.
    #[error(
        "cannot create capture file {}: {source}; check that the directory exists and that this \
         process may write there",
        path.display()
    )]
    Create {
        /// The path tried.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The global header could not be written.
    #[error(
        "cannot write the pcap header to {}: {source}; the file was removed (is the disk full?)",
        path.display()
    )]
    Header {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The writer thread could not be started.
    #[error(
        "cannot start the capture writer thread: {source}; the file {} was removed (the \
         process may be at its thread limit; try again later)",
        path.display()
    )]
    Thread {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Offers `batch` to `dev`, through the capture if one is set.
#[inline]
pub(crate) fn tx_burst<D: PacketDevice>(
    dev: &mut D,
    batch: &mut Batch<D::Frame>,
    now: Instant,
    capture: &mut Option<Box<Tap>>,
) -> usize {
    match capture {
        None => dev.tx_burst(now, batch),
        Some(tap) => tap.tx_burst(dev, batch, now),
    }
}

pub(super) fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), "cannot remove the failed capture file: {e}");
    }
}

/// One frame in the ring: its captured bytes, and what its record header needs.
struct Slot {
    data: Box<[u8]>,
    /// Bytes of `data` captured.
    len: usize,
    /// The frame's length on the wire.
    orig: usize,
    /// Wall-clock microseconds since the UNIX epoch.
    ts_us: u64,
}

impl Slot {
    #[inline]
    fn fill(&mut self, ts_us: u64, frame: &[u8]) {
        let n = frame.len().min(self.data.len());
        self.data[..n].copy_from_slice(&frame[..n]);
        self.len = n;
        self.orig = frame.len();
        self.ts_us = ts_us;
    }
}

/// `Shared::closing` values: why the stack stopped handing frames to the writer.
const FEEDING: u8 = 0;
const CLOSED_PACKETS: u8 = 1;
const CLOSED_BYTES: u8 = 2;
const CLOSED_STOPPED: u8 = 3;

/// What the polling thread and the writer share.
struct Shared {
    /// Filled slots, oldest first: polling thread -> writer.
    full: ArrayQueue<Slot>,
    /// Empty slots: writer -> polling thread.
    free: ArrayQueue<Slot>,
    /// `FEEDING`, or why no more slots will come (set after the last push).
    closing: AtomicU8,
    /// Records and frame bytes written (by the writer).
    packets: AtomicU64,
    bytes: AtomicU64,
    /// The writer sleeps and wants a wake-up when the ring fills.
    napping: AtomicBool,
    /// The writer is done and the file closed (`end` is set).
    done: AtomicBool,
    end: Mutex<Option<CaptureEnd>>,
}

impl Shared {
    fn end(&self) -> Option<CaptureEnd> {
        self.end.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn finish(&self, end: CaptureEnd) {
        *self.end.lock().unwrap_or_else(|e| e.into_inner()) = Some(end);
        self.done.store(true, Ordering::Release);
    }
}

/// The polling thread's side of a capture, held by the adapter's `Io`.
pub(crate) struct Tap {
    shared: Arc<Shared>,
    writer: Thread,
    handle: Option<JoinHandle<()>>,
    path: PathBuf,
    /// Frames are being taken (false once a limit is reached, the writer failed, or stopped).
    feeding: bool,
    /// Wall-clock microseconds minus the stack's microseconds, at start.
    wall_offset_us: i64,
    packets_max: u64,
    bytes_max: u64,
    taken_packets: u64,
    taken_bytes: u64,
    dropped: u64,
    /// Wake a napping writer when this many slots are full.
    wake_at: usize,
    /// Slots holding copies of the frames offered to the device, until it says how many it
    /// took (capacity: the device's burst).
    staged: Vec<Option<Slot>>,
}

impl Tap {
    pub(super) fn start<W: Write + Send + 'static>(
        path: PathBuf,
        packets_max: u64,
        bytes_max: u64,
        slot_len: usize,
        burst_max: usize,
        now: Instant,
        out: W,
    ) -> io::Result<Tap> {
        let free = ArrayQueue::new(CAPTURE_RING_SLOTS);
        for _ in 0..CAPTURE_RING_SLOTS {
            let slot = Slot {
                data: vec![0; slot_len].into_boxed_slice(),
                len: 0,
                orig: 0,
                ts_us: 0,
            };
            // Cannot fail: the queue holds exactly this many.
            let _ = free.push(slot);
        }
        let shared = Arc::new(Shared {
            full: ArrayQueue::new(CAPTURE_RING_SLOTS),
            free,
            closing: AtomicU8::new(FEEDING),
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            napping: AtomicBool::new(false),
            done: AtomicBool::new(false),
            end: Mutex::new(None),
        });
        let wall_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let now_us = i64::try_from(now.as_micros()).unwrap_or(i64::MAX);
        let handle = {
            let shared = shared.clone();
            let path = path.clone();
            std::thread::Builder::new()
                .name("ustack-capture".into())
                .spawn(move || write_records(&shared, out, &path))?
        };
        Ok(Tap {
            shared,
            writer: handle.thread().clone(),
            handle: Some(handle),
            path,
            feeding: true,
            wall_offset_us: wall_us.saturating_sub(now_us),
            packets_max,
            bytes_max,
            taken_packets: 0,
            taken_bytes: 0,
            dropped: 0,
            wake_at: CAPTURE_RING_SLOTS / 4,
            staged: Vec::with_capacity(burst_max),
        })
    }

    /// Whether frames are still taken; notices a writer that gave up (write error).
    #[inline]
    fn feeding(&mut self) -> bool {
        if self.feeding && self.shared.done.load(Ordering::Relaxed) {
            self.feeding = false;
        }
        self.feeding
    }

    #[inline]
    fn wall_us(&self, now: Instant) -> u64 {
        now.as_micros().saturating_add_signed(self.wall_offset_us)
    }

    /// Captures a frame received from the device.
    #[inline]
    pub(crate) fn received(&mut self, now: Instant, frame: &[u8]) {
        if !self.feeding() {
            return;
        }
        let Some(mut slot) = self.shared.free.pop() else {
            self.dropped += 1;
            return;
        };
        slot.fill(self.wall_us(now), frame);
        self.hand_over(slot);
    }

    /// Offers `batch` to the device, capturing the frames it takes.
    pub(crate) fn tx_burst<D: PacketDevice>(
        &mut self,
        dev: &mut D,
        batch: &mut Batch<D::Frame>,
        now: Instant,
    ) -> usize {
        if !self.feeding() {
            return dev.tx_burst(now, batch);
        }
        // The frames the device takes may be gone when it returns: copy the ones it may take
        // (it takes from the front, at most its burst) and keep the copies of those it took.
        let ts = self.wall_us(now);
        let mut staged = std::mem::take(&mut self.staged);
        for frame in batch.iter().take(staged.capacity()) {
            let slot = self.shared.free.pop().map(|mut s| {
                s.fill(ts, frame.data());
                s
            });
            staged.push(slot);
        }
        let offered = staged.len();
        let taken = dev.tx_burst(now, batch);
        for (i, slot) in staged.drain(..).enumerate() {
            match slot {
                Some(slot) if i < taken && self.feeding => self.hand_over(slot),
                Some(slot) => self.recycle(slot),
                None if i < taken && self.feeding => self.dropped += 1,
                None => {}
            }
        }
        self.staged = staged;
        if taken > offered && self.feeding {
            // More than its burst: a device breaking its contract; the extra frames were not
            // copied.
            self.dropped += (taken - offered) as u64;
        }
        taken
    }

    /// Gives a filled slot to the writer, applying the limits.
    #[inline]
    fn hand_over(&mut self, slot: Slot) {
        let len = slot.len as u64;
        if self.taken_bytes + len > self.bytes_max {
            self.recycle(slot);
            self.close(CLOSED_BYTES);
            return;
        }
        if let Err(slot) = self.shared.full.push(slot) {
            // Cannot happen (there are as many places as slots); keep the slot.
            self.recycle(slot);
            self.dropped += 1;
            return;
        }
        self.taken_packets += 1;
        self.taken_bytes += len;
        if self.taken_packets >= self.packets_max {
            self.close(CLOSED_PACKETS);
        } else if self.taken_bytes >= self.bytes_max {
            self.close(CLOSED_BYTES);
        } else if self.shared.full.len() >= self.wake_at
            && self.shared.napping.load(Ordering::Relaxed)
            && self.shared.napping.swap(false, Ordering::Relaxed)
        {
            self.writer.unpark();
        }
    }

    #[inline]
    fn recycle(&self, slot: Slot) {
        // Cannot fail: there are as many places as slots.
        let _ = self.shared.free.push(slot);
    }

    /// No more frames: tells the writer to write what it holds and close the file.
    fn close(&mut self, why: u8) {
        self.feeding = false;
        // The first reason stays (a limit reached before the stop).
        let _ = self.shared.closing.compare_exchange(
            FEEDING,
            why,
            Ordering::Release,
            Ordering::Relaxed,
        );
        self.writer.unpark();
    }

    pub(super) fn status(&self) -> CaptureStatus {
        let done = self.shared.done.load(Ordering::Acquire);
        CaptureStatus {
            path: self.path.clone(),
            packets: self.shared.packets.load(Ordering::Relaxed),
            bytes: self.shared.bytes.load(Ordering::Relaxed),
            dropped: self.dropped,
            running: !done,
            ended: if done { self.shared.end() } else { None },
        }
    }

    /// Closes the capture and waits (bounded) for the writer to finish.
    pub(super) fn stop(&mut self) -> CaptureStatus {
        self.close(CLOSED_STOPPED);
        if let Some(handle) = self.handle.take() {
            let deadline = std::time::Instant::now() + CAPTURE_STOP_WAIT;
            while !handle.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if handle.is_finished() {
                if handle.join().is_err() {
                    self.shared.finish(CaptureEnd::WriteError(format!(
                        "the writer of {} panicked; the file may be incomplete",
                        self.path.display()
                    )));
                }
            } else {
                tracing::warn!(
                    path = %self.path.display(),
                    "the capture writer did not finish within {CAPTURE_STOP_WAIT:?}; it goes on \
                     in the background"
                );
            }
        }
        self.status()
    }
}

impl Drop for Tap {
    /// A stack dropped while capturing: the writer finishes the file in the background.
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.close(CLOSED_STOPPED);
        }
    }
}

/// The writer thread: writes records until the stack closes the capture, then closes the file
/// and publishes why it ended.
fn write_records<W: Write>(shared: &Shared, out: W, path: &Path) {
    let end = match write_loop(shared, out) {
        Ok(CLOSED_PACKETS) => CaptureEnd::PacketLimit,
        Ok(CLOSED_BYTES) => CaptureEnd::ByteLimit,
        Ok(_) => CaptureEnd::Stopped,
        Err(e) => {
            let msg = format!("writing {}: {e}", path.display());
            tracing::warn!("packet capture ended: {msg}; the stack goes on");
            CaptureEnd::WriteError(msg)
        }
    };
    shared.finish(end);
}

/// Writes the records handed over until the capture is closed; returns why it was closed.
/// The file is closed when `out` drops, on return.
fn write_loop<W: Write>(shared: &Shared, mut out: W) -> io::Result<u8> {
    let mut unflushed = false;
    loop {
        // Read before draining: every slot pushed before the close is then drained below.
        let closing = shared.closing.load(Ordering::Acquire);
        let mut wrote = false;
        while let Some(slot) = shared.full.pop() {
            let header =
                emit_record_header_snaplen(Instant::from_micros(slot.ts_us), slot.orig, slot.len);
            let result = out
                .write_all(&header)
                .and_then(|()| out.write_all(&slot.data[..slot.len]));
            let len = slot.len as u64;
            let _ = shared.free.push(slot);
            result?;
            shared.packets.fetch_add(1, Ordering::Relaxed);
            shared.bytes.fetch_add(len, Ordering::Relaxed);
            wrote = true;
        }
        if closing != FEEDING {
            out.flush()?;
            return Ok(closing);
        }
        if wrote {
            unflushed = true;
            continue;
        }
        // Idle: make what was written visible to readers of the file, then nap.
        if unflushed {
            out.flush()?;
            unflushed = false;
        }
        shared.napping.store(true, Ordering::SeqCst);
        if shared.full.is_empty() && shared.closing.load(Ordering::Acquire) == FEEDING {
            std::thread::park_timeout(WRITER_NAP);
        }
        shared.napping.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;

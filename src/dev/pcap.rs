//! Packet capture: a classic libpcap file writer ([`PcapWriter`]) and a device wrapper that
//! records every frame a device receives or sends ([`PcapDevice`]).
//!
//! Files use the original libpcap format that every tool reads (`tcpdump -r`, Wireshark):
//! magic `0xa1b2c3d4` (microsecond timestamps), version 2.4, snap length 65535, link type
//! Ethernet (1), all fields little-endian. Timestamps are the [`Instant`]s the caller passes to
//! the device, so a capture of a virtual-time run shows virtual time (seconds since zero).
//!
//! Capturing is a debugging aid and never breaks the data path: the first I/O error is logged
//! once (`tracing::warn`) and capturing stops; frames keep flowing.
//!
//! [`PcapDevice`] is chosen when the device is built and writes from the polling thread, so it
//! suits tests and tools. To capture from a server that is already running, switched on and
//! off on demand (bounded, written by a thread of its own, timestamped with the wall clock), use
//! [`Stack::start_capture`](crate::stack::Stack::start_capture) and
//! [`Stack::stop_capture`](crate::stack::Stack::stop_capture) (see [`crate::stack::CaptureSpec`]);
//! both write this same file format.
//!
//! ```no_run
//! use ustack::dev::pcap::PcapDevice;
//! use ustack::dev::sim::{SimConfig, SimLink};
//!
//! let (_link, a, _b) = SimLink::new(SimConfig::default())?;
//! let mut a = PcapDevice::create(a, "/tmp/port-a.pcap")?;
//! // ... use `a` as any PacketDevice ...
//! a.flush()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dev::{Batch, DeviceCaps, Frame, LinkStats, PacketDevice};
use crate::time::Instant;

/// Magic number of a classic pcap file with microsecond timestamps.
pub const PCAP_MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// Link type of Ethernet frames (`LINKTYPE_ETHERNET`).
pub const LINKTYPE_ETHERNET: u32 = 1;
/// The most bytes of one frame written to the file; longer frames are cut (their original
/// length is kept in the record header).
pub const SNAPLEN: usize = 65535;
/// Length of the file's global header.
pub const GLOBAL_HEADER_LEN: usize = 24;
/// Length of the header in front of each record.
pub const RECORD_HEADER_LEN: usize = 16;

/// The global header of a file: magic, version 2.4, zone 0, sigfigs 0, snaplen, link type.
pub fn emit_global_header() -> [u8; GLOBAL_HEADER_LEN] {
    emit_global_header_snaplen(SNAPLEN as u32)
}

/// The global header of a file whose records are cut to `snaplen` bytes.
pub fn emit_global_header_snaplen(snaplen: u32) -> [u8; GLOBAL_HEADER_LEN] {
    let mut h = [0u8; GLOBAL_HEADER_LEN];
    h[0..4].copy_from_slice(&PCAP_MAGIC_MICROS.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    // 8..12 thiszone = 0, 12..16 sigfigs = 0.
    h[16..20].copy_from_slice(&snaplen.to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    h
}

/// The header of one record for a frame of `frame_len` bytes captured at `ts`: seconds,
/// microseconds, captured length (at most [`SNAPLEN`]), original length.
pub fn emit_record_header(ts: Instant, frame_len: usize) -> [u8; RECORD_HEADER_LEN] {
    emit_record_header_snaplen(ts, frame_len, SNAPLEN)
}

/// The header of one record for a frame of `frame_len` bytes captured at `ts`, of which the
/// first `frame_len.min(snaplen)` are written.
pub fn emit_record_header_snaplen(
    ts: Instant,
    frame_len: usize,
    snaplen: usize,
) -> [u8; RECORD_HEADER_LEN] {
    let micros = ts.as_micros();
    // Seconds wrap after 136 years of uptime; the format has 32 bits.
    let secs = (micros / 1_000_000) as u32;
    let usecs = (micros % 1_000_000) as u32;
    let orig = u32::try_from(frame_len).unwrap_or(u32::MAX);
    let incl = u32::try_from(frame_len.min(snaplen)).unwrap_or(u32::MAX);
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&secs.to_le_bytes());
    h[4..8].copy_from_slice(&usecs.to_le_bytes());
    h[8..12].copy_from_slice(&incl.to_le_bytes());
    h[12..16].copy_from_slice(&orig.to_le_bytes());
    h
}

/// Errors from starting a capture.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// The capture file could not be created.
    #[error(
        "cannot create pcap file {path}: {source}; check that the directory exists and is writable"
    )]
    Create {
        /// The path tried.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The global header could not be written.
    #[error("cannot write the pcap global header: {source}")]
    Header {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Writes frames to a classic pcap stream.
pub struct PcapWriter<W: Write> {
    out: W,
    records: u64,
}

impl<W: Write> PcapWriter<W> {
    /// Starts a capture on `out`, writing the global header.
    pub fn new(mut out: W) -> Result<PcapWriter<W>, PcapError> {
        out.write_all(&emit_global_header())
            .map_err(|source| PcapError::Header { source })?;
        Ok(PcapWriter { out, records: 0 })
    }

    /// Appends one frame captured at `ts` (cut to [`SNAPLEN`] bytes).
    pub fn write_frame(&mut self, ts: Instant, frame: &[u8]) -> io::Result<()> {
        self.out.write_all(&emit_record_header(ts, frame.len()))?;
        self.out.write_all(&frame[..frame.len().min(SNAPLEN)])?;
        self.records += 1;
        Ok(())
    }

    /// Appends `count` records already encoded (headers and data) in `bytes`.
    fn write_encoded(&mut self, bytes: &[u8], count: usize) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.records += count as u64;
        Ok(())
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// The underlying writer, mutably (writing to it directly breaks the file).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// The underlying writer (not flushed).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Wraps a [`PacketDevice`] and records every frame it receives and every frame it accepts
/// for transmission, each exactly once, in the order the device handled them.
///
/// Received frames are recorded after the inner `rx_burst` appended them. For transmission,
/// `tx_burst` may leave frames in the batch to be offered again, and the frames it took may be
/// gone (sent, freed) when it returns. So the wrapper encodes the records of the frames it is
/// about to offer — the first `min(batch.len(), burst_max)` — into a scratch buffer sized at
/// construction (`burst_max` full frames), calls the inner device, and writes only the first
/// `n` records, `n` being what the device took. Frames left in the batch are encoded again at
/// their next offer and written once, when taken. A device that takes more than its
/// `burst_max` frames breaks its contract; the extra frames are not recorded and are counted in
/// [`PcapDevice::frames_uncaptured`] (with one warning).
///
/// The wrapper is transparent otherwise: caps, allocation, stats, link state and wait all come
/// from the inner device.
pub struct PcapDevice<D: PacketDevice, W: Write> {
    inner: D,
    writer: PcapWriter<W>,
    capturing: bool,
    burst_max: usize,
    staged: Vec<u8>,
    staged_ends: Vec<usize>,
    uncaptured: u64,
}

impl<D: PacketDevice> PcapDevice<D, BufWriter<File>> {
    /// Captures `inner`'s frames into a new file at `path` (truncated if it exists), through a
    /// buffer: call [`PcapDevice::flush`] to see the latest frames in the file.
    pub fn create(
        inner: D,
        path: impl AsRef<Path>,
    ) -> Result<PcapDevice<D, BufWriter<File>>, PcapError> {
        let path = path.as_ref();
        let file = File::create(path).map_err(|source| PcapError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        PcapDevice::new(inner, BufWriter::with_capacity(256 << 10, file))
    }
}

impl<D: PacketDevice, W: Write> PcapDevice<D, W> {
    /// Captures `inner`'s frames into `out`, writing the global header now.
    pub fn new(inner: D, out: W) -> Result<PcapDevice<D, W>, PcapError> {
        Ok(PcapDevice::with_writer(inner, PcapWriter::new(out)?))
    }

    /// Captures `inner`'s frames into an existing writer (which may already hold records).
    pub fn with_writer(inner: D, writer: PcapWriter<W>) -> PcapDevice<D, W> {
        let caps = inner.caps();
        let burst_max = caps.burst_max.max(1);
        let record_max = RECORD_HEADER_LEN + caps.frame_len_max().min(SNAPLEN);
        PcapDevice {
            inner,
            writer,
            capturing: true,
            burst_max,
            staged: Vec::with_capacity(burst_max * record_max),
            staged_ends: Vec::with_capacity(burst_max),
            uncaptured: 0,
        }
    }

    /// The wrapped device.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The wrapped device, mutably. Frames moved through it directly are not recorded.
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    /// Flushes the capture (errors are logged) and returns the wrapped device.
    pub fn into_inner(mut self) -> D {
        let _ = self.flush();
        self.inner
    }

    /// The wrapped device and the writer, not flushed.
    pub fn into_parts(self) -> (D, PcapWriter<W>) {
        (self.inner, self.writer)
    }

    /// The writer.
    pub fn writer(&self) -> &PcapWriter<W> {
        &self.writer
    }

    /// False once an I/O error stopped the capture.
    pub fn is_capturing(&self) -> bool {
        self.capturing
    }

    /// Frames recorded so far.
    pub fn frames_captured(&self) -> u64 {
        self.writer.records()
    }

    /// Frames a misbehaving inner device sent beyond its `burst_max`, which could not be
    /// recorded.
    pub fn frames_uncaptured(&self) -> u64 {
        self.uncaptured
    }

    /// Flushes the writer. An error also stops the capture (it is returned and logged).
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.capturing {
            return Ok(());
        }
        self.writer.flush().inspect_err(|e| self.stop(e))
    }

    fn stop(&mut self, e: &io::Error) {
        if self.capturing {
            self.capturing = false;
            tracing::warn!(
                error = %e,
                records = self.writer.records(),
                "pcap capture stopped after an I/O error; the device keeps running"
            );
        }
    }
}

impl<D: PacketDevice, W: Write> PacketDevice for PcapDevice<D, W> {
    type Frame = D::Frame;

    fn mac_addr(&self) -> Option<[u8; 6]> {
        self.inner.mac_addr()
    }

    fn caps(&self) -> DeviceCaps {
        self.inner.caps()
    }

    fn rx_burst(&mut self, now: Instant, batch: &mut Batch<D::Frame>) -> usize {
        let before = batch.len();
        let n = self.inner.rx_burst(now, batch);
        if self.capturing && n > 0 {
            let mut result = Ok(());
            for frame in batch.iter().skip(before) {
                result = self.writer.write_frame(now, frame.data());
                if result.is_err() {
                    break;
                }
            }
            if let Err(e) = result {
                self.stop(&e);
            }
        }
        n
    }

    fn tx_alloc(&mut self) -> Option<D::Frame> {
        self.inner.tx_alloc()
    }

    fn tx_burst(&mut self, now: Instant, batch: &mut Batch<D::Frame>) -> usize {
        if !self.capturing {
            return self.inner.tx_burst(now, batch);
        }
        self.staged.clear();
        self.staged_ends.clear();
        for frame in batch.iter().take(self.burst_max) {
            let data = frame.data();
            self.staged
                .extend_from_slice(&emit_record_header(now, data.len()));
            self.staged
                .extend_from_slice(&data[..data.len().min(SNAPLEN)]);
            self.staged_ends.push(self.staged.len());
        }
        let n = self.inner.tx_burst(now, batch);
        let recorded = n.min(self.staged_ends.len());
        if recorded > 0 {
            let end = self.staged_ends[recorded - 1];
            if let Err(e) = self.writer.write_encoded(&self.staged[..end], recorded) {
                self.stop(&e);
            }
        }
        if n > recorded {
            if self.uncaptured == 0 {
                tracing::warn!(
                    taken = n,
                    burst_max = self.burst_max,
                    "device took more frames than its burst_max; the extra ones are not captured"
                );
            }
            self.uncaptured += (n - recorded) as u64;
        }
        n
    }

    fn stats(&self) -> LinkStats {
        self.inner.stats()
    }

    fn link_up(&self) -> bool {
        self.inner.link_up()
    }

    fn link_problem(&self) -> Option<String> {
        self.inner.link_problem()
    }

    fn wait(&mut self, timeout: Duration) {
        self.inner.wait(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::sim::{SimConfig, SimLink};
    use crate::mem::{BufPool, PageSize, PoolBuf};
    use std::collections::VecDeque;

    /// One parsed record: (seconds, microseconds, original length, data).
    type Record = (u32, u32, u32, Vec<u8>);

    /// A minimal reader of what PcapWriter writes: checks the global header, returns records.
    fn parse(bytes: &[u8]) -> Vec<Record> {
        let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let u16_at = |b: &[u8], at: usize| u16::from_le_bytes(b[at..at + 2].try_into().unwrap());
        assert!(bytes.len() >= GLOBAL_HEADER_LEN, "no global header");
        assert_eq!(u32_at(bytes, 0), 0xa1b2_c3d4);
        assert_eq!((u16_at(bytes, 4), u16_at(bytes, 6)), (2, 4));
        assert_eq!(u32_at(bytes, 16), 65535);
        assert_eq!(u32_at(bytes, 20), 1);
        let mut out = Vec::new();
        let mut at = GLOBAL_HEADER_LEN;
        while at < bytes.len() {
            assert!(
                bytes.len() - at >= RECORD_HEADER_LEN,
                "truncated record header"
            );
            let (secs, usecs) = (u32_at(bytes, at), u32_at(bytes, at + 4));
            let (incl, orig) = (u32_at(bytes, at + 8) as usize, u32_at(bytes, at + 12));
            assert!(usecs < 1_000_000);
            assert!(incl <= orig as usize && incl <= SNAPLEN);
            at += RECORD_HEADER_LEN;
            assert!(bytes.len() - at >= incl, "truncated record data");
            out.push((secs, usecs, orig, bytes[at..at + incl].to_vec()));
            at += incl;
        }
        out
    }

    fn pattern(id: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7) ^ id).collect()
    }

    #[test]
    fn writer_output_parses_back() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.write_frame(Instant::from_micros(3_000_042), &pattern(1, 60))
            .unwrap();
        w.write_frame(Instant::ZERO, &[]).unwrap();
        let big = pattern(2, SNAPLEN + 10);
        w.write_frame(Instant::from_micros(999_999), &big).unwrap();
        assert_eq!(w.records(), 3);
        let recs = parse(&w.into_inner());
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0], (3, 42, 60, pattern(1, 60)));
        assert_eq!(recs[1], (0, 0, 0, vec![]));
        assert_eq!(
            (recs[2].0, recs[2].1, recs[2].2),
            (0, 999_999, SNAPLEN as u32 + 10)
        );
        assert_eq!(recs[2].3, big[..SNAPLEN]);
    }

    /// A device that accepts at most `accept` frames per tx_burst and receives what the test
    /// queues in `rx`.
    struct Partial {
        pool: BufPool,
        accept: usize,
        sent: Vec<Vec<u8>>,
        rx: VecDeque<PoolBuf>,
        burst_max: usize,
    }

    impl Partial {
        fn new(accept: usize, burst_max: usize) -> Partial {
            Partial {
                pool: BufPool::with_capacity(64, 2048, 128, PageSize::Base4K).unwrap(),
                accept,
                sent: Vec::new(),
                rx: VecDeque::new(),
                burst_max,
            }
        }
        fn frame(&self, id: u8, len: usize) -> PoolBuf {
            let mut f = self.pool.alloc().unwrap();
            assert!(f.set_len(len));
            f.as_mut_slice().copy_from_slice(&pattern(id, len));
            f
        }
    }

    impl PacketDevice for Partial {
        type Frame = PoolBuf;
        fn caps(&self) -> DeviceCaps {
            DeviceCaps {
                mtu: 1500,
                burst_max: self.burst_max,
                checksum: Default::default(),
            }
        }
        fn rx_burst(&mut self, _now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
            let mut n = 0;
            while !batch.is_full() {
                let Some(f) = self.rx.pop_front() else { break };
                batch.push(f).unwrap();
                n += 1;
            }
            n
        }
        fn tx_alloc(&mut self) -> Option<PoolBuf> {
            self.pool.alloc()
        }
        fn tx_burst(&mut self, _now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
            let mut n = 0;
            while n < self.accept {
                let Some(f) = batch.pop() else { break };
                self.sent.push(f.data().to_vec());
                n += 1;
            }
            n
        }
        fn stats(&self) -> LinkStats {
            LinkStats::default()
        }
    }

    #[test]
    fn partial_tx_records_each_frame_once_and_rx_only_new_frames() {
        let inner = Partial::new(2, 4);
        let mut dev = PcapDevice::new(inner, Vec::new()).unwrap();
        let mut batch = Batch::with_capacity(8);
        for id in 0..5 {
            let f = dev.inner().frame(id, 60 + id as usize);
            batch.push(f).unwrap();
        }
        let mut t = Instant::from_micros(10);
        while !batch.is_empty() {
            let n = dev.tx_burst(t, &mut batch);
            assert!(n <= 2);
            t += Duration::from_micros(1);
        }
        assert_eq!(dev.frames_captured(), 5);
        // Receive with a frame already in the batch: it must not be recorded.
        let mut rx = Batch::with_capacity(8);
        rx.push(dev.inner().frame(100, 64)).unwrap();
        let f = dev.inner().frame(7, 70);
        dev.inner_mut().rx.push_back(f);
        assert_eq!(dev.rx_burst(Instant::from_millis(2), &mut rx), 1);
        assert_eq!(rx.len(), 2);
        let (inner, writer) = dev.into_parts();
        let recs = parse(&writer.into_inner());
        assert_eq!(recs.len(), 6);
        let want: Vec<Vec<u8>> = (0..5).map(|id| pattern(id, 60 + id as usize)).collect();
        let got: Vec<Vec<u8>> = recs[..5].iter().map(|r| r.3.clone()).collect();
        assert_eq!(got, want);
        assert_eq!(inner.sent, want);
        // Frames 0,1 at 10 us, 2,3 at 11 us, 4 at 12 us.
        let times: Vec<u32> = recs[..5].iter().map(|r| r.1).collect();
        assert_eq!(times, vec![10, 10, 11, 11, 12]);
        assert_eq!(recs[5], (0, 2000, 70, pattern(7, 70)));
    }

    #[test]
    fn device_beyond_burst_max_is_counted_not_recorded() {
        let inner = Partial::new(8, 2); // takes 8 but says burst_max 2
        let mut dev = PcapDevice::new(inner, Vec::new()).unwrap();
        let mut batch = Batch::with_capacity(8);
        for id in 0..5 {
            batch.push(dev.inner().frame(id, 60)).unwrap();
        }
        assert_eq!(dev.tx_burst(Instant::ZERO, &mut batch), 5);
        assert_eq!((dev.frames_captured(), dev.frames_uncaptured()), (2, 3));
    }

    /// A writer that fails after `ok_bytes` bytes.
    struct Failing {
        ok_bytes: usize,
        written: usize,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.written + buf.len() > self.ok_bytes {
                return Err(io::Error::other("disk full"));
            }
            self.written += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn io_error_stops_capture_but_not_the_device() {
        let w = Failing {
            ok_bytes: GLOBAL_HEADER_LEN + 100,
            written: 0,
        };
        let inner = Partial::new(4, 4);
        let mut dev = PcapDevice::new(inner, w).unwrap();
        let mut batch = Batch::with_capacity(4);
        for round in 0..3u8 {
            for id in 0..4 {
                batch.push(dev.inner().frame(round * 4 + id, 60)).unwrap();
            }
            assert_eq!(dev.tx_burst(Instant::ZERO, &mut batch), 4);
            let f = dev.inner().frame(50 + round, 60);
            dev.inner_mut().rx.push_back(f);
            let mut rx = Batch::with_capacity(4);
            assert_eq!(dev.rx_burst(Instant::ZERO, &mut rx), 1);
        }
        assert!(!dev.is_capturing());
        assert_eq!(dev.inner().sent.len(), 12, "frames kept flowing");
        assert!(dev.flush().is_ok());
        let header_err = PcapWriter::new(Failing {
            ok_bytes: 3,
            written: 0,
        });
        assert!(matches!(header_err, Err(PcapError::Header { .. })));
    }

    #[test]
    fn sim_port_capture_to_file_parses_back() {
        let cfg = SimConfig {
            pool_frames: 64,
            queue_frames: 64,
            ..SimConfig::default()
        };
        let (link, a, mut b) = SimLink::new(cfg).unwrap();
        struct RemoveOnDrop(std::path::PathBuf);
        impl Drop for RemoveOnDrop {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let path = std::env::temp_dir().join(format!("ustack-pcap-{}.pcap", std::process::id()));
        let _cleanup = RemoveOnDrop(path.clone());
        let mut a = PcapDevice::create(a, &path).unwrap();
        let mut batch = Batch::with_capacity(8);
        for id in 0..3u8 {
            let mut f = a.tx_alloc().unwrap();
            assert!(f.set_len(64));
            f.as_mut_slice().copy_from_slice(&pattern(id, 64));
            batch.push(f).unwrap();
        }
        assert_eq!(a.tx_burst(Instant::from_micros(5), &mut batch), 3);
        // B answers one frame.
        let mut f = b.tx_alloc().unwrap();
        assert!(f.set_len(100));
        f.as_mut_slice().copy_from_slice(&pattern(9, 100));
        batch.push(f).unwrap();
        assert_eq!(b.tx_burst(Instant::from_micros(6), &mut batch), 1);
        assert_eq!(link.next_delivery(), Some(Instant::from_micros(15)));
        let due = a.inner().next_rx_due().unwrap();
        assert_eq!(due, Instant::from_micros(16));
        let mut rx = Batch::with_capacity(8);
        assert_eq!(a.rx_burst(due, &mut rx), 1);
        assert_eq!(a.stats().rx_packets, 1);
        assert!(a.link_up());
        let _port = a.into_inner(); // flushes
        let bytes = std::fs::read(&path).unwrap();
        let recs = parse(&bytes);
        assert_eq!(recs.len(), 4);
        for (id, rec) in recs[..3].iter().enumerate() {
            assert_eq!(*rec, (0, 5, 64, pattern(id as u8, 64)));
        }
        assert_eq!(recs[3].3, pattern(9, 100));
        assert_eq!(recs[3].1 as u64, due.as_micros());
        if let Ok(out) = std::process::Command::new("tcpdump")
            .args(["-nr"])
            .arg(&path)
            .output()
        {
            assert!(out.status.success(), "tcpdump -r failed: {out:?}");
            // One summary line per frame (hex dumps of unknown ethertypes are indented).
            let stdout = String::from_utf8_lossy(&out.stdout);
            let frames = stdout
                .lines()
                .filter(|l| l.starts_with("00:00:00."))
                .count();
            assert_eq!(frames, 4, "{out:?}");
            assert!(stdout.contains("00:00:00.000016"), "{stdout}");
        } else {
            eprintln!("tcpdump not installed: skipping the tcpdump -r check");
        }
    }

    #[test]
    fn create_in_missing_directory_says_where() {
        let inner = Partial::new(1, 1);
        let err = PcapDevice::create(inner, "/nonexistent-dir-ustack/x.pcap").err();
        let err = err.expect("creating in a missing directory fails");
        assert!(
            err.to_string().contains("/nonexistent-dir-ustack/x.pcap"),
            "{err}"
        );
    }
}

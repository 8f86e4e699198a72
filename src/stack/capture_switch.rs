//! The capture switch of a [`Stack`]: [`Stack::start_capture`], [`Stack::stop_capture`] and
//! [`Stack::capture_status`] (the capture itself is in `capture.rs`).

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;

use crate::dev::pcap::emit_global_header_snaplen;
use crate::dev::PacketDevice;

use super::capture::{remove_quietly, CaptureError, CaptureSpec, CaptureStatus, Tap, WRITER_BUF};
use super::Stack;

impl<D: PacketDevice> Stack<D> {
    /// Starts capturing every frame received and sent into a new pcap file (see
    /// [`CaptureSpec`]). The file is created (mode 0600, never over an existing one) and
    /// its header written before this returns, so a bad path fails here; the frames are written
    /// by a thread of the capture's own, and the polling thread never waits for it.
    ///
    /// Fails if a capture runs, or ended by itself and was not collected with
    /// [`Stack::stop_capture`].
    pub fn start_capture(&mut self, spec: CaptureSpec) -> Result<(), CaptureError> {
        self.check_no_capture()?;
        spec.limits()?;
        let path = spec.path.clone();
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    CaptureError::Exists { path: path.clone() }
                } else {
                    CaptureError::Create {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
        let mut out = BufWriter::with_capacity(WRITER_BUF, file);
        let header = out
            .write_all(&emit_global_header_snaplen(spec.snaplen as u32))
            .and_then(|()| out.flush());
        if let Err(source) = header {
            drop(out);
            remove_quietly(&path);
            return Err(CaptureError::Header { path, source });
        }
        self.start_capture_into(spec, out).inspect_err(|_| {
            remove_quietly(&path);
        })
    }

    /// Starts a capture whose records go to `out` (the global header already written).
    pub(super) fn start_capture_into<W: Write + Send + 'static>(
        &mut self,
        spec: CaptureSpec,
        out: W,
    ) -> Result<(), CaptureError> {
        self.check_no_capture()?;
        let (packets_max, bytes_max) = spec.limits()?;
        let caps = self.io.dev.caps();
        let tap = Tap::start(
            spec.path.clone(),
            packets_max,
            bytes_max,
            spec.snaplen.min(caps.frame_len_max()).max(1),
            caps.burst_max.max(1),
            self.now,
            out,
        )
        .map_err(|source| CaptureError::Thread {
            path: spec.path.clone(),
            source,
        })?;
        tracing::info!(
            path = %spec.path.display(),
            packets_max = ?spec.packets_max,
            bytes_max = ?spec.bytes_max,
            snaplen = spec.snaplen,
            "packet capture started"
        );
        self.io.capture = Some(Box::new(tap));
        Ok(())
    }

    fn check_no_capture(&self) -> Result<(), CaptureError> {
        match self.capture_status() {
            None => Ok(()),
            Some(CaptureStatus {
                path,
                ended: Some(end),
                ..
            }) => Err(CaptureError::NotCollected { path, end }),
            Some(CaptureStatus { path, .. }) => Err(CaptureError::AlreadyRunning { path }),
        }
    }

    /// Stops the running capture (or reports the one that ended by itself and was not yet
    /// collected), waits for the writer to flush (bounded: [`CAPTURE_STOP_WAIT`](super::CAPTURE_STOP_WAIT)) and returns
    /// its final status. None if no capture was started since the last stop.
    ///
    /// Frames are no longer captured from the moment this is called; the wait is for the
    /// writer to write the frames it holds (at most [`CAPTURE_RING_SLOTS`](super::CAPTURE_RING_SLOTS)) and close the file.
    pub fn stop_capture(&mut self) -> Option<CaptureStatus> {
        let mut tap = self.io.capture.take()?;
        let status = tap.stop();
        tracing::info!("{status}");
        Some(status)
    }

    /// Where the current capture stands (cheap: a few atomic loads). None if no capture was
    /// started since the last [`Stack::stop_capture`].
    pub fn capture_status(&self) -> Option<CaptureStatus> {
        self.io.capture.as_ref().map(|tap| tap.status())
    }
}

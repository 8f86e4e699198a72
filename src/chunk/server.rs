//! The server side of the chunk protocol as a sans-IO state machine, one per connection:
//! received bytes go in ([`ServerConn::handle_input`]), requests run against the
//! [`ChunkStore`], and response bytes come out ([`ServerConn::next_output`]). Transports
//! (ustack's [`ChunkServer`](super::ChunkServer), the kernel-TCP server in `net`) only move bytes.
//!
//! Back-pressure instead of queues: the machine stops taking input while `in_flight_max`
//! responses wait to be sent, or while no staging buffer is free for a payload; the unread bytes
//! stay in the transport (for TCP: the window closes).

use std::collections::VecDeque;
use std::time::Duration;

use crate::mem::PoolBuf;
use crate::proto::{
    crc32c, Event, Limits, Op, Request, RequestDecoder, RequestHeader, ResponseHeader, Status,
};

use super::staging::{Staging, StagingConfig};
use super::store::ChunkStore;

/// Server configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Protocol limits (payload, chunk size, requests in flight per connection).
    pub limits: Limits,
    /// Connections served at once; more are refused (reset) and counted.
    pub connections_max: usize,
    /// Connections the listener keeps ready to be accepted.
    pub backlog: usize,
    /// Payload staging pools.
    pub staging: StagingConfig,
    /// After shutdown begins, how long queued responses may take to go out.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            limits: Limits::default(),
            connections_max: 64,
            backlog: 16,
            staging: StagingConfig::default(),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Server counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub connections_accepted: u64,
    /// Connections refused because `connections_max` were open (or shutting down).
    pub connections_refused: u64,
    /// Connections that ended (closed by either side or reset).
    pub connections_closed: u64,
    /// Connections closed because the peer broke the protocol (bad magic, version, header CRC,
    /// oversized payload, frame cut short).
    pub connections_closed_for_errors: u64,
    /// Requests answered, by op.
    pub pings: u64,
    /// WRITE requests answered.
    pub writes: u64,
    /// READ requests answered.
    pub reads: u64,
    /// DELETE requests answered.
    pub deletes: u64,
    /// STAT requests answered.
    pub stats: u64,
    /// Error responses sent (any status but OK).
    pub errors: u64,
    /// Frames rejected by the parser (a subset of `errors`).
    pub rejected_frames: u64,
    /// WRITEs refused because the payload did not match its CRC (nothing was stored).
    pub bad_checksums: u64,
    /// Payload bytes stored by WRITEs.
    pub bytes_written: u64,
    /// Payload bytes sent by READs.
    pub bytes_read: u64,
    /// Times a request waited for a staging buffer.
    pub staging_waits: u64,
}

enum Pending {
    /// A WRITE whose payload is arriving; `buf` is `None` until a staging buffer is free.
    Write {
        header: RequestHeader,
        buf: Option<PoolBuf>,
        filled: usize,
    },
    /// A READ waiting for a staging buffer.
    Read { header: RequestHeader },
    /// A rejected request whose payload the decoder is skipping.
    Discard,
}

struct Outgoing {
    request_id: u64,
    header: [u8; ResponseHeader::HEADER_LEN],
    payload: Option<PoolBuf>,
    /// Bytes of header + payload already sent.
    sent: usize,
}

impl Outgoing {
    fn len(&self) -> usize {
        ResponseHeader::HEADER_LEN + self.payload.as_ref().map_or(0, PoolBuf::len)
    }
}

/// One connection's protocol state.
pub struct ServerConn {
    decoder: RequestDecoder,
    pending: Option<Pending>,
    out: VecDeque<Outgoing>,
    in_flight_max: usize,
    /// A protocol error closes the connection once the queued responses are out.
    closing: bool,
    /// Shutdown: take no new requests.
    draining: bool,
    eof: bool,
}

impl ServerConn {
    /// A fresh connection.
    pub fn new(limits: Limits) -> ServerConn {
        let in_flight_max = limits.in_flight_max.max(1) as usize;
        ServerConn {
            decoder: RequestDecoder::new(limits),
            pending: None,
            out: VecDeque::with_capacity(in_flight_max + 1),
            in_flight_max,
            closing: false,
            draining: false,
            eof: false,
        }
    }

    /// Resets to a fresh connection, keeping the allocated queue.
    pub fn reset(&mut self) {
        self.decoder = RequestDecoder::new(*self.decoder.limits());
        self.pending = None;
        self.out.clear();
        self.closing = false;
        self.draining = false;
        self.eof = false;
    }

    /// Feeds received bytes, runs every complete request against `store`, queues responses.
    /// Returns how many bytes were taken: fewer than given means back-pressure (call again with
    /// the rest once output has drained or buffers are free). Also call it with no input to
    /// retry a request waiting for a staging buffer.
    pub fn handle_input<S: ChunkStore + ?Sized>(
        &mut self,
        mut input: &[u8],
        store: &S,
        staging: &Staging,
        stats: &mut ServerStats,
    ) -> usize {
        let given = input.len();
        loop {
            // A request whose header arrived is finished even after end of input or during
            // shutdown (it may have waited for a staging buffer).
            if !self.resume_pending(store, staging, stats) {
                break;
            }
            if self.closing || self.draining || self.eof {
                break;
            }
            if self.pending.is_none() && self.out.len() >= self.in_flight_max {
                break;
            }
            let (n, event) = self.decoder.feed(input);
            input = &input[n..];
            match event {
                None => break,
                Some(Event::Header(h)) => self.on_header(h, store, staging, stats),
                Some(Event::Payload(piece)) => {
                    if let Some(Pending::Write {
                        buf: Some(buf),
                        filled,
                        ..
                    }) = &mut self.pending
                    {
                        buf.as_mut_slice()[*filled..*filled + piece.len()].copy_from_slice(piece);
                        *filled += piece.len();
                    }
                }
                Some(Event::End(verdict)) => match self.pending.take() {
                    Some(Pending::Write { header, buf, .. }) => match verdict {
                        Ok(()) => self.run_write(header, buf, store, stats),
                        Err(e) => {
                            stats.bad_checksums += 1;
                            self.queue_error(header.request_id, Op::Write, e.status(), stats);
                        }
                    },
                    Some(Pending::Read { header }) => {
                        // Not reached: a waiting READ stops the loop before its End is fed.
                        self.pending = Some(Pending::Read { header });
                    }
                    Some(Pending::Discard) | None => {}
                },
                Some(Event::Rejected(r)) => {
                    stats.rejected_frames += 1;
                    stats.errors += 1;
                    self.push(r.request_id.unwrap_or(0), r.error_response(), None);
                    if r.must_close() {
                        self.closing = true;
                        stats.connections_closed_for_errors += 1;
                    } else if self.decoder.payload_remaining() > 0 {
                        self.pending = Some(Pending::Discard);
                    }
                }
            }
        }
        given - input.len()
    }

    /// Completes a request that waited for a staging buffer. False while it still waits.
    fn resume_pending<S: ChunkStore + ?Sized>(
        &mut self,
        store: &S,
        staging: &Staging,
        stats: &mut ServerStats,
    ) -> bool {
        match &mut self.pending {
            Some(Pending::Write {
                header,
                buf: buf @ None,
                ..
            }) if header_payload_len(header) > 0 => {
                let held = held_large(&self.out, staging);
                match staging.alloc_shared(header_payload_len(header), held) {
                    Some(b) => {
                        *buf = Some(b);
                        true
                    }
                    None => false,
                }
            }
            Some(Pending::Read { header }) => {
                let header = *header;
                self.pending = None;
                self.on_header(header, store, staging, stats);
                // Still waiting if on_header parked it again.
                !matches!(self.pending, Some(Pending::Read { .. }))
            }
            _ => true,
        }
    }

    fn on_header<S: ChunkStore + ?Sized>(
        &mut self,
        h: RequestHeader,
        store: &S,
        staging: &Staging,
        stats: &mut ServerStats,
    ) {
        let op = h.request.op();
        if self.out.iter().any(|o| o.request_id == h.request_id) {
            self.queue_error(h.request_id, op, Status::DuplicateRequestId, stats);
            if header_payload_len(&h) > 0 {
                self.pending = Some(Pending::Discard);
            }
            return;
        }
        let id = h.request_id;
        match h.request {
            Request::Ping => {
                stats.pings += 1;
                self.push(id, ResponseHeader::ping(id), None);
            }
            Request::Write { len, .. } => {
                let buf = if len == 0 {
                    None
                } else {
                    let b = staging.alloc_shared(len as usize, held_large(&self.out, staging));
                    if b.is_none() {
                        stats.staging_waits += 1;
                    }
                    b
                };
                self.pending = Some(Pending::Write {
                    header: h,
                    buf,
                    filled: 0,
                });
            }
            Request::Read {
                chunk_id,
                offset,
                len,
            } => {
                let mut buf = None;
                if len > 0 {
                    match staging.alloc_shared(len as usize, held_large(&self.out, staging)) {
                        Some(b) => buf = Some(b),
                        None => {
                            stats.staging_waits += 1;
                            self.pending = Some(Pending::Read { header: h });
                            return;
                        }
                    }
                }
                let mut empty = [0u8; 0];
                let target = match buf.as_mut() {
                    Some(b) => b.as_mut_slice(),
                    None => &mut empty[..],
                };
                match store.read(chunk_id, offset, target) {
                    Ok(info) => {
                        let data: &[u8] = match buf.as_mut() {
                            Some(b) => {
                                let _ = b.set_len(info.len);
                                b.as_slice()
                            }
                            None => &[],
                        };
                        let crc = crc32c(data);
                        stats.reads += 1;
                        stats.bytes_read += info.len as u64;
                        let payload = buf.filter(|b| !b.is_empty());
                        self.push(
                            id,
                            ResponseHeader::read(id, info.len as u32, crc, info.chunk_size),
                            payload,
                        );
                    }
                    Err(e) => self.queue_error(id, op, e.status(), stats),
                }
            }
            Request::Delete { chunk_id } => match store.delete(chunk_id) {
                Ok(()) => {
                    stats.deletes += 1;
                    self.push(id, ResponseHeader::delete(id), None);
                }
                Err(e) => self.queue_error(id, op, e.status(), stats),
            },
            Request::Stat { chunk_id } => match store.stat(chunk_id) {
                Ok(st) => {
                    stats.stats += 1;
                    self.push(id, ResponseHeader::stat(id, st.size, st.crc), None);
                }
                Err(e) => self.queue_error(id, op, e.status(), stats),
            },
        }
    }

    fn run_write<S: ChunkStore + ?Sized>(
        &mut self,
        h: RequestHeader,
        buf: Option<PoolBuf>,
        store: &S,
        stats: &mut ServerStats,
    ) {
        let Request::Write {
            chunk_id, offset, ..
        } = h.request
        else {
            return;
        };
        let data = buf.as_ref().map_or(&[][..], PoolBuf::as_slice);
        match store.write(chunk_id, offset, data) {
            Ok(size) => {
                stats.writes += 1;
                stats.bytes_written += data.len() as u64;
                self.push(
                    h.request_id,
                    ResponseHeader::write(h.request_id, size),
                    None,
                );
            }
            Err(e) => self.queue_error(h.request_id, Op::Write, e.status(), stats),
        }
        // `buf` returns to its pool here.
    }

    fn queue_error(&mut self, id: u64, op: Op, status: Status, stats: &mut ServerStats) {
        stats.errors += 1;
        self.push(
            id,
            ResponseHeader::error(id, op.code(), status, false),
            None,
        );
    }

    fn push(&mut self, request_id: u64, header: ResponseHeader, payload: Option<PoolBuf>) {
        self.out.push_back(Outgoing {
            request_id,
            header: header.to_bytes(),
            payload,
            sent: 0,
        });
    }

    /// The peer closed its sending side. A frame cut short is counted as a protocol error and
    /// dropped; a READ whose header arrived (waiting for a staging buffer) is still answered:
    /// keep calling [`ServerConn::handle_input`] (with no input) while
    /// [`ServerConn::is_waiting`].
    pub fn handle_eof(&mut self, stats: &mut ServerStats) {
        if !self.eof && !self.closing {
            let cut = match &self.pending {
                // A complete READ header is not a cut frame, whatever the decoder still holds.
                Some(Pending::Read { .. }) => false,
                _ => self.decoder.finish().is_err(),
            };
            if cut {
                stats.connections_closed_for_errors += 1;
            }
        }
        self.eof = true;
        if !matches!(self.pending, Some(Pending::Read { .. })) {
            self.pending = None;
        }
    }

    /// Whether a request waits for a staging buffer: call [`ServerConn::handle_input`] again
    /// (input or not) once buffers may have come back.
    pub fn is_waiting(&self) -> bool {
        match &self.pending {
            Some(Pending::Read { .. }) => true,
            Some(Pending::Write {
                header, buf: None, ..
            }) => header_payload_len(header) > 0,
            _ => false,
        }
    }

    /// Stops taking requests (shutdown): queued responses still go out.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// The next bytes to send, if any. Responses without payload overtake a READ response whose
    /// payload has not started, so small answers do not wait behind megabytes.
    pub fn next_output(&mut self) -> Option<&[u8]> {
        let front = self.out.front()?;
        if front.sent == 0 && front.payload.is_some() {
            if let Some(i) = self.out.iter().position(|o| o.payload.is_none()) {
                self.out.swap(0, i);
            }
        }
        let o = self.out.front()?;
        Some(if o.sent < ResponseHeader::HEADER_LEN {
            &o.header[o.sent..]
        } else {
            let p = o.payload.as_ref().map_or(&[][..], PoolBuf::as_slice);
            &p[o.sent - ResponseHeader::HEADER_LEN..]
        })
    }

    /// Records that `n` bytes of [`ServerConn::next_output`] were sent.
    pub fn advance_output(&mut self, n: usize) {
        if let Some(o) = self.out.front_mut() {
            o.sent += n;
            if o.sent >= o.len() {
                self.out.pop_front();
            }
        }
    }

    /// Responses queued or partly sent.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Whether the transport should close: a protocol error (or end of input, or shutdown) and
    /// every queued response sent.
    pub fn should_close(&self) -> bool {
        (self.closing || self.eof || self.draining) && self.out.is_empty() && !self.is_waiting()
    }
}

/// Large staging buffers held by queued responses.
fn held_large(out: &VecDeque<Outgoing>, staging: &Staging) -> usize {
    out.iter()
        .filter(|o| o.payload.as_ref().is_some_and(|p| staging.is_large(p)))
        .count()
}

fn header_payload_len(h: &RequestHeader) -> usize {
    match h.request {
        Request::Write { len, .. } => len as usize,
        _ => 0,
    }
}

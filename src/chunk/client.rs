//! The client side of the chunk protocol as a sans-IO state machine: requests are queued with
//! [`ClientConn::submit`], their bytes come out of [`ClientConn::next_output`], response bytes go
//! in through [`ClientConn::handle_input`], and results come back as [`Completion`]s, in the
//! order the server answers (which need not be the order of submission).
//!
//! Every READ payload is checked against its CRC32C before it is handed over. Every request has a
//! deadline; one that passes completes with [`ClientError::Timeout`] and a late answer is
//! ignored. All queues are bounded by `in_flight_max`, and payloads live in staging buffers
//! reserved at start-up.

use std::collections::VecDeque;
use std::time::Duration;

use crate::copies::{self, Pass};
use crate::mem::{MemError, PoolBuf};
use crate::proto::{
    copy_crc, list_entries, ChunkId, Event, Limits, ListEntry, Op, ParseError, Reply, Request,
    RequestHeader, ResponseDecoder, ResponseHeader, Status, LIST_ENTRY_LEN,
};
use crate::time::Instant;

use super::staging::{LentPayload, Staging, StagingConfig};

/// Client configuration.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Protocol limits; `in_flight_max` bounds requests outstanding plus completions not yet
    /// taken.
    pub limits: Limits,
    /// Staging buffers for WRITE payloads and READ data.
    pub staging: StagingConfig,
    /// How long a request may wait for its answer.
    pub request_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            limits: Limits::default(),
            staging: StagingConfig {
                small_count: 128,
                large_count: 8,
                ..StagingConfig::default()
            },
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// An operation to submit. WRITE data is copied into a staging buffer at submission.
#[derive(Copy, Clone, Debug)]
pub enum ChunkOp<'a> {
    /// PING.
    Ping,
    /// WRITE `data` at `offset` of `id`.
    Write {
        /// The chunk.
        id: ChunkId,
        /// Byte offset.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
    },
    /// READ up to `len` bytes at `offset` of `id`.
    Read {
        /// The chunk.
        id: ChunkId,
        /// Byte offset.
        offset: u64,
        /// Bytes wanted.
        len: u32,
    },
    /// DELETE `id`.
    Delete {
        /// The chunk.
        id: ChunkId,
    },
    /// STAT `id`.
    Stat {
        /// The chunk.
        id: ChunkId,
    },
    /// LIST up to `max` chunks after the cursor `after` (`None`: from the first chunk). The
    /// page is capped at [`Limits::list_entries_max`] entries (2048 with the default limits);
    /// the answer ([`Reply::List`]) says whether more remain, and
    /// [`Completion::list_entries`] gives the entries. The next page starts after the last id
    /// of this one.
    List {
        /// The cursor: the last id of the previous page, or `None` for the first page.
        after: Option<ChunkId>,
        /// Entries wanted (capped).
        max: u32,
    },
}

/// Why a request failed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("server answered {0}")]
    Status(Status),
    /// READ data did not match its CRC32C: the data was dropped.
    #[error("READ data failed its CRC32C check")]
    BadChecksum,
    /// No answer within the request timeout.
    #[error("no answer within the request timeout")]
    Timeout,
    /// The connection ended before the answer came.
    #[error("the connection was lost before the answer")]
    ConnectionLost,
    /// The answer could not be parsed.
    #[error("malformed answer: {0}")]
    Protocol(ParseError),
    /// The answer does not fit the request (another op, more data than asked).
    #[error("the answer does not match the request")]
    UnexpectedReply,
}

/// Why a request could not be submitted (nothing was queued).
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// `in_flight_max` requests are outstanding or completed and not yet taken.
    #[error("{max} requests already in flight: take completions first")]
    TooManyInFlight {
        /// The limit.
        max: usize,
    },
    /// The WRITE or READ length exceeds the payload limit (or, for LIST, the payload limit is
    /// below one 24-byte entry).
    #[error("{len} bytes exceed the {max}-byte payload limit")]
    TooLarge {
        /// Requested length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No staging buffer is free for the WRITE data or the READ answer; retry after taking (and
    /// dropping) completions.
    #[error("no staging buffer free; retry after taking completions")]
    NoBuffer,
    /// The connection is closed or broken.
    #[error("the connection is closed")]
    Closed,
}

/// A finished request.
#[derive(Debug)]
pub struct Completion {
    /// The id [`ClientConn::submit`] returned.
    pub request_id: u64,
    /// The request's op.
    pub op: Op,
    /// The server's reply, or why there is none.
    pub result: Result<Reply, ClientError>,
    data: Option<PoolBuf>,
}

impl Completion {
    /// READ data, or a LIST answer's packed entries (verified against their CRC32C); empty
    /// for other ops.
    pub fn data(&self) -> &[u8] {
        self.data.as_ref().map_or(&[], PoolBuf::as_slice)
    }

    /// A LIST answer's entries (chunk id and size), in the server store's listing order;
    /// none for other ops or a failed LIST.
    pub fn list_entries(&self) -> impl Iterator<Item = ListEntry> + '_ {
        list_entries(if self.op == Op::List {
            self.data()
        } else {
            &[]
        })
    }
}

/// Client counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests submitted.
    pub submitted: u64,
    /// Requests completed OK.
    pub ok: u64,
    /// Requests completed with an error (any `ClientError`).
    pub failed: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// READ payloads that failed their CRC.
    pub bad_checksums: u64,
    /// Answers for no outstanding request (late answers after a timeout).
    pub unexpected_answers: u64,
}

struct InFlight {
    request_id: u64,
    op: Op,
    /// READ, LIST: the most payload bytes the answer may carry.
    read_len: u32,
    /// READ, LIST: the buffer reserved at submission for the answer's data.
    read_buf: Option<PoolBuf>,
    deadline: Instant,
}

struct OutReq {
    header: [u8; RequestHeader::HEADER_LEN],
    /// The WRITE data; `None` once lent to the transport (`ClientConn::lend_output`).
    payload: Option<PoolBuf>,
    payload_len: usize,
    sent: usize,
}

impl OutReq {
    fn len(&self) -> usize {
        RequestHeader::HEADER_LEN + self.payload_len
    }
}

struct Answer {
    header: ResponseHeader,
    /// Index into `in_flight`; `None` for an answer nobody waits for (its payload is skipped).
    slot: Option<usize>,
    /// Where the payload goes (the READ's reserved buffer); `None`: skip it.
    buf: Option<PoolBuf>,
    filled: usize,
}

/// One connection's client state.
pub struct ClientConn {
    limits: Limits,
    timeout: Duration,
    max: usize,
    next_id: u64,
    send_q: VecDeque<OutReq>,
    in_flight: Vec<InFlight>,
    /// No request in flight has a deadline before this (kept conservatively: completing a
    /// request does not raise it), so most polls skip the scan for timeouts.
    timeouts_from: Option<Instant>,
    decoder: ResponseDecoder,
    answer: Option<Answer>,
    done: VecDeque<Completion>,
    staging: Staging,
    broken: bool,
    /// Why the server closed the connection, if it said (an answer with request id 0).
    refusal: Option<Status>,
    stats: ClientStats,
}

impl ClientConn {
    /// A client state machine with its own staging pools.
    pub fn new(cfg: &ClientConfig) -> Result<ClientConn, MemError> {
        let staging = Staging::new(&cfg.staging, cfg.limits.payload_len_max as usize)?;
        Ok(ClientConn::with_staging(cfg, staging))
    }

    /// A client state machine drawing payload buffers from `staging`, which may be shared by
    /// many connections (`Staging` is a cheap handle). Its large buffers must be at least
    /// `cfg.limits.payload_len_max` long.
    pub fn with_staging(cfg: &ClientConfig, staging: Staging) -> ClientConn {
        let max = cfg.limits.in_flight_max.max(1) as usize;
        ClientConn {
            limits: cfg.limits,
            timeout: cfg.request_timeout,
            max,
            next_id: 1,
            send_q: VecDeque::with_capacity(max),
            in_flight: Vec::with_capacity(max),
            timeouts_from: None,
            decoder: ResponseDecoder::new(cfg.limits),
            answer: None,
            done: VecDeque::with_capacity(max),
            staging,
            broken: false,
            refusal: None,
            stats: ClientStats::default(),
        }
    }

    /// Queues a request; returns its id. Nothing is queued on error.
    pub fn submit(&mut self, op: ChunkOp<'_>, now: Instant) -> Result<u64, SubmitError> {
        if self.broken {
            return Err(SubmitError::Closed);
        }
        if self.in_flight.len() + self.done.len() >= self.max {
            return Err(SubmitError::TooManyInFlight { max: self.max });
        }
        let payload_max = self.limits.payload_len_max as usize;
        let id = self.next_id;
        let mut read_buf = None;
        let (request, payload, read_len) = match op {
            ChunkOp::Ping => (Request::Ping, None, 0),
            ChunkOp::Write {
                id: chunk_id,
                offset,
                data,
            } => {
                if data.len() > payload_max {
                    return Err(SubmitError::TooLarge {
                        len: data.len(),
                        max: payload_max,
                    });
                }
                let (payload, crc) = if data.is_empty() {
                    (None, 0)
                } else {
                    let mut b = self
                        .staging
                        .alloc(data.len())
                        .ok_or(SubmitError::NoBuffer)?;
                    // The caller's bytes are borrowed for this call only: one copy, with the
                    // CRC taken in the same pass.
                    copies::count(Pass::Store, data.len());
                    let crc = copy_crc(b.as_mut_slice(), data, 0);
                    (Some(b), crc)
                };
                let req = Request::Write {
                    chunk_id,
                    offset,
                    len: data.len() as u32,
                    crc,
                };
                (req, payload, 0)
            }
            ChunkOp::Read {
                id: chunk_id,
                offset,
                len,
            } => {
                if len as usize > payload_max {
                    return Err(SubmitError::TooLarge {
                        len: len as usize,
                        max: payload_max,
                    });
                }
                // The answer's buffer is reserved now, so an answer never waits for memory
                // (and a caller holding completions gets NoBuffer here instead of a stall).
                let buf = match len {
                    0 => None,
                    n => Some(
                        self.staging
                            .alloc(n as usize)
                            .ok_or(SubmitError::NoBuffer)?,
                    ),
                };
                read_buf = buf;
                (
                    Request::Read {
                        chunk_id,
                        offset,
                        len,
                    },
                    None,
                    len,
                )
            }
            ChunkOp::Delete { id: chunk_id } => (Request::Delete { chunk_id }, None, 0),
            ChunkOp::Stat { id: chunk_id } => (Request::Stat { chunk_id }, None, 0),
            ChunkOp::List { after, max } => {
                // The answer's buffer is reserved now, for the page the server may send: what
                // was asked, capped as the server caps it.
                let page = max.min(self.limits.list_entries_max());
                if max > 0 && page == 0 {
                    return Err(SubmitError::TooLarge {
                        len: LIST_ENTRY_LEN,
                        max: payload_max,
                    });
                }
                let bytes = page as usize * LIST_ENTRY_LEN;
                if bytes > 0 {
                    read_buf = Some(self.staging.alloc(bytes).ok_or(SubmitError::NoBuffer)?);
                }
                (Request::List { after, max: page }, None, bytes as u32)
            }
        };
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let header = RequestHeader::new(id, request);
        self.send_q.push_back(OutReq {
            header: header.to_bytes(),
            payload_len: payload.as_ref().map_or(0, PoolBuf::len),
            payload,
            sent: 0,
        });
        let deadline = now + self.timeout;
        self.in_flight.push(InFlight {
            request_id: id,
            op: request.op(),
            read_len,
            read_buf,
            deadline,
        });
        self.timeouts_from = Some(self.timeouts_from.map_or(deadline, |t| t.min(deadline)));
        self.stats.submitted += 1;
        Ok(id)
    }

    /// Payload bytes the frame being received still has to come (0 between frames).
    pub fn payload_remaining(&self) -> usize {
        self.decoder.payload_remaining() as usize
    }

    /// Lends the buffer the READ answer being received fills, for payload the caller takes
    /// in outside [`ClientConn::handle_input`] (a receive path that puts stream bytes straight
    /// there, e.g. smoltcp's `RxSink`): `None` unless an answer's payload with a destination
    /// is under way. Until [`ClientConn::payload_placed`] gives it back, `handle_input` must
    /// not be called.
    pub fn lend_payload(&mut self) -> Option<LentPayload> {
        let len = self.decoder.payload_remaining() as usize;
        let a = self.answer.as_mut()?;
        if len == 0 {
            return None;
        }
        let buf = a.buf.take()?;
        Some(LentPayload {
            buf,
            at: a.filled,
            len,
            crc: self.decoder.payload_crc_so_far(),
        })
    }

    /// Gives back a lent buffer with the `placed` bytes put at its `at`, and `crc`: the
    /// lent `crc` continued over them (`crc32c_append`):
    /// they count as payload received (the answer completes if they were the last).
    pub fn payload_placed(&mut self, lent: LentPayload, placed: usize, crc: u32) {
        if self.broken {
            return;
        }
        let Some(a) = self.answer.as_mut() else {
            return;
        };
        debug_assert!(a.buf.is_none() && a.filled == lent.at && placed <= lent.len);
        a.buf = Some(lent.buf);
        a.filled += placed;
        self.decoder.payload_placed(placed as u32, crc);
        // The End event, if that was the payload's last byte.
        self.handle_input(&[]);
    }

    /// Feeds received bytes; returns how many were taken (fewer: waiting for a staging buffer,
    /// or the stream is broken).
    pub fn handle_input(&mut self, mut input: &[u8]) -> usize {
        let given = input.len();
        loop {
            if self.broken {
                break;
            }
            let (n, event) = self.decoder.feed(input);
            input = &input[n..];
            match event {
                None => break,
                Some(Event::Header(h)) => self.on_header(h),
                Some(Event::Payload(piece)) => {
                    if let Some(Answer {
                        buf: Some(buf),
                        filled,
                        ..
                    }) = &mut self.answer
                    {
                        // The decoder took the piece's CRC just before: the copy reads it
                        // from the cache.
                        copies::count(Pass::Socket, piece.len());
                        buf.as_mut_slice()[*filled..*filled + piece.len()].copy_from_slice(piece);
                        *filled += piece.len();
                    }
                }
                Some(Event::End(verdict)) => {
                    if let Some(a) = self.answer.take() {
                        self.on_end(a, verdict);
                    }
                }
                Some(Event::Rejected(r)) => {
                    let slot = r
                        .request_id
                        .and_then(|id| self.in_flight.iter().position(|f| f.request_id == id));
                    if let Some(i) = slot {
                        self.complete(i, Err(ClientError::Protocol(r.error)), None);
                    }
                    if r.must_close() {
                        self.fail_all(ClientError::Protocol(r.error));
                    }
                }
            }
        }
        given - input.len()
    }

    fn on_header(&mut self, h: ResponseHeader) {
        let slot = self
            .in_flight
            .iter()
            .position(|f| f.request_id == h.request_id);
        if slot.is_none() {
            self.stats.unexpected_answers += 1;
        }
        let len = h.payload_len() as usize;
        // The payload lands in the READ's reserved buffer when it fits; otherwise it is skipped
        // and the reply is judged in on_end (UnexpectedReply).
        let buf = match slot {
            Some(i) if len > 0 => {
                let f = &mut self.in_flight[i];
                match f.read_buf.take() {
                    Some(mut b) if len <= b.len() => {
                        let _ = b.set_len(len);
                        Some(b)
                    }
                    other => {
                        f.read_buf = other;
                        None
                    }
                }
            }
            _ => None,
        };
        self.answer = Some(Answer {
            header: h,
            slot,
            buf,
            filled: 0,
        });
    }

    fn on_end(&mut self, a: Answer, verdict: Result<(), ParseError>) {
        let Some(i) = a.slot else {
            // Request id 0 is never a request's: the server speaks for the connection (it
            // refused it, or is shutting down) and closes it.
            if let (0, Reply::Error { status, .. }) = (a.header.request_id, a.header.reply) {
                if verdict.is_ok() {
                    self.refusal = Some(status);
                    self.fail_all(ClientError::Status(status));
                }
            }
            return;
        };
        let f = &self.in_flight[i];
        let result = match (verdict, a.header.reply) {
            (Err(_), _) => {
                self.stats.bad_checksums += 1;
                Err(ClientError::BadChecksum)
            }
            (Ok(()), Reply::Error { op, status }) if op == f.op.code() => {
                Err(ClientError::Status(status))
            }
            (Ok(()), reply) if reply_op(&reply) == Some(f.op) => match reply {
                Reply::Read { len, .. } | Reply::List { len, .. } if len > f.read_len => {
                    Err(ClientError::UnexpectedReply)
                }
                reply => Ok(reply),
            },
            (Ok(()), _) => Err(ClientError::UnexpectedReply),
        };
        let data = if result.is_ok() { a.buf } else { None };
        self.complete(i, result, data);
    }

    fn complete(&mut self, i: usize, result: Result<Reply, ClientError>, data: Option<PoolBuf>) {
        let f = self.in_flight.swap_remove(i);
        match &result {
            Ok(_) => self.stats.ok += 1,
            Err(e) => {
                self.stats.failed += 1;
                if *e == ClientError::Timeout {
                    self.stats.timeouts += 1;
                }
            }
        }
        // An answer in progress indexes in_flight: keep its index right after swap_remove.
        if let Some(a) = &mut self.answer {
            if a.slot == Some(i) {
                a.slot = None;
                a.buf = None;
            } else if a.slot == Some(self.in_flight.len()) && i < self.in_flight.len() {
                a.slot = Some(i);
            }
        }
        self.done.push_back(Completion {
            request_id: f.request_id,
            op: f.op,
            result,
            data,
        });
    }

    /// Completes every request past its deadline with [`ClientError::Timeout`].
    pub fn handle_timeouts(&mut self, now: Instant) {
        if self.timeouts_from.is_none_or(|t| now < t) {
            return;
        }
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.in_flight[i].deadline <= now {
                self.complete(i, Err(ClientError::Timeout), None);
            } else {
                i += 1;
            }
        }
        self.timeouts_from = self.next_deadline();
    }

    /// The earliest request deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.iter().map(|f| f.deadline).min()
    }

    /// Fails every outstanding request with `err` and refuses new ones (the connection is gone).
    pub fn fail_all(&mut self, err: ClientError) {
        self.broken = true;
        self.send_q.clear();
        self.answer = None;
        while !self.in_flight.is_empty() {
            self.complete(self.in_flight.len() - 1, Err(err), None);
        }
    }

    /// The next request bytes to send.
    pub fn next_output(&self) -> Option<&[u8]> {
        let o = self.send_q.front()?;
        Some(if o.sent < RequestHeader::HEADER_LEN {
            &o.header[o.sent..]
        } else {
            let p = o.payload.as_ref().map_or(&[][..], PoolBuf::as_slice);
            &p[o.sent - RequestHeader::HEADER_LEN..]
        })
    }

    /// The request being sent, when its header is out and its payload (at least `min`
    /// bytes) is not all sent: the payload's buffer the first time (the transport sends from
    /// it without copying and keeps it until the bytes are acknowledged; `None` once lent),
    /// how much of the payload is sent, and its length. Report with
    /// [`ClientConn::advance_output_lent`]; [`ClientConn::next_output`] must not be used for
    /// this request's payload afterwards.
    pub fn lend_output(&mut self, min: usize) -> Option<(Option<PoolBuf>, usize, usize)> {
        let o = self.send_q.front_mut()?;
        let done = o.sent.checked_sub(RequestHeader::HEADER_LEN)?;
        (o.payload_len >= min.max(1) && done < o.payload_len)
            .then(|| (o.payload.take(), done, o.payload_len))
    }

    /// Records that `n` bytes of a payload lent by [`ClientConn::lend_output`] were sent.
    pub fn advance_output_lent(&mut self, n: usize) {
        if let Some(o) = self.send_q.front_mut() {
            o.sent += n;
            if o.sent >= o.len() {
                self.send_q.pop_front();
            }
        }
    }

    /// Records that `n` bytes of [`ClientConn::next_output`] were sent.
    pub fn advance_output(&mut self, n: usize) {
        if let Some(o) = self.send_q.front_mut() {
            let header_left = RequestHeader::HEADER_LEN.saturating_sub(o.sent);
            copies::count(Pass::Socket, n.saturating_sub(header_left));
            o.sent += n;
            if o.sent >= o.len() {
                self.send_q.pop_front();
            }
        }
    }

    /// The next finished request.
    pub fn next_completion(&mut self) -> Option<Completion> {
        self.done.pop_front()
    }

    /// Requests submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Completions waiting to be taken.
    pub fn completions_ready(&self) -> usize {
        self.done.len()
    }

    /// Whether the connection failed (every request then fails).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The status the server gave for the whole connection when it refused or closed it
    /// (an answer with request id 0, e.g. [`Status::TooManyConnections`]); every request
    /// then failed with it.
    pub fn refusal(&self) -> Option<Status> {
        self.refusal
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }
}

fn reply_op(r: &Reply) -> Option<Op> {
    match r {
        Reply::Ping => Some(Op::Ping),
        Reply::Write { .. } => Some(Op::Write),
        Reply::Read { .. } => Some(Op::Read),
        Reply::Delete => Some(Op::Delete),
        Reply::Stat { .. } => Some(Op::Stat),
        Reply::List { .. } => Some(Op::List),
        Reply::Error { .. } => None,
    }
}

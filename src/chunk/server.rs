//! The server side of the chunk protocol as a sans-IO state machine, one per connection:
//! received bytes go in ([`ServerConn::handle_input`]), requests run against the
//! [`ChunkStore`], and response bytes come out ([`ServerConn::next_output`]). Transports
//! (ustack's [`ChunkServer`](super::ChunkServer), the kernel-TCP server in `net`) only move bytes.
//!
//! Store calls run inline, or on storage workers ([`Storage`]) whose results the transport
//! hands back with [`ServerConn::complete`]; answers go out as they become ready.
//!
//! Back-pressure instead of unbounded queues: the machine stops taking input while
//! `in_flight_max` responses wait (to be sent, or for their store call), while no staging
//! buffer is free for a payload, or while the storage queue is full; the unread bytes stay in
//! the transport (for TCP: the window closes).

use std::collections::VecDeque;
use std::time::Duration;

use crate::copies::{self, Pass};
use crate::mem::PoolBuf;
use crate::proto::{
    Event, Limits, Op, Request, RequestDecoder, RequestHeader, ResponseHeader, Status,
    LIST_ENTRY_LEN,
};
use crate::time::Instant;

use super::meter::{op_slot, RequestMeter, OP_OTHER};
use super::staging::{LentPayload, Staging, StagingConfig};
use super::store::{ChunkStore, SharedRead};
use super::workers::{Done, Job, Outcome, Storage, StorageConfig, Submitted, Work};

/// Server configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Protocol limits (payload, chunk size, requests in flight per connection).
    pub limits: Limits,
    /// Connections served at once; more are refused (an answer with request id 0 and status
    /// `TooManyConnections`, then a close) and counted.
    pub connections_max: usize,
    /// Connections the listener keeps ready to be accepted.
    pub backlog: usize,
    /// Payload staging pools.
    pub staging: StagingConfig,
    /// After shutdown begins, how long queued responses may take to go out.
    pub shutdown_grace: Duration,
    /// Where store calls run (inline, or on storage workers) and their timeout.
    pub storage: StorageConfig,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            limits: Limits::default(),
            connections_max: 64,
            backlog: 16,
            staging: StagingConfig::default(),
            shutdown_grace: Duration::from_secs(5),
            storage: StorageConfig::default(),
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
    /// LIST requests answered.
    pub lists: u64,
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
    /// Times a request waited for room in a storage worker's queue.
    pub storage_waits: u64,
    /// Requests answered [`Status::Timeout`] because their store call ran too long.
    pub storage_timeouts: u64,
    /// Store results that came after their request timed out or its connection went (dropped).
    pub storage_late: u64,
    /// Requests answered [`Status::Corrupt`]: the store found the chunk damaged.
    pub corrupt: u64,
    /// Answers by op and status, service times and store call times by op.
    pub requests: RequestMeter,
}

impl ServerStats {
    /// Adds `other`'s counters to these: the servers of several per-core shards as one.
    pub fn add(&mut self, other: &ServerStats) {
        let ServerStats {
            connections_accepted,
            connections_refused,
            connections_closed,
            connections_closed_for_errors,
            pings,
            writes,
            reads,
            deletes,
            stats,
            lists,
            errors,
            rejected_frames,
            bad_checksums,
            bytes_written,
            bytes_read,
            staging_waits,
            storage_waits,
            storage_timeouts,
            storage_late,
            corrupt,
            requests,
        } = other;
        self.connections_accepted += connections_accepted;
        self.connections_refused += connections_refused;
        self.connections_closed += connections_closed;
        self.connections_closed_for_errors += connections_closed_for_errors;
        self.pings += pings;
        self.writes += writes;
        self.reads += reads;
        self.deletes += deletes;
        self.stats += stats;
        self.lists += lists;
        self.errors += errors;
        self.rejected_frames += rejected_frames;
        self.bad_checksums += bad_checksums;
        self.bytes_written += bytes_written;
        self.bytes_read += bytes_read;
        self.staging_waits += staging_waits;
        self.storage_waits += storage_waits;
        self.storage_timeouts += storage_timeouts;
        self.storage_late += storage_late;
        self.corrupt += corrupt;
        self.requests.add(requests);
    }
}

/// A server's state for operators, taken by the serving loop: its counters and what it holds
/// now (the same for the ustack and kernel-TCP servers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerSnapshot {
    /// The counters.
    pub stats: ServerStats,
    /// Connections open (closing ones included).
    pub connections: usize,
    /// The most connections served at once.
    pub connections_max: usize,
    /// Requests taken and not yet fully answered, over all connections (queued answers, store
    /// calls running, a request waiting for a buffer).
    pub in_flight: usize,
    /// Store calls on the storage workers.
    pub storage_outstanding: usize,
    /// The small staging pool (`None` if the server has none) and the large one.
    pub staging_small: Option<crate::mem::PoolStats>,
    /// The large staging pool.
    pub staging_large: crate::mem::PoolStats,
    /// Bytes the staging pools reserve.
    pub staging_bytes: usize,
}

impl ServerSnapshot {
    /// Adds `other` to this: the servers of several per-core shards as one (counters,
    /// connections and limits summed, staging pools taken together).
    pub fn add(&mut self, other: &ServerSnapshot) {
        self.stats.add(&other.stats);
        self.connections += other.connections;
        self.connections_max += other.connections_max;
        self.in_flight += other.in_flight;
        self.storage_outstanding += other.storage_outstanding;
        match (&mut self.staging_small, &other.staging_small) {
            (Some(a), Some(b)) => a.add(b),
            (a @ None, Some(b)) => *a = Some(*b),
            _ => {}
        }
        self.staging_large.add(&other.staging_large);
        self.staging_bytes += other.staging_bytes;
    }
}

impl ServerSnapshot {
    /// The snapshot of a server with these parts (`cores`: its open connections).
    pub(crate) fn of<'a>(
        stats: ServerStats,
        cores: impl Iterator<Item = &'a ServerConn>,
        connections_max: usize,
        storage_outstanding: usize,
        staging: &Staging,
    ) -> ServerSnapshot {
        let (mut connections, mut in_flight) = (0, 0);
        for c in cores {
            connections += 1;
            in_flight += c.in_flight();
        }
        let (staging_small, staging_large) = staging.pool_stats();
        ServerSnapshot {
            stats,
            connections,
            connections_max,
            in_flight,
            storage_outstanding,
            staging_small,
            staging_large,
            staging_bytes: staging.reserved_bytes(),
        }
    }
}

/// What a connection's requests run against, shared by a server's connections; built by the
/// transport for each call.
pub struct ServeCtx<'a, S: ChunkStore + 'static> {
    /// The store and the way its calls run.
    pub storage: &'a mut Storage<S>,
    /// Payload buffers.
    pub staging: &'a Staging,
    /// The server's counters.
    pub stats: &'a mut ServerStats,
    /// Now (for storage timeouts).
    pub now: Instant,
}

enum Pending {
    /// A WRITE whose payload is arriving; `buf` is `None` until a staging buffer is free, or
    /// while it is `lent` (`ServerConn::lend_payload`).
    Write {
        header: RequestHeader,
        buf: Option<PoolBuf>,
        filled: usize,
        lent: bool,
    },
    /// A READ or LIST waiting for a staging buffer for its answer.
    Buffer { header: RequestHeader },
    /// A store call waiting for room in its worker's queue.
    Submit {
        job: Job,
        request_id: u64,
        op: Op,
        large: bool,
    },
    /// A rejected request whose payload the decoder is skipping.
    Discard,
}

/// A request whose store call runs on a worker.
#[derive(Copy, Clone)]
struct Waiting {
    seq: u64,
    since: Instant,
    /// When the request's header came.
    started: Instant,
    op: Op,
    /// Its job holds a large staging buffer.
    large: bool,
}

/// An answer's payload: a staging buffer, or bytes the store lent.
enum Payload {
    Buf(PoolBuf),
    Shared(SharedRead),
}

impl Payload {
    fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Buf(b) => b.as_slice(),
            Payload::Shared(s) => s.as_slice(),
        }
    }
}

struct Outgoing {
    request_id: u64,
    header: [u8; ResponseHeader::HEADER_LEN],
    payload: Option<Payload>,
    /// Bytes of header + payload already sent.
    sent: usize,
    /// Not ready: the store call is still running.
    waiting: Option<Waiting>,
}

impl Outgoing {
    fn len(&self) -> usize {
        ResponseHeader::HEADER_LEN + self.payload.as_ref().map_or(0, |p| p.as_slice().len())
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
    /// The transport's name for this connection, carried by its store jobs.
    tag: u64,
    /// The next store job's sequence number.
    next_seq: u64,
    /// Responses waiting for a store call.
    waiting: usize,
    /// When the header of the request being decoded (or waiting in `pending`) came.
    started: Instant,
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
            tag: 0,
            next_seq: 0,
            waiting: 0,
            started: Instant::ZERO,
        }
    }

    /// Resets to a fresh connection named `tag` (the transport routes store results to the
    /// connection by it), keeping the allocated queue.
    pub fn reset(&mut self, tag: u64) {
        self.decoder = RequestDecoder::new(*self.decoder.limits());
        self.pending = None;
        self.out.clear();
        self.closing = false;
        self.draining = false;
        self.eof = false;
        self.tag = tag;
        self.waiting = 0;
    }

    /// The tag given at the last [`ServerConn::reset`].
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// Payload bytes the request being received still has to come (0 between requests).
    pub fn payload_remaining(&self) -> usize {
        self.decoder.payload_remaining() as usize
    }

    /// Lends the staging buffer a WRITE's payload fills, for bytes the caller takes in outside
    /// [`ServerConn::handle_input`] (a receive path that puts stream bytes straight there,
    /// e.g. smoltcp's `RxSink`): `None` unless a WRITE with its buffer is under way. Until
    /// [`ServerConn::payload_placed`] gives it back, `handle_input` must not be called.
    pub fn lend_payload(&mut self) -> Option<LentPayload> {
        let len = self.payload_remaining();
        let crc = self.decoder.payload_crc_so_far();
        match &mut self.pending {
            Some(Pending::Write {
                buf: buf @ Some(_),
                filled,
                lent,
                ..
            }) if len > 0 => {
                *lent = true;
                Some(LentPayload {
                    buf: buf.take()?,
                    at: *filled,
                    len,
                    crc,
                })
            }
            _ => None,
        }
    }

    /// Gives back a lent buffer with the `placed` bytes put at its `at`, and `crc`: the
    /// lent `crc` continued over them (`crc32c_append`):
    /// they count as payload received (the WRITE runs if they were the last).
    pub fn payload_placed<S: ChunkStore + 'static>(
        &mut self,
        back: LentPayload,
        placed: usize,
        crc: u32,
        ctx: &mut ServeCtx<'_, S>,
    ) {
        let Some(Pending::Write {
            buf: buf @ None,
            filled,
            lent: lent @ true,
            ..
        }) = &mut self.pending
        else {
            return;
        };
        debug_assert!(*filled == back.at && placed <= back.len);
        *buf = Some(back.buf);
        *lent = false;
        *filled += placed;
        self.decoder.payload_placed(placed as u32, crc);
        // The End event (the WRITE runs), if that was the payload's last byte.
        self.handle_input(&[], ctx);
    }

    /// Feeds received bytes, runs every complete request (inline, or by submitting it to the
    /// storage workers), queues responses. Returns how many bytes were taken: fewer than given
    /// means back-pressure (call again with the rest once output has drained, buffers are free
    /// or the storage queue has room). Also call it with no input to retry a request waiting
    /// for one of those.
    pub fn handle_input<S: ChunkStore + 'static>(
        &mut self,
        mut input: &[u8],
        ctx: &mut ServeCtx<'_, S>,
    ) -> usize {
        let given = input.len();
        loop {
            // A request whose header arrived is finished even after end of input or during
            // shutdown (it may have waited for a staging buffer).
            if !self.resume_pending(ctx) {
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
                Some(Event::Header(h)) => {
                    self.started = ctx.now;
                    self.on_header(h, ctx)
                }
                Some(Event::Payload(piece)) => {
                    if let Some(Pending::Write {
                        buf: Some(buf),
                        filled,
                        ..
                    }) = &mut self.pending
                    {
                        // The decoder took the piece's CRC just before: the copy reads it
                        // from the cache.
                        copies::count(Pass::Socket, piece.len());
                        buf.as_mut_slice()[*filled..*filled + piece.len()].copy_from_slice(piece);
                        *filled += piece.len();
                    }
                }
                Some(Event::End(verdict)) => match self.pending.take() {
                    Some(Pending::Write { header, buf, .. }) => match verdict {
                        Ok(()) => self.run_write(header, buf, ctx),
                        Err(e) => {
                            ctx.stats.bad_checksums += 1;
                            self.queue_error(header.request_id, Op::Write, e.status(), ctx);
                        }
                    },
                    Some(other) => {
                        // Not reached: a waiting READ or LIST, or a submission, stops the loop before its
                        // End is fed.
                        self.pending = Some(other);
                    }
                    None => {}
                },
                Some(Event::Rejected(r)) => {
                    ctx.stats.rejected_frames += 1;
                    ctx.stats.errors += 1;
                    let op = Op::from_code(r.op).map_or(OP_OTHER, op_slot);
                    ctx.stats.requests.answered(op, r.error.status(), None);
                    self.push(r.request_id.unwrap_or(0), r.error_response());
                    if r.must_close() {
                        self.closing = true;
                        ctx.stats.connections_closed_for_errors += 1;
                    } else if self.decoder.payload_remaining() > 0 {
                        self.pending = Some(Pending::Discard);
                    }
                }
            }
        }
        given - input.len()
    }

    /// Completes a request that waited for a staging buffer or for room in the storage queue.
    /// False while it still waits.
    fn resume_pending<S: ChunkStore + 'static>(&mut self, ctx: &mut ServeCtx<'_, S>) -> bool {
        let held = self.held_large(ctx.staging);
        match &mut self.pending {
            Some(Pending::Write {
                header,
                buf: buf @ None,
                lent: false,
                ..
            }) if header_payload_len(header) > 0 => {
                match ctx.staging.alloc_shared(header_payload_len(header), held) {
                    Some(b) => {
                        *buf = Some(b);
                        true
                    }
                    None => false,
                }
            }
            Some(Pending::Buffer { header }) => {
                let header = *header;
                self.pending = None;
                self.on_header(header, ctx);
                // Still waiting if on_header parked it again.
                !self.is_waiting()
            }
            Some(Pending::Submit { .. }) => {
                let Some(Pending::Submit {
                    job,
                    request_id,
                    op,
                    large,
                }) = self.pending.take()
                else {
                    unreachable!()
                };
                self.submit(job, request_id, op, large, ctx);
                !self.is_waiting()
            }
            _ => true,
        }
    }

    fn on_header<S: ChunkStore + 'static>(&mut self, h: RequestHeader, ctx: &mut ServeCtx<'_, S>) {
        let op = h.request.op();
        if self.out.iter().any(|o| o.request_id == h.request_id) {
            self.queue_error(h.request_id, op, Status::DuplicateRequestId, ctx);
            if header_payload_len(&h) > 0 {
                self.pending = Some(Pending::Discard);
            }
            return;
        }
        let id = h.request_id;
        match h.request {
            Request::Ping => {
                ctx.stats.pings += 1;
                let took = ctx.now.saturating_duration_since(self.started);
                ctx.stats
                    .requests
                    .answered(op_slot(Op::Ping), Status::Ok, Some(took));
                self.push(id, ResponseHeader::ping(id));
            }
            Request::Write { len, .. } => {
                let buf = if len == 0 {
                    None
                } else {
                    let b = ctx
                        .staging
                        .alloc_shared(len as usize, self.held_large(ctx.staging));
                    if b.is_none() {
                        ctx.stats.staging_waits += 1;
                    }
                    b
                };
                self.pending = Some(Pending::Write {
                    header: h,
                    buf,
                    filled: 0,
                    lent: false,
                });
            }
            Request::Read {
                chunk_id,
                offset,
                len,
            } => {
                // A store called inline that lends its bytes: the answer is sent straight from
                // them, with no staging copy.
                if !ctx.storage.uses_workers() && len > 0 {
                    if let Some(r) = ctx
                        .storage
                        .store()
                        .read_shared(chunk_id, offset, len as usize)
                    {
                        let result = r.map(Outcome::Lent).map_err(|e| e.status());
                        let took = ctx.now.saturating_duration_since(self.started);
                        let (header, payload) = answer(id, op, result, took, ctx.stats);
                        self.push_payload(id, header, payload);
                        return;
                    }
                }
                let Ok(buf) = self.answer_buffer(len as usize, h, ctx) else {
                    return;
                };
                let large = buf.as_ref().is_some_and(|b| ctx.staging.is_large(b));
                let work = Work::Read {
                    chunk: chunk_id,
                    offset,
                    buf,
                };
                self.start(work, id, op, large, ctx);
            }
            Request::Delete { chunk_id } => {
                self.start(Work::Delete { chunk: chunk_id }, id, op, false, ctx)
            }
            Request::Stat { chunk_id } => {
                self.start(Work::Stat { chunk: chunk_id }, id, op, false, ctx)
            }
            Request::List { after, max } => {
                // The page is capped whatever was asked: the answer is bounded by the payload
                // limit and LIST_PAGE_MAX.
                let cap = self.decoder.limits().list_entries_max();
                if max > 0 && cap == 0 {
                    self.queue_error(id, op, Status::TooLarge, ctx);
                    return;
                }
                let page = max.min(cap) as usize;
                let Ok(buf) = self.answer_buffer(page * LIST_ENTRY_LEN, h, ctx) else {
                    return;
                };
                let large = buf.as_ref().is_some_and(|b| ctx.staging.is_large(b));
                let work = Work::List {
                    after,
                    max: page,
                    buf,
                };
                self.start(work, id, op, large, ctx);
            }
        }
    }

    fn run_write<S: ChunkStore + 'static>(
        &mut self,
        h: RequestHeader,
        buf: Option<PoolBuf>,
        ctx: &mut ServeCtx<'_, S>,
    ) {
        let Request::Write {
            chunk_id,
            offset,
            crc,
            ..
        } = h.request
        else {
            return;
        };
        let large = buf.as_ref().is_some_and(|b| ctx.staging.is_large(b));
        let work = Work::Write {
            chunk: chunk_id,
            offset,
            buf,
            crc,
        };
        self.start(work, h.request_id, Op::Write, large, ctx);
    }

    /// Hands a store call to the storage path under a new sequence number.
    fn start<S: ChunkStore + 'static>(
        &mut self,
        work: Work,
        request_id: u64,
        op: Op,
        large: bool,
        ctx: &mut ServeCtx<'_, S>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let job = Job {
            tag: self.tag,
            seq,
            work,
        };
        self.submit(job, request_id, op, large, ctx);
    }

    fn submit<S: ChunkStore + 'static>(
        &mut self,
        job: Job,
        request_id: u64,
        op: Op,
        large: bool,
        ctx: &mut ServeCtx<'_, S>,
    ) {
        let seq = job.seq;
        match ctx.storage.submit(job) {
            Submitted::Done(done) => {
                ctx.stats.requests.stored(op_slot(op), done.took);
                let took = ctx.now.saturating_duration_since(self.started);
                let (header, payload) = answer(request_id, op, done.result, took, ctx.stats);
                self.push_payload(request_id, header, payload);
            }
            Submitted::Queued => {
                self.waiting += 1;
                self.out.push_back(Outgoing {
                    request_id,
                    header: [0; ResponseHeader::HEADER_LEN],
                    payload: None,
                    sent: 0,
                    waiting: Some(Waiting {
                        seq,
                        since: ctx.now,
                        started: self.started,
                        op,
                        large,
                    }),
                });
            }
            Submitted::Full(job) => {
                ctx.stats.storage_waits += 1;
                self.pending = Some(Pending::Submit {
                    job,
                    request_id,
                    op,
                    large,
                });
            }
        }
    }

    /// Takes the result of one of this connection's store jobs (one whose tag is
    /// [`ServerConn::tag`]): its answer becomes ready to send. A result that comes after its
    /// request timed out is dropped (and counted). `now` times the request.
    pub(crate) fn complete(&mut self, done: Done, now: Instant, stats: &mut ServerStats) {
        let Some(o) = self
            .out
            .iter_mut()
            .find(|o| o.waiting.is_some_and(|w| w.seq == done.seq))
        else {
            stats.storage_late += 1;
            return;
        };
        let Some(w) = o.waiting.take() else { return };
        self.waiting -= 1;
        stats.requests.stored(op_slot(w.op), done.took);
        let took = now.saturating_duration_since(w.started);
        let (header, payload) = answer(o.request_id, w.op, done.result, took, stats);
        o.header = header.to_bytes();
        o.payload = payload;
    }

    /// Answers [`Status::Timeout`] for each store call running longer than `timeout`.
    pub fn expire(&mut self, now: Instant, timeout: Duration, stats: &mut ServerStats) {
        if self.waiting == 0 {
            return;
        }
        for o in self.out.iter_mut() {
            let Some(w) = o.waiting else { continue };
            if now.saturating_duration_since(w.since) < timeout {
                continue;
            }
            o.waiting = None;
            self.waiting -= 1;
            stats.storage_timeouts += 1;
            stats.errors += 1;
            let took = now.saturating_duration_since(w.started);
            stats
                .requests
                .answered(op_slot(w.op), Status::Timeout, Some(took));
            o.header =
                ResponseHeader::error(o.request_id, w.op.code(), Status::Timeout, false).to_bytes();
        }
    }

    /// Responses waiting for a store call.
    pub fn storage_waiting(&self) -> usize {
        self.waiting
    }

    /// A staging buffer of `len` bytes for the answer to `h` (`None` for 0 bytes), or
    /// `Err(())` when none is free: `h` then waits in `pending` until one is (counted).
    fn answer_buffer<S: ChunkStore + 'static>(
        &mut self,
        len: usize,
        h: RequestHeader,
        ctx: &mut ServeCtx<'_, S>,
    ) -> Result<Option<PoolBuf>, ()> {
        if len == 0 {
            return Ok(None);
        }
        match ctx.staging.alloc_shared(len, self.held_large(ctx.staging)) {
            Some(b) => Ok(Some(b)),
            None => {
                ctx.stats.staging_waits += 1;
                self.pending = Some(Pending::Buffer { header: h });
                Err(())
            }
        }
    }

    fn queue_error<S: ChunkStore + 'static>(
        &mut self,
        id: u64,
        op: Op,
        status: Status,
        ctx: &mut ServeCtx<'_, S>,
    ) {
        let stats = &mut *ctx.stats;
        stats.errors += 1;
        stats.corrupt += u64::from(status == Status::Corrupt);
        let took = ctx.now.saturating_duration_since(self.started);
        stats.requests.answered(op_slot(op), status, Some(took));
        self.push(id, ResponseHeader::error(id, op.code(), status, false));
    }

    /// Queues an answer without payload.
    fn push(&mut self, request_id: u64, header: ResponseHeader) {
        self.push_payload(request_id, header, None);
    }

    fn push_payload(&mut self, request_id: u64, header: ResponseHeader, payload: Option<Payload>) {
        self.out.push_back(Outgoing {
            request_id,
            header: header.to_bytes(),
            payload,
            sent: 0,
            waiting: None,
        });
    }

    /// Large staging buffers this connection holds: in queued answers, in store jobs, and in a
    /// store call waiting for queue room.
    fn held_large(&self, staging: &Staging) -> usize {
        let queued = self
            .out
            .iter()
            .filter(|o| {
                o.waiting.is_some_and(|w| w.large)
                    || matches!(&o.payload, Some(Payload::Buf(b)) if staging.is_large(b))
            })
            .count();
        queued
            + usize::from(matches!(
                self.pending,
                Some(Pending::Submit { large: true, .. })
            ))
    }

    /// The peer closed its sending side. A frame cut short is counted as a protocol error and
    /// dropped; a request whose header arrived (waiting for a staging buffer or for room in the
    /// storage queue) is still answered: keep calling [`ServerConn::handle_input`] (with no
    /// input) while [`ServerConn::is_waiting`].
    pub fn handle_eof(&mut self, stats: &mut ServerStats) {
        if !self.eof && !self.closing {
            let cut = match &self.pending {
                // A complete READ or LIST header is not a cut frame, whatever the decoder still holds.
                Some(Pending::Buffer { .. } | Pending::Submit { .. }) => false,
                _ => self.decoder.finish().is_err(),
            };
            if cut {
                stats.connections_closed_for_errors += 1;
            }
        }
        self.eof = true;
        if !matches!(
            self.pending,
            Some(Pending::Buffer { .. } | Pending::Submit { .. })
        ) {
            self.pending = None;
        }
    }

    /// Whether a request waits for a staging buffer or for room in the storage queue: call
    /// [`ServerConn::handle_input`] again (input or not) once either may have come.
    pub fn is_waiting(&self) -> bool {
        match &self.pending {
            Some(Pending::Buffer { .. } | Pending::Submit { .. }) => true,
            Some(Pending::Write {
                header,
                buf: None,
                lent: false,
                ..
            }) => header_payload_len(header) > 0,
            _ => false,
        }
    }

    /// Stops taking requests (shutdown): queued responses still go out.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// The next bytes to send, if any. Answers go out as they become ready, not in request
    /// order: one whose store call still runs waits, and answers without payload overtake a
    /// READ answer whose payload has not started, so small answers do not wait behind
    /// megabytes.
    pub fn next_output(&mut self) -> Option<&[u8]> {
        let front = self.out.front()?;
        if front.sent == 0 && (front.waiting.is_some() || front.payload.is_some()) {
            let ready = |o: &Outgoing| o.waiting.is_none();
            let pick = self
                .out
                .iter()
                .position(|o| ready(o) && o.payload.is_none())
                .or_else(|| self.out.iter().position(ready))?;
            self.out.swap(0, pick);
        }
        let o = self.out.front()?;
        Some(if o.sent < ResponseHeader::HEADER_LEN {
            &o.header[o.sent..]
        } else {
            let p = o.payload.as_ref().map_or(&[][..], Payload::as_slice);
            &p[o.sent - ResponseHeader::HEADER_LEN..]
        })
    }

    /// The answer being sent, when its header is out and its payload is bytes the store
    /// lent: the snapshot, and how much of it is sent. A transport that can send from the
    /// snapshot without copying it (smoltcp patch 15) does so, and reports with
    /// [`ServerConn::advance_output_lent`].
    pub fn lent_payload(&self) -> Option<(&SharedRead, usize)> {
        let o = self.out.front()?;
        let done = o.sent.checked_sub(ResponseHeader::HEADER_LEN)?;
        match &o.payload {
            Some(Payload::Shared(sr)) if o.waiting.is_none() && done < sr.len => Some((sr, done)),
            _ => None,
        }
    }

    /// Records that `n` bytes of the payload of [`ServerConn::lent_payload`] were sent
    /// without a copy.
    pub fn advance_output_lent(&mut self, n: usize) {
        if let Some(o) = self.out.front_mut() {
            o.sent += n;
            if o.sent >= o.len() {
                self.out.pop_front();
            }
        }
    }

    /// Records that `n` bytes of [`ServerConn::next_output`] were sent.
    pub fn advance_output(&mut self, n: usize) {
        if let Some(o) = self.out.front_mut() {
            if o.sent >= ResponseHeader::HEADER_LEN {
                copies::count(Pass::Socket, n);
            } else {
                let header_left = ResponseHeader::HEADER_LEN - o.sent;
                copies::count(Pass::Socket, n.saturating_sub(header_left));
            }
            o.sent += n;
            if o.sent >= o.len() {
                self.out.pop_front();
            }
        }
    }

    /// Responses queued or partly sent (including those waiting for a store call).
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Requests taken and not fully answered: queued answers and a request waiting in
    /// `pending` (a WRITE whose payload is arriving, one waiting for a buffer or queue room).
    pub fn in_flight(&self) -> usize {
        let pending = self
            .pending
            .as_ref()
            .is_some_and(|p| !matches!(p, Pending::Discard));
        self.out.len() + usize::from(pending)
    }

    /// Whether the transport should close: a protocol error (or end of input, or shutdown) and
    /// every queued response sent.
    pub fn should_close(&self) -> bool {
        (self.closing || self.eof || self.draining) && self.out.is_empty() && !self.is_waiting()
    }
}

/// Refused connections a server keeps at once while their peers read why (beyond this, a
/// refusal is a reset: under a flood of connections, refusals must not hold resources).
pub(crate) const REFUSED_MAX: usize = 16;

/// How long a refused connection is kept for its peer to read why and close.
pub(crate) const REFUSED_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// The answer that refuses a whole connection (request id 0, op 0, `CLOSING`):
/// [`Status::ShuttingDown`] during shutdown, else [`Status::TooManyConnections`].
pub(crate) fn refusal(shutting_down: bool) -> (Status, [u8; ResponseHeader::HEADER_LEN]) {
    let status = if shutting_down {
        Status::ShuttingDown
    } else {
        Status::TooManyConnections
    };
    (status, ResponseHeader::error(0, 0, status, true).to_bytes())
}

/// The tag of a connection in slot `slot` of a server, accepted as its `generation`-th (the
/// slot's count of accepts): a store result for an earlier connection in that slot carries
/// another tag and is dropped. [`take_results`] reads the slot back from the low 32 bits.
pub(crate) fn conn_tag(slot: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | slot as u64
}

/// Hands each finished store call to its connection: `route(slot, done)` gives it to the
/// connection in slot `done.tag`'s low 32 bits if that connection still has that tag (and
/// returns true); a result for a connection that went is dropped (its buffer returns to its
/// pool) and counted. Returns whether any connection took one.
pub(crate) fn take_results<S: ChunkStore + 'static>(
    storage: &mut Storage<S>,
    stats: &mut ServerStats,
    mut route: impl FnMut(usize, Done, &mut ServerStats) -> bool,
) -> bool {
    let mut any = false;
    while let Some(done) = storage.collect() {
        let slot = (done.tag & u64::from(u32::MAX)) as usize;
        if route(slot, done, stats) {
            any = true;
        } else {
            stats.storage_late += 1;
        }
    }
    any
}

/// The answer to a finished store call, counted, for a request whose header came `took` ago.
fn answer(
    id: u64,
    op: Op,
    result: Result<Outcome, Status>,
    took: std::time::Duration,
    stats: &mut ServerStats,
) -> (ResponseHeader, Option<Payload>) {
    let status = match &result {
        Ok(_) => Status::Ok,
        Err(s) => *s,
    };
    stats.requests.answered(op_slot(op), status, Some(took));
    match result {
        Ok(Outcome::Written { size, len }) => {
            stats.writes += 1;
            stats.bytes_written += len as u64;
            (ResponseHeader::write(id, size), None)
        }
        Ok(Outcome::Read { buf, info, crc }) => {
            stats.reads += 1;
            stats.bytes_read += info.len as u64;
            (
                ResponseHeader::read(id, info.len as u32, crc, info.chunk_size),
                buf.map(Payload::Buf),
            )
        }
        Ok(Outcome::Lent(sr)) => {
            stats.reads += 1;
            stats.bytes_read += sr.len as u64;
            let header = ResponseHeader::read(id, sr.len as u32, sr.crc, sr.chunk_size);
            (header, (sr.len > 0).then_some(Payload::Shared(sr)))
        }
        Ok(Outcome::Deleted) => {
            stats.deletes += 1;
            (ResponseHeader::delete(id), None)
        }
        Ok(Outcome::Stat(st)) => {
            stats.stats += 1;
            (ResponseHeader::stat(id, st.size, st.crc), None)
        }
        Ok(Outcome::Listed {
            buf,
            entries,
            crc,
            more,
        }) => {
            stats.lists += 1;
            let header = ResponseHeader::list(id, entries as u32, crc, more);
            (header, buf.map(Payload::Buf))
        }
        Err(status) => {
            stats.errors += 1;
            stats.corrupt += u64::from(status == Status::Corrupt);
            (ResponseHeader::error(id, op.code(), status, false), None)
        }
    }
}

fn header_payload_len(h: &RequestHeader) -> usize {
    match h.request {
        Request::Write { len, .. } => len as usize,
        _ => 0,
    }
}

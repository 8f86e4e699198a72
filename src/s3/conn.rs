//! One HTTP connection of the object service, sans-IO: bytes in ([`HttpConn::rx_spare`],
//! [`HttpConn::rx_filled`]), bytes out ([`HttpConn::tx_pending`], [`HttpConn::tx_sent`]), and
//! [`Engine::process`] in between, which parses requests, checks their signatures, runs the
//! S3 operation on [`Objects`] and writes the answer. The transports ([`super::transport`]) only
//! move bytes.
//!
//! Bounded: a connection holds at most [`RX_MAX`] received bytes and [`TX_MAX`] bytes of answer
//! (an object's bytes are read from the store as the answer drains, never whole). Requests on
//! one connection are answered in order: the next is parsed only when the last answer is out.
//!
//! Timeouts: a request head must arrive within [`Limits::head_timeout`] of its first byte (a
//! client sending a byte a second is cut off, answered `RequestTimeout`), a body must keep
//! moving and an answer must keep draining (no gap longer than [`Limits::idle_timeout`]), and
//! an idle keep-alive connection is closed after `idle_timeout` without a word (counted in
//! [`S3Stats::idle_closed`], not as a timeout). [`HttpConn::ending`] tells which.
//!
//! Framing: a body is read only by the requests that take one (PUT, CompleteMultipartUpload);
//! any other request's body is read and dropped, or the connection closes, so body bytes are
//! never read as a request. After an error answer to an `Expect: 100-continue` request whose
//! body was not asked for, the connection closes (the client may send that body or not).

use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::http::{self, HttpError, Method, Parsed, RequestHead};
use super::objects::{ListQuery, ObjError, ObjectInfo, Objects, Put, PutMeta};
use super::sigv4::{self, AuthError, Keys, Payload};
use super::xml;
use crate::chunk::ChunkStore;
use crate::time::Instant;

/// Received bytes a connection holds: a request head (at most [`http::HEAD_MAX`]) and the
/// body bytes that came behind it.
pub const RX_MAX: usize = 256 << 10;
/// Answer bytes a connection holds before the transport takes them.
pub const TX_MAX: usize = 256 << 10;
/// A body the server reads only to discard it (an unwanted `CreateBucketConfiguration`, the
/// body of a refused request on a connection worth keeping): larger ones close the connection.
const DISCARD_MAX: u64 = 1 << 20;

/// Limits of the object service.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From the first byte of a request head to its end.
    pub head_timeout: Duration,
    /// The longest silence in the middle of a body, and of an idle keep-alive connection.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Counters of the object service (all connections, all transports).
#[derive(Debug, Clone, Copy, Default)]
pub struct S3Stats {
    /// Requests answered (any status).
    pub requests: u64,
    /// GET and HEAD of objects answered with the object.
    pub gets: u64,
    /// Objects and parts stored.
    pub puts: u64,
    /// DELETEs answered.
    pub deletes: u64,
    /// Listings answered (buckets, objects, parts, uploads).
    pub lists: u64,
    /// Answers with a status of 400 and above.
    pub errors: u64,
    /// Requests refused for their signature or credentials (403).
    pub auth_failures: u64,
    /// Requests that broke HTTP (malformed, too large, lying lengths): answered 4xx and the
    /// connection closed.
    pub bad_requests: u64,
    /// Connections closed because a head or body did not arrive in time.
    pub timeouts: u64,
    /// Idle keep-alive connections closed after [`Limits::idle_timeout`] (not an error).
    pub idle_closed: u64,
    /// Object bytes stored.
    pub bytes_in: u64,
    /// Object bytes sent.
    pub bytes_out: u64,
}

/// What a connection is doing.
#[expect(
    clippy::large_enum_variant,
    reason = "one State per connection, kept in place: boxing would allocate per request"
)]
enum State {
    /// Waiting for (more of) a request head.
    Head,
    /// Receiving an object's or part's bytes.
    PutBody {
        put: Put,
        remaining: u64,
        sha: Option<(Sha256, [u8; 32])>,
        meta: PutMeta,
        bucket: String,
        key: String,
    },
    /// Receiving a small body this server reads whole (`CompleteMultipartUpload`).
    SmallBody {
        body: Vec<u8>,
        remaining: u64,
        sha: Option<(Sha256, [u8; 32])>,
        bucket: String,
        key: String,
        upload_id: String,
    },
    /// Reading a body to throw it away, then serving the next request.
    Discard { remaining: u64 },
    /// Sending an object's bytes from `next` up to `end`.
    GetBody {
        info: ObjectInfo,
        next: u64,
        end: u64,
    },
    /// The answer is the last thing this connection sends.
    Closing,
}

/// Why a connection ended ([`HttpConn::ending`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Its last answer is out: the client asked to close or closed its half, or a request
    /// broke HTTP and was answered, or the service is shutting down.
    Finished,
    /// An idle keep-alive connection closed after [`Limits::idle_timeout`], without a word.
    Idle,
    /// A head, a body or the draining of an answer was too slow (counted in
    /// [`S3Stats::timeouts`]); what it had not taken of the answer is dropped.
    TimedOut,
}

/// One connection's buffers and state.
pub struct HttpConn {
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    tx: Vec<u8>,
    tx_off: usize,
    state: State,
    /// When the current head's first byte came, or the last byte of a body moved.
    since: Instant,
    /// A head has started arriving.
    head_started: bool,
    keep_alive: bool,
    peer_closed: bool,
    /// The request being answered is a HEAD: answers carry no body.
    head_only: bool,
    request_seq: u64,
    /// Set when a timeout closes the connection.
    end: Option<Ending>,
    /// The transport took answer bytes since the engine last looked.
    tx_moved: bool,
    /// Given up: close now, whatever is left to send.
    cut: bool,
}

impl HttpConn {
    /// A new connection, accepted at `now`.
    pub fn new(now: Instant) -> HttpConn {
        HttpConn {
            rx: vec![0; RX_MAX].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            tx: Vec::with_capacity(4096),
            tx_off: 0,
            state: State::Head,
            since: now,
            head_started: false,
            keep_alive: true,
            peer_closed: false,
            head_only: false,
            request_seq: 0,
            end: None,
            tx_moved: false,
            cut: false,
        }
    }

    /// Where the transport puts received bytes (empty when the connection holds
    /// [`RX_MAX`] already, or will read no more).
    pub fn rx_spare(&mut self) -> &mut [u8] {
        if matches!(self.state, State::Closing) {
            return &mut [];
        }
        if self.rx_start > 0 && self.rx_start == self.rx_end {
            self.rx_start = 0;
            self.rx_end = 0;
        } else if self.rx_start > RX_MAX / 2 {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        &mut self.rx[self.rx_end..]
    }

    /// `n` bytes were put at the start of [`HttpConn::rx_spare`].
    pub fn rx_filled(&mut self, n: usize, now: Instant) {
        self.rx_end += n;
        if n > 0 && !matches!(self.state, State::Head) {
            self.since = now;
        }
    }

    /// The peer closed its sending half: what it sent is all there will be.
    pub fn peer_closed(&mut self) {
        self.peer_closed = true;
    }

    /// Answer bytes waiting for the transport.
    pub fn tx_pending(&self) -> &[u8] {
        &self.tx[self.tx_off..]
    }

    /// The transport took `n` bytes of [`HttpConn::tx_pending`].
    pub fn tx_sent(&mut self, n: usize) {
        self.tx_moved |= n > 0;
        self.tx_off += n;
        if self.tx_off == self.tx.len() {
            self.tx.clear();
            self.tx_off = 0;
        }
    }

    /// The connection should be closed: everything is sent, or the peer was too slow to take
    /// it ([`Ending::TimedOut`]).
    pub fn is_done(&self) -> bool {
        self.cut
            || self.tx_pending().is_empty()
                && (matches!(self.state, State::Closing)
                    || (self.peer_closed
                        && matches!(self.state, State::Head)
                        && self.rx_start == self.rx_end))
    }

    /// Why the connection ended, once [`HttpConn::is_done`]; `None` before.
    pub fn ending(&self) -> Option<Ending> {
        self.is_done()
            .then_some(self.end.unwrap_or(Ending::Finished))
    }

    /// No request is in progress (between requests, nothing left to send).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Head)
            && self.rx_start == self.rx_end
            && self.tx_pending().is_empty()
    }

    /// Stops after the answer in progress (shutdown).
    pub fn close_after_answer(&mut self) {
        self.keep_alive = false;
        if self.is_idle() {
            self.state = State::Closing;
        }
    }
}

/// Where an answer's status and S3 error come from.
struct Failure {
    status: u16,
    code: &'static str,
    message: String,
}

impl Failure {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            code,
            message: message.into(),
        }
    }
}

impl Failure {
    /// The body's SHA-256 is not the `x-amz-content-sha256` the client signed.
    fn sha_mismatch() -> Failure {
        Failure::new(
            400,
            "XAmzContentSHA256Mismatch",
            "the body's SHA-256 is not the x-amz-content-sha256 given",
        )
    }
}

/// Whether a body hashed as it came matches the SHA-256 its signature declared (`None`: an
/// unsigned payload, nothing to compare).
fn sha_matches(sha: Option<(Sha256, [u8; 32])>) -> bool {
    sha.is_none_or(|(h, expected)| h.finalize().as_slice() == expected)
}

impl From<ObjError> for Failure {
    fn from(e: ObjError) -> Failure {
        Failure::new(e.status(), e.s3_code(), e.to_string())
    }
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Failure {
        Failure::new(e.status(), e.s3_code(), e.to_string())
    }
}

impl From<HttpError> for Failure {
    fn from(e: HttpError) -> Failure {
        Failure::new(e.status(), e.s3_code(), e.to_string())
    }
}

/// A request's target: bucket and key percent-decoded, query pairs decoded.
struct Target {
    bucket: String,
    key: String,
    query: Vec<(String, String)>,
}

impl Target {
    fn parse(head: &RequestHead) -> Result<Target, Failure> {
        let path = http::percent_decode(&head.path)?;
        let path = String::from_utf8(path)
            .map_err(|_| Failure::new(400, "InvalidURI", "the path is not UTF-8"))?;
        let rest = path.strip_prefix('/').unwrap_or(&path);
        let (bucket, key) = match rest.split_once('/') {
            Some((b, k)) => (b.to_string(), k.to_string()),
            None => (rest.to_string(), String::new()),
        };
        Ok(Target {
            bucket,
            key,
            query: http::query_pairs(&head.query)?,
        })
    }

    fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }

    /// The number `name` (`max-keys`, `max-parts`, ...): `default` when absent or empty, at
    /// most `cap`; anything but a number is `400 InvalidArgument`, as S3 answers it.
    fn number(&self, name: &str, default: u32, cap: u32) -> Result<u32, Failure> {
        match self.q(name) {
            None | Some("") => Ok(default.min(cap)),
            Some(v) => v.parse::<u32>().map(|n| n.min(cap)).map_err(|_| {
                Failure::new(400, "InvalidArgument", format!("{name} must be a number"))
            }),
        }
    }
}

/// The object service's logic, shared by every connection of every transport.
pub struct Engine<S: ChunkStore> {
    objects: Objects<S>,
    keys: Keys,
    limits: Limits,
    region: String,
    stats: S3Stats,
    scratch: Vec<u8>,
    next_request: u64,
}

impl<S: ChunkStore> Engine<S> {
    /// An engine serving `objects` to the holders of `keys`.
    pub fn new(objects: Objects<S>, keys: Keys, limits: Limits) -> Engine<S> {
        Engine {
            objects,
            keys,
            limits,
            region: "us-east-1".to_string(),
            stats: S3Stats::default(),
            scratch: vec![0; TX_MAX],
            next_request: 1,
        }
    }

    /// The objects it serves.
    pub fn objects(&self) -> &Objects<S> {
        &self.objects
    }

    /// Its counters.
    pub fn stats(&self) -> S3Stats {
        self.stats
    }

    /// A connection that ended: an object it was writing is dropped with its chunks.
    pub fn discard(&mut self, c: HttpConn) {
        if let State::PutBody { put, .. } = c.state {
            self.objects.abort(put);
        }
    }

    /// Serves what `c` received and queues the answers; returns whether anything moved.
    /// `wall` is the wall clock (for signatures and mtimes), `now` the loop's clock.
    pub fn process(&mut self, c: &mut HttpConn, now: Instant, wall: SystemTime) -> bool {
        let mut progress = false;
        // Bounded work per call, so one connection cannot hold the loop.
        for _ in 0..64 {
            let step = match c.state {
                State::Head => self.on_head(c, now, wall),
                State::PutBody { .. } => self.on_put_body(c),
                State::SmallBody { .. } => self.on_small_body(c),
                State::Discard { .. } => self.on_discard(c),
                State::GetBody { .. } => self.on_get_body(c),
                State::Closing => false,
            };
            if !step {
                break;
            }
            progress = true;
        }
        self.check_time(c, now);
        progress
    }

    /// Closes `c` when its peer is too slow: a head not complete `head_timeout` after its
    /// first byte, or a body, or the draining of an answer, stalled for `idle_timeout`
    /// (answered `RequestTimeout` when no answer to the request was begun, else cut off); or
    /// nothing at all for `idle_timeout` between requests (closed silently).
    fn check_time(&mut self, c: &mut HttpConn, now: Instant) {
        // The answer moving is the peer's progress too; a head's clock runs from its first
        // byte whatever else happens.
        if std::mem::take(&mut c.tx_moved) && !(matches!(c.state, State::Head) && c.head_started) {
            c.since = now;
        }
        let answering = !c.tx_pending().is_empty();
        let (limit, answer) = match &c.state {
            State::Head if c.head_started => (self.limits.head_timeout, true),
            State::Head => (self.limits.idle_timeout, false),
            State::PutBody { .. } | State::SmallBody { .. } => (self.limits.idle_timeout, true),
            // The request's answer is begun: a refused request's body being dropped, or an
            // object being sent.
            State::Discard { .. } | State::GetBody { .. } => (self.limits.idle_timeout, false),
            State::Closing if answering => (self.limits.idle_timeout, false),
            State::Closing => return,
        };
        if now.saturating_duration_since(c.since) <= limit {
            return;
        }
        if matches!(c.state, State::Head) && !c.head_started && !answering {
            self.stats.idle_closed += 1;
            c.end = Some(Ending::Idle);
            c.state = State::Closing;
            return;
        }
        if c.end.is_some() {
            // Its RequestTimeout answer was not taken either.
            c.cut = true;
            return;
        }
        self.stats.timeouts += 1;
        c.end = Some(Ending::TimedOut);
        c.keep_alive = false;
        if let State::PutBody { put, .. } = std::mem::replace(&mut c.state, State::Closing) {
            self.objects.abort(put);
        }
        if answer {
            let f = Failure::new(400, "RequestTimeout", "the request did not arrive in time");
            c.head_only = false;
            self.answer_error(c, &f, "");
            // The answer gets its own idle_timeout to be taken.
            c.since = now;
        } else {
            c.cut = true;
        }
    }

    fn on_head(&mut self, c: &mut HttpConn, now: Instant, wall: SystemTime) -> bool {
        if !c.keep_alive {
            // The last answer said `Connection: close`: whatever came after is not read.
            if c.tx_pending().is_empty() {
                c.state = State::Closing;
                return true;
            }
            return false;
        }
        if !c.tx_pending().is_empty() || c.rx_start == c.rx_end {
            return false;
        }
        if !c.head_started {
            c.head_started = true;
            c.since = now;
        }
        match http::parse_head(&c.rx[c.rx_start..c.rx_end]) {
            Ok(Parsed::Partial) => {
                if c.peer_closed {
                    self.stats.bad_requests += 1;
                    c.state = State::Closing;
                    return true;
                }
                false
            }
            Ok(Parsed::Complete { head, len }) => {
                c.rx_start += len;
                c.head_started = false;
                c.since = now;
                c.request_seq += 1;
                c.keep_alive = head.keep_alive;
                c.head_only = head.method == Method::Head;
                self.dispatch(c, head, wall);
                true
            }
            Err(e) => {
                self.stats.bad_requests += 1;
                c.keep_alive = false;
                c.head_only = false;
                self.answer_error(c, &e.into(), "");
                c.state = State::Closing;
                true
            }
        }
    }

    fn request_id(&mut self) -> String {
        self.next_request += 1;
        format!("{:016X}", self.next_request)
    }

    /// Writes an answer head (and `body`) into `c`.
    fn answer(&mut self, c: &mut HttpConn, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let id = self.request_id();
        self.answer_as(c, &id, status, headers, body);
    }

    /// [`Engine::answer`] under the request id `id` (one [`Engine::request_id`] gave).
    fn answer_as(
        &mut self,
        c: &mut HttpConn,
        id: &str,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        self.write_head(c, id, status, headers, body.len() as u64);
        if !c.head_only {
            c.tx.extend_from_slice(body);
        }
    }

    /// Writes an answer head whose body of `len` bytes follows from elsewhere (an object).
    fn answer_head(&mut self, c: &mut HttpConn, status: u16, headers: &[(&str, &str)], len: u64) {
        let id = self.request_id();
        self.write_head(c, &id, status, headers, len);
    }

    fn write_head(
        &mut self,
        c: &mut HttpConn,
        id: &str,
        status: u16,
        headers: &[(&str, &str)],
        len: u64,
    ) {
        self.stats.requests += 1;
        if status >= 400 {
            self.stats.errors += 1;
        }
        let mut all: Vec<(&str, &str)> = Vec::with_capacity(headers.len() + 2);
        all.push(("x-amz-request-id", id));
        all.push(("Server", "ustack"));
        all.extend_from_slice(headers);
        http::write_response_head(&mut c.tx, status, &all, len, c.keep_alive);
    }

    /// An `<Error>` answer; its body names the same request id as its header.
    fn answer_error(&mut self, c: &mut HttpConn, f: &Failure, resource: &str) {
        let id = self.request_id();
        let body = xml::error(f.code, &f.message, resource, &id);
        self.answer_as(
            c,
            &id,
            f.status,
            &[("Content-Type", "application/xml")],
            &body,
        );
    }

    /// An error answer to a request whose body (`len` bytes) is still coming: read and drop a
    /// small one, close the connection for a large one, and for one the client was to send
    /// only after `100 Continue`: after an error answer it may send it or not (RFC 9110
    /// 10.1.1), and its bytes must never be read as a request.
    fn refuse(
        &mut self,
        c: &mut HttpConn,
        f: &Failure,
        resource: &str,
        body_len: u64,
        expect: bool,
    ) {
        if f.status == 403 {
            self.stats.auth_failures += 1;
        }
        if body_len > 0 && (expect || body_len > DISCARD_MAX) {
            c.keep_alive = false;
        }
        self.answer_error(c, f, resource);
        c.state = if !c.keep_alive {
            State::Closing
        } else if body_len > 0 && !expect {
            State::Discard {
                remaining: body_len,
            }
        } else {
            State::Head
        };
    }

    fn dispatch(&mut self, c: &mut HttpConn, head: RequestHead, wall: SystemTime) {
        let body_len = head.content_length.unwrap_or(0);
        let resource = head.path.clone();
        let verified = match sigv4::verify(&head, &self.keys, wall) {
            Ok(v) => v,
            Err(e) => return self.refuse(c, &e.into(), &resource, body_len, head.expect_continue),
        };
        let sha = match verified.payload {
            Payload::Unsigned => None,
            Payload::Sha256(h) => Some((Sha256::new(), h)),
        };
        let t = match Target::parse(&head) {
            Ok(t) => t,
            Err(f) => return self.refuse(c, &f, &resource, body_len, head.expect_continue),
        };
        // Only PUT (objects, parts; a bucket's body is dropped by its route) and
        // CompleteMultipartUpload read a body. Another request's body is dropped after the
        // answer; when it is large, not sent yet (100-continue) or behind an object being
        // sent, the connection closes instead.
        let reads_body = match head.method {
            Method::Put => head.header("x-amz-copy-source").is_none(),
            Method::Post => !t.key.is_empty() && t.has("uploadId"),
            _ => false,
        };
        let unread = body_len > 0 && !reads_body;
        if unread && (head.expect_continue || body_len > DISCARD_MAX || head.method == Method::Get)
        {
            c.keep_alive = false;
        }
        match self.route(c, &head, &t, body_len, sha) {
            Err(f) => self.refuse(c, &f, &resource, body_len, head.expect_continue),
            Ok(()) if unread && c.keep_alive && matches!(c.state, State::Head) => {
                c.state = State::Discard {
                    remaining: body_len,
                };
            }
            Ok(()) => {}
        }
    }

    /// Sends `100 Continue` when the client waits for it before its body.
    fn go_on(c: &mut HttpConn, head: &RequestHead) {
        if head.expect_continue {
            c.tx.extend_from_slice(http::CONTINUE);
        }
    }

    fn route(
        &mut self,
        c: &mut HttpConn,
        head: &RequestHead,
        t: &Target,
        body_len: u64,
        sha: Option<(Sha256, [u8; 32])>,
    ) -> Result<(), Failure> {
        let bucket_op = t.key.is_empty();
        match (head.method, bucket_op) {
            (Method::Get, true) if t.bucket.is_empty() => {
                let buckets = self.objects.list_buckets()?;
                self.stats.lists += 1;
                let body = xml::list_buckets(&buckets, "ustack");
                self.answer(c, 200, &[("Content-Type", "application/xml")], &body);
            }
            (Method::Put, true) => {
                self.objects.create_bucket(&t.bucket)?;
                let loc = format!("/{}", t.bucket);
                self.answer(c, 200, &[("Location", &loc)], b"");
                if body_len > 0 {
                    if body_len > DISCARD_MAX {
                        c.keep_alive = false;
                        c.state = State::Closing;
                    } else {
                        Self::go_on(c, head);
                        c.state = State::Discard {
                            remaining: body_len,
                        };
                    }
                }
            }
            (Method::Head, true) => {
                self.objects.head_bucket(&t.bucket)?;
                let region = self.region.clone();
                self.answer(c, 200, &[("x-amz-bucket-region", &region)], b"");
            }
            (Method::Delete, true) => {
                self.objects.delete_bucket(&t.bucket)?;
                self.stats.deletes += 1;
                self.answer(c, 204, &[], b"");
            }
            (Method::Get, true) if t.has("location") => {
                self.objects.head_bucket(&t.bucket)?;
                let body = xml::location(&self.region);
                self.answer(c, 200, &[("Content-Type", "application/xml")], &body);
            }
            (Method::Get, true) if t.has("uploads") => self.list_uploads(c, t)?,
            (Method::Get, true) if t.q("list-type") == Some("2") => self.list_v2(c, t)?,
            (Method::Get, true) => {
                return Err(Failure::new(
                    501,
                    "NotImplemented",
                    "only ListObjectsV2 (list-type=2) lists a bucket here",
                ))
            }
            (Method::Get | Method::Head, false) if t.has("uploadId") => self.list_parts(c, t)?,
            (Method::Get | Method::Head, false) => self.get(c, head, t)?,
            (Method::Put, false) if head.header("x-amz-copy-source").is_some() => {
                self.copy(c, head, t)?
            }
            (Method::Put, false) => {
                let len = head.content_length.ok_or_else(|| {
                    Failure::new(411, "MissingContentLength", "a PUT needs Content-Length")
                })?;
                let part = t.q("partNumber").is_some() || t.q("uploadId").is_some();
                let put = if part {
                    let n: u32 =
                        t.q("partNumber")
                            .and_then(|p| p.parse().ok())
                            .ok_or_else(|| {
                                Failure::new(400, "InvalidArgument", "partNumber must be 1..=10000")
                            })?;
                    let id = t.q("uploadId").unwrap_or_default();
                    self.objects.begin_part(&t.bucket, &t.key, id, n, len)?
                } else {
                    self.objects.begin_put(&t.bucket, &t.key, len)?
                };
                let meta = put_meta(head)?;
                Self::go_on(c, head);
                c.state = State::PutBody {
                    put,
                    remaining: len,
                    sha,
                    meta,
                    bucket: t.bucket.clone(),
                    key: t.key.clone(),
                };
            }
            (Method::Delete, false) if t.has("uploadId") => {
                self.objects.abort_upload(
                    &t.bucket,
                    &t.key,
                    t.q("uploadId").unwrap_or_default(),
                )?;
                self.answer(c, 204, &[], b"");
            }
            (Method::Delete, false) => {
                self.objects.delete(&t.bucket, &t.key)?;
                self.stats.deletes += 1;
                self.answer(c, 204, &[], b"");
            }
            (Method::Post, false) if t.has("uploads") => {
                let meta = put_meta(head)?;
                let id = self.objects.create_upload(&t.bucket, &t.key, meta)?;
                let body = xml::initiate_multipart(&t.bucket, &t.key, &id);
                self.answer(c, 200, &[("Content-Type", "application/xml")], &body);
            }
            (Method::Post, false) if t.has("uploadId") => {
                if body_len > xml::BODY_MAX as u64 {
                    return Err(Failure::new(
                        400,
                        "MaxMessageLengthExceeded",
                        "the XML body is too large",
                    ));
                }
                Self::go_on(c, head);
                c.state = State::SmallBody {
                    body: Vec::with_capacity(body_len as usize),
                    remaining: body_len,
                    sha,
                    bucket: t.bucket.clone(),
                    key: t.key.clone(),
                    upload_id: t.q("uploadId").unwrap_or_default().to_string(),
                };
            }
            _ => {
                return Err(Failure::new(
                    501,
                    "NotImplemented",
                    format!("{} of this resource is not implemented", head.method_raw),
                ))
            }
        }
        Ok(())
    }

    fn list_v2(&mut self, c: &mut HttpConn, t: &Target) -> Result<(), Failure> {
        let max_keys = t.number("max-keys", 1000, 1000)?;
        let nonempty = |k: &str| t.q(k).filter(|v| !v.is_empty()).map(str::to_string);
        let q = ListQuery {
            prefix: t.q("prefix").unwrap_or_default().to_string(),
            delimiter: nonempty("delimiter"),
            start_after: nonempty("start-after"),
            continuation: nonempty("continuation-token"),
            max_keys,
        };
        let page = self.objects.list(&t.bucket, &q)?;
        self.stats.lists += 1;
        let entries: Vec<xml::Entry<'_>> = page
            .objects
            .iter()
            .map(|o| xml::Entry {
                key: &o.key,
                size: o.size,
                etag: &o.etag,
                mtime: o.mtime,
            })
            .collect();
        let prefixes: Vec<&str> = page.common_prefixes.iter().map(String::as_str).collect();
        let l = xml::ListV2 {
            bucket: &t.bucket,
            prefix: &q.prefix,
            delimiter: q.delimiter.as_deref(),
            start_after: q.start_after.as_deref(),
            continuation: q.continuation.as_deref(),
            max_keys,
            url: t.q("encoding-type") == Some("url"),
            truncated: page.truncated,
            next_continuation: page.next_continuation.as_deref(),
        };
        let body = xml::list_objects_v2(&l, &entries, &prefixes);
        self.answer(c, 200, &[("Content-Type", "application/xml")], &body);
        Ok(())
    }

    fn list_uploads(&mut self, c: &mut HttpConn, t: &Target) -> Result<(), Failure> {
        let prefix = t.q("prefix").unwrap_or_default();
        let max = t.number("max-uploads", 1000, 1000)?;
        let ups = self
            .objects
            .list_uploads(&t.bucket, prefix, max.saturating_add(1))?;
        self.stats.lists += 1;
        let truncated = ups.len() > max as usize;
        let entries: Vec<xml::UploadEntry<'_>> = ups
            .iter()
            .take(max as usize)
            .map(|(k, id, at)| xml::UploadEntry {
                key: k,
                upload_id: id,
                initiated: *at,
            })
            .collect();
        let body = xml::list_uploads(&t.bucket, prefix, max, truncated, &entries);
        self.answer(c, 200, &[("Content-Type", "application/xml")], &body);
        Ok(())
    }

    fn list_parts(&mut self, c: &mut HttpConn, t: &Target) -> Result<(), Failure> {
        let id = t.q("uploadId").unwrap_or_default();
        let marker = t.number("part-number-marker", 0, u32::MAX)?;
        let max = t.number("max-parts", 1000, 1000)?;
        let page = self
            .objects
            .list_parts(&t.bucket, &t.key, id, marker, max)?;
        self.stats.lists += 1;
        let parts: Vec<xml::PartEntry<'_>> = page
            .parts
            .iter()
            .map(|p| xml::PartEntry {
                number: p.number,
                etag: &p.etag,
                size: p.size,
                mtime: p.mtime,
            })
            .collect();
        let echo = xml::PartsPage {
            bucket: &t.bucket,
            key: &t.key,
            upload_id: id,
            marker,
            next_marker: page.next_marker.unwrap_or(0),
            max_parts: max,
            truncated: page.truncated,
        };
        let body = xml::list_parts(&echo, &parts);
        self.answer(c, 200, &[("Content-Type", "application/xml")], &body);
        Ok(())
    }

    fn get(&mut self, c: &mut HttpConn, head: &RequestHead, t: &Target) -> Result<(), Failure> {
        let info = self.objects.head(&t.bucket, &t.key)?;
        let size = info.size;
        let range = match head.header("range") {
            Some(r) => parse_range(r, size)?,
            None => None,
        };
        let (start, end, status) = match range {
            Some((a, b)) => (a, b, 206),
            None => (0, size, 200),
        };
        let last_modified = super::date::http_date(info.mtime);
        let content_range = format!("bytes {}-{}/{}", start, end.saturating_sub(1), size);
        let mut headers: Vec<(String, String)> = vec![
            ("ETag".into(), info.etag.clone()),
            ("Last-Modified".into(), last_modified),
            ("Accept-Ranges".into(), "bytes".into()),
            (
                "Content-Type".into(),
                info.content_type
                    .clone()
                    .unwrap_or_else(|| "binary/octet-stream".into()),
            ),
        ];
        if status == 206 {
            headers.push(("Content-Range".into(), content_range));
        }
        for (k, v) in &info.user_meta {
            headers.push((format!("x-amz-meta-{k}"), v.clone()));
        }
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.answer_head(c, status, &refs, end - start);
        self.stats.gets += 1;
        if head.method == Method::Get && end > start {
            c.state = State::GetBody {
                info,
                next: start,
                end,
            };
        }
        Ok(())
    }

    fn copy(&mut self, c: &mut HttpConn, head: &RequestHead, t: &Target) -> Result<(), Failure> {
        let src = head.header("x-amz-copy-source").unwrap_or_default();
        let src = String::from_utf8(http::percent_decode(src)?)
            .map_err(|_| Failure::new(400, "InvalidArgument", "x-amz-copy-source is not UTF-8"))?;
        let src = src.split('?').next().unwrap_or_default();
        let src = src.strip_prefix('/').unwrap_or(src);
        let (sb, sk) = src.split_once('/').ok_or_else(|| {
            Failure::new(
                400,
                "InvalidArgument",
                "x-amz-copy-source must be bucket/key",
            )
        })?;
        let info = self.objects.copy(sb, sk, &t.bucket, &t.key)?;
        self.stats.puts += 1;
        let body = xml::copy_object(&info.etag, info.mtime);
        self.answer(c, 200, &[("Content-Type", "application/xml")], &body);
        Ok(())
    }

    fn on_get_body(&mut self, c: &mut HttpConn) -> bool {
        let State::GetBody { info, next, end } = &mut c.state else {
            return false;
        };
        let room = TX_MAX.saturating_sub(c.tx.len() - c.tx_off);
        if room < TX_MAX / 4 {
            return false;
        }
        let want = ((*end - *next) as usize).min(room);
        let buf = &mut self.scratch[..want];
        match self.objects.read(info, *next, buf) {
            Ok(n) if n > 0 => {
                c.tx.extend_from_slice(&buf[..n]);
                *next += n as u64;
                self.stats.bytes_out += n as u64;
                if *next >= *end {
                    c.state = State::Head;
                }
                true
            }
            Ok(_) | Err(_) => {
                // The head promised bytes the store no longer has: the only honest end is to
                // cut the connection, so the client sees a short body, not wrong bytes.
                tracing::warn!(key = %info.key, offset = *next, "object bytes unreadable mid-answer; closing the connection");
                c.keep_alive = false;
                c.state = State::Closing;
                true
            }
        }
    }

    fn on_discard(&mut self, c: &mut HttpConn) -> bool {
        let State::Discard { remaining } = &mut c.state else {
            return false;
        };
        let n = ((c.rx_end - c.rx_start) as u64).min(*remaining);
        c.rx_start += n as usize;
        *remaining -= n;
        if *remaining == 0 {
            c.state = State::Head;
            return true;
        }
        if c.peer_closed {
            c.state = State::Closing;
        }
        n > 0
    }

    fn on_put_body(&mut self, c: &mut HttpConn) -> bool {
        let State::PutBody { remaining, .. } = &c.state else {
            return false;
        };
        let want = *remaining;
        let start = c.rx_start;
        let n = ((c.rx_end - c.rx_start) as u64).min(want) as usize;
        let State::PutBody {
            put,
            remaining,
            sha,
            ..
        } = &mut c.state
        else {
            return false;
        };
        let mut failed = None;
        if n > 0 {
            let data = &c.rx[start..start + n];
            if let Some((h, _)) = sha {
                h.update(data);
            }
            if let Err(e) = self.objects.put_data(put, data) {
                failed = Some(Failure::from(e));
            }
            *remaining -= n as u64;
            self.stats.bytes_in += n as u64;
        }
        c.rx_start += n;
        if let Some(f) = failed {
            return self.fail_put(c, f);
        }
        if *remaining > 0 {
            if c.peer_closed {
                let f = self.incomplete_body();
                return self.fail_put(c, f);
            }
            return n > 0;
        }
        let State::PutBody {
            put,
            sha,
            meta,
            bucket,
            key,
            ..
        } = std::mem::replace(&mut c.state, State::Head)
        else {
            return false;
        };
        if !sha_matches(sha) {
            self.objects.abort(put);
            self.answer_error(c, &Failure::sha_mismatch(), &format!("/{bucket}/{key}"));
            return true;
        }
        match self.objects.commit(put, meta) {
            Ok(info) => {
                self.stats.puts += 1;
                self.answer(c, 200, &[("ETag", &info.etag)], b"");
            }
            Err(e) => self.answer_error(c, &e.into(), &format!("/{bucket}/{key}")),
        }
        true
    }

    /// The peer closed before `Content-Length` bytes of body came: a request that broke HTTP.
    fn incomplete_body(&mut self) -> Failure {
        self.stats.bad_requests += 1;
        Failure::new(
            400,
            "IncompleteBody",
            "the body ended before Content-Length bytes",
        )
    }

    /// A PUT that cannot go on: its chunks go, the client gets `f`, and the connection closes
    /// (the rest of the body would be read as requests).
    fn fail_put(&mut self, c: &mut HttpConn, f: Failure) -> bool {
        if let State::PutBody { put, .. } = std::mem::replace(&mut c.state, State::Closing) {
            self.objects.abort(put);
        }
        c.keep_alive = false;
        self.answer_error(c, &f, "");
        c.state = State::Closing;
        true
    }

    fn on_small_body(&mut self, c: &mut HttpConn) -> bool {
        let State::SmallBody { remaining, .. } = &c.state else {
            return false;
        };
        let n = ((c.rx_end - c.rx_start) as u64).min(*remaining) as usize;
        let start = c.rx_start;
        c.rx_start += n;
        let State::SmallBody {
            body,
            remaining,
            sha,
            ..
        } = &mut c.state
        else {
            return false;
        };
        body.extend_from_slice(&c.rx[start..start + n]);
        if let Some((h, _)) = sha {
            h.update(&c.rx[start..start + n]);
        }
        *remaining -= n as u64;
        if *remaining > 0 {
            if c.peer_closed {
                let f = self.incomplete_body();
                c.keep_alive = false;
                self.answer_error(c, &f, "");
                c.state = State::Closing;
                return true;
            }
            return n > 0;
        }
        let State::SmallBody {
            body,
            sha,
            bucket,
            key,
            upload_id,
            ..
        } = std::mem::replace(&mut c.state, State::Head)
        else {
            return false;
        };
        let resource = format!("/{bucket}/{key}");
        if !sha_matches(sha) {
            self.answer_error(c, &Failure::sha_mismatch(), &resource);
            return true;
        }
        let result = xml::parse_complete(&body)
            .map_err(|e| Failure::new(400, e.s3_code(), e.to_string()))
            .and_then(|parts| {
                self.objects
                    .complete_upload(&bucket, &key, &upload_id, &parts)
                    .map_err(Failure::from)
            });
        match result {
            Ok(info) => {
                self.stats.puts += 1;
                let body = xml::complete_multipart(&resource, &bucket, &key, &info.etag);
                self.answer(c, 200, &[("Content-Type", "application/xml")], &body);
            }
            Err(f) => self.answer_error(c, &f, &resource),
        }
        true
    }
}

/// Content type, user metadata (`x-amz-meta-*`) and `Content-MD5` of a PUT.
fn put_meta(head: &RequestHead) -> Result<PutMeta, Failure> {
    let content_md5 = match head.header("content-md5") {
        None => None,
        Some(b64) => {
            let raw = base64_decode(b64)
                .filter(|r| r.len() == 16)
                .ok_or_else(|| {
                    Failure::new(400, "InvalidDigest", "Content-MD5 is not a base64 MD5")
                })?;
            let mut md5 = [0u8; 16];
            md5.copy_from_slice(&raw);
            Some(md5)
        }
    };
    let mut user_meta = Vec::new();
    let mut meta_bytes = 0;
    for (k, v) in &head.headers {
        if let Some(name) = k.strip_prefix("x-amz-meta-") {
            meta_bytes += name.len() + v.len();
            user_meta.push((name.to_string(), v.clone()));
        }
    }
    // S3's limit on user metadata.
    if meta_bytes > 2048 {
        return Err(Failure::new(
            400,
            "MetadataTooLarge",
            "user metadata is over 2 KB",
        ));
    }
    Ok(PutMeta {
        content_type: head.header("content-type").map(str::to_string),
        user_meta,
        content_md5,
    })
}

/// Standard base64 (with padding) to bytes; `None` if it is not.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, q) in s.chunks(4).enumerate() {
        let last = i == s.len() / 4 - 1;
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// `Range: bytes=a-b | a- | -n` over an object of `size` bytes, as the half-open byte range
/// to send; `None` for a form this server does not take (several ranges: the whole object is
/// sent, as S3 does). Past the end: 416 InvalidRange.
fn parse_range(r: &str, size: u64) -> Result<Option<(u64, u64)>, Failure> {
    let invalid = || {
        Failure::new(
            416,
            "InvalidRange",
            "the requested range is not satisfiable",
        )
    };
    let Some(spec) = r.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, false) => {
            let n = num(b).ok_or_else(invalid)?;
            if n == 0 || size == 0 {
                return Err(invalid());
            }
            Ok(Some((size - n.min(size), size)))
        }
        (false, _) => {
            let start = num(a).ok_or_else(invalid)?;
            if start >= size {
                return Err(invalid());
            }
            let end = if b.is_empty() {
                size
            } else {
                let e = num(b).ok_or_else(invalid)?;
                if e < start {
                    return Ok(None);
                }
                e.saturating_add(1).min(size)
            };
            Ok(Some((start, end)))
        }
        (true, true) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-0", 10).ok().flatten(), Some((0, 1)));
        assert_eq!(parse_range("bytes=2-", 10).ok().flatten(), Some((2, 10)));
        assert_eq!(parse_range("bytes=-3", 10).ok().flatten(), Some((7, 10)));
        assert_eq!(parse_range("bytes=-30", 10).ok().flatten(), Some((0, 10)));
        assert_eq!(parse_range("bytes=5-100", 10).ok().flatten(), Some((5, 10)));
        assert_eq!(parse_range("bytes=0-1,4-5", 10).ok().flatten(), None);
        assert_eq!(parse_range("items=0-1", 10).ok().flatten(), None);
        assert_eq!(
            parse_range("bytes=10-", 10).err().map(|f| f.status),
            Some(416)
        );
        assert_eq!(
            parse_range("bytes=-0", 10).err().map(|f| f.status),
            Some(416)
        );
        assert_eq!(
            parse_range("bytes=0-", 0).err().map(|f| f.status),
            Some(416)
        );
    }

    #[test]
    fn numbers_in_the_query() {
        let t = Target {
            bucket: "b".into(),
            key: String::new(),
            query: vec![
                ("max-keys".into(), "5000".into()),
                ("max-parts".into(), "".into()),
                ("max-uploads".into(), "ten".into()),
                ("part-number-marker".into(), "7".into()),
            ],
        };
        assert_eq!(t.number("max-keys", 1000, 1000).ok(), Some(1000));
        assert_eq!(t.number("max-parts", 1000, 1000).ok(), Some(1000));
        assert_eq!(t.number("part-number-marker", 0, u32::MAX).ok(), Some(7));
        assert_eq!(t.number("absent", 0, u32::MAX).ok(), Some(0));
        let Err(bad) = t.number("max-uploads", 1000, 1000) else {
            panic!("max-uploads=ten taken for a number");
        };
        assert_eq!((bad.status, bad.code), (400, "InvalidArgument"));
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        // MD5 of "" as Content-MD5.
        assert_eq!(base64_decode("1B2M2Y8AsgTpgAmY7PhCfg==").unwrap().len(), 16);
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9v!"] {
            assert!(base64_decode(bad).is_none(), "{bad}");
        }
    }
}

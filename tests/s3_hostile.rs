#![cfg(feature = "s3")]
//! The object service against bad input (`cargo test --features s3 --test s3_hostile`):
//! malformed and oversized heads, lying lengths, chunked bodies, slow clients, bad keys, bad
//! ranges, bad multipart completions, bad signatures. Each gets the S3 error a client expects
//! or a closed connection, is counted in [`S3Stats`], and leaves the stored objects and the
//! next client alone.
//!
//! Most tests drive the sans-IO [`Engine`] and [`HttpConn`] with bytes and a clock of their
//! own (fast and deterministic); the last runs the kernel-TCP transport on a serving loop with
//! a slowloris client beside a well-behaved one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use md5::Md5;
use sha2::{Digest, Sha256};
use ustack::chunk::MemStore;
use ustack::s3::config::ObjectsConfig;
use ustack::s3::conn::{Ending, Engine, HttpConn, Limits, S3Stats, RX_MAX, TX_MAX};
use ustack::s3::http::HEAD_MAX;
use ustack::s3::objects::{ListQuery, Objects};
use ustack::s3::sigv4::{self, Credential, Keys};
use ustack::time::Instant;

const AK: &str = "AK";
const SECRET: &str = "SECRET";
const BUCKET: &str = "bkt";
/// The object every world stores first: it must come through every test unchanged.
const KEEP: &str = "keep/obj";

/// A directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ustack-s3-hostile-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a test request is signed.
#[derive(Clone, Copy)]
enum Auth<'a> {
    /// Correctly, now.
    Good,
    /// With another secret.
    Secret(&'a str),
    /// With an access key the server does not know.
    Key(&'a str),
    /// At another wall-clock time.
    At(SystemTime),
    /// Not at all.
    Unsigned,
}

/// A request's bytes: head (with `Host` and `Content-Length` when there is a body) and body,
/// signed as `auth` says.
fn request(method: &str, target: &str, extra: &[(&str, &str)], body: &[u8], auth: Auth) -> Vec<u8> {
    let mut headers: Vec<(String, String)> = vec![("Host".into(), "127.0.0.1".into())];
    if !body.is_empty() || method == "PUT" || method == "POST" {
        headers.push(("Content-Length".into(), body.len().to_string()));
    }
    headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    let (key, secret, at) = match auth {
        Auth::Good => (AK, SECRET, SystemTime::now()),
        Auth::Secret(s) => (AK, s, SystemTime::now()),
        Auth::Key(k) => (k, SECRET, SystemTime::now()),
        Auth::At(t) => (AK, SECRET, t),
        Auth::Unsigned => ("", "", SystemTime::now()),
    };
    if !key.is_empty() {
        let cred = Credential {
            access_key: key,
            secret,
            region: "us-east-1",
        };
        let sha = sigv4::hex(&Sha256::digest(body));
        sigv4::sign(method, target, &mut headers, &sha, &cred, at).unwrap();
    }
    let mut out = format!("{method} {target} HTTP/1.1\r\n");
    for (n, v) in &headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", sigv4::hex(&Md5::digest(body)))
}

/// One answer as a client reads it.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body: String = String::from_utf8_lossy(&self.body)
            .chars()
            .take(400)
            .collect();
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &body)
            .finish()
    }
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `<Code>` of an S3 error body.
    fn code(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let from = text.find("<Code>").map(|i| i + 6);
        let to = text.find("</Code>");
        match (from, to) {
            (Some(a), Some(b)) if a <= b => text[a..b].to_string(),
            _ => String::new(),
        }
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    fn is(&self, status: u16, code: &str) -> bool {
        self.status == status && self.code() == code
    }
}

/// Reads one answer off the front of `buf`; `None` until it is all there. `has_body: false`
/// for the answer to a HEAD (its `Content-Length` describes a body it does not carry).
fn take_response(buf: &mut Vec<u8>, has_body: bool) -> Option<Response> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut slots);
    let httparse::Status::Complete(len) = resp.parse(buf).expect("a well-formed answer") else {
        return None;
    };
    let status = resp.code.unwrap();
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            let v = String::from_utf8_lossy(h.value).to_string();
            (h.name.to_string(), v)
        })
        .collect();
    let cl: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let body_len = if has_body { cl } else { 0 };
    if buf.len() < len + body_len {
        return None;
    }
    let body = buf[len..len + body_len].to_vec();
    buf.drain(..len + body_len);
    Some(Response {
        status,
        headers,
        body,
    })
}

/// A client's connection to the engine: the server's half and the bytes it answered.
struct Conn {
    c: HttpConn,
    out: Vec<u8>,
}

impl Conn {
    fn next(&mut self) -> Response {
        self.next_of(true)
    }

    fn next_of(&mut self, has_body: bool) -> Response {
        take_response(&mut self.out, has_body).unwrap_or_else(|| {
            panic!(
                "no complete answer in {:?}",
                String::from_utf8_lossy(&self.out)
            )
        })
    }
}

/// Puts `bytes` in the connection's receive buffer, and nothing else.
fn deliver(conn: &mut Conn, bytes: &[u8], now: Instant) {
    let spare = conn.c.rx_spare();
    spare[..bytes.len()].copy_from_slice(bytes);
    conn.c.rx_filled(bytes.len(), now);
}

/// An engine over a fresh store, a clock, and an object stored at the start.
struct World {
    engine: Engine<MemStore>,
    now: Instant,
    keep: Vec<u8>,
    keep_etag: String,
    _dir: TempDir,
}

impl World {
    fn new() -> World {
        World::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> World {
        let dir = TempDir::new();
        let cfg = ObjectsConfig {
            chunk_bytes: 64 << 10,
            min_part_bytes: 1 << 10,
            ..ObjectsConfig::new(&dir.0)
        };
        let (objects, _) = Objects::open(MemStore::new(256 << 20), cfg).unwrap();
        objects.create_bucket(BUCKET).unwrap();
        let mut keys = Keys::new();
        keys.insert(AK, SECRET);
        let mut w = World {
            engine: Engine::new(objects, keys, limits),
            now: Instant::from_millis(1_000),
            keep: (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect(),
            keep_etag: String::new(),
            _dir: dir,
        };
        let keep = w.keep.clone();
        let r = w.put(KEEP, &keep);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("etag"), Some(etag_of(&keep).as_str()));
        w.keep_etag = etag_of(&keep);
        w
    }

    fn stats(&self) -> S3Stats {
        self.engine.stats()
    }

    fn chunks(&self) -> usize {
        self.engine.objects().store().chunk_count()
    }

    fn conn(&self) -> Conn {
        Conn {
            c: HttpConn::new(self.now),
            out: Vec::new(),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Lets the engine work and takes everything it answers, until nothing moves.
    fn pump(&mut self, conn: &mut Conn) {
        for _ in 0..100_000 {
            let moved = self
                .engine
                .process(&mut conn.c, self.now, SystemTime::now());
            let out = conn.c.tx_pending();
            assert!(out.len() <= TX_MAX, "{} bytes pending", out.len());
            let n = out.len();
            conn.out.extend_from_slice(out);
            conn.c.tx_sent(n);
            if !moved && n == 0 {
                return;
            }
        }
        panic!("the engine never settles");
    }

    /// Delivers `bytes` as the room in the connection allows, pumping in between; returns how
    /// many it took (fewer when it stopped reading).
    fn send(&mut self, conn: &mut Conn, bytes: &[u8]) -> usize {
        let mut at = 0;
        while at < bytes.len() {
            let spare = conn.c.rx_spare();
            assert!(spare.len() <= RX_MAX);
            let n = spare.len().min(bytes.len() - at);
            spare[..n].copy_from_slice(&bytes[at..at + n]);
            conn.c.rx_filled(n, self.now);
            at += n;
            self.pump(conn);
            if n == 0 && conn.c.rx_spare().is_empty() {
                break;
            }
        }
        self.pump(conn);
        at
    }

    /// One request on a fresh connection, its answer.
    fn once(&mut self, bytes: &[u8], has_body: bool) -> (Response, Conn) {
        let mut conn = self.conn();
        self.send(&mut conn, bytes);
        let r = conn.next_of(has_body);
        (r, conn)
    }

    fn put(&mut self, key: &str, body: &[u8]) -> Response {
        let target = format!("/{BUCKET}/{key}");
        self.once(&request("PUT", &target, &[], body, Auth::Good), true)
            .0
    }

    fn get(&mut self, key: &str) -> Response {
        let target = format!("/{BUCKET}/{key}");
        self.once(&request("GET", &target, &[], b"", Auth::Good), true)
            .0
    }

    /// The first object is still there, byte for byte, with its ETag.
    fn assert_intact(&mut self) {
        let r = self.get(KEEP);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("etag"), Some(self.keep_etag.as_str()));
        assert!(r.body == self.keep, "the stored object changed");
    }
}

fn target(key: &str) -> String {
    format!("/{BUCKET}/{key}")
}

/// The change of the counters from `a` to `b`, as (requests, errors, auth_failures,
/// bad_requests, timeouts).
fn moved(a: S3Stats, b: S3Stats) -> (u64, u64, u64, u64, u64) {
    (
        b.requests - a.requests,
        b.errors - a.errors,
        b.auth_failures - a.auth_failures,
        b.bad_requests - a.bad_requests,
        b.timeouts - a.timeouts,
    )
}

/// A request that breaks HTTP: answered `status`/`code` with `Connection: close`, the
/// connection done, one bad request counted.
fn assert_broken(w: &mut World, bytes: &[u8], status: u16, code: &str) {
    let before = w.stats();
    let (r, conn) = w.once(bytes, true);
    let what = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).to_string();
    assert!(r.is(status, code), "{what}: {r:?}");
    assert!(r.closes(), "{what}: {r:?}");
    assert!(conn.c.is_done(), "{what}");
    assert!(conn.out.is_empty(), "{what}: more after the error");
    assert_eq!(conn.c.ending(), Some(Ending::Finished), "{what}");
    assert_eq!(moved(before, w.stats()), (1, 1, 0, 1, 0), "{what}");
}

#[test]
fn malformed_request_lines_and_headers() {
    let mut w = World::new();
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\nHost: h\n\n",
        b"GET /bkt/k HTTP/1.1\r\nHost: h\r\nX-A : b\r\n\r\n",
        b"GET /bkt/k HTTP/1.1\r\nHost: h\r\nX-A: a\x01b\r\n\r\n",
        b"GET /bkt/k HTTP/1.1\r\nHost: h\r\nX-A: b\r\n folded\r\n\r\n",
        b"GET /bkt/k HTTP/1.1\r\nX-A: b\r\n\r\n",
        b"GET /bkt/k HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET http://h/bkt/k HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET  /bkt/k HTTP/1.1\r\nHost: h\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET /bkt/k FTP/1.1\r\nHost: h\r\n\r\n",
    ];
    for case in cases {
        assert_broken(&mut w, case, 400, "BadRequest");
    }
    assert_broken(
        &mut w,
        b"GET /bkt/k HTTP/2.0\r\nHost: h\r\n\r\n",
        505,
        "HttpVersionNotSupported",
    );
    for cl in ["-1", "1 2", "0x10", "18446744073709551616"] {
        let head = format!("PUT /bkt/k HTTP/1.1\r\nHost: h\r\nContent-Length: {cl}\r\n\r\n");
        assert_broken(&mut w, head.as_bytes(), 400, "InvalidRequest");
    }
    let two = b"PUT /bkt/k HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
    assert_broken(&mut w, two, 400, "InvalidRequest");
    // A head that stops half way, then the peer closes: no answer, closed, counted.
    let before = w.stats();
    let mut conn = w.conn();
    w.send(&mut conn, b"GET /bkt/k HTTP/1.1\r\nHo");
    conn.c.peer_closed();
    w.pump(&mut conn);
    assert!(conn.c.is_done() && conn.out.is_empty());
    assert_eq!(w.stats().bad_requests - before.bad_requests, 1);
    w.assert_intact();
}

#[test]
fn heads_over_the_limit() {
    let mut w = World::new();
    // HEAD_MAX bytes and one more, with the blank line at the end.
    let mut big = b"GET /bkt/k HTTP/1.1\r\nHost: h\r\nX-Pad: ".to_vec();
    big.resize(HEAD_MAX + 1 - 4, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(big.len(), HEAD_MAX + 1);
    assert_broken(&mut w, &big, 431, "RequestHeaderSectionTooLarge");
    // A head that never ends: refused once it passes HEAD_MAX, whatever follows.
    let mut endless = b"GET /bkt/k HTTP/1.1\r\nHost: h\r\nX-Pad: ".to_vec();
    endless.resize(RX_MAX, b'a');
    assert_broken(&mut w, &endless, 431, "RequestHeaderSectionTooLarge");
    // 65 headers.
    let mut many = String::from("GET /bkt/k HTTP/1.1\r\nHost: h\r\n");
    for i in 0..64 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_broken(&mut w, many.as_bytes(), 431, "RequestHeaderSectionTooLarge");
    w.assert_intact();
}

#[test]
fn chunked_bodies_are_refused() {
    let mut w = World::new();
    for te in ["chunked", "gzip, chunked", "identity"] {
        let mut bytes = request(
            "PUT",
            &target("chunky"),
            &[("Transfer-Encoding", te)],
            b"",
            Auth::Good,
        );
        bytes.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
        assert_broken(&mut w, &bytes, 411, "MissingContentLength");
    }
    // A PUT with no length at all.
    let mut headers = vec![("Host".to_string(), "127.0.0.1".to_string())];
    let cred = Credential {
        access_key: AK,
        secret: SECRET,
        region: "us-east-1",
    };
    sigv4::sign(
        "PUT",
        "/bkt/nolen",
        &mut headers,
        "UNSIGNED-PAYLOAD",
        &cred,
        SystemTime::now(),
    )
    .unwrap();
    let mut signed = String::from("PUT /bkt/nolen HTTP/1.1\r\n");
    for (n, v) in &headers {
        signed.push_str(&format!("{n}: {v}\r\n"));
    }
    signed.push_str("\r\n");
    let (r, _) = w.once(signed.as_bytes(), true);
    assert!(r.is(411, "MissingContentLength"), "{r:?}");
    assert_eq!(w.get("chunky").status, 404);
    assert_eq!(w.get("nolen").status, 404);
    w.assert_intact();
}

#[test]
fn a_content_length_larger_than_the_body_then_close() {
    let mut w = World::new();
    let chunks = w.chunks();
    let body = vec![7u8; 150_000];
    let bytes = request("PUT", &target("short"), &[], &body, Auth::Good);
    let before = w.stats();
    let mut conn = w.conn();
    // The head and 100,000 of the 150,000 bytes, then the peer's FIN.
    w.send(&mut conn, &bytes[..bytes.len() - 50_000]);
    assert!(conn.out.is_empty(), "answered before the body ended");
    conn.c.peer_closed();
    w.pump(&mut conn);
    let r = conn.next();
    assert!(r.is(400, "IncompleteBody"), "{r:?}");
    assert!(conn.c.is_done());
    assert_eq!(moved(before, w.stats()), (1, 1, 0, 1, 0));
    w.engine.discard(conn.c);
    assert_eq!(w.get("short").status, 404);
    assert_eq!(
        w.chunks(),
        chunks,
        "chunks of the broken PUT were left behind"
    );
    w.assert_intact();
}

#[test]
fn a_content_length_smaller_than_the_body() {
    let mut w = World::new();
    // The length says 5; "hello" is the object, the rest is read as the next request.
    let mut bytes = request("PUT", &target("five"), &[], b"hello", Auth::Good);
    bytes.extend_from_slice(b" world\r\n\r\n");
    let before = w.stats();
    let mut conn = w.conn();
    w.send(&mut conn, &bytes);
    let first = conn.next();
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.header("etag"), Some(etag_of(b"hello").as_str()));
    let second = conn.next();
    assert!(second.is(400, "BadRequest"), "{second:?}");
    assert!(second.closes() && conn.c.is_done());
    assert_eq!(moved(before, w.stats()), (2, 1, 0, 1, 0));
    let r = w.get("five");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
    w.assert_intact();
}

#[test]
fn a_body_is_never_run_as_a_request() {
    let mut w = World::new();
    // The body of a GET is a whole signed DELETE of the kept object: it must not be run.
    let delete = request("DELETE", &target(KEEP), &[], b"", Auth::Good);
    let get = request("GET", &target(KEEP), &[], &delete, Auth::Good);
    let before = w.stats();
    let mut conn = w.conn();
    w.send(&mut conn, &get);
    let r = conn.next();
    assert_eq!(r.status, 200, "{r:?}");
    // A GET's body is not read: the connection closes after the answer.
    assert!(r.closes() && conn.c.is_done(), "{r:?}");
    assert!(conn.out.is_empty(), "the body was answered as a request");
    assert_eq!(w.stats().deletes, before.deletes);
    w.assert_intact();
    // The small body of a HEAD, or of a refused request, is read and dropped, and the
    // connection goes on.
    let mut bytes = request("HEAD", &target(KEEP), &[], &delete, Auth::Good);
    bytes.extend(request(
        "DELETE",
        &target("a/../b"),
        &[],
        &delete,
        Auth::Good,
    ));
    bytes.extend(request("GET", &target(KEEP), &[], b"", Auth::Good));
    let mut conn = w.conn();
    w.send(&mut conn, &bytes);
    assert_eq!(conn.next_of(false).status, 200);
    assert!(conn.next().is(400, "InvalidArgument"));
    assert_eq!(conn.next().status, 200);
    assert!(!conn.c.is_done() && conn.out.is_empty());
    assert_eq!(w.stats().deletes, before.deletes);
    // After a request that asked to close, nothing more is read.
    let mut bytes = request(
        "GET",
        &target(KEEP),
        &[("Connection", "close")],
        b"",
        Auth::Good,
    );
    bytes.extend(delete);
    let mut conn = w.conn();
    w.send(&mut conn, &bytes);
    let r = conn.next();
    assert!(r.status == 200 && r.closes(), "{r:?}");
    assert!(conn.c.is_done() && conn.out.is_empty());
    assert_eq!(w.stats().deletes, before.deletes);
    w.assert_intact();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut w = World::new();
    let mut bytes = request("PUT", &target("p1"), &[], b"first", Auth::Good);
    bytes.extend(request("GET", &target("p1"), &[], b"", Auth::Good));
    bytes.extend(request("HEAD", &target("nope"), &[], b"", Auth::Good));
    bytes.extend(request(
        "GET",
        &target(KEEP),
        &[("Range", "bytes=0-9")],
        b"",
        Auth::Good,
    ));
    let mut conn = w.conn();
    w.send(&mut conn, &bytes);
    assert_eq!(conn.next().status, 200);
    let get = conn.next();
    assert_eq!((get.status, get.body.as_slice()), (200, &b"first"[..]));
    let head = conn.next_of(false);
    assert_eq!(head.status, 404);
    let range = conn.next();
    assert_eq!((range.status, range.body.as_slice()), (206, &w.keep[..10]));
    assert!(conn.out.is_empty() && !conn.c.is_done());
}

#[test]
fn head_of_a_missing_key_has_no_body() {
    let mut w = World::new();
    let mut bytes = request("HEAD", &target("missing"), &[], b"", Auth::Good);
    bytes.extend(request("HEAD", &target(KEEP), &[], b"", Auth::Good));
    let mut conn = w.conn();
    w.send(&mut conn, &bytes);
    let r = conn.next_of(false);
    assert_eq!(r.status, 404);
    // The next answer's status line follows the head at once: no body bytes came between.
    assert!(
        conn.out.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{:?}",
        String::from_utf8_lossy(&conn.out)
    );
    let ok = conn.next_of(false);
    assert_eq!(
        ok.header("content-length"),
        Some(w.keep.len().to_string().as_str())
    );
    assert_eq!(ok.header("etag"), Some(w.keep_etag.as_str()));
    assert!(conn.out.is_empty(), "a HEAD answer carried bytes");
}

#[test]
fn expect_continue_with_a_bad_signature() {
    let mut w = World::new();
    let chunks = w.chunks();
    let body = vec![1u8; 4096];
    let bytes = request(
        "PUT",
        &target("expect"),
        &[("Expect", "100-continue")],
        &body,
        Auth::Secret("wrong"),
    );
    let head_len = bytes.len() - body.len();
    let before = w.stats();
    let mut conn = w.conn();
    w.send(&mut conn, &bytes[..head_len]);
    let r = conn.next();
    assert!(r.is(403, "SignatureDoesNotMatch"), "{r:?}");
    // No 100 Continue went out, and the connection closes: the client may or may not send
    // the body now, and its bytes must never be read as a request.
    assert!(r.closes(), "{r:?}");
    assert!(conn.out.is_empty());
    assert!(conn.c.is_done());
    assert_eq!(moved(before, w.stats()), (1, 1, 1, 0, 0));
    assert_eq!(w.get("expect").status, 404);
    assert_eq!(w.chunks(), chunks);

    // Signed well: 100 Continue, then the body, then 200.
    let bytes = request(
        "PUT",
        &target("expect"),
        &[("Expect", "100-continue")],
        &body,
        Auth::Good,
    );
    let mut conn = w.conn();
    w.send(&mut conn, &bytes[..head_len]);
    assert_eq!(conn.next().status, 100);
    w.send(&mut conn, &bytes[head_len..]);
    assert_eq!(conn.next().status, 200);
    assert_eq!(w.get("expect").body, body);
    w.assert_intact();
}

#[test]
fn a_head_dribbled_a_byte_a_second_is_cut_off() {
    let limits = Limits::default();
    let mut w = World::with_limits(limits.clone());
    let bytes = request("GET", &target(KEEP), &[], b"", Auth::Good);
    let before = w.stats();
    let mut conn = w.conn();
    let mut sent = 0;
    let started = w.now;
    while !conn.c.is_done() {
        assert!(
            sent < bytes.len(),
            "the whole head came in; the dribble was never cut off"
        );
        let took = w.send(&mut conn, &bytes[sent..sent + 1]);
        sent += took;
        w.advance(Duration::from_secs(1));
        w.pump(&mut conn);
    }
    let waited = w.now - started;
    assert!(waited > limits.head_timeout, "cut off after {waited:?}");
    assert!(
        waited <= limits.head_timeout + Duration::from_secs(2),
        "cut off after {waited:?}"
    );
    let r = conn.next();
    assert!(r.is(400, "RequestTimeout"), "{r:?}");
    assert!(r.closes());
    assert_eq!(conn.c.ending(), Some(Ending::TimedOut));
    assert_eq!(moved(before, w.stats()), (1, 1, 0, 0, 1));
    w.assert_intact();
}

#[test]
fn idle_connections_are_closed_silently() {
    let limits = Limits::default();
    let mut w = World::with_limits(limits.clone());
    // A keep-alive connection after one answer.
    let mut conn = w.conn();
    w.send(
        &mut conn,
        &request("GET", &target(KEEP), &[], b"", Auth::Good),
    );
    assert_eq!(conn.next().status, 200);
    // And one that never sent a byte.
    let mut quiet = w.conn();
    let before = w.stats();
    w.advance(limits.idle_timeout);
    w.pump(&mut conn);
    w.pump(&mut quiet);
    assert!(
        !conn.c.is_done() && !quiet.c.is_done(),
        "closed before the idle timeout"
    );
    w.advance(Duration::from_secs(1));
    for c in [&mut conn, &mut quiet] {
        w.pump(c);
        assert!(c.c.is_done());
        assert!(c.out.is_empty(), "an idle close said something");
        assert_eq!(c.c.ending(), Some(Ending::Idle));
    }
    let after = w.stats();
    assert_eq!(moved(before, after), (0, 0, 0, 0, 0));
    assert_eq!(after.idle_closed - before.idle_closed, 2);
    w.assert_intact();
}

#[test]
fn a_stalled_body_times_out_and_leaves_nothing() {
    let limits = Limits::default();
    let mut w = World::with_limits(limits.clone());
    let chunks = w.chunks();
    let body = vec![3u8; 100_000];
    let bytes = request("PUT", &target("stalled"), &[], &body, Auth::Good);
    let before = w.stats();
    let mut conn = w.conn();
    w.send(&mut conn, &bytes[..bytes.len() - 1000]);
    // A body that keeps moving, however slowly, is not cut off...
    for i in 0..3 {
        w.advance(limits.idle_timeout - Duration::from_secs(1));
        w.send(&mut conn, &bytes[bytes.len() - 1000 + i..][..1]);
        assert!(!conn.c.is_done());
    }
    // ...one that stops is.
    w.advance(limits.idle_timeout + Duration::from_secs(1));
    w.pump(&mut conn);
    let r = conn.next();
    assert!(r.is(400, "RequestTimeout"), "{r:?}");
    assert!(r.closes() && conn.c.is_done());
    assert_eq!(conn.c.ending(), Some(Ending::TimedOut));
    assert_eq!(moved(before, w.stats()), (1, 1, 0, 0, 1));
    w.engine.discard(conn.c);
    assert_eq!(w.get("stalled").status, 404);
    assert_eq!(w.chunks(), chunks);
    w.assert_intact();
}

#[test]
fn a_long_download_is_not_idle() {
    let limits = Limits::default();
    let mut w = World::with_limits(limits.clone());
    let big = vec![9u8; 4 * TX_MAX];
    assert_eq!(w.put("big", &big).status, 200);
    let mut conn = w.conn();
    deliver(
        &mut conn,
        &request("GET", &target("big"), &[], b"", Auth::Good),
        w.now,
    );
    // The client reads slowly: a quarter of a buffer every half idle timeout.
    let mut got = 0;
    let mut rounds = 0;
    loop {
        w.advance(limits.idle_timeout / 2);
        w.engine.process(&mut conn.c, w.now, SystemTime::now());
        assert!(!conn.c.is_done(), "cut off after {got} bytes");
        let n = conn.c.tx_pending().len().min(TX_MAX / 4);
        assert!(n > 0, "nothing to send after {got} bytes");
        got += n;
        conn.c.tx_sent(n);
        rounds += 1;
        if conn.c.tx_pending().is_empty() && got > big.len() {
            break;
        }
        assert!(rounds < 1000);
    }
    assert!(rounds > 4, "{rounds}");
    // Well past the idle timeout since the request, a second after the answer is out, the
    // connection is still open and serves the next request.
    w.advance(Duration::from_secs(1));
    w.engine.process(&mut conn.c, w.now, SystemTime::now());
    assert!(
        !conn.c.is_done(),
        "closed as idle right after a long download"
    );
    let before = w.stats();
    w.send(
        &mut conn,
        &request("GET", &target(KEEP), &[], b"", Auth::Good),
    );
    let r = conn.next();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(moved(before, w.stats()).4, 0);
}

#[test]
fn a_client_that_stops_reading_is_cut_off() {
    let limits = Limits::default();
    let mut w = World::with_limits(limits.clone());
    let before = w.stats();
    let mut conn = w.conn();
    // A download the client never reads: the answer stays in the connection's buffer.
    deliver(
        &mut conn,
        &request("GET", &target(KEEP), &[], b"", Auth::Good),
        w.now,
    );
    w.engine.process(&mut conn.c, w.now, SystemTime::now());
    assert!(!conn.c.tx_pending().is_empty());
    assert!(conn.c.tx_pending().len() <= TX_MAX);
    w.advance(limits.idle_timeout + Duration::from_secs(1));
    w.engine.process(&mut conn.c, w.now, SystemTime::now());
    assert!(
        conn.c.is_done(),
        "a reader that stopped holds its connection"
    );
    assert_eq!(conn.c.ending(), Some(Ending::TimedOut));
    assert_eq!(w.stats().timeouts - before.timeouts, 1);
    w.assert_intact();
}

#[test]
fn bad_keys() {
    let mut w = World::new();
    let long = "k".repeat(1025);
    let cases = [
        ("a/../b", "InvalidArgument"),
        ("../b", "InvalidArgument"),
        ("a/./b", "InvalidArgument"),
        ("a%00b", "InvalidArgument"),
        (long.as_str(), "KeyTooLongError"),
    ];
    for (key, code) in cases {
        let before = w.stats();
        // On one connection: a PUT with a body (read and dropped), a GET, then a good GET.
        let mut bytes = request("PUT", &target(key), &[], b"data", Auth::Good);
        bytes.extend(request("GET", &target(key), &[], b"", Auth::Good));
        bytes.extend(request("GET", &target(KEEP), &[], b"", Auth::Good));
        let mut conn = w.conn();
        w.send(&mut conn, &bytes);
        for what in ["PUT", "GET"] {
            let r = conn.next();
            assert!(r.is(400, code), "{what} {key}: {r:?}");
        }
        let r = conn.next();
        assert_eq!(r.status, 200, "{key}: {r:?}");
        assert!(!conn.c.is_done());
        assert_eq!(moved(before, w.stats()), (3, 2, 0, 0, 0), "{key}");
    }
    // Exactly 1024 bytes is a key.
    let max = "m".repeat(1024);
    assert_eq!(w.put(&max, b"x").status, 200);
    assert_eq!(w.get(&max).body, b"x");
    let listed = w
        .engine
        .objects()
        .list(
            BUCKET,
            &ListQuery {
                max_keys: 1000,
                ..ListQuery::default()
            },
        )
        .unwrap();
    assert_eq!(
        listed.objects.len(),
        2,
        "{:?}",
        listed.objects.iter().map(|o| &o.key).collect::<Vec<_>>()
    );
    w.assert_intact();
}

#[test]
fn ranges_past_the_end() {
    let mut w = World::new();
    assert_eq!(w.put("ten", b"0123456789").status, 200);
    for range in ["bytes=100-", "bytes=10-", "bytes=10-20", "bytes=-0"] {
        let bytes = request("GET", &target("ten"), &[("Range", range)], b"", Auth::Good);
        let (r, conn) = w.once(&bytes, true);
        assert!(r.is(416, "InvalidRange"), "{range}: {r:?}");
        assert!(!conn.c.is_done());
    }
    let bytes = request(
        "GET",
        &target("ten"),
        &[("Range", "bytes=7-100")],
        b"",
        Auth::Good,
    );
    let (r, _) = w.once(&bytes, true);
    assert_eq!((r.status, r.body.as_slice()), (206, &b"789"[..]));
    assert_eq!(r.header("content-range"), Some("bytes 7-9/10"));
    w.assert_intact();
}

/// Creates an upload of `key` and stores `parts`; returns the upload id and the parts' ETags.
fn upload_parts(w: &mut World, key: &str, parts: &[&[u8]]) -> (String, Vec<String>) {
    let (r, _) = w.once(
        &request(
            "POST",
            &format!("{}?uploads=", target(key)),
            &[],
            b"",
            Auth::Good,
        ),
        true,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let text = String::from_utf8(r.body).unwrap();
    let id = text
        .split("<UploadId>")
        .nth(1)
        .unwrap()
        .split("</UploadId>")
        .next()
        .unwrap()
        .to_string();
    let mut etags = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let t = format!("{}?partNumber={}&uploadId={id}", target(key), i + 1);
        let (r, _) = w.once(&request("PUT", &t, &[], p, Auth::Good), true);
        assert_eq!(r.status, 200, "{r:?}");
        etags.push(r.header("etag").unwrap().to_string());
    }
    (id, etags)
}

fn complete(w: &mut World, key: &str, id: &str, list: &[(u32, &str)]) -> Response {
    let mut body = String::from("<CompleteMultipartUpload>");
    for (n, etag) in list {
        body.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
        ));
    }
    body.push_str("</CompleteMultipartUpload>");
    let t = format!("{}?uploadId={id}", target(key));
    w.once(&request("POST", &t, &[], body.as_bytes(), Auth::Good), true)
        .0
}

#[test]
fn multipart_completions_with_missing_or_reordered_parts() {
    let mut w = World::new();
    let p1 = vec![1u8; 2048];
    let p2 = vec![2u8; 1500];
    let (id, e) = upload_parts(&mut w, "multi", &[&p1, &p2]);
    let before = w.stats();
    let bad: [(&[(u32, &str)], &str); 4] = [
        (&[(1, &e[0]), (2, &e[1]), (3, &e[1])], "InvalidPart"),
        (&[(1, &e[0]), (2, &e[0])], "InvalidPart"),
        (&[(2, &e[1]), (1, &e[0])], "InvalidPartOrder"),
        (&[(1, &e[0]), (1, &e[0])], "InvalidPartOrder"),
    ];
    for (list, code) in bad {
        let r = complete(&mut w, "multi", &id, list);
        assert!(r.is(400, code), "{list:?}: {r:?}");
        assert_eq!(w.get("multi").status, 404);
    }
    assert_eq!(moved(before, w.stats()).1, 8);
    // The upload is still there, and completes right.
    let r = complete(&mut w, "multi", &id, &[(1, &e[0]), (2, &e[1])]);
    assert_eq!(r.status, 200, "{r:?}");
    let got = w.get("multi");
    assert_eq!(got.body, [p1, p2].concat());
    assert!(got.header("etag").unwrap().ends_with("-2\""), "{got:?}");
    // Completed once: a second completion finds no upload.
    let r = complete(&mut w, "multi", &id, &[(1, &e[0]), (2, &e[1])]);
    assert!(r.is(404, "NoSuchUpload"), "{r:?}");
    w.assert_intact();
}

#[test]
fn bad_signatures_and_dates() {
    let mut w = World::new();
    let twenty_ago = SystemTime::now() - Duration::from_secs(20 * 60);
    let cases = [
        (Auth::Secret("not-the-secret"), "SignatureDoesNotMatch"),
        (Auth::At(twenty_ago), "RequestTimeTooSkewed"),
        (Auth::Key("NOBODY"), "InvalidAccessKeyId"),
        (Auth::Unsigned, "AccessDenied"),
    ];
    for (auth, code) in cases {
        let before = w.stats();
        let chunks = w.chunks();
        // A PUT over the kept object (its body read and dropped), a GET, then a good GET.
        let mut bytes = request("PUT", &target(KEEP), &[], b"evil", auth);
        bytes.extend(request("GET", &target(KEEP), &[], b"", auth));
        bytes.extend(request("GET", &target(KEEP), &[], b"", Auth::Good));
        let mut conn = w.conn();
        w.send(&mut conn, &bytes);
        for what in ["PUT", "GET"] {
            let r = conn.next();
            assert!(r.is(403, code), "{what} {code}: {r:?}");
        }
        let r = conn.next();
        assert!(r.status == 200 && r.body == w.keep, "{code}");
        assert_eq!(moved(before, w.stats()), (3, 2, 2, 0, 0), "{code}");
        assert_eq!(w.chunks(), chunks);
    }
    // A body that is not the one signed.
    let mut bytes = request("PUT", &target("tampered"), &[], b"good", Auth::Good);
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(b"evil");
    let (r, _) = w.once(&bytes, true);
    assert!(r.is(400, "XAmzContentSHA256Mismatch"), "{r:?}");
    assert_eq!(w.get("tampered").status, 404);
    w.assert_intact();
}

#[test]
fn rejected_requests_leave_nothing_behind() {
    let mut w = World::new();
    let chunks = w.chunks();
    let used = w.engine.objects().store().used_bytes();
    let before = w.stats();
    // 1,000 refused requests, each on a connection of its own.
    for i in 0..1000 {
        let bytes = match i % 4 {
            0 => request(
                "PUT",
                &target(&format!("x{i}")),
                &[],
                b"data",
                Auth::Secret("no"),
            ),
            1 => b"GARBAGE\r\n\r\n".to_vec(),
            2 => request("GET", &target("a/../b"), &[], b"", Auth::Good),
            _ => request(
                "GET",
                &target(KEEP),
                &[("Range", "bytes=999999999-")],
                b"",
                Auth::Good,
            ),
        };
        let (r, conn) = w.once(&bytes, true);
        assert!(r.status >= 400);
        assert!(conn.out.is_empty());
        w.engine.discard(conn.c);
    }
    let after = w.stats();
    assert_eq!(after.requests - before.requests, 1000);
    assert_eq!(after.errors - before.errors, 1000);
    assert_eq!(after.auth_failures - before.auth_failures, 250);
    assert_eq!(after.bad_requests - before.bad_requests, 250);
    assert_eq!(w.chunks(), chunks);
    assert_eq!(w.engine.objects().store().used_bytes(), used);

    // 1,000 refused requests on one connection, sent all at once: its buffers stay bounded
    // (the sender is held back) and every request is answered.
    let mut all = Vec::new();
    for _ in 0..1000 {
        all.extend(request("GET", &target(KEEP), &[], b"", Auth::Secret("no")));
    }
    let mut conn = w.conn();
    let mut at = 0;
    let mut answers = 0;
    while at < all.len() || !conn.out.is_empty() {
        let spare = conn.c.rx_spare();
        assert!(spare.len() <= RX_MAX);
        let n = spare.len().min(all.len() - at);
        spare[..n].copy_from_slice(&all[at..at + n]);
        conn.c.rx_filled(n, w.now);
        at += n;
        w.engine.process(&mut conn.c, w.now, SystemTime::now());
        assert!(conn.c.tx_pending().len() <= TX_MAX);
        w.pump(&mut conn);
        while let Some(r) = take_response(&mut conn.out, true) {
            assert!(r.is(403, "SignatureDoesNotMatch"));
            answers += 1;
        }
    }
    assert_eq!(answers, 1000);
    assert!(conn.c.is_idle());
    w.assert_intact();
}

/// Writes `bytes` and reads one answer on a blocking socket.
fn round_trip(s: &mut TcpStream, bytes: &[u8]) -> Response {
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 << 10];
    loop {
        if let Some(r) = take_response(&mut buf, true) {
            assert!(buf.is_empty());
            return r;
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "the server closed mid-answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn slowloris_beside_a_good_client_on_kernel_tcp() {
    use ustack::s3::transport::S3OnKernel;
    use ustack::serve::ServeLoop;

    let head_timeout = Duration::from_secs(2);
    let keys = {
        let mut k = Keys::new();
        k.insert(AK, SECRET);
        k
    };
    let dir = TempDir::new();
    let cfg = ObjectsConfig {
        chunk_bytes: 64 << 10,
        ..ObjectsConfig::new(&dir.0)
    };
    let (objects, _) = Objects::open(MemStore::new(64 << 20), cfg).unwrap();
    objects.create_bucket(BUCKET).unwrap();
    let limits = Limits {
        head_timeout,
        ..Limits::default()
    };
    let engine = Engine::new(objects, keys, limits);
    let mut server = S3OnKernel::bind("127.0.0.1:0".parse().unwrap(), engine, 16).unwrap();
    let addr = server.local_addr().unwrap();
    let serve = ServeLoop::new().spin_polls(0);
    let stop = serve.stop_handle();
    let thread = std::thread::spawn(move || {
        serve.run(&mut server, |_, _| {});
        server
    });

    // The slowloris: a head of 200 bytes, a byte every 200 ms (40 s for all of it).
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let slow_head = request(
        "GET",
        &target("anything"),
        &[("X-Pad", &"p".repeat(60))],
        b"",
        Auth::Good,
    );
    assert!(slow_head.len() > 200);
    let slow_started = std::time::Instant::now();
    slow.write_all(&slow_head[..1]).unwrap();
    let mut slow_sent = 1;

    // Meanwhile, 50 PUT and GET round trips on another connection.
    let mut good = TcpStream::connect(addr).unwrap();
    for i in 0..50 {
        let started = std::time::Instant::now();
        let body: Vec<u8> = (0..1000 + i * 37).map(|b| (b * i) as u8).collect();
        let key = format!("good/{i}");
        let r = round_trip(
            &mut good,
            &request("PUT", &target(&key), &[], &body, Auth::Good),
        );
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("etag"), Some(etag_of(&body).as_str()));
        let r = round_trip(
            &mut good,
            &request("GET", &target(&key), &[], b"", Auth::Good),
        );
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body == body);
        assert!(
            started.elapsed() < head_timeout,
            "round trip {i} took {:?}",
            started.elapsed()
        );
        if slow_started.elapsed() > Duration::from_millis(200) * slow_sent as u32 {
            slow.write_all(&slow_head[slow_sent..slow_sent + 1])
                .unwrap();
            slow_sent += 1;
        }
    }
    assert!(
        slow_sent < slow_head.len(),
        "the slowloris finished its head first"
    );

    // The slowloris keeps dribbling until the server cuts it off after the head timeout.
    let mut answer = Vec::new();
    let closed_after = loop {
        let mut buf = [0u8; 4096];
        match slow.read(&mut buf) {
            Ok(0) => break slow_started.elapsed(),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break slow_started.elapsed(),
        }
        assert!(
            slow_started.elapsed() < Duration::from_secs(20),
            "the slowloris was never cut off"
        );
        if answer.is_empty()
            && slow_sent < slow_head.len()
            && slow.write_all(&slow_head[slow_sent..slow_sent + 1]).is_ok()
        {
            slow_sent += 1;
        }
    };
    assert!(slow_sent < slow_head.len());
    assert!(
        closed_after >= head_timeout,
        "cut off after {closed_after:?}"
    );
    if let Some(r) = take_response(&mut answer, true) {
        assert!(r.is(400, "RequestTimeout"), "{r:?}");
    }
    // The good connection is still good.
    let r = round_trip(
        &mut good,
        &request("GET", &target("good/7"), &[], b"", Auth::Good),
    );
    assert_eq!(r.status, 200);

    stop.stop();
    let server = thread.join().unwrap();
    let stats = server.engine.stats();
    assert_eq!(stats.timeouts, 1);
    assert_eq!(stats.puts, 50);
    assert_eq!(stats.errors, 1, "{stats:?}");
}

//! HTTP/1.1 request heads for the S3 service, sans-IO: [`parse_head`] reads a request line and
//! headers out of received bytes (with [httparse](https://docs.rs/httparse)), bounded by
//! [`HEAD_MAX`] bytes and [`HEADERS_MAX`] headers; [`write_response_head`] writes a response head.
//!
//! The parser is strict where leniency lets a request be read two ways (request smuggling):
//! - a `Transfer-Encoding` header of any value is refused ([`HttpError::TransferEncodingUnsupported`]);
//!   bodies are framed by `Content-Length` alone;
//! - `Content-Length` must be decimal digits that fit a `u64`; several `Content-Length` headers
//!   must agree ([`HttpError::BadContentLength`]);
//! - every line ends in CRLF (a bare LF is [`HttpError::Malformed`]); no obsolete line folding,
//!   no control characters in names or values, no space before a header's colon;
//! - an HTTP/1.1 request has exactly one `Host` header;
//! - only HTTP/1.0 and HTTP/1.1.
//!
//! Percent-decoding of the path and of the query is left to the caller: [`percent_decode`] and
//! [`query_pairs`].

/// The most bytes a request head may take: request line, headers and the blank line.
pub const HEAD_MAX: usize = 16 << 10;
/// The most headers a request may carry.
pub const HEADERS_MAX: usize = 64;

/// The response head of an interim `100 Continue`, sent before reading the body of a request
/// with `Expect: 100-continue` ([`RequestHead::expect_continue`]).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A request method; [`RequestHead::method_raw`] keeps the text of an [`Method::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `PUT`
    Put,
    /// `POST`
    Post,
    /// `DELETE`
    Delete,
    /// Any other method (methods are case-sensitive: `get` is one of these).
    Other,
}

impl Method {
    /// The method a request line's token names.
    pub(crate) fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The method as sent.
    pub method_raw: String,
    /// The path as sent, still percent-encoded; it starts with `/`.
    pub path: String,
    /// The text after the first `?` of the request target as sent, `""` when there is none.
    pub query: String,
    /// The headers in the order sent: names lower-cased, values with surrounding spaces and
    /// tabs trimmed. A header sent twice appears twice.
    pub headers: Vec<(String, String)>,
    /// The `Content-Length`, when the request has one.
    pub content_length: Option<u64>,
    /// Whether the connection stays open after this request: for HTTP/1.1 unless a
    /// `Connection` header says `close`; for HTTP/1.0 only when one says `keep-alive` (and
    /// none says `close`).
    pub keep_alive: bool,
    /// Whether an HTTP/1.1 request said `Expect: 100-continue`: the client waits for
    /// [`CONTINUE`] (or a final response) before it sends the body.
    pub expect_continue: bool,
}

impl RequestHead {
    /// The value of the first header named `lower_name` (give the name in lower case).
    pub fn header(&self, lower_name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == lower_name)
            .map(|(_, v)| v.as_str())
    }

    /// The values of every header named `lower_name`, in the order sent.
    pub fn header_all<'a>(&'a self, lower_name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == lower_name)
            .map(|(_, v)| v.as_str())
    }
}

/// What [`parse_head`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet: receive more bytes and call again with all of them.
    Partial,
    /// A complete head.
    Complete {
        /// The head.
        head: RequestHead,
        /// Bytes of the head, the final CRLFCRLF included: the body (if any) starts here.
        len: usize,
    },
}

/// Why a request head was refused. After one of these the connection cannot be read further:
/// answer with [`HttpError::status`] and close it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// [`HEAD_MAX`] bytes hold no complete head.
    #[error("request head larger than {HEAD_MAX} bytes")]
    HeadTooLarge,
    /// More than [`HEADERS_MAX`] headers.
    #[error("more than {HEADERS_MAX} request headers")]
    TooManyHeaders,
    /// Not an HTTP request head as RFC 9112 has it (the text says what is wrong).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A `Content-Length` that is not a decimal number fitting 64 bits, or several that differ.
    #[error("invalid Content-Length")]
    BadContentLength,
    /// A `Transfer-Encoding` header: bodies must be framed by `Content-Length`.
    #[error("Transfer-Encoding is not supported; send Content-Length")]
    TransferEncodingUnsupported,
    /// An HTTP version other than 1.0 and 1.1.
    #[error("HTTP version not supported")]
    VersionUnsupported,
    /// A `%` not followed by two hex digits, or a decoded query that is not UTF-8.
    #[error("invalid percent-encoding")]
    BadPercentEncoding,
}

impl HttpError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::TransferEncodingUnsupported => 411,
            HttpError::VersionUnsupported => 505,
            HttpError::Malformed(_)
            | HttpError::BadContentLength
            | HttpError::BadPercentEncoding => 400,
        }
    }

    /// The `Code` of the S3 error body to answer with.
    pub fn s3_code(&self) -> &'static str {
        match self {
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => "RequestHeaderSectionTooLarge",
            HttpError::TransferEncodingUnsupported => "MissingContentLength",
            HttpError::VersionUnsupported => "HttpVersionNotSupported",
            HttpError::Malformed(_) => "BadRequest",
            HttpError::BadContentLength => "InvalidRequest",
            HttpError::BadPercentEncoding => "InvalidURI",
        }
    }
}

/// Parses a request head from the start of `buf` (the bytes received so far on a connection).
///
/// Returns [`Parsed::Partial`] while the head is incomplete and `buf` is shorter than
/// [`HEAD_MAX`], and [`HttpError::HeadTooLarge`] once the first [`HEAD_MAX`] bytes hold no
/// complete head. Bytes after the head (the body, or a pipelined request) are not looked at.
pub fn parse_head(buf: &[u8]) -> Result<Parsed, HttpError> {
    let window = &buf[..buf.len().min(HEAD_MAX)];
    let mut slots = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= HEAD_MAX => {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(version_error(window)),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if let Some(at) = bare_lf(&window[..len]) {
        return Err(HttpError::Malformed(format!("bare LF at byte {at}")));
    }
    // httparse fills these three whenever it returns Complete.
    let (Some(method_raw), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed("incomplete request line".into()));
    };
    if !target.starts_with('/') || !target.is_ascii() {
        return Err(HttpError::Malformed(
            "request target must be an ASCII path starting with '/'".into(),
        ));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Err(HttpError::Malformed(format!(
                "value of header {} is not UTF-8",
                h.name
            )));
        };
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(HttpError::Malformed(format!(
                "control character in header {}",
                h.name
            )));
        }
        headers.push((
            h.name.to_ascii_lowercase(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }

    let mut head = RequestHead {
        method: Method::from_token(method_raw),
        method_raw: method_raw.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        content_length: None,
        keep_alive: false,
        expect_continue: false,
    };
    apply_framing(&mut head, minor == 1)?;
    Ok(Parsed::Complete { head, len })
}

/// Reads the headers that frame the request and the connection: `Transfer-Encoding`,
/// `Content-Length`, `Host`, `Connection`, `Expect`.
fn apply_framing(head: &mut RequestHead, http11: bool) -> Result<(), HttpError> {
    if head.header("transfer-encoding").is_some() {
        return Err(HttpError::TransferEncodingUnsupported);
    }
    let mut content_length = None;
    for v in head.header_all("content-length") {
        let n = parse_content_length(v)?;
        if content_length.is_some_and(|m| m != n) {
            return Err(HttpError::BadContentLength);
        }
        content_length = Some(n);
    }
    head.content_length = content_length;

    if http11 && head.header_all("host").count() != 1 {
        return Err(HttpError::Malformed(
            "an HTTP/1.1 request needs exactly one Host header".into(),
        ));
    }

    let (mut close, mut keep) = (false, false);
    for token in head.header_all("connection").flat_map(|v| v.split(',')) {
        let token = token.trim_matches([' ', '\t']);
        close |= token.eq_ignore_ascii_case("close");
        keep |= token.eq_ignore_ascii_case("keep-alive");
    }
    head.keep_alive = !close && (http11 || keep);
    head.expect_continue = http11
        && head
            .header_all("expect")
            .any(|v| v.eq_ignore_ascii_case("100-continue"));
    Ok(())
}

fn parse_content_length(v: &str) -> Result<u64, HttpError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::BadContentLength);
    }
    v.parse().map_err(|_| HttpError::BadContentLength)
}

/// The offset of the first LF not preceded by CR, if any.
fn bare_lf(head: &[u8]) -> Option<usize> {
    head.iter()
        .enumerate()
        .find(|&(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
        .map(|(i, _)| i)
}

/// httparse says `Version` both for `HTTP/2.0` and for a request line that has no version at
/// all: only the former is a 505.
fn version_error(buf: &[u8]) -> HttpError {
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n');
    let line = &buf[..line_end.unwrap_or(buf.len())];
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    if version.starts_with(b"HTTP/") {
        HttpError::VersionUnsupported
    } else {
        HttpError::Malformed("invalid HTTP version".into())
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes (either case of hex digit). Nothing else changes: `+` stays `+`.
/// A `%` not followed by two hex digits is [`HttpError::BadPercentEncoding`]. The result may
/// be any bytes, not only UTF-8.
pub fn percent_decode(s: &str) -> Result<Vec<u8>, HttpError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(HttpError::BadPercentEncoding);
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Splits a raw query ([`RequestHead::query`]) into decoded `(key, value)` pairs, in order.
///
/// Pairs are separated by `&`; empty pieces (`a=1&&b=2`, a trailing `&`) are skipped. A piece
/// splits at its first `=`; a piece without `=` is a key with the value `""`, as is `key=`.
/// In keys and values `+` means a space (form encoding; a literal plus is sent as `%2B`), then
/// `%XX` escapes are decoded; a result that is not UTF-8 is [`HttpError::BadPercentEncoding`].
pub fn query_pairs(q: &str) -> Result<Vec<(String, String)>, HttpError> {
    let decode = |s: &str| -> Result<String, HttpError> {
        let bytes = percent_decode(&s.replace('+', " "))?;
        String::from_utf8(bytes).map_err(|_| HttpError::BadPercentEncoding)
    };
    q.split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// The standard reason phrase of a status code (`""` for one this module does not know).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Appends an HTTP/1.1 response head to `out`: the status line with the standard reason
/// phrase, `headers` in order, `Content-Length: content_length`, `Connection: close` when
/// `!keep_alive`, and the blank line. `Date` and everything else are the caller's to pass.
///
/// A 1xx or 204 response gets neither `Content-Length` nor `Connection` (RFC 9110 forbids
/// `Content-Length` there). For a response to HEAD, pass the length a GET would have.
/// Control characters (CR and LF above all) in a name or value are written as spaces, so a
/// value taken from a request cannot split the response.
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    content_length: u64,
    keep_alive: bool,
) {
    let reason = reason_phrase(status);
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    for (name, value) in headers {
        put_sanitized(out, name);
        out.extend_from_slice(b": ");
        put_sanitized(out, value);
        out.extend_from_slice(b"\r\n");
    }
    if !(100..200).contains(&status) && status != 204 {
        out.extend_from_slice(format!("Content-Length: {content_length}\r\n").as_bytes());
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn put_sanitized(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().map(|b| {
        if b.is_ascii_control() && b != b'\t' {
            b' '
        } else {
            b
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PUT: &[u8] = b"PUT /bkt/a%20b?x-id=PutObject HTTP/1.1\r\n\
Host: 127.0.0.1:9123\r\n\
Content-Length: 5\r\n\
X-Amz-Meta-Crc32c:  2591144780 \r\n\
Expect: 100-continue\r\n\
\r\n";

    fn complete(buf: &[u8]) -> (RequestHead, usize) {
        match parse_head(buf) {
            Ok(Parsed::Complete { head, len }) => (head, len),
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    fn request(lines: &[&str]) -> Vec<u8> {
        let mut s = lines.join("\r\n");
        s.push_str("\r\n\r\n");
        s.into_bytes()
    }

    #[test]
    fn parses_a_put() {
        let mut buf = PUT.to_vec();
        buf.extend_from_slice(b"hello");
        let (head, len) = complete(&buf);
        assert_eq!(len, PUT.len());
        assert_eq!(head.method, Method::Put);
        assert_eq!(head.method_raw, "PUT");
        assert_eq!(head.path, "/bkt/a%20b");
        assert_eq!(head.query, "x-id=PutObject");
        assert_eq!(head.content_length, Some(5));
        assert!(head.keep_alive);
        assert!(head.expect_continue);
        assert_eq!(head.header("x-amz-meta-crc32c"), Some("2591144780"));
        assert_eq!(head.header("host"), Some("127.0.0.1:9123"));
        assert_eq!(head.header("nope"), None);
        let names: Vec<_> = head.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["host", "content-length", "x-amz-meta-crc32c", "expect"]
        );
    }

    #[test]
    fn partial_at_every_split_point() {
        for i in 0..PUT.len() {
            assert_eq!(
                parse_head(&PUT[..i]),
                Ok(Parsed::Partial),
                "prefix of {i} bytes"
            );
        }
        assert_eq!(complete(PUT).1, PUT.len());
    }

    #[test]
    fn methods_and_no_query() {
        for (m, want) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("DELETE", Method::Delete),
            ("OPTIONS", Method::Other),
            ("get", Method::Other),
        ] {
            let (head, _) = complete(&request(&[&format!("{m} / HTTP/1.1"), "Host: h"]));
            assert_eq!(head.method, want);
            assert_eq!(head.method_raw, m);
            assert_eq!(head.path, "/");
            assert_eq!(head.query, "");
            assert_eq!(head.content_length, None);
            assert!(!head.expect_continue);
        }
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |version: &str, conn: &[&str]| {
            let mut lines = vec![format!("GET / {version}"), "Host: h".to_string()];
            lines.extend(conn.iter().map(|c| format!("Connection: {c}")));
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            complete(&request(&lines)).0.keep_alive
        };
        assert!(ka("HTTP/1.1", &[]));
        assert!(ka("HTTP/1.1", &["keep-alive"]));
        assert!(!ka("HTTP/1.1", &["close"]));
        assert!(!ka("HTTP/1.1", &["Keep-Alive, Close"]));
        assert!(!ka("HTTP/1.1", &["keep-alive", "close"]));
        assert!(!ka("HTTP/1.0", &[]));
        assert!(ka("HTTP/1.0", &["Keep-Alive"]));
        assert!(!ka("HTTP/1.0", &["keep-alive, close"]));
    }

    #[test]
    fn expect_continue_only_in_http11() {
        let e = |version: &str, value: &str| {
            let line = format!("PUT /k {version}");
            let expect = format!("Expect: {value}");
            complete(&request(&[&line, "Host: h", "Content-Length: 1", &expect]))
                .0
                .expect_continue
        };
        assert!(e("HTTP/1.1", "100-Continue"));
        assert!(!e("HTTP/1.1", "something-else"));
        assert!(!e("HTTP/1.0", "100-continue"));
    }

    #[test]
    fn http10_needs_no_host() {
        let (head, _) = complete(b"GET /x HTTP/1.0\r\n\r\n");
        assert_eq!(head.path, "/x");
    }

    #[test]
    fn content_length_rules() {
        let cl = |values: &[&str]| {
            let mut lines = vec!["PUT /k HTTP/1.1".to_string(), "Host: h".to_string()];
            lines.extend(values.iter().map(|v| format!("Content-Length: {v}")));
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            parse_head(&request(&lines)).map(|p| match p {
                Parsed::Complete { head, .. } => head.content_length,
                Parsed::Partial => panic!("partial"),
            })
        };
        assert_eq!(cl(&["0"]), Ok(Some(0)));
        assert_eq!(cl(&["007"]), Ok(Some(7)));
        assert_eq!(cl(&["18446744073709551615"]), Ok(Some(u64::MAX)));
        assert_eq!(cl(&["5", "5"]), Ok(Some(5)));
        let bad = Err(HttpError::BadContentLength);
        assert_eq!(cl(&["5", "6"]), bad);
        assert_eq!(cl(&["18446744073709551616"]), bad);
        assert_eq!(cl(&["-1"]), bad);
        assert_eq!(cl(&["+5"]), bad);
        assert_eq!(cl(&["5, 5"]), bad);
        assert_eq!(cl(&["0x10"]), bad);
        assert_eq!(cl(&["1 2"]), bad);
        assert_eq!(cl(&[""]), bad);
    }

    #[test]
    fn any_transfer_encoding_is_refused() {
        for te in ["chunked", "gzip, chunked", "identity", "Chunked"] {
            let te = format!("Transfer-Encoding: {te}");
            let buf = request(&["PUT /k HTTP/1.1", "Host: h", &te, "Content-Length: 3"]);
            let err = parse_head(&buf).unwrap_err();
            assert_eq!(err, HttpError::TransferEncodingUnsupported);
            assert_eq!((err.status(), err.s3_code()), (411, "MissingContentLength"));
        }
    }

    #[test]
    fn only_http10_and_http11() {
        for v in ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9"] {
            let line = format!("GET / {v}");
            let err = parse_head(&request(&[&line, "Host: h"])).unwrap_err();
            assert_eq!(err, HttpError::VersionUnsupported, "{v}");
            assert_eq!(err.status(), 505);
        }
        let err = parse_head(&request(&["GET / FTP/1.1", "Host: h"])).unwrap_err();
        assert!(matches!(err, HttpError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn malformed_heads() {
        let cases: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x7fb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX\x01A: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A : b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: b\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\nHost: h\n\n",
            b"GET / HTTP/1.1\r\nHost: h\nX-A: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: \xff\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
        ];
        for case in cases {
            let err = parse_head(case).unwrap_err();
            assert!(
                matches!(err, HttpError::Malformed(_)),
                "{:?}: {err:?}",
                String::from_utf8_lossy(case)
            );
            assert_eq!((err.status(), err.s3_code()), (400, "BadRequest"));
        }
    }

    #[test]
    fn header_values_keep_utf8_and_inner_space() {
        let buf = "GET / HTTP/1.1\r\nHost: h\r\nX-Amz-Meta-N: \t caf\u{e9}  au lait \t\r\n\r\n";
        let (head, _) = complete(buf.as_bytes());
        assert_eq!(head.header("x-amz-meta-n"), Some("caf\u{e9}  au lait"));
    }

    #[test]
    fn size_limits() {
        // Exactly HEADERS_MAX headers pass, one more does not.
        let mut lines = vec!["GET / HTTP/1.1".to_string(), "Host: h".to_string()];
        lines.extend((1..HEADERS_MAX).map(|i| format!("X-{i}: v")));
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        assert_eq!(complete(&request(&refs)).0.headers.len(), HEADERS_MAX);
        lines.push("X-Last: v".into());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let err = parse_head(&request(&refs)).unwrap_err();
        assert_eq!(err, HttpError::TooManyHeaders);
        assert_eq!(err.status(), 431);

        // A head of exactly HEAD_MAX bytes passes.
        let base = request(&["GET / HTTP/1.1", "Host: h", "X-Pad: "]);
        let pad = "a".repeat(HEAD_MAX - base.len());
        let line = format!("X-Pad: {pad}");
        let exact = request(&["GET / HTTP/1.1", "Host: h", &line]);
        assert_eq!(exact.len(), HEAD_MAX);
        assert_eq!(complete(&exact).1, HEAD_MAX);
        // One byte more is too large, even with the rest of it received.
        let line = format!("X-Pad: a{pad}");
        let over = request(&["GET / HTTP/1.1", "Host: h", &line]);
        assert_eq!(parse_head(&over), Err(HttpError::HeadTooLarge));
        assert_eq!(parse_head(&over[..HEAD_MAX]), Err(HttpError::HeadTooLarge));
        assert_eq!(parse_head(&over[..HEAD_MAX - 1]), Ok(Parsed::Partial));
        let err = HttpError::HeadTooLarge;
        assert_eq!(
            (err.status(), err.s3_code()),
            (431, "RequestHeaderSectionTooLarge")
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c%2Bd%2b").unwrap(), b"a b+c+d+");
        assert_eq!(percent_decode("%E6%b5%8B").unwrap(), "测".as_bytes());
        assert_eq!(percent_decode("%ff%00").unwrap(), [0xff, 0]);
        assert_eq!(percent_decode("").unwrap(), b"");
        for bad in ["%", "%2", "a%2", "%zz", "%2g", "%%41"] {
            assert_eq!(
                percent_decode(bad),
                Err(HttpError::BadPercentEncoding),
                "{bad}"
            );
        }
        let err = HttpError::BadPercentEncoding;
        assert_eq!((err.status(), err.s3_code()), (400, "InvalidURI"));
    }

    #[test]
    fn query_pairs_rules() {
        let pairs = |q: &str| query_pairs(q).unwrap();
        let owned = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(pairs(""), owned(&[]));
        assert_eq!(
            pairs("delimiter=&encoding-type=url&list-type=2&prefix=a%2Fb&uploads"),
            owned(&[
                ("delimiter", ""),
                ("encoding-type", "url"),
                ("list-type", "2"),
                ("prefix", "a/b"),
                ("uploads", ""),
            ])
        );
        assert_eq!(
            pairs("a=1+2%2B3&&b=x=y&"),
            owned(&[("a", "1 2+3"), ("b", "x=y")])
        );
        assert_eq!(pairs("k%20+x=%E6%B5%8B"), owned(&[("k  x", "测")]));
        assert_eq!(query_pairs("a=%ff"), Err(HttpError::BadPercentEncoding));
        assert_eq!(query_pairs("a=%f"), Err(HttpError::BadPercentEncoding));
    }

    #[test]
    fn response_heads() {
        let mut out = Vec::new();
        write_response_head(&mut out, 200, &[("ETag", "\"abc\"")], 5, true);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nETag: \"abc\"\r\nContent-Length: 5\r\n\r\n"
        );

        out.clear();
        write_response_head(&mut out, 404, &[("X-A", "1"), ("X-B", "2")], 0, false);
        assert_eq!(
            out,
            &b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nX-B: 2\r\nContent-Length: 0\r\n\
Connection: close\r\n\r\n"[..]
        );

        out.clear();
        write_response_head(&mut out, 204, &[], 0, false);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\n\r\n");

        out.clear();
        write_response_head(&mut out, 100, &[], 0, true);
        assert_eq!(out, CONTINUE);

        out.clear();
        write_response_head(
            &mut out,
            200,
            &[("X-Amz-Meta-A", "x\r\nSet-Cookie: y")],
            0,
            true,
        );
        assert_eq!(
            out,
            &b"HTTP/1.1 200 OK\r\nX-Amz-Meta-A: x  Set-Cookie: y\r\nContent-Length: 0\r\n\r\n"[..]
        );
        // The written head parses as a response with the same headers.
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut slots);
        assert!(resp.parse(&out).unwrap().is_complete());
        assert_eq!(resp.headers.len(), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_on_arbitrary_bytes(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(Parsed::Complete { len, .. }) = parse_head(&buf) {
                prop_assert!(len <= buf.len());
            }
        }

        #[test]
        fn never_panics_on_mutated_requests(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
            tail in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let mut buf = PUT.to_vec();
            for (at, b) in edits {
                let at = at % buf.len();
                buf[at] = b;
            }
            buf.truncate(cut % (buf.len() + 1));
            buf.extend_from_slice(&tail);
            if let Ok(Parsed::Complete { len, head }) = parse_head(&buf) {
                prop_assert!(len <= buf.len());
                prop_assert!(head.path.starts_with('/'));
            }
        }

        #[test]
        fn never_panics_on_long_input(
            fill in any::<u8>(),
            len in (HEAD_MAX - 8)..(HEAD_MAX + 64),
        ) {
            let mut buf = b"GET / HTTP/1.1\r\nX: ".to_vec();
            buf.resize(len, fill);
            if let Ok(Parsed::Complete { len, .. }) = parse_head(&buf) {
                prop_assert!(len <= buf.len());
                prop_assert!(len <= HEAD_MAX);
            }
        }
    }
}

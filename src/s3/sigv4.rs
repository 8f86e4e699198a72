//! AWS Signature Version 4 for S3, verified against configured access keys.
//!
//! [`verify`] checks a request head signed the way S3 clients sign: with an `Authorization:
//! AWS4-HMAC-SHA256 ...` header, or presigned (the same fields in the query, `X-Amz-*`). It
//! rebuilds the canonical request from the head, the string to sign and the signing key of the
//! access key's secret, and compares signatures in constant time.
//!
//! Canonicalisation, as S3 does it (no path normalisation, no double encoding):
//! - the URI is the path percent-decoded, then every byte but `A-Z a-z 0-9 - . _ ~ /` written
//!   as `%XX` (upper-case hex);
//! - the query is decoded pair by pair with [`query_pairs`] (so a raw `+` is a space), each key
//!   and value re-encoded like the path but with `/` encoded too, sorted by key then value,
//!   joined as `k=v` with `&` (a key without a value gives `k=`);
//! - each signed header is `name:value`, the values of a header sent several times joined by
//!   `,`, each value trimmed and its runs of whitespace collapsed to one space;
//! - the payload hash is the `x-amz-content-sha256` header verbatim.
//!
//! Any region is accepted, the service must be `s3`. Streaming (chunk-signed) payloads are not
//! supported. The body hash, when the client declared one ([`Payload::Sha256`]), is for the
//! caller to check once the body is read.
//!
//! [`sign`] signs a request as a client does (for clients and tests of this server), on the
//! same canonical request.
//!
//! Secrets never appear in errors, logs or `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::s3::http::{percent_decode, query_pairs, Method, RequestHead};

type HmacSha256 = Hmac<Sha256>;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const UNSIGNED: &str = "UNSIGNED-PAYLOAD";
/// The longest validity a presigned request may ask for (`X-Amz-Expires`), as S3 has it.
const PRESIGN_MAX: u64 = 7 * 24 * 3600;

/// The furthest a request's `x-amz-date` may be from the server's clock, either way.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Access keys: access key id to secret key. `Debug` shows the ids only.
#[derive(Clone, Default)]
pub struct Keys {
    secrets: BTreeMap<String, String>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("access_keys", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Keys {
    /// No keys.
    pub fn new() -> Keys {
        Keys::default()
    }

    /// Adds a key, or replaces the secret of an access key id already there.
    pub fn insert(&mut self, access_key: &str, secret: &str) {
        self.secrets
            .insert(access_key.to_string(), secret.to_string());
    }

    /// Reads keys from `AK:SECRET[,AK2:SECRET2...]` (spaces around entries are ignored; a
    /// secret may contain `:`). An access key id must be non-empty and free of `/`, `:`, `,`
    /// and whitespace, a secret non-empty, and no id may come twice. The error names the bad
    /// entry by its position and, when it can be told apart, its access key id, never its
    /// secret.
    pub fn parse(spec: &str) -> Result<Keys, String> {
        let mut keys = Keys::new();
        for (i, entry) in spec.split(',').enumerate() {
            let n = i + 1;
            let entry = entry.trim();
            let Some((ak, secret)) = entry.split_once(':') else {
                return Err(format!(
                    "access key entry {n}: expected ACCESS_KEY:SECRET (no ':' found)"
                ));
            };
            if ak.is_empty() {
                return Err(format!("access key entry {n}: the access key id is empty"));
            }
            if ak.chars().any(|c| c == '/' || c.is_whitespace()) {
                return Err(format!(
                    "access key entry {n}: the access key id may not contain '/' or whitespace"
                ));
            }
            if secret.is_empty() {
                return Err(format!("access key entry {n} ({ak}): the secret is empty"));
            }
            if keys.secrets.contains_key(ak) {
                return Err(format!("access key entry {n} ({ak}): given twice"));
            }
            keys.insert(ak, secret);
        }
        Ok(keys)
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Whether `access_key` is one of the keys.
    pub fn contains(&self, access_key: &str) -> bool {
        self.secrets.contains_key(access_key)
    }
}

/// What the client says about the body (`x-amz-content-sha256`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// `UNSIGNED-PAYLOAD`: the body is not covered by the signature.
    Unsigned,
    /// The body's SHA-256: the caller must check the body against it and answer
    /// `XAmzContentSHA256Mismatch` (400) when it differs.
    Sha256([u8; 32]),
}

/// A request whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The access key id that signed it.
    pub access_key: String,
    /// What the signature says about the body.
    pub payload: Payload,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header and no presigned query: an anonymous request.
    #[error("the request is not signed")]
    Missing,
    /// The signature fields are not as SigV4 has them (the text says what is wrong).
    #[error("malformed authorization: {0}")]
    Malformed(String),
    /// A signing algorithm other than `AWS4-HMAC-SHA256` (such as Signature Version 2).
    #[error("unsupported authorization mechanism; use AWS4-HMAC-SHA256")]
    UnsupportedAlgorithm,
    /// The access key id is not one of the keys.
    #[error("the access key id does not exist")]
    InvalidAccessKeyId,
    /// The signature differs from the one computed with the key's secret.
    #[error("the request signature does not match")]
    SignatureDoesNotMatch,
    /// The request time is more than [`MAX_SKEW`] from the server's clock.
    #[error("the difference between the request time and the server's time is too large")]
    RequestTimeTooSkewed,
    /// A presigned request past its `X-Amz-Expires`.
    #[error("the presigned request has expired")]
    Expired,
    /// No `x-amz-content-sha256` header on a request signed in a header.
    #[error("missing required header x-amz-content-sha256")]
    MissingContentSha256,
    /// An `x-amz-content-sha256` that is neither `UNSIGNED-PAYLOAD` nor 64 hex digits.
    #[error("x-amz-content-sha256 must be UNSIGNED-PAYLOAD or a hex SHA-256")]
    BadContentSha256,
    /// A `STREAMING-*` payload (aws-chunked bodies with per-chunk signatures or trailers).
    #[error("streaming (aws-chunked) payloads are not supported; send UNSIGNED-PAYLOAD or the body's SHA-256")]
    StreamingUnsupported,
}

impl AuthError {
    /// The `Code` of the S3 error body to answer with.
    pub fn s3_code(&self) -> &'static str {
        match self {
            AuthError::Missing | AuthError::Expired => "AccessDenied",
            AuthError::Malformed(_) => "AuthorizationHeaderMalformed",
            AuthError::UnsupportedAlgorithm | AuthError::MissingContentSha256 => "InvalidRequest",
            AuthError::InvalidAccessKeyId => "InvalidAccessKeyId",
            AuthError::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            AuthError::RequestTimeTooSkewed => "RequestTimeTooSkewed",
            AuthError::BadContentSha256 => "InvalidArgument",
            AuthError::StreamingUnsupported => "NotImplemented",
        }
    }

    /// The HTTP status to answer with: 403 when the request is not allowed, 400 when it is
    /// not well formed, 501 for streaming payloads.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing
            | AuthError::Expired
            | AuthError::InvalidAccessKeyId
            | AuthError::SignatureDoesNotMatch
            | AuthError::RequestTimeTooSkewed => 403,
            AuthError::Malformed(_)
            | AuthError::UnsupportedAlgorithm
            | AuthError::MissingContentSha256
            | AuthError::BadContentSha256 => 400,
            AuthError::StreamingUnsupported => 501,
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Verifies the signature of `head` with `keys`, `now` being the server's clock.
///
/// A request with an `Authorization` header is checked as header-signed; one without, whose
/// query has `X-Amz-Signature` or `X-Amz-Algorithm`, as presigned; any other is
/// [`AuthError::Missing`]. A request signed both ways is [`AuthError::Malformed`].
pub fn verify(head: &RequestHead, keys: &Keys, now: SystemTime) -> Result<Verified, AuthError> {
    let presigned = head
        .query
        .split('&')
        .any(|p| p.starts_with("X-Amz-Signature=") || p.starts_with("X-Amz-Algorithm="));
    let mut auth = head.header_all("authorization");
    match (auth.next(), auth.next()) {
        (Some(_), Some(_)) => Err(malformed("more than one Authorization header")),
        (Some(_), None) if presigned => Err(malformed(
            "signed both in the Authorization header and in the query",
        )),
        (Some(value), None) => verify_header_signed(head, value, keys, now),
        (None, _) if presigned => verify_presigned(head, keys, now),
        (None, _) => Err(AuthError::Missing),
    }
}

fn malformed(what: impl Into<String>) -> AuthError {
    AuthError::Malformed(what.into())
}

/// The fields both ways of signing carry.
struct Signed<'a> {
    access_key: &'a str,
    /// `YYYYMMDD/region/s3/aws4_request`
    scope: &'a str,
    scope_date: &'a str,
    region: &'a str,
    signed_headers: &'a str,
    signature: [u8; 32],
}

impl<'a> Signed<'a> {
    fn new(
        credential: &'a str,
        signed_headers: &'a str,
        signature: &str,
    ) -> Result<Self, AuthError> {
        let Some((access_key, scope)) = credential.split_once('/') else {
            return Err(malformed(
                "Credential is not ACCESS_KEY/DATE/REGION/s3/aws4_request",
            ));
        };
        let parts: Vec<&str> = scope.split('/').collect();
        let &[scope_date, region, service, terminator] = parts.as_slice() else {
            return Err(malformed(
                "Credential is not ACCESS_KEY/DATE/REGION/s3/aws4_request",
            ));
        };
        if access_key.is_empty() || region.is_empty() || terminator != "aws4_request" {
            return Err(malformed(
                "Credential is not ACCESS_KEY/DATE/REGION/s3/aws4_request",
            ));
        }
        if scope_date.len() != 8 || !scope_date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed("the Credential date is not YYYYMMDD"));
        }
        if service != "s3" {
            return Err(malformed(format!(
                "the Credential service is '{service}', expected 's3'"
            )));
        }
        if signed_headers.is_empty()
            || !signed_headers.split(';').all(|name| {
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase() && b != b':')
            })
        {
            return Err(malformed(
                "SignedHeaders must be lower-case header names separated by ';'",
            ));
        }
        if !signed_headers.split(';').any(|name| name == "host") {
            return Err(malformed("SignedHeaders must include host"));
        }
        let signature = decode_signature(signature)?;
        Ok(Signed {
            access_key,
            scope,
            scope_date,
            region,
            signed_headers,
            signature,
        })
    }

    /// Checks the scope date against the request date, finds the secret, and compares the
    /// signature of `canonical_request`.
    fn check(&self, keys: &Keys, amz_date: &str, canonical_request: &str) -> Result<(), AuthError> {
        if !amz_date.starts_with(self.scope_date) {
            return Err(malformed(
                "the Credential date is not the date of X-Amz-Date",
            ));
        }
        let Some(secret) = keys.secrets.get(self.access_key) else {
            return Err(AuthError::InvalidAccessKeyId);
        };
        // Constant time: CtOutput's comparison.
        self.mac(secret, amz_date, canonical_request)
            .verify_slice(&self.signature)
            .map_err(|_| AuthError::SignatureDoesNotMatch)
    }

    /// The HMAC of the string to sign of `canonical_request` under the signing key that
    /// `secret` derives for this scope: finalized, it is the signature.
    fn mac(&self, secret: &str, amz_date: &str, canonical_request: &str) -> HmacSha256 {
        let string_to_sign = format!(
            "{ALGORITHM}\n{amz_date}\n{}\n{}",
            self.scope,
            hex(&Sha256::digest(canonical_request.as_bytes()))
        );
        let mut key = hmac(
            format!("AWS4{secret}").as_bytes(),
            self.scope_date.as_bytes(),
        );
        for part in [self.region, "s3", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        let mut mac = new_mac(&key);
        mac.update(string_to_sign.as_bytes());
        mac
    }
}

/// What a client signs with: an access key, its secret and the region of the scope.
pub struct Credential<'a> {
    /// The access key id.
    pub access_key: &'a str,
    /// Its secret.
    pub secret: &'a str,
    /// The region named in the scope (this server accepts any).
    pub region: &'a str,
}

impl fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("access_key", &self.access_key)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// Signs a request the way an S3 client does, for clients and tests of this server: adds
/// `x-amz-date` (from `now`), `x-amz-content-sha256` (`payload_sha256_hex`: the body's SHA-256
/// in hex, or `UNSIGNED-PAYLOAD`) and `Authorization` to `headers`, replacing any already
/// there. The signature covers `Host` (which `headers` must hold), every `x-amz-*` header,
/// and `Content-Type` and `Content-MD5` when present. `path_and_query` is the request target
/// as it will be sent (still percent-encoded). The canonical request is the one [`verify`]
/// rebuilds, from the same code.
///
/// Fails with [`AuthError::Malformed`] when there is no `Host` header or the target's
/// percent-encoding is bad (the request could not be verified either).
pub fn sign(
    method: &str,
    path_and_query: &str,
    headers: &mut Vec<(String, String)>,
    payload_sha256_hex: &str,
    cred: &Credential<'_>,
    now: SystemTime,
) -> Result<(), AuthError> {
    headers.retain(|(n, _)| {
        !["x-amz-date", "x-amz-content-sha256", "authorization"]
            .iter()
            .any(|ours| n.eq_ignore_ascii_case(ours))
    });
    let amz_date = super::date::amz_date(now);
    headers.push(("x-amz-date".into(), amz_date.clone()));
    headers.push(("x-amz-content-sha256".into(), payload_sha256_hex.into()));

    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let head = RequestHead {
        method: Method::from_token(method),
        method_raw: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_ascii_lowercase(),
                    v.trim_matches([' ', '\t']).to_string(),
                )
            })
            .collect(),
        content_length: None,
        keep_alive: true,
        expect_continue: false,
    };
    let mut names: Vec<&str> = head
        .headers
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.starts_with("x-amz-") || matches!(*n, "content-type" | "content-md5"))
        .chain(["host"])
        .collect();
    names.sort_unstable();
    names.dedup();
    let signed_headers = names.join(";");
    let scope_date = &amz_date[..8];
    let scope = format!("{scope_date}/{}/s3/aws4_request", cred.region);
    let signed = Signed {
        access_key: cred.access_key,
        scope: &scope,
        scope_date,
        region: cred.region,
        signed_headers: &signed_headers,
        signature: [0; 32],
    };
    let canonical = canonical_request(&head, &signed, None, payload_sha256_hex)?;
    let signature = signed.mac(cred.secret, &amz_date, &canonical).finalize();
    let authorization = format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={}",
        cred.access_key,
        hex(&signature.into_bytes())
    );
    headers.push(("Authorization".into(), authorization));
    Ok(())
}

fn new_mac(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = new_mac(key);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn decode_signature(s: &str) -> Result<[u8; 32], AuthError> {
    decode_hex32(s).ok_or_else(|| malformed("Signature is not 64 hex digits"))
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        out[i] = (hi << 4 | lo) as u8;
    }
    Some(out)
}

fn verify_header_signed(
    head: &RequestHead,
    authorization: &str,
    keys: &Keys,
    now: SystemTime,
) -> Result<Verified, AuthError> {
    let Some((algorithm, fields)) = authorization.split_once(' ') else {
        return Err(if authorization == ALGORITHM {
            malformed("no Credential, SignedHeaders and Signature")
        } else {
            AuthError::UnsupportedAlgorithm
        });
    };
    if algorithm != ALGORITHM {
        return Err(AuthError::UnsupportedAlgorithm);
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for field in fields.split(',').map(str::trim) {
        let slot = match field.split_once('=') {
            Some(("Credential", v)) => (&mut credential, v),
            Some(("SignedHeaders", v)) => (&mut signed_headers, v),
            Some(("Signature", v)) => (&mut signature, v),
            _ => {
                return Err(malformed(
                    "Authorization has a field other than Credential, SignedHeaders, Signature",
                ))
            }
        };
        if slot.0.replace(slot.1).is_some() {
            return Err(malformed("Authorization has a field twice"));
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(malformed(
            "Authorization needs Credential, SignedHeaders and Signature",
        ));
    };
    let signed = Signed::new(credential, signed_headers, signature)?;
    if !keys.contains(signed.access_key) {
        return Err(AuthError::InvalidAccessKeyId);
    }

    let Some(amz_date) = head.header("x-amz-date") else {
        return Err(malformed("missing X-Amz-Date header"));
    };
    check_skew(parse_amz_date(amz_date)?, now)?;

    let Some(payload_hash) = head.header("x-amz-content-sha256") else {
        return Err(AuthError::MissingContentSha256);
    };
    let payload = parse_payload(payload_hash)?;

    let canonical = canonical_request(head, &signed, None, payload_hash)?;
    signed.check(keys, amz_date, &canonical)?;
    Ok(Verified {
        access_key: signed.access_key.to_string(),
        payload,
    })
}

fn verify_presigned(
    head: &RequestHead,
    keys: &Keys,
    now: SystemTime,
) -> Result<Verified, AuthError> {
    let pairs =
        query_pairs(&head.query).map_err(|_| malformed("bad percent-encoding in the query"))?;
    let param = |name: &str| -> Result<&str, AuthError> {
        let mut values = pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        match (values.next(), values.next()) {
            (Some(v), None) => Ok(v),
            (None, _) => Err(malformed(format!("presigned query lacks {name}"))),
            (Some(_), Some(_)) => Err(malformed(format!("presigned query has {name} twice"))),
        }
    };
    if param("X-Amz-Algorithm")? != ALGORITHM {
        return Err(AuthError::UnsupportedAlgorithm);
    }
    let signed = Signed::new(
        param("X-Amz-Credential")?,
        param("X-Amz-SignedHeaders")?,
        param("X-Amz-Signature")?,
    )?;
    if !keys.contains(signed.access_key) {
        return Err(AuthError::InvalidAccessKeyId);
    }
    let amz_date = param("X-Amz-Date")?;
    let date = parse_amz_date(amz_date)?;
    let expires = param("X-Amz-Expires")?;
    let expires = match expires.parse::<u64>() {
        Ok(s) if expires.bytes().all(|b| b.is_ascii_digit()) && (1..=PRESIGN_MAX).contains(&s) => s,
        _ => return Err(malformed("X-Amz-Expires must be 1 to 604800 seconds")),
    };
    // Not before its date (give or take the skew), not after its expiry.
    if now + MAX_SKEW < date {
        return Err(AuthError::RequestTimeTooSkewed);
    }
    if now > date + Duration::from_secs(expires) {
        return Err(AuthError::Expired);
    }

    let (payload_hash, payload) = match head.header("x-amz-content-sha256") {
        Some(h) => (h, parse_payload(h)?),
        None => (UNSIGNED, Payload::Unsigned),
    };
    let canonical = canonical_request(head, &signed, Some("X-Amz-Signature"), payload_hash)?;
    signed.check(keys, amz_date, &canonical)?;
    Ok(Verified {
        access_key: signed.access_key.to_string(),
        payload,
    })
}

fn parse_payload(value: &str) -> Result<Payload, AuthError> {
    if value == UNSIGNED {
        Ok(Payload::Unsigned)
    } else if value.starts_with("STREAMING-") {
        Err(AuthError::StreamingUnsupported)
    } else {
        decode_hex32(value)
            .map(Payload::Sha256)
            .ok_or(AuthError::BadContentSha256)
    }
}

fn check_skew(date: SystemTime, now: SystemTime) -> Result<(), AuthError> {
    let skew = match now.duration_since(date) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > MAX_SKEW {
        Err(AuthError::RequestTimeTooSkewed)
    } else {
        Ok(())
    }
}

/// Reads `YYYYMMDDTHHMMSSZ` (UTC).
fn parse_amz_date(s: &str) -> Result<SystemTime, AuthError> {
    let bad = || malformed("X-Amz-Date is not YYYYMMDDTHHMMSSZ");
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return Err(bad());
    }
    let num = |from: usize, to: usize| -> Result<u64, AuthError> {
        let digits = &s[from..to];
        if digits.bytes().all(|d| d.is_ascii_digit()) {
            digits.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (year, month, day) = (num(0, 4)?, num(4, 6)?, num(6, 8)?);
    let (hour, min, sec) = (num(9, 11)?, num(11, 13)?, num(13, 15)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if year < 1970 || day == 0 || day > month_days || hour > 23 || min > 59 || sec > 59 {
        return Err(bad());
    }
    let days = days_since_epoch(year, month, day);
    Ok(UNIX_EPOCH + Duration::from_secs(days * 86_400 + hour * 3600 + min * 60 + sec))
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (year >= 1970).
fn days_since_epoch(year: u64, month: u64, day: u64) -> u64 {
    // Count years from March 1st so that the leap day is the last day of a year.
    let y = if month <= 2 { year - 1 } else { year };
    let march_based_month = (month + 9) % 12;
    let day_of_year = (153 * march_based_month + 2) / 5 + day - 1;
    let days_before_year = y * 365 + y / 4 - y / 100 + y / 400;
    // 719_468 is that count for 1970-03-01 less the 59 days of January and February 1970.
    days_before_year + day_of_year - 719_468
}

/// Percent-encodes for the canonical request: every byte but `A-Z a-z 0-9 - . _ ~` (and `/`
/// when `keep_slash`) as `%XX`.
fn aws_encode(bytes: &[u8], keep_slash: bool, out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 15)]));
        }
    }
}

/// The path decoded, then encoded the AWS way (`/` kept).
fn canonical_uri(path: &str) -> Result<String, AuthError> {
    let decoded =
        percent_decode(path).map_err(|_| malformed("bad percent-encoding in the path"))?;
    let mut out = String::with_capacity(path.len());
    aws_encode(&decoded, true, &mut out);
    Ok(out)
}

/// The query's pairs decoded, encoded the AWS way (`/` too), sorted, joined; the parameter
/// named `skip` left out.
fn canonical_query(query: &str, skip: Option<&str>) -> Result<String, AuthError> {
    let pairs = query_pairs(query).map_err(|_| malformed("bad percent-encoding in the query"))?;
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| Some(k.as_str()) != skip)
        .map(|(k, v)| {
            let (mut ek, mut ev) = (String::new(), String::new());
            aws_encode(k.as_bytes(), false, &mut ek);
            aws_encode(v.as_bytes(), false, &mut ev);
            (ek, ev)
        })
        .collect();
    encoded.sort();
    let mut out = String::with_capacity(query.len() + 8);
    for (i, (k, v)) in encoded.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    Ok(out)
}

/// The canonical request; `skip` names a query parameter left out (the presigned signature).
fn canonical_request(
    head: &RequestHead,
    signed: &Signed<'_>,
    skip: Option<&str>,
    payload_hash: &str,
) -> Result<String, AuthError> {
    let mut out = String::with_capacity(512);
    out.push_str(&head.method_raw);
    out.push('\n');

    out.push_str(&canonical_uri(&head.path)?);
    out.push('\n');
    out.push_str(&canonical_query(&head.query, skip)?);
    out.push('\n');

    for name in signed.signed_headers.split(';') {
        out.push_str(name);
        out.push(':');
        let mut any = false;
        for (i, value) in head.header_all(name).enumerate() {
            any = true;
            if i > 0 {
                out.push(',');
            }
            for (j, word) in value.split_ascii_whitespace().enumerate() {
                if j > 0 {
                    out.push(' ');
                }
                out.push_str(word);
            }
        }
        if !any {
            return Err(malformed(format!(
                "signed header '{name}' is not in the request"
            )));
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(signed.signed_headers);
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::http::{parse_head, Parsed};

    /// Requests the JuiceFS 1.4.2 client (aws-sdk-go-v2 1.41.5) sent with access key `AK` and
    /// secret `SK`, captured at 2026-12-07T15:23:24Z: the request line (without the version)
    /// and the headers as received.
    const CAPTURED: &[(&str, &[&str])] = &[
        (
            "PUT /bkt/__juicefs_benchmark_1796657004209038226__/put_test_file?x-id=PutObject",
            &[
                "Host: 127.0.0.1:9123",
                "User-Agent: aws-sdk-go-v2/1.41.5 ua/2.1 os/linux lang/go#1.27.3 md/GOOS#linux md/GOARCH#amd64 api/s3#1.99.0 m/a,e",
                "Content-Length: 1",
                "Accept-Encoding: identity",
                "Amz-Sdk-Invocation-Id: 34fa7a9e-5d6d-4aef-bdf8-d07305170131",
                "Amz-Sdk-Request: attempt=1; max=1",
                "Authorization: AWS4-HMAC-SHA256 Credential=AK/20261207/us-east-1/s3/aws4_request, SignedHeaders=accept-encoding;amz-sdk-invocation-id;amz-sdk-request;content-length;content-type;host;x-amz-content-sha256;x-amz-date;x-amz-meta-crc32c, Signature=f7aa66da3e4fa74a96517292e873240f08406f5ec04ec59167d3d07c03d07bbc",
                "Content-Type: application/octet-stream",
                "X-Amz-Content-Sha256: UNSIGNED-PAYLOAD",
                "X-Amz-Date: 20261207T152324Z",
                "X-Amz-Meta-Crc32c: 2432014819",
            ],
        ),
        (
            "GET /bkt?delimiter=&encoding-type=url&list-type=2&max-keys=1&prefix=&start-after=",
            &[
                "Host: 127.0.0.1:9123",
                "User-Agent: aws-sdk-go-v2/1.41.5 ua/2.1 os/linux lang/go#1.27.3 md/GOOS#linux md/GOARCH#amd64 api/s3#1.99.0 m/e",
                "Accept-Encoding: identity",
                "Amz-Sdk-Invocation-Id: 6187368b-12b7-4d60-877e-d28b26e39c99",
                "Amz-Sdk-Request: attempt=1; max=1",
                "Authorization: AWS4-HMAC-SHA256 Credential=AK/20261207/us-east-1/s3/aws4_request, SignedHeaders=accept-encoding;amz-sdk-invocation-id;amz-sdk-request;host;x-amz-content-sha256;x-amz-date, Signature=e9a4bc05c32b7800d7e18fd969317d86a87cdbefebb639843944f74e780ac098",
                "X-Amz-Content-Sha256: UNSIGNED-PAYLOAD",
                "X-Amz-Date: 20261207T152324Z",
            ],
        ),
        (
            "PUT /bkt/__juicefs_benchmark_1796657004209038226__/%E6%B5%8B%E8%AF%95%E7%BC%96%E7%A0%81%E6%96%87%E4%BB%B6%7B%22name%22%3A%22juicefs%22%7D%1F%25uFF081%25uFF09.jpg?x-id=PutObject",
            &[
                "Host: 127.0.0.1:9123",
                "User-Agent: aws-sdk-go-v2/1.41.5 ua/2.1 os/linux lang/go#1.27.3 md/GOOS#linux md/GOARCH#amd64 api/s3#1.99.0 m/a,e",
                "Content-Length: 1",
                "Accept-Encoding: identity",
                "Amz-Sdk-Invocation-Id: 735b3f93-e164-4e22-999b-4a7cbc554cf0",
                "Amz-Sdk-Request: attempt=1; max=1",
                "Authorization: AWS4-HMAC-SHA256 Credential=AK/20261207/us-east-1/s3/aws4_request, SignedHeaders=accept-encoding;amz-sdk-invocation-id;amz-sdk-request;content-length;content-type;host;x-amz-content-sha256;x-amz-date;x-amz-meta-crc32c, Signature=18e631cd144a2d42d04b3dc9cd2bd8fec9f3f693d16ee2e5bfecb51060dc21a7",
                "Content-Type: image/jpeg",
                "X-Amz-Content-Sha256: UNSIGNED-PAYLOAD",
                "X-Amz-Date: 20261207T152324Z",
                "X-Amz-Meta-Crc32c: 2432014819",
            ],
        ),
        (
            "GET /bkt?delimiter=&encoding-type=url&list-type=2&max-keys=1&prefix=__juicefs_benchmark_1796657004209038226__%2F&start-after=__juicefs_benchmark_1796657004209038226__%2F%E6%B5%8B%E8%AF%95%E7%BC%96%E7%A0%81%E6%96%87%E4%BB%B6",
            &[
                "Host: 127.0.0.1:9123",
                "User-Agent: aws-sdk-go-v2/1.41.5 ua/2.1 os/linux lang/go#1.27.3 md/GOOS#linux md/GOARCH#amd64 api/s3#1.99.0 m/e",
                "Accept-Encoding: identity",
                "Amz-Sdk-Invocation-Id: 8c48bcbf-3177-4cdd-a03c-8f26c93b72f3",
                "Amz-Sdk-Request: attempt=1; max=1",
                "Authorization: AWS4-HMAC-SHA256 Credential=AK/20261207/us-east-1/s3/aws4_request, SignedHeaders=accept-encoding;amz-sdk-invocation-id;amz-sdk-request;host;x-amz-content-sha256;x-amz-date, Signature=04532ad6989679a2e8bdddf6a0aa2aefa3772b4a7034a430d9f8779519d77d4b",
                "X-Amz-Content-Sha256: UNSIGNED-PAYLOAD",
                "X-Amz-Date: 20261207T152324Z",
            ],
        ),
        (
            "GET /bkt/__juicefs_benchmark_1796657004209038226__/put_test_file?x-id=GetObject",
            &[
                "Host: 127.0.0.1:9123",
                "User-Agent: aws-sdk-go-v2/1.41.5 ua/2.1 os/linux lang/go#1.27.3 md/GOOS#linux md/GOARCH#amd64 api/s3#1.99.0 m/c,e",
                "Accept-Encoding: identity",
                "Amz-Sdk-Invocation-Id: dbfe548c-ffa6-47bd-9966-2e18a67411d7",
                "Amz-Sdk-Request: attempt=1; max=1",
                "Authorization: AWS4-HMAC-SHA256 Credential=AK/20261207/us-east-1/s3/aws4_request, SignedHeaders=accept-encoding;amz-sdk-invocation-id;amz-sdk-request;host;range;x-amz-content-sha256;x-amz-date, Signature=9d49b76e248b1a6c0230abd2b76f40cf8ca90756abe717b87ba801e1c919e054",
                "Range: bytes=0-0",
                "X-Amz-Content-Sha256: UNSIGNED-PAYLOAD",
                "X-Amz-Date: 20261207T152324Z",
            ],
        ),
        (
            "POST /bkt/__juicefs_benchmark_1796657004209038226__/multi_test_file?uploads=",
            &[
                "Host: 127.0.0.1:9123",
                "User-Agent: aws-sdk-go-v2/1.41.5 ua/2.1 os/linux lang/go#1.27.3 md/GOOS#linux md/GOARCH#amd64 api/s3#1.99.0 m/e",
                "Content-Length: 0",
                "Accept-Encoding: identity",
                "Amz-Sdk-Invocation-Id: 0cc46190-a404-4c94-a71d-2128e49a5d21",
                "Amz-Sdk-Request: attempt=1; max=1",
                "Authorization: AWS4-HMAC-SHA256 Credential=AK/20261207/us-east-1/s3/aws4_request, SignedHeaders=accept-encoding;amz-sdk-invocation-id;amz-sdk-request;host;x-amz-content-sha256;x-amz-date, Signature=8d0371ebde6942a8d3293233ec3f8d50986414d0199177964ceb0a09d651c4e1",
                "X-Amz-Content-Sha256: UNSIGNED-PAYLOAD",
                "X-Amz-Date: 20261207T152324Z",
            ],
        ),
    ];

    /// 2026-12-07T15:23:24Z, the time of the captured requests.
    fn captured_at() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_796_657_004)
    }

    fn keys() -> Keys {
        Keys::parse("AK:SK").unwrap()
    }

    fn head(line: &str, headers: &[impl AsRef<str>]) -> RequestHead {
        let mut raw = format!("{line} HTTP/1.1\r\n");
        for h in headers {
            raw.push_str(h.as_ref());
            raw.push_str("\r\n");
        }
        raw.push_str("\r\n");
        match parse_head(raw.as_bytes()) {
            Ok(Parsed::Complete { head, len }) => {
                assert_eq!(len, raw.len());
                head
            }
            other => panic!("{line}: {other:?}"),
        }
    }

    /// A captured request with the header `name` (matched case-insensitively) changed by `f`,
    /// or dropped when `f` gives `None`.
    fn edited(
        (line, headers): (&str, &[&str]),
        name: &str,
        f: impl Fn(&str) -> Option<String>,
    ) -> RequestHead {
        let mut found = false;
        let headers: Vec<String> = headers
            .iter()
            .filter_map(|h| {
                let (n, v) = h.split_once(": ").unwrap();
                if n.eq_ignore_ascii_case(name) {
                    found = true;
                    f(v).map(|v| format!("{n}: {v}"))
                } else {
                    Some(h.to_string())
                }
            })
            .collect();
        assert!(found, "{name} not in {line}");
        head(line, &headers)
    }

    fn with_authorization(request: (&str, &[&str]), authorization: &str) -> RequestHead {
        edited(request, "authorization", |_| {
            Some(authorization.to_string())
        })
    }

    #[test]
    fn captured_requests_verify() {
        for &(line, headers) in CAPTURED {
            let got = verify(&head(line, headers), &keys(), captured_at());
            let want = Verified {
                access_key: "AK".into(),
                payload: Payload::Unsigned,
            };
            assert_eq!(got, Ok(want), "{line}");
        }
    }

    /// A different value for a header of a captured request, still well formed.
    fn changed_value(name: &str, value: &str) -> String {
        match name {
            "x-amz-date" => value.replace("24Z", "25Z"),
            "x-amz-content-sha256" => hex(&Sha256::digest(b"")),
            _ if value.bytes().all(|b| b.is_ascii_digit()) => format!("{value}0"),
            _ => format!("{value}x"),
        }
    }

    #[test]
    fn a_changed_signed_header_does_not_match() {
        for &(line, headers) in CAPTURED {
            let original = head(line, headers);
            let auth = original.header("authorization").unwrap();
            let (_, list) = auth.split_once("SignedHeaders=").unwrap();
            let (list, _) = list.split_once(',').unwrap();
            for name in list.split(';') {
                let changed = edited((line, headers), name, |v| Some(changed_value(name, v)));
                assert_eq!(
                    verify(&changed, &keys(), captured_at()),
                    Err(AuthError::SignatureDoesNotMatch),
                    "{line}: {name} changed"
                );
            }
            // A header that is not signed may change.
            let ua = edited((line, headers), "user-agent", |_| Some("other".into()));
            assert!(verify(&ua, &keys(), captured_at()).is_ok(), "{line}");
        }
    }

    #[test]
    fn a_changed_path_or_query_does_not_match() {
        for &(line, headers) in CAPTURED {
            let (method, target) = line.split_once(' ').unwrap();
            let (path, query) = target.split_once('?').unwrap();
            let other_path = format!("{method} {path}x?{query}");
            let other_query = format!("{method} {path}?{query}&x=1");
            let other_method = format!("{} {target}", if method == "GET" { "HEAD" } else { "GET" });
            for changed in [other_path, other_query, other_method] {
                assert_eq!(
                    verify(&head(&changed, headers), &keys(), captured_at()),
                    Err(AuthError::SignatureDoesNotMatch),
                    "{changed}"
                );
            }
        }
        // One escape of the odd key changed.
        let (line, headers) = CAPTURED[2];
        let changed = line.replace("%1F", "%1E");
        assert_eq!(
            verify(&head(&changed, headers), &keys(), captured_at()),
            Err(AuthError::SignatureDoesNotMatch)
        );
    }

    #[test]
    fn escapes_are_canonicalised() {
        // Lower-case hex, or an unreserved character escaped, name the same path and query.
        let (line, headers) = CAPTURED[2];
        let lower = line
            .replace("%E6%B5%8B", "%e6%b5%8b")
            .replace("jpg", "%6Apg");
        assert!(verify(&head(&lower, headers), &keys(), captured_at()).is_ok());
        let (line, headers) = CAPTURED[3];
        let lower = line
            .replace("%2F", "%2f")
            .replace("list-type", "list%2Dtype");
        assert!(verify(&head(&lower, headers), &keys(), captured_at()).is_ok());
    }

    #[test]
    fn skew() {
        let (line, headers) = CAPTURED[0];
        let h = head(line, headers);
        let at = captured_at();
        let minutes = |m: u64| Duration::from_secs(m * 60);
        for now in [at + minutes(15), at - minutes(15)] {
            assert!(verify(&h, &keys(), now).is_ok());
        }
        for now in [at + minutes(16), at - minutes(16), UNIX_EPOCH] {
            let err = verify(&h, &keys(), now).unwrap_err();
            assert_eq!(err, AuthError::RequestTimeTooSkewed);
            assert_eq!((err.status(), err.s3_code()), (403, "RequestTimeTooSkewed"));
        }
    }

    #[test]
    fn wrong_secret_and_unknown_key() {
        let (line, headers) = CAPTURED[1];
        let h = head(line, headers);
        let err = verify(&h, &Keys::parse("AK:SK2").unwrap(), captured_at()).unwrap_err();
        assert_eq!(err, AuthError::SignatureDoesNotMatch);
        assert_eq!(
            (err.status(), err.s3_code()),
            (403, "SignatureDoesNotMatch")
        );

        let err = verify(&h, &Keys::parse("AK2:SK").unwrap(), captured_at()).unwrap_err();
        assert_eq!(err, AuthError::InvalidAccessKeyId);
        assert_eq!((err.status(), err.s3_code()), (403, "InvalidAccessKeyId"));
        let err = verify(&h, &Keys::new(), captured_at()).unwrap_err();
        assert_eq!(err, AuthError::InvalidAccessKeyId);

        // The right key among others.
        let several = Keys::parse("A1:x, AK:SK ,A2:y:z").unwrap();
        assert!(verify(&h, &several, captured_at()).is_ok());
    }

    #[test]
    fn missing_authorization() {
        let h = edited(CAPTURED[1], "authorization", |_| None);
        let err = verify(&h, &keys(), captured_at()).unwrap_err();
        assert_eq!(err, AuthError::Missing);
        assert_eq!((err.status(), err.s3_code()), (403, "AccessDenied"));
    }

    #[test]
    fn malformed_authorization() {
        let sig = "e9a4bc05c32b7800d7e18fd969317d86a87cdbefebb639843944f74e780ac098";
        let sh = "accept-encoding;amz-sdk-invocation-id;amz-sdk-request;host;x-amz-content-sha256;x-amz-date";
        let cred = "AK/20261207/us-east-1/s3/aws4_request";
        let cases = [
            "AWS4-HMAC-SHA256".to_string(),
            "AWS4-HMAC-SHA256 ".to_string(),
            format!("AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders={sh}"),
            format!("AWS4-HMAC-SHA256 Credential={cred}, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 SignedHeaders={sh}, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders={sh}, Signature={sig}, X=1"),
            format!("AWS4-HMAC-SHA256 Credential={cred}, Credential={cred}, SignedHeaders={sh}, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders={sh}, Signature={}", &sig[1..]),
            format!("AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders={sh}, Signature={}g", &sig[1..]),
            format!("AWS4-HMAC-SHA256 Credential=AK/20261207/us-east-1/ec2/aws4_request, SignedHeaders={sh}, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential=AK/20261207/us-east-1/s3/aws5_request, SignedHeaders={sh}, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential=AK/20261207/us-east-1/s3, SignedHeaders={sh}, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential=AK/2026127/us-east-1/s3/aws4_request, SignedHeaders={sh}, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential=AK, SignedHeaders={sh}, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders=x-amz-date, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders=Host;x-amz-date, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders=host;;x-amz-date, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders=host;range, Signature={sig}"),
        ];
        for auth in cases {
            let err = verify(
                &with_authorization(CAPTURED[1], &auth),
                &keys(),
                captured_at(),
            )
            .unwrap_err();
            assert!(matches!(err, AuthError::Malformed(_)), "{auth}: {err:?}");
            assert_eq!(
                (err.status(), err.s3_code()),
                (400, "AuthorizationHeaderMalformed")
            );
        }
        for auth in [
            "AWS AK:c2lnbmF0dXJl",
            "AWS4-HMAC-SHA512 Credential=x",
            "Bearer x",
            "x",
        ] {
            let err = verify(
                &with_authorization(CAPTURED[1], auth),
                &keys(),
                captured_at(),
            )
            .unwrap_err();
            assert_eq!(err, AuthError::UnsupportedAlgorithm, "{auth}");
            assert_eq!((err.status(), err.s3_code()), (400, "InvalidRequest"));
        }
        // Signed in the query too.
        let (line, headers) = CAPTURED[1];
        let both = format!("{line}&X-Amz-Signature={sig}");
        let err = verify(&head(&both, headers), &keys(), captured_at()).unwrap_err();
        assert!(matches!(err, AuthError::Malformed(_)), "{err:?}");
        // Two Authorization headers.
        let mut twice: Vec<&str> = headers.to_vec();
        twice.push(headers[5]);
        let err = verify(&head(line, &twice), &keys(), captured_at()).unwrap_err();
        assert!(matches!(err, AuthError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn scope_date_must_be_the_request_date() {
        let (line, headers) = CAPTURED[1];
        let auth = head(line, headers)
            .header("authorization")
            .unwrap()
            .to_string();
        let other_day = auth.replace("AK/20261207/", "AK/20261206/");
        let err = verify(
            &with_authorization(CAPTURED[1], &other_day),
            &keys(),
            captured_at(),
        )
        .unwrap_err();
        assert!(
            matches!(err, AuthError::Malformed(ref m) if m.contains("X-Amz-Date")),
            "{err:?}"
        );
        // Any region is accepted by the parser: another region is only another signature.
        let other_region = auth.replace("us-east-1", "eu-west-3");
        let err = verify(
            &with_authorization(CAPTURED[1], &other_region),
            &keys(),
            captured_at(),
        )
        .unwrap_err();
        assert_eq!(err, AuthError::SignatureDoesNotMatch);
    }

    #[test]
    fn date_and_payload_headers() {
        let drop = |_: &str| None;
        let err = verify(
            &edited(CAPTURED[1], "x-amz-date", drop),
            &keys(),
            captured_at(),
        );
        assert!(matches!(err, Err(AuthError::Malformed(_))), "{err:?}");
        for bad in [
            "20261207T152324",
            "2026-12-07T15:23:24Z",
            "20261207T152360Z",
            "20261232T152324Z",
        ] {
            let h = edited(CAPTURED[1], "x-amz-date", |_| Some(bad.into()));
            let err = verify(&h, &keys(), captured_at());
            assert!(
                matches!(err, Err(AuthError::Malformed(_))),
                "{bad}: {err:?}"
            );
        }

        let sha = |v: &'static str| {
            let h = edited(CAPTURED[1], "x-amz-content-sha256", move |_| Some(v.into()));
            verify(&h, &keys(), captured_at())
        };
        let err = verify(
            &edited(CAPTURED[1], "x-amz-content-sha256", drop),
            &keys(),
            captured_at(),
        )
        .unwrap_err();
        assert_eq!(err, AuthError::MissingContentSha256);
        assert_eq!((err.status(), err.s3_code()), (400, "InvalidRequest"));
        for streaming in [
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        ] {
            let err = sha(streaming).unwrap_err();
            assert_eq!(err, AuthError::StreamingUnsupported);
            assert_eq!((err.status(), err.s3_code()), (501, "NotImplemented"));
        }
        for bad in ["unsigned-payload", "abc", ""] {
            assert_eq!(sha(bad), Err(AuthError::BadContentSha256), "{bad}");
        }
        // A well-formed hash is parsed before the signature is checked (which then fails).
        assert_eq!(
            sha("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            Err(AuthError::SignatureDoesNotMatch)
        );
    }

    /// The header-signed GET of the S3 documentation's SigV4 examples.
    #[test]
    fn aws_documentation_example() {
        let h = head(
            "GET /test.txt",
            &[
                "Host: examplebucket.s3.amazonaws.com",
                "Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
                "Range: bytes=0-9",
                "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "x-amz-date: 20130524T000000Z",
            ],
        );
        let mut keys = Keys::new();
        keys.insert(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        let now = UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        let verified = verify(&h, &keys, now).unwrap();
        let empty: [u8; 32] = Sha256::digest(b"").into();
        assert_eq!(verified.payload, Payload::Sha256(empty));
        assert_eq!(verified.access_key, "AKIAIOSFODNN7EXAMPLE");
    }

    /// The presigned GET of the S3 documentation's SigV4 examples (valid for 24 hours).
    #[test]
    fn aws_documentation_presigned_example() {
        let line = "GET /test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
        let host = ["Host: examplebucket.s3.amazonaws.com"];
        let mut keys = Keys::new();
        keys.insert(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        let signed_at = UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        let h = head(line, &host);
        let ok = Ok(Verified {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            payload: Payload::Unsigned,
        });
        let hours = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(verify(&h, &keys, signed_at), ok);
        assert_eq!(verify(&h, &keys, signed_at + hours(24)), ok);
        let err = verify(&h, &keys, signed_at + hours(24) + Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            (err.clone(), err.status(), err.s3_code()),
            (AuthError::Expired, 403, "AccessDenied")
        );
        assert_eq!(
            verify(&h, &keys, signed_at - hours(1)),
            Err(AuthError::RequestTimeTooSkewed)
        );

        let other = head(&line.replace("test.txt", "test.txu"), &host);
        assert_eq!(
            verify(&other, &keys, signed_at),
            Err(AuthError::SignatureDoesNotMatch)
        );
        let longer = head(&line.replace("Expires=86400", "Expires=86401"), &host);
        assert_eq!(
            verify(&longer, &keys, signed_at),
            Err(AuthError::SignatureDoesNotMatch)
        );
        let too_long = head(&line.replace("Expires=86400", "Expires=604801"), &host);
        assert!(matches!(
            verify(&too_long, &keys, signed_at),
            Err(AuthError::Malformed(_))
        ));
        let unsigned = head(&line.replace("X-Amz-Signature", "X-Amz-Sig"), &host);
        assert!(matches!(
            verify(&unsigned, &keys, signed_at),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(
            canonical_uri("/a%2fb/c d~%7E+%2B").unwrap(),
            "/a/b/c%20d~~%2B%2B"
        );
        assert_eq!(canonical_uri("/%E6%b5%8B").unwrap(), "/%E6%B5%8B");
        assert_eq!(canonical_uri("//a/./b/../").unwrap(), "//a/./b/../");
        assert!(matches!(
            canonical_uri("/%zz"),
            Err(AuthError::Malformed(_))
        ));
        assert_eq!(
            canonical_query(
                "b=2&a=%2F+x&a=1&c&X-Amz-Signature=s",
                Some("X-Amz-Signature")
            )
            .unwrap(),
            "a=%2F%20x&a=1&b=2&c="
        );
        assert_eq!(canonical_query("", None).unwrap(), "");
        assert_eq!(canonical_query("k=a%2Bb~*", None).unwrap(), "k=a%2Bb~%2A");
    }

    #[test]
    fn header_values_are_collapsed_and_joined() {
        let h = head(
            "GET /",
            &["Host: h", "X-A:  a   b  ", "X-A: c\td", "X-B: e"],
        );
        let signed = Signed::new(
            "AK/20261207/r/s3/aws4_request",
            "host;x-a;x-b",
            &"0".repeat(64),
        )
        .unwrap();
        let canonical = canonical_request(&h, &signed, None, UNSIGNED).unwrap();
        assert_eq!(
            canonical,
            "GET\n/\n\nhost:h\nx-a:a b,c d\nx-b:e\n\nhost;x-a;x-b\nUNSIGNED-PAYLOAD"
        );
    }

    #[test]
    fn amz_dates() {
        let secs = |s: &str| {
            parse_amz_date(s)
                .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs())
                .ok()
        };
        assert_eq!(secs("19700101T000000Z"), Some(0));
        assert_eq!(secs("20130524T000000Z"), Some(1_369_353_600));
        assert_eq!(secs("20261207T152324Z"), Some(1_796_657_004));
        assert_eq!(secs("20000229T235959Z"), Some(951_868_799));
        assert_eq!(secs("21000301T000000Z"), Some(4_107_542_400));
        for bad in [
            "19691231T235959Z",
            "20230229T000000Z",
            "21000229T000000Z",
            "20231301T000000Z",
            "20230100T000000Z",
            "20230101T240000Z",
            "20230101t000000Z",
            "2023010 T000000Z",
            "+0230101T000000Z",
            "20230101T000000",
        ] {
            assert_eq!(secs(bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_parse_and_debug() {
        let k = Keys::parse("AK:SECRET1, AK2:SEC:RET2").unwrap();
        assert!(!k.is_empty() && k.contains("AK") && k.contains("AK2"));
        let debug = format!("{k:?}");
        assert!(debug.contains("AK2"), "{debug}");
        assert!(
            !debug.contains("SECRET1") && !debug.contains("RET2"),
            "{debug}"
        );
        assert!(Keys::new().is_empty());

        for (spec, names) in [
            ("", "entry 1"),
            ("AK:pw-x9,pw-y9", "entry 2"),
            (":pw-x9", "entry 1"),
            ("AK:", "entry 1 (AK)"),
            ("AK:pw-x9,AK:pw-y9", "entry 2 (AK)"),
            ("A/K:pw-x9", "entry 1"),
            ("A K:pw-x9", "entry 1"),
        ] {
            let err = Keys::parse(spec).unwrap_err();
            assert!(err.contains(names), "{spec}: {err}");
            assert!(!err.contains("pw-"), "{spec}: {err}");
        }
    }

    /// A request signed by [`sign`], as the server parses it.
    fn signed_head(
        line: &str,
        mut headers: Vec<(String, String)>,
        payload: &str,
        secret: &str,
        at: SystemTime,
    ) -> RequestHead {
        let (method, target) = line.split_once(' ').unwrap();
        let cred = Credential {
            access_key: "AK",
            secret,
            region: "us-east-1",
        };
        sign(method, target, &mut headers, payload, &cred, at).unwrap();
        let lines: Vec<String> = headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        head(line, &lines)
    }

    fn header_list(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn verify_accepts_what_sign_makes() {
        let at = captured_at();
        let body_sha = hex(&Sha256::digest(b"hello"));
        let headers = header_list(&[
            ("Host", "127.0.0.1:9123"),
            ("Content-Length", "5"),
            ("Content-Type", "text/plain"),
            ("X-Amz-Meta-Colour", "  dark   blue "),
            ("User-Agent", "test"),
            // Replaced by the signer.
            ("X-Amz-Date", "19990101T000000Z"),
        ]);
        let line = "PUT /bkt/a%20b/%E6%B5%8B+x?x-id=PutObject&b=2&a=%2F";
        let h = signed_head(line, headers.clone(), &body_sha, "SK", at);
        assert_eq!(h.header("x-amz-date"), Some("20261207T152324Z"));
        assert_eq!(h.header_all("x-amz-date").count(), 1);
        let auth = h.header("authorization").unwrap();
        assert!(
            auth.contains(
                "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-meta-colour,"
            ),
            "{auth}"
        );
        let want = Verified {
            access_key: "AK".into(),
            payload: Payload::Sha256(Sha256::digest(b"hello").into()),
        };
        assert_eq!(verify(&h, &keys(), at), Ok(want.clone()));
        // Within the skew either way, and not past it.
        let minutes = |m: u64| Duration::from_secs(m * 60);
        assert_eq!(verify(&h, &keys(), at + minutes(15)), Ok(want));
        assert_eq!(
            verify(&h, &keys(), at + minutes(16)),
            Err(AuthError::RequestTimeTooSkewed)
        );
        // Another secret, or a signed header changed afterwards: no match.
        let other = signed_head(line, headers.clone(), &body_sha, "SK2", at);
        assert_eq!(
            verify(&other, &keys(), at),
            Err(AuthError::SignatureDoesNotMatch)
        );
        let auth = h.header("authorization").unwrap().to_string();
        let mut lines: Vec<String> = headers
            .iter()
            .filter(|(n, _)| n != "X-Amz-Date")
            .map(|(n, v)| format!("{n}: {v}"))
            .collect();
        lines.push(format!("x-amz-date: {}", h.header("x-amz-date").unwrap()));
        lines.push(format!("x-amz-content-sha256: {body_sha}"));
        lines.push(format!("Authorization: {auth}"));
        assert!(verify(&head(line, &lines), &keys(), at).is_ok());
        for (i, l) in lines.clone().iter().enumerate() {
            if l.starts_with("Content-Type") || l.starts_with("X-Amz-Meta") {
                let mut changed = lines.clone();
                changed[i] = format!("{l}x");
                assert_eq!(
                    verify(&head(line, &changed), &keys(), at),
                    Err(AuthError::SignatureDoesNotMatch),
                    "{l}"
                );
            }
        }
        // Unsigned payloads, and a GET without a body.
        let get = signed_head(
            "GET /bkt?list-type=2&prefix=a%2Fb",
            header_list(&[("Host", "h")]),
            "UNSIGNED-PAYLOAD",
            "SK",
            at,
        );
        assert_eq!(
            verify(&get, &keys(), at).unwrap().payload,
            Payload::Unsigned
        );
    }

    #[test]
    fn sign_needs_a_host_and_a_well_formed_target() {
        let cred = Credential {
            access_key: "AK",
            secret: "SK",
            region: "r",
        };
        let mut none = header_list(&[("X-A", "1")]);
        let err = sign("GET", "/k", &mut none, UNSIGNED, &cred, captured_at());
        assert!(matches!(err, Err(AuthError::Malformed(_))), "{err:?}");
        let mut host = header_list(&[("Host", "h")]);
        let err = sign("GET", "/%zz", &mut host, UNSIGNED, &cred, captured_at());
        assert!(matches!(err, Err(AuthError::Malformed(_))), "{err:?}");
        // The secret is not in the credential's Debug.
        let debug = format!("{cred:?}");
        assert!(debug.contains("AK") && !debug.contains("SK"), "{debug}");
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0x1f, 0xab, 0xff]), "001fabff");
        assert_eq!(hex(&[]), "");
        assert_eq!(decode_hex32(&hex(&[0xa5; 32])), Some([0xa5; 32]));
        assert_eq!(decode_hex32(&"A5".repeat(32)), Some([0xa5; 32]));
        assert_eq!(decode_hex32(&"+5".repeat(32)), None);
    }
}

//! The object service's request path before any storage: the HTTP head parser, the target's
//! decoding, SigV4 verification and the `CompleteMultipartUpload` parser, on arbitrary bytes.
//!
//! # Input format
//!
//! The bytes are a request as it arrives on a connection: a head, then whatever follows it
//! (read as a `CompleteMultipartUpload` body).
//!
//! # Checks
//!
//! - Nothing panics, and a complete head never claims more bytes than were given.
//! - The head's path and query decode or fail cleanly; verification with a fixed key set
//!   answers (almost always with an error: the fuzzer cannot forge a signature).
//! - Signing and verifying agree: every head the parser accepts, signed with `sign` (the
//!   client side) for a known key, must pass `verify` (the server side) at the same instant.
//!   Both build the canonical request from the same code, but from different inputs (the
//!   signer from the target string, the verifier from the parsed head), so a request whose
//!   path, query or headers the two read differently shows up here.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use ustack::s3::http::{self, Parsed};
use ustack::s3::sigv4::{self, Credential, Keys};
use ustack::s3::xml;

fuzz_target!(|data: &[u8]| {
    let Ok(Parsed::Complete { head, len }) = http::parse_head(data) else {
        return;
    };
    assert!(len <= data.len(), "a head of {len} bytes in {} bytes", data.len());
    let _ = http::percent_decode(&head.path);
    let _ = http::query_pairs(&head.query);
    let _ = xml::parse_complete(&data[len..]);

    let now = UNIX_EPOCH + Duration::from_secs(1_796_657_004);
    let mut keys = Keys::new();
    keys.insert("fuzzkey", "fuzzsecret");
    let _ = sigv4::verify(&head, &keys, now);

    // Round trip: what a client signs, the server accepts.
    let mut headers = head.headers.clone();
    let target = if head.query.is_empty() {
        head.path.clone()
    } else {
        format!("{}?{}", head.path, head.query)
    };
    let cred = Credential {
        access_key: "fuzzkey",
        secret: "fuzzsecret",
        region: "us-east-1",
    };
    if sigv4::sign(&head.method_raw, &target, &mut headers, "UNSIGNED-PAYLOAD", &cred, now).is_err() {
        return;
    }
    let mut signed = head.clone();
    signed.headers = headers
        .into_iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v))
        .collect();
    if let Err(e) = sigv4::verify(&signed, &keys, now) {
        // A head signed twice (query and header) or a presigned one is refused by design.
        let presigned = head.query.contains("X-Amz-Signature") || head.query.contains("X-Amz-Algorithm");
        assert!(presigned, "sign made what verify refuses: {e}\n{signed:?}");
    }
});

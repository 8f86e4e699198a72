//! Arbitrary bytes into `RequestHeader::parse` and the request `FrameDecoder`.
//!
//! Checks, besides "no panic": a header that parses re-emits to the same bytes; every error has
//! a status and a close decision; the decoder gives the same events whether the input arrives
//! whole or in pieces (piece sizes taken from the input's first byte).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ustack::proto::{Limits, RequestHeader};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (limits, piece_len, stream) = common::split_input::<RequestHeader>(data);
    let stream = &stream[..];
    for limits in [Limits::DEFAULT, limits] {
        match RequestHeader::parse(stream, &limits) {
            Ok(h) => {
                let bytes = h.to_bytes();
                assert_eq!(&bytes[..], &stream[..RequestHeader::HEADER_LEN]);
            }
            Err(e) => common::check_error(stream, e),
        }
        common::check_decoder::<RequestHeader>(limits, stream, piece_len);
    }
});

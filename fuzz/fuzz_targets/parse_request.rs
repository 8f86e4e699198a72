//! Arbitrary bytes into `RequestHeader::parse` and the request `FrameDecoder`.
//!
//! Checks, besides "no panic", the decoder's oracle (`ustack::testing::decoder`, shared with the
//! crate's proptests): a header that parses re-emits to the same bytes; every error has a status
//! and a close decision; the decoder gives the same events whether the input arrives whole or in
//! pieces (piece sizes taken from the input's first byte).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ustack::proto::{Limits, RequestHeader};
use ustack::testing::decoder;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (limits, piece_len, stream) = common::split_input::<RequestHeader>(data);
    let stream = &stream[..];
    for limits in [Limits::DEFAULT, limits] {
        decoder::check_stream::<RequestHeader>(limits, stream, piece_len);
    }
});

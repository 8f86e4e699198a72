//! Arbitrary bytes into `ResponseHeader::parse` and the response `FrameDecoder`; the same checks
//! as `parse_request`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ustack::proto::{Limits, ResponseHeader};
use ustack::testing::decoder;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (limits, piece_len, stream) = common::split_input::<ResponseHeader>(data);
    let stream = &stream[..];
    for limits in [Limits::DEFAULT, limits] {
        decoder::check_stream::<ResponseHeader>(limits, stream, piece_len);
    }
});

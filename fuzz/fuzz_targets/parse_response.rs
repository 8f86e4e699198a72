//! Arbitrary bytes into `ResponseHeader::parse` and the response `FrameDecoder`; the same checks
//! as `parse_request`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ustack::proto::{Limits, ResponseHeader};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (limits, piece_len, stream) = common::split_input::<ResponseHeader>(data);
    let stream = &stream[..];
    for limits in [Limits::DEFAULT, limits] {
        match ResponseHeader::parse(stream, &limits) {
            Ok(h) => {
                let bytes = h.to_bytes();
                assert_eq!(&bytes[..], &stream[..ResponseHeader::HEADER_LEN]);
            }
            Err(e) => common::check_error(stream, e),
        }
        common::check_decoder::<ResponseHeader>(limits, stream, piece_len);
    }
});

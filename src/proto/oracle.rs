//! The chunk decoder's oracle: properties that hold for every input, whatever its bytes, of the
//! header parsers ([`RequestHeader::parse`], [`ResponseHeader::parse`]) and of the incremental
//! [`FrameDecoder`].
//!
//! Two kinds of test check them on different inputs: the crate's proptests
//! (`src/proto/proptests.rs`) on generated frames, corrupted or not, cut at generated points, and
//! the fuzz targets `parse_request` and `parse_response` (`fuzz/`) on arbitrary bytes. Each check
//! panics with what broke.
//!
//! - A header that parses is emitted back to the same bytes ([`check_parse`]).
//! - Every error maps to a status that is not `Ok`, and a survivable error is only found after
//!   the header's CRC was verified; its rejection yields an error response that closes the
//!   connection exactly when the error says so ([`check_error`]).
//! - The decoder consumes no more than it is given, stops consuming only once closed, hands out
//!   payload in non-empty pieces within the payload limit, and gives the same events and the
//!   same closed state whether the stream arrives whole or in any pieces ([`decode`],
//!   [`check_split_invariance`]).

use std::fmt::Debug;

use super::{
    Event, FrameDecoder, Limits, ParseError, Rejection, RequestHeader, ResponseHeader, WireHeader,
};

/// A header kind the oracle checks: a [`WireHeader`] that can also be emitted again.
pub trait CheckedHeader: WireHeader + Debug + PartialEq {
    /// The header's bytes on the wire.
    fn wire_bytes(&self) -> Vec<u8>;
}

impl CheckedHeader for RequestHeader {
    fn wire_bytes(&self) -> Vec<u8> {
        self.to_bytes().to_vec()
    }
}

impl CheckedHeader for ResponseHeader {
    fn wire_bytes(&self) -> Vec<u8> {
        self.to_bytes().to_vec()
    }
}

/// A decoder event that owns its data, with consecutive payload pieces merged, so the events of
/// a stream fed in different pieces compare equal.
#[derive(Debug, PartialEq, Eq)]
pub enum Owned<H> {
    /// [`Event::Header`].
    Header(H),
    /// One or more [`Event::Payload`] pieces in a row.
    Payload(Vec<u8>),
    /// [`Event::End`].
    End(Result<(), ParseError>),
    /// [`Event::Rejected`].
    Rejected(Rejection),
}

/// Parses the start of `stream` as an `H` header: if it parses, it emits back to the same bytes;
/// if not, the error passes [`check_error`].
pub fn check_parse<H: CheckedHeader>(stream: &[u8], limits: &Limits) {
    match H::parse(stream, limits) {
        Ok(h) => assert_eq!(
            h.wire_bytes(),
            stream[..H::HEADER_LEN],
            "{h:?} emits other bytes than it was parsed from"
        ),
        Err(e) => check_error(stream, e),
    }
}

/// An error found in (a header at the start of) `stream` maps to a status that is not `Ok` and
/// a close decision, is survivable only once the header CRC was verified, and its rejection
/// yields an error response that closes the connection exactly when the error must.
pub fn check_error(stream: &[u8], e: ParseError) {
    let status = e.status();
    assert!(!status.is_ok(), "{e:?} maps to {status:?}");
    assert!(
        e.must_close() || e.header_verified(),
        "{e:?}: survivable, but found before the header CRC was verified"
    );
    let response = Rejection::new(stream, e).error_response();
    assert_eq!(
        response.closing,
        e.must_close(),
        "the error response to {e:?}"
    );
    let _ = e.to_string();
}

/// Feeds `pieces` in order to one decoder, checking each step (it consumes at most what it is
/// given and leaves input only once closed; payload pieces are non-empty and within the
/// payload limit; a rejection passes [`check_error`]). Returns the events, payload merged, and
/// whether the decoder ended closed.
pub fn decode<H: CheckedHeader>(limits: Limits, pieces: &[&[u8]]) -> (Vec<Owned<H>>, bool) {
    let mut dec = FrameDecoder::<H>::new(limits);
    let mut out: Vec<Owned<H>> = Vec::new();
    for piece in pieces {
        let mut input = *piece;
        loop {
            let (n, ev) = dec.feed(input);
            assert!(n <= input.len(), "consumed {n} of {} bytes", input.len());
            input = &input[n..];
            let Some(ev) = ev else {
                assert!(
                    input.is_empty() || dec.is_closed(),
                    "stopped with {} bytes left while open",
                    input.len()
                );
                break;
            };
            match ev {
                Event::Header(h) => out.push(Owned::Header(h)),
                Event::Payload(p) => {
                    assert!(!p.is_empty(), "an empty payload piece");
                    assert!(
                        p.len() as u64 <= u64::from(limits.payload_len_max),
                        "a payload piece of {} bytes over the limit",
                        p.len()
                    );
                    if let Some(Owned::Payload(prev)) = out.last_mut() {
                        prev.extend_from_slice(p);
                    } else {
                        out.push(Owned::Payload(p.to_vec()));
                    }
                }
                Event::End(v) => out.push(Owned::End(v)),
                Event::Rejected(r) => {
                    check_error(&[], r.error);
                    out.push(Owned::Rejected(r));
                }
            }
        }
    }
    // Flush an End whose last byte came in the last piece.
    if let (_, Some(Event::End(v))) = dec.feed(&[]) {
        out.push(Owned::End(v));
    }
    let closed = dec.is_closed();
    let _ = dec.finish();
    (out, closed)
}

/// Decoding `stream` whole and cut into `pieces` (which concatenate to `stream`) gives the same
/// events and the same closed state.
pub fn check_split_invariance<H: CheckedHeader>(limits: Limits, stream: &[u8], pieces: &[&[u8]]) {
    assert_eq!(
        pieces.concat(),
        stream,
        "the pieces do not make up the stream"
    );
    let whole = decode::<H>(limits, &[stream]);
    let cut = decode::<H>(limits, pieces);
    assert_eq!(whole, cut, "whole and in {} pieces", pieces.len());
}

/// Every check on one input: [`check_parse`] of its start, and [`check_split_invariance`] with
/// pieces of `piece_len` bytes (at least 1).
pub fn check_stream<H: CheckedHeader>(limits: Limits, stream: &[u8], piece_len: usize) {
    check_parse::<H>(stream, &limits);
    let pieces: Vec<&[u8]> = stream.chunks(piece_len.max(1)).collect();
    check_split_invariance::<H>(limits, stream, &pieces);
}

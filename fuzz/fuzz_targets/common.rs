//! Shared checks of the fuzz targets.

use ustack::proto::{crc32c, Event, FrameDecoder, Limits, ParseError, Rejection, WireHeader};

/// Small limits so the over-limit paths are reachable with short inputs.
const TINY: Limits = Limits {
    payload_len_max: 64,
    chunk_len_max: 4096,
    in_flight_max: 1,
};

/// Splits the fuzz input into (limits, decoder piece length, stream). The first byte selects:
/// bit 7 tiny limits, bit 6 reseal every header's CRC (so the fuzzer gets past the header CRC to
/// the op and payload checks), bits 0-5 the piece length minus 1.
pub fn split_input<H: WireHeader>(data: &[u8]) -> (Limits, usize, Vec<u8>) {
    match data.split_first() {
        Some((&first, rest)) => {
            let limits = if first & 0x80 != 0 {
                TINY
            } else {
                Limits::DEFAULT
            };
            let mut stream = rest.to_vec();
            if first & 0x40 != 0 {
                reseal::<H>(&mut stream);
            }
            (limits, usize::from(first & 0x3F) + 1, stream)
        }
        None => (Limits::DEFAULT, 1, Vec::new()),
    }
}

/// Walks the stream frame by frame (header, then `payload_len` bytes as the header says) and
/// rewrites each header's CRC to match its bytes.
fn reseal<H: WireHeader>(stream: &mut [u8]) {
    let n = H::HEADER_LEN;
    let mut pos = 0usize;
    while let Some(header) = stream.get_mut(pos..pos + n) {
        let crc = crc32c(&header[..n - 4]);
        header[n - 4..].copy_from_slice(&crc.to_le_bytes());
        let payload_len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        pos = pos.saturating_add(n).saturating_add(payload_len as usize);
    }
}

/// Every error maps to a status and a close decision, and yields an error response.
pub fn check_error(stream: &[u8], e: ParseError) {
    let status = e.status();
    assert!(!status.is_ok());
    // Survivable errors are only found after the header CRC was verified.
    assert!(e.must_close() || e.header_verified());
    let rejection = Rejection::new(stream, e);
    let response = rejection.error_response();
    assert_eq!(response.closing, e.must_close());
    let _ = e.to_string();
}

/// An event with payload pieces merged.
#[derive(Debug, PartialEq)]
enum Owned<H> {
    Header(H),
    Payload(Vec<u8>),
    End(Result<(), ParseError>),
    Rejected(Rejection),
}

fn run<H: WireHeader + std::fmt::Debug + PartialEq>(
    limits: Limits,
    stream: &[u8],
    piece_len: usize,
) -> Vec<Owned<H>> {
    let mut dec = FrameDecoder::<H>::new(limits);
    let mut out = Vec::new();
    for piece in stream.chunks(piece_len) {
        let mut input = piece;
        loop {
            let (n, ev) = dec.feed(input);
            assert!(n <= input.len());
            input = &input[n..];
            let Some(ev) = ev else {
                assert!(input.is_empty() || dec.is_closed());
                break;
            };
            match ev {
                Event::Header(h) => out.push(Owned::Header(h)),
                Event::Payload(p) => {
                    assert!(!p.is_empty());
                    assert!(p.len() <= limits.payload_len_max as usize);
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
    if let (_, Some(Event::End(v))) = dec.feed(&[]) {
        out.push(Owned::End(v));
    }
    let _ = dec.finish();
    out
}

/// Feeding the stream whole and in pieces of `piece_len` gives the same events.
pub fn check_decoder<H: WireHeader + std::fmt::Debug + PartialEq>(
    limits: Limits,
    stream: &[u8],
    piece_len: usize,
) {
    let whole = run::<H>(limits, stream, stream.len().max(1));
    let pieces = run::<H>(limits, stream, piece_len);
    assert_eq!(whole, pieces);
}

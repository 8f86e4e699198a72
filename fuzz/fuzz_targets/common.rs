//! The input format shared by the protocol targets (`parse_request`, `parse_response`). What
//! they check of each input is the decoder's oracle, `ustack::testing::decoder`, which the
//! crate's proptests check too.

use ustack::proto::{crc32c, Limits, WireHeader};

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

//! Byte-level helpers shared by both header kinds: little-endian field access on fixed arrays,
//! the common 16-byte envelope, and the trailing header CRC.
//!
//! Every accessor takes a fixed-size array and a constant offset inside it, so no index can be
//! out of bounds once a header-sized array exists; `parse` gets that array with `slice::get`,
//! never by indexing.

use super::crc::crc32c;
use super::error::ParseError;
use super::{Limits, VERSION};

/// Bytes of the envelope both header kinds start with.
pub(super) const ENVELOPE_LEN: usize = 16;
/// Offsets of the envelope fields.
pub(super) const OFF_MAGIC: usize = 0;
pub(super) const OFF_VERSION: usize = 2;
pub(super) const OFF_OP: usize = 3;
pub(super) const OFF_PAYLOAD_LEN: usize = 4;
pub(super) const OFF_REQUEST_ID: usize = 8;

#[inline]
pub(super) fn get_u16<const N: usize>(b: &[u8; N], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

#[inline]
pub(super) fn get_u32<const N: usize>(b: &[u8; N], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

#[inline]
pub(super) fn get_u64<const N: usize>(b: &[u8; N], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

#[inline]
pub(super) fn get_u128<const N: usize>(b: &[u8; N], off: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    u128::from_le_bytes(a)
}

#[inline]
pub(super) fn put_u16<const N: usize>(b: &mut [u8; N], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

#[inline]
pub(super) fn put_u32<const N: usize>(b: &mut [u8; N], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

#[inline]
pub(super) fn put_u64<const N: usize>(b: &mut [u8; N], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

#[inline]
pub(super) fn put_u128<const N: usize>(b: &mut [u8; N], off: usize, v: u128) {
    b[off..off + 16].copy_from_slice(&v.to_le_bytes());
}

/// The first `N` bytes of `buf` as an array, or `Truncated`.
#[inline]
pub(super) fn header_array<const N: usize>(buf: &[u8]) -> Result<&[u8; N], ParseError> {
    buf.get(..N)
        .and_then(|s| <&[u8; N]>::try_from(s).ok())
        .ok_or(ParseError::Truncated {
            len: buf.len(),
            need: N,
        })
}

/// Checks the magic (once both its bytes are present) and the version byte (once present) in
/// `partial`, which may be shorter than the envelope, so a stream of garbage is rejected after 2
/// or 3 bytes instead of a whole header. Gives exactly the error a full parse would give for the
/// same bytes (same checks, same order), so the verdict does not depend on how input was split.
#[inline]
pub(super) fn check_prefix(partial: &[u8], magic: [u8; 2]) -> Result<(), ParseError> {
    if let Some(&[a, b]) = partial.get(OFF_MAGIC..OFF_MAGIC + 2) {
        if [a, b] != magic {
            return Err(ParseError::BadMagic {
                found: [a, b],
                expected: magic,
            });
        }
    }
    match partial.get(OFF_VERSION) {
        Some(&version) if version != VERSION => Err(ParseError::UnsupportedVersion { version }),
        _ => Ok(()),
    }
}

/// The trusted envelope of a header whose magic, version, CRC and payload length passed.
#[derive(Copy, Clone, Debug)]
pub(super) struct Envelope {
    pub op: u8,
    pub payload_len: u32,
    pub request_id: u64,
}

/// Checks, in this order: magic, version, header CRC (the last 4 bytes of `b`, over all bytes
/// before them), payload length against the limit. The order matters: the version decides the
/// layout, so it must be known before the CRC can be found; the length is believed only after
/// the CRC.
#[inline]
pub(super) fn parse_envelope<const N: usize>(
    b: &[u8; N],
    magic: [u8; 2],
    limits: &Limits,
) -> Result<Envelope, ParseError> {
    if [b[OFF_MAGIC], b[OFF_MAGIC + 1]] != magic {
        return Err(ParseError::BadMagic {
            found: [b[OFF_MAGIC], b[OFF_MAGIC + 1]],
            expected: magic,
        });
    }
    let version = b[OFF_VERSION];
    if version != VERSION {
        return Err(ParseError::UnsupportedVersion { version });
    }
    let expected = get_u32(b, N - 4);
    let computed = crc32c(&b[..N - 4]);
    if expected != computed {
        return Err(ParseError::BadHeaderChecksum { expected, computed });
    }
    let payload_len = get_u32(b, OFF_PAYLOAD_LEN);
    if payload_len > limits.payload_len_max {
        return Err(ParseError::PayloadTooLarge {
            len: payload_len,
            max: limits.payload_len_max,
        });
    }
    Ok(Envelope {
        op: b[OFF_OP],
        payload_len,
        request_id: get_u64(b, OFF_REQUEST_ID),
    })
}

/// Writes the envelope fields (magic, version, op, payload length, request id).
#[inline]
pub(super) fn put_envelope<const N: usize>(
    b: &mut [u8; N],
    magic: [u8; 2],
    op: u8,
    payload_len: u32,
    request_id: u64,
) {
    b[OFF_MAGIC] = magic[0];
    b[OFF_MAGIC + 1] = magic[1];
    b[OFF_VERSION] = VERSION;
    b[OFF_OP] = op;
    put_u32(b, OFF_PAYLOAD_LEN, payload_len);
    put_u64(b, OFF_REQUEST_ID, request_id);
}

/// Stores the header CRC in the last 4 bytes.
#[inline]
pub(super) fn seal<const N: usize>(b: &mut [u8; N]) {
    let crc = crc32c(&b[..N - 4]);
    put_u32(b, N - 4, crc);
}

/// The op byte and request id of a header's envelope, if `buf` holds the whole envelope.
/// Only meaningful once the header CRC was verified.
pub(super) fn envelope_fields(buf: &[u8]) -> Option<(u8, u64)> {
    let env: &[u8; ENVELOPE_LEN] = header_array(buf).ok()?;
    Some((env[OFF_OP], get_u64(env, OFF_REQUEST_ID)))
}

/// The payload length of a header's envelope, if `buf` holds the whole envelope. Only
/// meaningful once the header CRC was verified.
pub(super) fn envelope_payload_len(buf: &[u8]) -> Option<u32> {
    let env: &[u8; ENVELOPE_LEN] = header_array(buf).ok()?;
    Some(get_u32(env, OFF_PAYLOAD_LEN))
}

//! CRC32C (Castagnoli, the iSCSI polynomial) helpers, hardware-accelerated where the CPU has
//! SSE 4.2 (x86-64) or the CRC extension (aarch64), through the `crc32c` crate.
//!
//! The protocol's CRCs are plain CRC32C values as `crc32c::crc32c` computes them (initial value
//! and final XOR built in); the CRC of zero bytes is 0.

use super::error::ParseError;

/// CRC32C of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Extends `crc` (the CRC32C of some bytes A) over `data`, giving the CRC32C of A followed by
/// `data`. Start from 0. Lets a payload that arrives in pieces be checked without buffering it:
/// `crc32c_append(crc32c_append(0, a), b) == crc32c(a ++ b)`.
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// The CRC32C of A followed by B, from `crc_a = crc32c(A)`, `crc_b = crc32c(B)` and `len_b`,
/// without the bytes. Useful for a chunk-wide checksum (STAT) kept from per-write CRCs.
#[inline]
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    crc32c::crc32c_combine(crc_a, crc_b, len_b)
}

/// Bytes a fused copy-and-CRC handles at a time: small enough that the CRC reads what the copy
/// just wrote from the L1 cache, large enough that the per-block overhead vanishes.
pub const FUSED_BLOCK: usize = 8 << 10;

/// Copies `src` into `dst` (same length) and returns `crc32c_append(crc, src)`, in one pass over
/// memory: each block is copied, then its CRC taken while it is still in the L1 cache.
///
/// ```
/// use ustack::proto::{copy_crc, crc32c};
/// let src: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
/// let mut dst = vec![0u8; src.len()];
/// assert_eq!(copy_crc(&mut dst, &src, 0), crc32c(&src));
/// assert_eq!(dst, src);
/// ```
#[inline]
pub fn copy_crc(dst: &mut [u8], src: &[u8], mut crc: u32) -> u32 {
    assert_eq!(dst.len(), src.len(), "copy_crc: lengths differ");
    for (d, s) in dst.chunks_mut(FUSED_BLOCK).zip(src.chunks(FUSED_BLOCK)) {
        d.copy_from_slice(s);
        crc = crc32c::crc32c_append(crc, d);
    }
    crc
}

/// Checks a payload that arrives in pieces against the CRC and length its header announced.
///
/// ```
/// use ustack::proto::{crc32c, PayloadCheck};
/// let data = b"hello, chunk";
/// let mut check = PayloadCheck::new(data.len() as u32, crc32c(data));
/// check.update(&data[..5]);
/// check.update(&data[5..]);
/// assert!(check.is_complete());
/// assert_eq!(check.finish(), Ok(()));
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PayloadCheck {
    expected_crc: u32,
    crc: u32,
    remaining: u32,
}

impl PayloadCheck {
    /// A check for a payload of `len` bytes whose CRC32C should be `expected_crc`.
    pub const fn new(len: u32, expected_crc: u32) -> PayloadCheck {
        PayloadCheck {
            expected_crc,
            crc: 0,
            remaining: len,
        }
    }

    /// Adds the next bytes of the payload. Bytes beyond the announced length are ignored (the
    /// caller must not pass them; the next frame starts there); returns how many were taken.
    #[inline]
    pub fn update(&mut self, data: &[u8]) -> usize {
        let take = data.len().min(self.remaining as usize);
        self.crc = crc32c_append(self.crc, &data[..take]);
        // `take <= remaining`, which is a u32, so the cast and the subtraction are exact.
        self.remaining -= take as u32;
        take
    }

    /// The CRC32C of the payload bytes seen so far: a caller that takes the next bytes in
    /// some other way continues it (`crc32c_append`) and hands the result to
    /// [`PayloadCheck::absorb`].
    pub const fn crc_so_far(&self) -> u32 {
        self.crc
    }

    /// Counts the next `len` bytes of the payload, taken in some other way: `crc` is
    /// [`PayloadCheck::crc_so_far`] continued over them, so no pass over them (and no CRC
    /// combination) is needed here. `len` is at most [`PayloadCheck::remaining`]; more is a
    /// caller bug (debug builds panic, release builds count only what remains).
    pub fn absorb(&mut self, len: u32, crc: u32) {
        debug_assert!(
            len <= self.remaining,
            "{len} > {} remaining",
            self.remaining
        );
        self.crc = crc;
        self.remaining -= len.min(self.remaining);
    }

    /// Payload bytes still expected.
    pub const fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Whether every announced byte has been seen.
    pub const fn is_complete(&self) -> bool {
        self.remaining == 0
    }

    /// The verdict. `Err(ParseError::PayloadTruncated)` if bytes are still missing,
    /// `Err(ParseError::BadPayloadChecksum)` if the CRC does not match.
    pub fn finish(&self) -> Result<(), ParseError> {
        if self.remaining != 0 {
            return Err(ParseError::PayloadTruncated {
                missing: self.remaining,
            });
        }
        if self.crc != self.expected_crc {
            return Err(ParseError::BadPayloadChecksum {
                expected: self.expected_crc,
                computed: self.crc,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // RFC 3720 (iSCSI) B.4 test vectors.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46DD_794E);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn append_and_combine_agree_with_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = crc32c(&data);
        for split in [0, 1, 63, 4096, 9_999, 10_000] {
            let (a, b) = data.split_at(split);
            assert_eq!(
                crc32c_append(crc32c_append(0, a), b),
                whole,
                "split {split}"
            );
            assert_eq!(
                crc32c_combine(crc32c(a), crc32c(b), b.len()),
                whole,
                "split {split}"
            );
        }
    }

    #[test]
    fn payload_check_detects_corruption_and_truncation() {
        let data = vec![0x5Au8; 4096];
        let crc = crc32c(&data);

        let mut ok = PayloadCheck::new(4096, crc);
        assert_eq!(ok.update(&data[..1000]), 1000);
        assert_eq!(ok.remaining(), 3096);
        assert_eq!(
            ok.finish(),
            Err(ParseError::PayloadTruncated { missing: 3096 })
        );
        // Extra bytes past the payload are not taken.
        let mut longer = data[1000..].to_vec();
        longer.extend_from_slice(b"next frame");
        assert_eq!(ok.update(&longer), 3096);
        assert_eq!(ok.finish(), Ok(()));

        let mut bad = data.clone();
        bad[4000] ^= 0x01;
        let mut check = PayloadCheck::new(4096, crc);
        check.update(&bad);
        assert!(matches!(
            check.finish(),
            Err(ParseError::BadPayloadChecksum { expected, .. }) if expected == crc
        ));
    }
}

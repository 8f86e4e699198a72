//! The checksum trailer of a [`DirStore`](super::DirStore) chunk file: the CRC32C of each
//! 4 KiB block of the chunk's data, then a fixed footer. Pure functions over bytes; the store
//! does the I/O.
//!
//! ```text
//! data (size bytes) | sum[0] .. sum[n-1] (u32 LE each, n = ceil(size / 4096)) | footer (32 bytes)
//! footer: magic "uCHKSUM1" 8 | version u32 = 1 | block size u32 = 4096 | size u64 |
//!         sums_crc u32 (CRC32C of the n sums' bytes) | footer_crc u32 (CRC32C of bytes 0..28)
//! ```
//!
//! Block `k` covers data bytes `k * 4096 .. min((k + 1) * 4096, size)`: every block is whole
//! but the last, which may be short. The file is exactly `size + 4 n + 32` bytes long.

use std::sync::OnceLock;

use crate::proto::{crc32c, crc32c_combine};

/// Bytes of data per block sum.
pub(crate) const BLOCK: usize = 4096;
/// Bytes of the fixed footer at the end of a chunk file.
pub(crate) const FOOTER_LEN: usize = 32;
const MAGIC: [u8; 8] = *b"uCHKSUM1";
const VERSION: u32 = 1;

/// Blocks of a chunk of `size` bytes.
pub(crate) fn blocks(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64)
}

/// Bytes of the trailer (sums and footer) of a chunk of `size` bytes.
pub(crate) fn trailer_len(size: u64) -> u64 {
    4 * blocks(size) + FOOTER_LEN as u64
}

/// The data size of a chunk file of `file_len` bytes, if some size gives exactly that file
/// (data plus its trailer); `None` for a file no chunk of this format can have (cut short,
/// grown).
pub(crate) fn data_len(file_len: u64) -> Option<u64> {
    let body = file_len.checked_sub(FOOTER_LEN as u64)?;
    // size + 4 * blocks(size) = body, with blocks(size) within one of body / (BLOCK + 4).
    let near = body / (BLOCK as u64 + 4);
    (near.saturating_sub(1)..=near + 1)
        .filter_map(|b| body.checked_sub(4 * b))
        .find(|&size| blocks(size) * 4 + size == body)
}

/// The data bytes `start..end` of block `k` of a chunk of `size` bytes.
pub(crate) fn block_range(size: u64, k: u64) -> (u64, u64) {
    let start = k * BLOCK as u64;
    (start, (start + BLOCK as u64).min(size))
}

/// The footer's fields.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Footer {
    /// The chunk's data length.
    pub size: u64,
    /// CRC32C of the sums' bytes.
    pub sums_crc: u32,
}

impl Footer {
    pub(crate) fn emit(&self) -> [u8; FOOTER_LEN] {
        let mut f = [0u8; FOOTER_LEN];
        f[0..8].copy_from_slice(&MAGIC);
        f[8..12].copy_from_slice(&VERSION.to_le_bytes());
        f[12..16].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        f[16..24].copy_from_slice(&self.size.to_le_bytes());
        f[24..28].copy_from_slice(&self.sums_crc.to_le_bytes());
        let crc = crc32c(&f[..28]);
        f[28..32].copy_from_slice(&crc.to_le_bytes());
        f
    }

    /// The footer in `f`, the last 32 bytes of a file of `file_len` bytes, or what is wrong
    /// with it (in words, for the log and the operator).
    pub(crate) fn parse(f: &[u8; FOOTER_LEN], file_len: u64) -> Result<Footer, String> {
        let u32_at = |at: usize| u32::from_le_bytes(f[at..at + 4].try_into().unwrap());
        if f[0..8] != MAGIC {
            return Err(format!(
                "no checksum footer at the end of the file ({file_len} bytes): cut short, \
                 or not written by this store"
            ));
        }
        let (stored, found) = (u32_at(28), crc32c(&f[..28]));
        if stored != found {
            return Err(format!(
                "checksum footer damaged: stored crc {stored:#010x}, found {found:#010x}"
            ));
        }
        if u32_at(8) != VERSION || u32_at(12) != BLOCK as u32 {
            return Err(format!(
                "checksum footer of an unknown format: version {}, block size {}",
                u32_at(8),
                u32_at(12)
            ));
        }
        let size = u64::from_le_bytes(f[16..24].try_into().unwrap());
        let expect = size.checked_add(trailer_len(size));
        if size > file_len || expect != Some(file_len) {
            return Err(format!(
                "the file is {file_len} bytes but its footer says {size} bytes of data \
                 (a {}-byte file): cut short or grown",
                expect.map_or_else(|| "too long".to_string(), |e| e.to_string())
            ));
        }
        Ok(Footer {
            size,
            sums_crc: u32_at(24),
        })
    }
}

/// The sums as stored: little-endian u32s.
pub(crate) fn sums_bytes(sums: &[u32]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(sums.len() * 4);
    for s in sums {
        raw.extend_from_slice(&s.to_le_bytes());
    }
    raw
}

/// The sums in `raw` (a multiple of 4 bytes).
pub(crate) fn parse_sums(raw: &[u8]) -> Vec<u32> {
    raw.chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The whole trailer of a chunk of `size` bytes with these sums (`blocks(size)` of them).
pub(crate) fn emit_trailer(size: u64, sums: &[u32]) -> Vec<u8> {
    debug_assert_eq!(sums.len() as u64, blocks(size));
    let mut t = sums_bytes(sums);
    let footer = Footer {
        size,
        sums_crc: crc32c(&t),
    };
    t.extend_from_slice(&footer.emit());
    t
}

/// CRC32C of `n <= BLOCK` zero bytes.
pub(crate) fn zeros_crc(n: usize) -> u32 {
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    static WHOLE: OnceLock<u32> = OnceLock::new();
    if n == BLOCK {
        *WHOLE.get_or_init(|| crc32c(&ZEROS))
    } else {
        crc32c(&ZEROS[..n])
    }
}

/// `crc32c_combine(a, b, BLOCK)`, fast: the "append BLOCK zero bytes" operator on `a` as four
/// byte tables (built once), instead of the generic combine's ~20 matrix squarings per call.
pub(crate) fn combine_block(a: u32, b: u32) -> u32 {
    static TABLES: OnceLock<Box<[[u32; 256]; 4]>> = OnceLock::new();
    let t = TABLES.get_or_init(|| {
        // The operator is linear in `a`: its value on each bit, from the generic combine.
        let mut bit = [0u32; 32];
        for (i, v) in bit.iter_mut().enumerate() {
            *v = crc32c_combine(1 << i, 0, BLOCK);
        }
        let mut t = Box::new([[0u32; 256]; 4]);
        for (j, table) in t.iter_mut().enumerate() {
            for (byte, v) in table.iter_mut().enumerate() {
                *v = (0..8)
                    .filter(|b| byte >> b & 1 == 1)
                    .fold(0, |acc, b| acc ^ bit[8 * j + b]);
            }
        }
        t
    });
    let [b0, b1, b2, b3] = a.to_le_bytes();
    t[0][b0 as usize] ^ t[1][b1 as usize] ^ t[2][b2 as usize] ^ t[3][b3 as usize] ^ b
}

/// Appends the CRC32C `b` of `len` bytes to `a` (the CRC of what precedes them).
pub(crate) fn combine(a: u32, b: u32, len: u64) -> u32 {
    if len == BLOCK as u64 {
        combine_block(a, b)
    } else {
        crc32c_combine(a, b, len as usize)
    }
}

/// CRC32C of the data of blocks `k0..k0 + sums.len()` of a chunk of `size` bytes, from their
/// sums.
pub(crate) fn crc_from_sums(size: u64, k0: u64, sums: &[u32]) -> u32 {
    let mut crc = 0;
    for (i, &s) in sums.iter().enumerate() {
        let (start, end) = block_range(size, k0 + i as u64);
        crc = combine(crc, s, end - start);
    }
    crc
}

#[cfg(test)]
mod tests {
    #[test]
    fn data_len_inverts_the_file_length() {
        for size in (0..20_000u64).chain([1 << 20, (64 << 20) - 1, 64 << 20]) {
            assert_eq!(
                super::data_len(size + super::trailer_len(size)),
                Some(size),
                "{size}"
            );
        }
        assert_eq!(super::data_len(10), None);
        // Lengths no chunk gives: 4,096 bytes make a 4,132-byte file, 4,097 a 4,137-byte one.
        for f in 4133..4137 {
            assert_eq!(super::data_len(f), None, "{f}");
        }
    }

    use super::*;
    use crate::chunk::store_contract::Rng;

    #[test]
    fn combining_block_sums_gives_the_crc_of_the_data() {
        let mut rng = Rng::new(0x5EED_7000);
        for size in [0usize, 1, 4095, 4096, 4097, 3 * 4096, 5 * 4096 + 17, 70_000] {
            let mut data = vec![0u8; size];
            rng.fill(&mut data);
            let sums: Vec<u32> = data.chunks(BLOCK).map(crc32c).collect();
            assert_eq!(sums.len() as u64, blocks(size as u64));
            assert_eq!(
                crc_from_sums(size as u64, 0, &sums),
                crc32c(&data),
                "{size}"
            );
            if sums.len() > 1 {
                let tail = &data[BLOCK..];
                assert_eq!(crc_from_sums(size as u64, 1, &sums[1..]), crc32c(tail));
            }
        }
        for a in [0u32, 1, 0xdead_beef, u32::MAX] {
            assert_eq!(combine_block(a, 7), crc32c_combine(a, 7, BLOCK));
        }
        assert_eq!(zeros_crc(BLOCK), crc32c(&[0u8; BLOCK]));
        assert_eq!(zeros_crc(10), crc32c(&[0u8; 10]));
    }

    #[test]
    fn footers_round_trip_and_damage_is_named() {
        for size in [0u64, 1, 4096, 4097, 64 << 20] {
            let footer = Footer {
                size,
                sums_crc: 0x1234_5678,
            };
            let file_len = size + trailer_len(size);
            assert_eq!(Footer::parse(&footer.emit(), file_len), Ok(footer));
            // Cut short or grown.
            let err = Footer::parse(&footer.emit(), file_len - 1).unwrap_err();
            assert!(err.contains("cut short"), "{err}");
            assert!(Footer::parse(&footer.emit(), file_len + 4).is_err());
            // Any flipped bit.
            for bit in 0..FOOTER_LEN * 8 {
                let mut f = footer.emit();
                f[bit / 8] ^= 1 << (bit % 8);
                assert!(Footer::parse(&f, file_len).is_err(), "bit {bit}");
            }
        }
        let t = emit_trailer(5000, &[1, 2]);
        assert_eq!(t.len() as u64, trailer_len(5000));
        assert_eq!(parse_sums(&t[..8]), vec![1, 2]);
        let f: [u8; FOOTER_LEN] = t[8..].try_into().unwrap();
        assert_eq!(
            Footer::parse(&f, 5000 + t.len() as u64).unwrap().sums_crc,
            crc32c(&t[..8])
        );
    }
}

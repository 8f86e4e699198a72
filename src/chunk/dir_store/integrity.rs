//! Checking a chunk's bytes against its block sums and trailer, and what a failed check
//! answers ([`StoreError::Corrupt`], counted).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use super::{io_error, DirStore};
use crate::chunk::block_sums::{self as sums, Footer, BLOCK, FOOTER_LEN};
use crate::chunk::store::StoreError;
use crate::proto::{crc32c, crc32c_append, ChunkId};

/// Bytes read at a time when a chunk is checksummed.
pub(super) const CRC_PIECE: usize = 1 << 20;

impl DirStore {
    // ---- damage ------------------------------------------------------------------------------

    /// Damaged chunks detected since `open`: by READ, STAT and WRITE (each detection counts,
    /// so a chunk read three times counts three) and by [`DirStore::scrub`].
    pub fn corrupt_found(&self) -> u64 {
        self.corrupt_found.load(Ordering::Relaxed)
    }

    /// Counts and logs a damaged chunk; the error to answer.
    pub(super) fn corrupt(&self, id: ChunkId, detail: String) -> StoreError {
        self.corrupt_found.fetch_add(1, Ordering::Relaxed);
        tracing::error!(chunk = %id, path = %self.chunk_path(id).display(), "DirStore: chunk damaged on disk, not served: {detail}");
        StoreError::Corrupt { id, detail }
    }

    pub(super) fn fault(&self, id: ChunkId, fault: Fault) -> StoreError {
        match fault {
            Fault::Io(op, e) => io_error(op, id, e),
            Fault::Damage(detail) => self.corrupt(id, detail),
        }
    }

    /// Checks every block of a chunk and its trailer; returns its data size.
    pub(super) fn check_chunk(chunk: &File, file_len: u64) -> Result<u64, Fault> {
        let (footer, stored) = read_trailer(chunk, file_len)?;
        let size = footer.size;
        let mut buf = vec![0u8; size.min(CRC_PIECE as u64) as usize];
        let mut at = 0u64;
        while at < size {
            let n = (size - at).min(buf.len() as u64) as usize;
            chunk
                .read_exact_at(&mut buf[..n], at)
                .map_err(Fault::io("read chunk"))?;
            for (i, block) in buf[..n].chunks(BLOCK).enumerate() {
                let k = at / BLOCK as u64 + i as u64;
                check_block(size, k, stored[k as usize], block)?;
            }
            at += n as u64;
        }
        Ok(size)
    }
}

/// CRC32C of `file[offset..offset+len]`; an error if the file is shorter.
pub(super) fn crc_of_range(file: &File, offset: u64, len: u64) -> io::Result<u32> {
    let mut buf = vec![0u8; len.min(CRC_PIECE as u64) as usize];
    let mut crc = 0;
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset + done)?;
        crc = crc32c_append(crc, &buf[..n]);
        done += n as u64;
    }
    Ok(crc)
}

/// Why a chunk's bytes could not be checked: an I/O error, or damage (described).
#[derive(Debug)]
pub(super) enum Fault {
    Io(&'static str, io::Error),
    Damage(String),
}

impl Fault {
    pub(super) fn io(op: &'static str) -> impl FnOnce(io::Error) -> Fault {
        move |e| Fault::Io(op, e)
    }
}

/// The footer of a chunk file of `file_len` bytes, checked (magic, its CRC, and the data
/// length against the file's).
pub(super) fn read_footer(chunk: &File, file_len: u64) -> Result<Footer, Fault> {
    if file_len < FOOTER_LEN as u64 {
        return Err(Fault::Damage(format!(
            "the file is {file_len} bytes, shorter than its {FOOTER_LEN}-byte checksum footer: cut short"
        )));
    }
    let mut f = [0u8; FOOTER_LEN];
    chunk
        .read_exact_at(&mut f, file_len - FOOTER_LEN as u64)
        .map_err(Fault::io("read chunk footer"))?;
    Footer::parse(&f, file_len).map_err(Fault::Damage)
}

/// The footer and every block sum of a chunk file of `file_len` bytes, checked whole (the
/// sums against the footer's CRC of them).
pub(super) fn read_trailer(chunk: &File, file_len: u64) -> Result<(Footer, Vec<u32>), Fault> {
    let footer = read_footer(chunk, file_len)?;
    let mut raw = vec![0u8; 4 * sums::blocks(footer.size) as usize];
    chunk
        .read_exact_at(&mut raw, footer.size)
        .map_err(Fault::io("read chunk sums"))?;
    let found = crc32c(&raw);
    if found != footer.sums_crc {
        return Err(Fault::Damage(format!(
            "block checksums damaged: stored crc of the sums {:#010x}, found {found:#010x}",
            footer.sums_crc
        )));
    }
    Ok((footer, sums::parse_sums(&raw)))
}

/// Checks `block`, block `k` of a chunk of `size` bytes, against its stored sum.
pub(super) fn check_block(size: u64, k: u64, stored: u32, block: &[u8]) -> Result<(), Fault> {
    let found = crc32c(block);
    if found == stored {
        return Ok(());
    }
    let (s, e) = sums::block_range(size, k);
    Err(Fault::Damage(format!(
        "block {k} (bytes {s}..{e}): stored crc {stored:#010x}, found {found:#010x}"
    )))
}

/// The sums of blocks `k0..k1` of the first `size` bytes of `file`, computed from its bytes.
pub(super) fn file_block_sums(file: &File, size: u64, k0: u64, k1: u64) -> io::Result<Vec<u32>> {
    let mut out = Vec::with_capacity(k1.saturating_sub(k0) as usize);
    let (start, _) = sums::block_range(size, k0);
    let end = if k1 > k0 {
        sums::block_range(size, k1 - 1).1
    } else {
        start
    };
    let mut buf = vec![0u8; (end - start).min(CRC_PIECE as u64) as usize];
    let mut at = start;
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        out.extend(buf[..n].chunks(BLOCK).map(crc32c));
        at += n as u64;
    }
    Ok(out)
}

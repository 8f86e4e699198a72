//! READ: reading a chunk and checking every block touched against its sum.

use std::os::unix::fs::FileExt;

use super::integrity::{check_block, read_footer, read_trailer, Fault};
use super::{io_error, open_existing, read_lock, DirStore};
use crate::chunk::block_sums::{self as sums, BLOCK};
use crate::chunk::store::{ChunkStat, ReadInfo, StoreError};
use crate::copies::{self, Pass};
use crate::proto::{crc32c, ChunkId};

impl DirStore {
    // ---- reads --------------------------------------------------------------------------------

    /// Reads `buf.len()` bytes (fewer at the end) from `offset`, checking every block touched
    /// against its sum; returns the CRC32C of what was read, combined from the sums. Whole
    /// blocks are read straight into `buf` and checked there (the one pass over the bytes);
    /// a block read only in part is read whole into a scratch block, checked, and its part
    /// copied.
    pub(super) fn read_checked(
        &self,
        id: ChunkId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(ReadInfo, u32), StoreError> {
        let _guard = read_lock(&self.stripe(id).lock);
        let (chunk, file_len) = open_existing(&self.chunk_path(id), id)?;
        let footer = read_footer(&chunk, file_len).map_err(|f| self.fault(id, f))?;
        let size = footer.size;
        if offset > size {
            return Err(StoreError::OutOfRange { id, offset, size });
        }
        let len = buf
            .len()
            .min((size - offset).min(usize::MAX as u64) as usize);
        let info = ReadInfo {
            len,
            chunk_size: size,
        };
        if len == 0 {
            return Ok((info, 0));
        }
        copies::count(Pass::Read, len);
        let end = offset + len as u64;
        let bs = BLOCK as u64;
        let (k0, k1) = (offset / bs, end.div_ceil(bs));
        let mut raw = vec![0u8; 4 * (k1 - k0) as usize];
        chunk
            .read_exact_at(&mut raw, size + 4 * k0)
            .map_err(|e| io_error("read chunk sums", id, e))?;
        let stored = |k: u64| {
            let at = 4 * (k - k0) as usize;
            u32::from_le_bytes(raw[at..at + 4].try_into().unwrap())
        };
        let whole = |k: u64| {
            let (s, e) = sums::block_range(size, k);
            s >= offset && e <= end
        };
        // Blocks w0..w1 lie wholly inside the read; k0 (if not) and k1 - 1 (if not, and not
        // k0) are edges.
        let w0 = if whole(k0) { k0 } else { k0 + 1 };
        let w1 = if whole(k1 - 1) { k1 } else { k1 - 1 }.max(w0);
        let mut crc = 0u32;
        let mut scratch = [0u8; BLOCK];
        let mut edge = |k: u64, buf: &mut [u8]| -> Result<(u32, u64), Fault> {
            let (s, e) = sums::block_range(size, k);
            let block = &mut scratch[..(e - s) as usize];
            chunk
                .read_exact_at(block, s)
                .map_err(Fault::io("read chunk"))?;
            check_block(size, k, stored(k), block)?;
            let (ps, pe) = (s.max(offset), e.min(end));
            let part = &block[(ps - s) as usize..(pe - s) as usize];
            buf[(ps - offset) as usize..(pe - offset) as usize].copy_from_slice(part);
            Ok((crc32c(part), pe - ps))
        };
        if w0 > k0 {
            let (c, n) = edge(k0, buf).map_err(|f| self.fault(id, f))?;
            crc = sums::combine(crc, c, n);
        }
        if w0 < w1 {
            let (ws, _) = sums::block_range(size, w0);
            let (_, we) = sums::block_range(size, w1 - 1);
            let middle = &mut buf[(ws - offset) as usize..(we - offset) as usize];
            chunk
                .read_exact_at(middle, ws)
                .map_err(|e| io_error("read chunk", id, e))?;
            for (i, block) in middle.chunks(BLOCK).enumerate() {
                let k = w0 + i as u64;
                check_block(size, k, stored(k), block).map_err(|f| self.fault(id, f))?;
                crc = sums::combine(crc, stored(k), block.len() as u64);
            }
        }
        if w1 < k1 {
            let (c, n) = edge(k1 - 1, buf).map_err(|f| self.fault(id, f))?;
            crc = sums::combine(crc, c, n);
        }
        Ok((info, crc))
    }
}

impl DirStore {
    /// [`ChunkStore::stat`](crate::chunk::ChunkStore::stat): size and CRC from the trailer.
    pub(super) fn stat_chunk(&self, id: ChunkId) -> Result<ChunkStat, StoreError> {
        let _guard = read_lock(&self.stripe(id).lock);
        let (chunk, file_len) = open_existing(&self.chunk_path(id), id)?;
        let (footer, stored) = read_trailer(&chunk, file_len).map_err(|f| self.fault(id, f))?;
        Ok(ChunkStat {
            size: footer.size,
            crc: sums::crc_from_sums(footer.size, 0, &stored),
        })
    }
}

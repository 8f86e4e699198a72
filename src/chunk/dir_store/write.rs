//! WRITE: creating a chunk, and updating one through its redo log.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use super::integrity::{check_block, read_trailer, Fault};
use super::record::{invalidate, read_record, Record, RecordKind, RECORD_HEADER_LEN};
use super::{io_error, open_rw, DirStore};
use crate::chunk::block_sums::{self as sums, Footer, BLOCK};
use crate::chunk::store::StoreError;
use crate::proto::{crc32c, ChunkId};

impl DirStore {
    // ---- writes -------------------------------------------------------------------------------

    /// The sums of blocks `k0..k1` of a chunk of `new_size` bytes after `data` is written at
    /// `offset` over `old` (the file, its data size and its sums; `None` for a new chunk: all
    /// zeros), and the CRC32C of `data`, in one pass over `data`. A block the write covers only
    /// in part is read from the file whole and checked against its old sum first: a write
    /// never vouches for damaged bytes.
    fn new_sums(
        old: Option<(&File, u64, &[u32])>,
        offset: u64,
        data: &[u8],
        new_size: u64,
        k0: u64,
        k1: u64,
    ) -> Result<(Vec<u32>, u32), Fault> {
        let end = offset + data.len() as u64;
        let old_size = old.map_or(0, |o| o.1);
        let mut out = Vec::with_capacity((k1 - k0) as usize);
        let mut data_crc = 0u32;
        let mut scratch = [0u8; BLOCK];
        for k in k0..k1 {
            let (bs, be) = sums::block_range(new_size, k);
            let blen = (be - bs) as usize;
            let (ds, de) = (bs.max(offset), be.min(end));
            let crc = if bs >= offset && be <= end {
                let c = crc32c(&data[(bs - offset) as usize..(be - offset) as usize]);
                data_crc = sums::combine(data_crc, c, be - bs);
                c
            } else if bs >= old_size && ds >= de {
                sums::zeros_crc(blen)
            } else {
                scratch[..blen].fill(0);
                if let Some((file, old_size, old_sums)) = old.filter(|_| bs < old_size) {
                    let (_, obe) = sums::block_range(old_size, k);
                    let old_block = &mut scratch[..(obe - bs) as usize];
                    file.read_exact_at(old_block, bs)
                        .map_err(Fault::io("read chunk"))?;
                    check_block(old_size, k, old_sums[k as usize], old_block).map_err(
                        |f| match f {
                            Fault::Damage(d) => {
                                Fault::Damage(format!("{d}; a write to part of it is refused"))
                            }
                            f => f,
                        },
                    )?;
                }
                if ds < de {
                    let part = &data[(ds - offset) as usize..(de - offset) as usize];
                    scratch[(ds - bs) as usize..(de - bs) as usize].copy_from_slice(part);
                    data_crc = sums::combine(data_crc, crc32c(part), de - ds);
                }
                crc32c(&scratch[..blen])
            };
            out.push(crc);
        }
        Ok((out, data_crc))
    }

    pub(super) fn create(&self, id: ChunkId, offset: u64, data: &[u8], end: u64) -> io::Result<()> {
        let (all, _) = match Self::new_sums(None, offset, data, end, 0, sums::blocks(end)) {
            Ok(computed) => computed,
            Err(Fault::Io(_, e)) => return Err(e),
            Err(Fault::Damage(d)) => unreachable!("a new chunk has no old blocks: {d}"),
        };
        let tmp = self.tmp_path(id);
        let result = (|| {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            // A gap before `offset` is a hole: it reads as zeros.
            file.write_all_at(data, offset)?;
            file.write_all_at(&sums::emit_trailer(end, &all), end)?;
            self.sync_data(&file)?;
            fs::rename(&tmp, self.chunk_path(id))
        })();
        if let Err(e) = result {
            // Best effort: open removes it anyway.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.sync_dir(&self.subdir(id))
    }

    /// Opens the chunk's log, creating it (and syncing the directory) on first use.
    fn open_log(&self, id: ChunkId) -> io::Result<File> {
        let path = self.log_path(id);
        match open_rw(&path) {
            Ok(log) => Ok(log),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let log = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)?;
                self.sync_dir(&self.subdir(id))?;
                Ok(log)
            }
            Err(e) => Err(e),
        }
    }

    /// Extends or overwrites an existing chunk through its log. Returns the new size.
    pub(super) fn update(
        &self,
        id: ChunkId,
        chunk: &File,
        offset: u64,
        data: &[u8],
        end: u64,
    ) -> Result<u64, StoreError> {
        let io_err = |op: &'static str| move |source| io_error(op, id, source);
        let log = self.open_log(id).map_err(io_err("open log"))?;
        // A valid record here means an earlier write failed half-way and could not be repaired
        // then: repair it before writing a new record over it.
        if read_record(&log).map_err(io_err("read log"))?.is_some() {
            let repair = self
                .repair(id, chunk, &log)
                .map_err(io_err("repair chunk"))?;
            tracing::warn!(chunk = %id, ?repair, "DirStore: repaired a chunk left by a failed write");
            invalidate(&log, true).map_err(io_err("invalidate log"))?;
        }
        let file_len = chunk.metadata().map_err(io_err("stat chunk"))?.len();
        let (footer, old_sums) = read_trailer(chunk, file_len).map_err(|f| self.fault(id, f))?;
        let size = footer.size;
        if data.is_empty() && offset <= size {
            return Ok(size);
        }
        let new_size = size.max(end);
        let bs = BLOCK as u64;
        let (k0, k1) = (offset.min(size) / bs, end.div_ceil(bs));
        let (new, data_crc) = Self::new_sums(
            Some((chunk, size, &old_sums)),
            offset,
            data,
            new_size,
            k0,
            k1,
        )
        .map_err(|f| self.fault(id, f))?;
        let record = Record {
            kind: if offset >= size {
                RecordKind::Extend
            } else {
                RecordKind::Redo
            },
            id,
            offset,
            len: data.len() as u64,
            old_size: size,
            data_crc,
        };
        log.write_all_at(&record.emit(), 0)
            .map_err(io_err("write log"))?;
        if record.kind == RecordKind::Redo {
            log.write_all_at(data, RECORD_HEADER_LEN as u64)
                .map_err(io_err("write log"))?;
        }
        self.sync_data(&log).map_err(io_err("sync log"))?;

        let applied = (|| {
            if offset > size {
                // The old trailer's bytes inside the gap must read as zeros (past the old end
                // of the file the gap is a hole).
                zero_range(chunk, size, offset.min(file_len))?;
            }
            chunk.write_all_at(data, offset)?;
            let mut all = old_sums;
            if new_size == size {
                // In place: the sums of the blocks written, and the footer (the sums' CRC).
                all[k0 as usize..k1 as usize].copy_from_slice(&new);
                let touched = sums::sums_bytes(&new);
                chunk.write_all_at(&touched, size + 4 * k0)?;
                let footer = Footer {
                    size,
                    sums_crc: crc32c(&sums::sums_bytes(&all)),
                };
                chunk.write_all_at(&footer.emit(), size + 4 * all.len() as u64)?;
            } else {
                // The chunk grew over its old trailer: a whole new one after the new end.
                all.truncate(k0 as usize);
                all.extend_from_slice(&new);
                chunk.write_all_at(&sums::emit_trailer(new_size, &all), new_size)?;
            }
            self.sync_data(chunk)
        })();
        if let Err(e) = applied {
            // Put the chunk back in a whole state now if we can (a failed extend is truncated
            // back; a failed overwrite is retried). If that fails too, the record stays valid
            // for the next write or open to repair.
            match self.repair(id, chunk, &log) {
                Ok(repair) => {
                    let _ = invalidate(&log, record.kind == RecordKind::Redo);
                    tracing::warn!(chunk = %id, error = %e, ?repair, "DirStore: write failed; chunk repaired");
                }
                Err(e2) => {
                    tracing::warn!(chunk = %id, error = %e, repair_error = %e2, "DirStore: write failed; repair deferred");
                }
            }
            return Err(io_error("write chunk", id, e));
        }
        // The write is durable: the record is only needed until here. Not synced (see the
        // module docs: a stale record replays to the same content).
        if let Err(e) = invalidate(&log, record.kind == RecordKind::Redo) {
            tracing::warn!(chunk = %id, error = %e, "DirStore: could not invalidate a log record (harmless: replaying it changes nothing)");
        }
        Ok(new_size)
    }
}

/// Writes zeros over `file[start..end]` (nothing if `end <= start`).
pub(super) fn zero_range(file: &File, start: u64, end: u64) -> io::Result<()> {
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    let mut at = start;
    while at < end {
        let n = (end - at).min(BLOCK as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

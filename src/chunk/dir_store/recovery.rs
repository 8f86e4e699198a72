//! Recovery at [`DirStore::open`]: replaying or rolling back what a crash left in the logs,
//! counted in a [`RecoveryReport`].

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::integrity::{crc_of_range, file_block_sums, read_trailer, Fault};
use super::layout::{
    fanout, is_lower_hex, parse_name, subdir_name, EntryKind, FANOUT, FORMAT_FILE, FORMAT_TMP,
    QUARANTINE_DIR,
};
use super::record::{invalidate, read_log, read_redo_data, LogState, RecordKind};
use super::report::RecoveryReport;
use super::write::zero_range;
use super::{open_rw, DirStore, DirStoreError, LOCK_FILE};
use crate::chunk::block_sums::{self as sums, BLOCK};
use crate::proto::ChunkId;

/// What a record did to its chunk.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Repair {
    /// An empty or invalidated log: nothing to do.
    Idle,
    /// A log that holds no valid record (torn, corrupt, or naming another chunk): the chunk was
    /// not touched by its write.
    Discarded,
    /// Redo record written to the chunk.
    Replayed,
    /// Extend record found complete.
    ExtendComplete,
    /// Extend record found torn: chunk truncated to its old size.
    ExtendRolledBack,
}

impl DirStore {
    // ---- recovery -----------------------------------------------------------------------------

    pub(super) fn recover(&mut self, legacy: bool) -> Result<(), DirStoreError> {
        let mut report = RecoveryReport::default();
        let top = fs::read_dir(&self.dir).map_err(|source| DirStoreError::Recovery {
            path: self.dir.clone(),
            action: "listing the directory",
            source,
        })?;
        for entry in top {
            let entry = entry.map_err(|source| DirStoreError::Recovery {
                path: self.dir.clone(),
                action: "listing the directory",
                source,
            })?;
            let name = entry.file_name();
            let ours = name.to_str().is_some_and(|n| {
                [LOCK_FILE, FORMAT_FILE, FORMAT_TMP, QUARANTINE_DIR].contains(&n)
                    || (n.len() == 2 && is_lower_hex(n))
            });
            if !ours {
                report.foreign_entries += 1;
                tracing::warn!(path = %entry.path().display(), "DirStore: ignoring a foreign entry");
            }
        }
        for index in 0..FANOUT {
            let sub = self.dir.join(subdir_name(index));
            self.recover_subdir(index, &sub, legacy, &mut report)?;
        }
        if report != RecoveryReport::default() {
            tracing::info!(dir = %self.dir.display(), %report, "DirStore recovery");
        }
        self.recovery = report;
        Ok(())
    }

    fn recover_subdir(
        &self,
        index: usize,
        sub: &Path,
        legacy: bool,
        report: &mut RecoveryReport,
    ) -> Result<(), DirStoreError> {
        let listing_err = |source| DirStoreError::Recovery {
            path: sub.to_path_buf(),
            action: "listing the directory",
            source,
        };
        let mut chunks = Vec::new();
        let mut logs = Vec::new();
        let mut temps = Vec::new();
        for entry in fs::read_dir(sub).map_err(listing_err)? {
            let entry = entry.map_err(listing_err)?;
            let name = entry.file_name();
            let parsed = name.to_str().and_then(parse_name);
            let is_file = entry.file_type().map_err(listing_err)?.is_file();
            match parsed {
                Some((id, kind)) if is_file && fanout(id) == index => match kind {
                    EntryKind::Chunk => chunks.push(id),
                    EntryKind::Log => logs.push(id),
                    EntryKind::Temp => temps.push(id),
                },
                _ => {
                    report.foreign_entries += 1;
                    tracing::warn!(path = %entry.path().display(), "DirStore: ignoring a foreign entry");
                }
            }
        }
        let mut changed = false;
        for id in temps {
            let path = self.tmp_path(id);
            fs::remove_file(&path).map_err(|source| DirStoreError::Recovery {
                path,
                action: "removing an unfinished create",
                source,
            })?;
            report.temp_files_removed += 1;
            changed = true;
        }
        chunks.sort_unstable();
        for id in logs {
            let log_path = self.log_path(id);
            let rec_err = |action| {
                let path = log_path.clone();
                move |source| DirStoreError::Recovery {
                    path,
                    action,
                    source,
                }
            };
            if chunks.binary_search(&id).is_err() {
                fs::remove_file(&log_path).map_err(rec_err("removing an orphan log"))?;
                report.orphan_logs_removed += 1;
                changed = true;
                continue;
            }
            let chunk = open_rw(&self.chunk_path(id)).map_err(rec_err("opening the chunk"))?;
            let log = open_rw(&log_path).map_err(rec_err("opening the log"))?;
            let repair = if legacy {
                self.repair_legacy(id, &chunk, &log)
            } else {
                self.repair(id, &chunk, &log).map(|(repair, rebuilt)| {
                    report.sums_rebuilt += u64::from(rebuilt);
                    repair
                })
            };
            match repair.map_err(rec_err("applying the log record"))? {
                // The normal state after a clean shutdown: the log is kept for the next write.
                Repair::Idle => continue,
                Repair::Discarded => report.logs_discarded += 1,
                Repair::Replayed => report.overwrites_replayed += 1,
                Repair::ExtendComplete => report.extends_complete += 1,
                Repair::ExtendRolledBack => report.extends_rolled_back += 1,
            }
            // The chunk is repaired and synced: the record is no longer needed.
            invalidate(&log, true).map_err(rec_err("invalidating the log record"))?;
            if legacy {
                // The migration that follows changes the chunk file: an old-format record
                // must not come back after a power loss and be applied to it.
                self.sync_data(&log)
                    .map_err(rec_err("syncing the invalidated log"))?;
            }
        }
        if changed {
            self.sync_dir(sub)
                .map_err(|source| DirStoreError::Recovery {
                    path: sub.to_path_buf(),
                    action: "syncing the directory",
                    source,
                })?;
        }
        report.chunks += chunks.len() as u64;
        Ok(())
    }

    /// The previous (checksum-less) version's repair, for a store `open` is about to migrate:
    /// applies the record in `log`, if valid, to `chunk` (data only; no trailer) and syncs it.
    fn repair_legacy(&self, id: ChunkId, chunk: &File, log: &File) -> io::Result<Repair> {
        let record = match read_log(log)? {
            LogState::Idle => return Ok(Repair::Idle),
            LogState::Invalid => return Ok(Repair::Discarded),
            LogState::Record(record) => record,
        };
        if record.id != id {
            return Ok(Repair::Discarded);
        }
        let repair = match record.kind {
            RecordKind::Redo => match read_redo_data(log, &record)? {
                None => return Ok(Repair::Discarded),
                Some(data) => {
                    chunk.write_all_at(&data, record.offset)?;
                    Repair::Replayed
                }
            },
            RecordKind::Extend => {
                let size = chunk.metadata()?.len();
                let end = record.offset + record.len;
                if size == end && crc_of_range(chunk, record.offset, record.len)? == record.data_crc
                {
                    Repair::ExtendComplete
                } else {
                    chunk.set_len(record.old_size)?;
                    Repair::ExtendRolledBack
                }
            }
        };
        self.sync_data(chunk)?;
        tracing::debug!(chunk = %id, ?record, ?repair, "DirStore: applied an old-format log record");
        Ok(repair)
    }

    /// Applies the record in `log`, if there is a valid one, to `chunk`, brings the chunk's
    /// checksum trailer in line with its data, and syncs the chunk (per the policy). Does not
    /// invalidate the record: the caller does, once this returns. Also returns whether the
    /// block sums had to be rebuilt from the whole chunk's data (see the module docs).
    pub(super) fn repair(
        &self,
        id: ChunkId,
        chunk: &File,
        log: &File,
    ) -> io::Result<(Repair, bool)> {
        let record = match read_log(log)? {
            LogState::Idle => return Ok((Repair::Idle, false)),
            LogState::Invalid => return Ok((Repair::Discarded, false)),
            LogState::Record(record) => record,
        };
        if record.id != id {
            return Ok((Repair::Discarded, false));
        }
        let end = record.offset + record.len;
        let old_size = record.old_size;
        let (repair, rebuilt) = match record.kind {
            RecordKind::Redo => {
                let Some(data) = read_redo_data(log, &record)? else {
                    return Ok((Repair::Discarded, false));
                };
                chunk.write_all_at(&data, record.offset)?;
                // An overwrite inside the chunk leaves the trailer where it was: the sums of
                // the blocks it did not touch are still right. One that grew the chunk wrote
                // over the old trailer.
                let rebuilt = self.fix_trailer(
                    id,
                    chunk,
                    old_size.max(end),
                    (record.offset, end),
                    end <= old_size,
                )?;
                (Repair::Replayed, rebuilt)
            }
            RecordKind::Extend => {
                let file_len = chunk.metadata()?.len();
                if file_len >= end
                    && crc_of_range(chunk, record.offset, record.len)? == record.data_crc
                {
                    // The gap before the new data reads as zeros: the old trailer's bytes in
                    // it may not have been zeroed yet.
                    let old_file_len = old_size + sums::trailer_len(old_size);
                    zero_range(chunk, old_size, record.offset.min(old_file_len))?;
                    let rebuilt = self.fix_trailer(id, chunk, end, (old_size, end), false)?;
                    (Repair::ExtendComplete, rebuilt)
                } else {
                    (
                        Repair::ExtendRolledBack,
                        self.roll_back(id, chunk, old_size)?,
                    )
                }
            }
        };
        self.sync_data(chunk)?;
        tracing::debug!(chunk = %id, ?record, ?repair, rebuilt, "DirStore: applied a log record");
        Ok((repair, rebuilt))
    }

    /// Cuts a chunk whose extend was torn back to `old_size` bytes of data, with the old
    /// trailer if it is still whole after them, else with sums rebuilt from the data (returns
    /// true then).
    fn roll_back(&self, id: ChunkId, chunk: &File, old_size: u64) -> io::Result<bool> {
        let old_file_len = old_size + sums::trailer_len(old_size);
        if chunk.metadata()?.len() >= old_file_len {
            match read_trailer(chunk, old_file_len) {
                Ok(_) => {
                    chunk.set_len(old_file_len)?;
                    return Ok(false);
                }
                Err(Fault::Io(_, e)) => return Err(e),
                Err(Fault::Damage(_)) => {}
            }
        }
        chunk.set_len(old_size)?;
        let all = file_block_sums(chunk, old_size, 0, sums::blocks(old_size))?;
        chunk.write_all_at(&sums::emit_trailer(old_size, &all), old_size)?;
        tracing::warn!(chunk = %id, size = old_size, "DirStore: a torn append had overwritten the chunk's checksums: rebuilt from its data");
        Ok(true)
    }

    /// Makes the trailer of a chunk of `size` bytes of data right after a write to
    /// `touched` (data bytes) was replayed or found complete: nothing if the trailer is whole
    /// and matches the touched blocks; else the touched blocks' sums recomputed from the data,
    /// keeping the others if `keep_untouched` (the trailer did not move); else every sum
    /// recomputed (returns true then).
    fn fix_trailer(
        &self,
        id: ChunkId,
        chunk: &File,
        size: u64,
        touched: (u64, u64),
        keep_untouched: bool,
    ) -> io::Result<bool> {
        let n = sums::blocks(size);
        let k0 = (touched.0 / BLOCK as u64).min(n);
        let k1 = touched.1.div_ceil(BLOCK as u64).min(n);
        let file_len = chunk.metadata()?.len();
        let fresh = file_block_sums(chunk, size, k0, k1)?;
        if file_len == size + sums::trailer_len(size) {
            match read_trailer(chunk, file_len) {
                Ok((_, stored)) if stored[k0 as usize..k1 as usize] == fresh[..] => {
                    return Ok(false);
                }
                Ok(_) | Err(Fault::Damage(_)) => {}
                Err(Fault::Io(_, e)) => return Err(e),
            }
        }
        let rebuilt = !(keep_untouched && file_len >= size + 4 * n);
        let all = if rebuilt {
            tracing::warn!(chunk = %id, size, "DirStore: a write torn by a crash had overwritten the chunk's checksums: rebuilt from its data");
            file_block_sums(chunk, size, 0, n)?
        } else {
            let mut raw = vec![0u8; 4 * n as usize];
            chunk.read_exact_at(&mut raw, size)?;
            let mut all = sums::parse_sums(&raw);
            all[k0 as usize..k1 as usize].copy_from_slice(&fresh);
            all
        };
        chunk.write_all_at(&sums::emit_trailer(size, &all), size)?;
        chunk.set_len(size + sums::trailer_len(size))?;
        Ok(rebuilt)
    }
}

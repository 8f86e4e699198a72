//! Migration of a store written by an earlier version (chunk files without checksums).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::integrity::{Fault, CRC_PIECE};
use super::layout::{
    fanout, parse_name, subdir_name, EntryKind, FANOUT, FORMAT_FILE, FORMAT_TEXT, FORMAT_TMP,
};
use super::{open_rw, DirStore, DirStoreError};
use crate::chunk::block_sums::{self as sums, BLOCK};
use crate::proto::crc32c;

impl DirStore {
    // ---- migration from the checksum-less format -----------------------------------------------

    /// Gives every chunk file without a valid trailer one (each through `<id>.tmp` and a
    /// rename, so a crash leaves it old or new, never half-done), then writes the format
    /// marker. Chunks that already carry a valid trailer whose sums match every block are left
    /// as they are: an earlier, interrupted run migrated them.
    pub(super) fn migrate(&mut self) -> Result<(), DirStoreError> {
        let rec_err = |path: &Path, action: &'static str| {
            let path = path.to_path_buf();
            move |source| DirStoreError::Recovery {
                path,
                action,
                source,
            }
        };
        if self.recovery.chunks > 0 {
            tracing::warn!(dir = %self.dir.display(), chunks = self.recovery.chunks, "DirStore: no {FORMAT_FILE} marker: chunk files are an earlier version's, without checksums; migrating them (each file is copied once)");
        }
        let mut migrated = 0u64;
        for index in 0..FANOUT {
            let sub = self.dir.join(subdir_name(index));
            let mut ids = Vec::new();
            for entry in fs::read_dir(&sub).map_err(rec_err(&sub, "listing the directory"))? {
                let entry = entry.map_err(rec_err(&sub, "listing the directory"))?;
                let parsed = entry.file_name().to_str().and_then(parse_name);
                let is_file = entry
                    .file_type()
                    .map_err(rec_err(&sub, "listing the directory"))?
                    .is_file();
                if let Some((id, EntryKind::Chunk)) = parsed {
                    if fanout(id) == index && is_file {
                        ids.push(id);
                    }
                }
            }
            ids.sort_unstable();
            let mut changed = false;
            for id in ids {
                let path = self.chunk_path(id);
                let chunk = open_rw(&path).map_err(rec_err(&path, "opening a chunk to migrate"))?;
                let file_len = chunk
                    .metadata()
                    .map_err(rec_err(&path, "opening a chunk to migrate"))?
                    .len();
                match Self::check_chunk(&chunk, file_len) {
                    Ok(_) => continue,
                    Err(Fault::Io(_, e)) => return Err(rec_err(&path, "checking a chunk")(e)),
                    Err(Fault::Damage(_)) => {}
                }
                let tmp = self.tmp_path(id);
                self.write_migrated(&chunk, file_len, &tmp)
                    .and_then(|()| fs::rename(&tmp, &path))
                    .map_err(rec_err(&path, "migrating the chunk (adding its checksums)"))?;
                migrated += 1;
                changed = true;
            }
            if changed {
                self.sync_dir(&sub)
                    .map_err(rec_err(&sub, "syncing the directory"))?;
            }
        }
        let marker = self.dir.join(FORMAT_FILE);
        let tmp = self.dir.join(FORMAT_TMP);
        (|| {
            let file = File::create(&tmp)?;
            file.write_all_at(FORMAT_TEXT.as_bytes(), 0)?;
            self.sync_data(&file)?;
            fs::rename(&tmp, &marker)?;
            self.sync_dir(&self.dir)
        })()
        .map_err(rec_err(&marker, "writing the format marker"))?;
        if migrated > 0 {
            tracing::warn!(dir = %self.dir.display(), migrated, "DirStore: chunk files migrated to the checksummed format");
        }
        self.recovery.chunks_migrated = migrated;
        Ok(())
    }

    /// Writes `tmp` as `chunk`'s `len` bytes of data followed by their trailer, synced.
    fn write_migrated(&self, chunk: &File, len: u64, tmp: &Path) -> io::Result<()> {
        let out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(tmp)?;
        let mut buf = vec![0u8; len.min(CRC_PIECE as u64) as usize];
        let mut all = Vec::with_capacity(sums::blocks(len) as usize);
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            chunk.read_exact_at(&mut buf[..n], at)?;
            all.extend(buf[..n].chunks(BLOCK).map(crc32c));
            out.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        out.write_all_at(&sums::emit_trailer(len, &all), len)?;
        self.sync_data(&out)
    }
}

//! [`DirStore::scrub`]: checking every chunk while the store serves, and quarantining the
//! damaged ones.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::integrity::Fault;
use super::layout::{fanout, parse_name, subdir_name, EntryKind, FANOUT, QUARANTINE_DIR};
use super::{open_existing, read_lock, write_lock, DirStore};
use crate::chunk::store::StoreError;
use crate::proto::ChunkId;

/// A damaged chunk found by [`DirStore::scrub`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrubFinding {
    /// The chunk.
    pub id: ChunkId,
    /// What failed, and where.
    pub detail: String,
    /// Where the chunk file was moved, when the scrub quarantined it.
    pub quarantined: Option<PathBuf>,
}

/// What [`DirStore::scrub`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Chunks checked (every block and the trailer of each).
    pub chunks: u64,
    /// Data bytes of the chunks found intact.
    pub bytes: u64,
    /// Chunks found damaged, in the order checked.
    pub damaged: Vec<ScrubFinding>,
    /// Chunks that were deleted (or rewritten) between the listing and their check.
    pub vanished: u64,
}

impl ScrubReport {
    /// Damaged chunks moved to the quarantine directory.
    pub fn quarantined(&self) -> usize {
        self.damaged
            .iter()
            .filter(|f| f.quarantined.is_some())
            .count()
    }
}

impl DirStore {
    /// Checks every chunk: every block against its sum, and each trailer; see
    /// [`ScrubReport`]. Runs while the store serves: each chunk is checked under its lock,
    /// shared (writers to it wait), or exclusive with `quarantine`, which moves each damaged
    /// chunk file to `<dir>/quarantine/<id>.<n>.damaged` (its log is removed), so the chunk
    /// reads as absent and can be written again. Each damaged chunk is logged and counted in
    /// [`DirStore::corrupt_found`]. Errors only for I/O errors (the report so far is lost).
    pub fn scrub(&self, quarantine: bool) -> io::Result<ScrubReport> {
        let mut report = ScrubReport::default();
        for index in 0..FANOUT {
            let sub = self.dir.join(subdir_name(index));
            let mut ids = Vec::new();
            for entry in fs::read_dir(&sub)? {
                let entry = entry?;
                let parsed = entry.file_name().to_str().and_then(parse_name);
                if let Some((id, EntryKind::Chunk)) = parsed {
                    if fanout(id) == index && entry.file_type()?.is_file() {
                        ids.push(id);
                    }
                }
            }
            ids.sort_unstable();
            for id in ids {
                let lock = &self.stripe(id).lock;
                if quarantine {
                    let _guard = write_lock(lock);
                    self.scrub_one(id, true, &mut report)?;
                } else {
                    let _guard = read_lock(lock);
                    self.scrub_one(id, false, &mut report)?;
                }
            }
        }
        tracing::info!(dir = %self.dir.display(), chunks = report.chunks, bytes = report.bytes, damaged = report.damaged.len(), "DirStore scrub done");
        Ok(report)
    }

    fn scrub_one(&self, id: ChunkId, quarantine: bool, report: &mut ScrubReport) -> io::Result<()> {
        let (chunk, file_len) = match open_existing(&self.chunk_path(id), id) {
            Ok(opened) => opened,
            Err(StoreError::NotFound(_)) => {
                report.vanished += 1;
                return Ok(());
            }
            Err(StoreError::Io { source, .. }) => return Err(source),
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        report.chunks += 1;
        match Self::check_chunk(&chunk, file_len) {
            Ok(size) => report.bytes += size,
            Err(Fault::Io(_, e)) => return Err(e),
            Err(Fault::Damage(detail)) => {
                drop(chunk);
                let _ = self.corrupt(id, detail.clone());
                let quarantined = if quarantine {
                    let to = self.quarantine(id)?;
                    tracing::warn!(chunk = %id, to = %to.display(), "DirStore: damaged chunk quarantined");
                    Some(to)
                } else {
                    None
                };
                report.damaged.push(ScrubFinding {
                    id,
                    detail,
                    quarantined,
                });
            }
        }
        Ok(())
    }

    /// Moves a chunk's file into the quarantine directory (caller holds the chunk's lock
    /// exclusively); returns where it went.
    fn quarantine(&self, id: ChunkId) -> io::Result<PathBuf> {
        let qdir = self.dir.join(QUARANTINE_DIR);
        match fs::create_dir(&qdir) {
            Ok(()) => self.sync_dir(&self.dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let mut n = 0u32;
        let to = loop {
            let to = qdir.join(format!("{id}.{n}.damaged"));
            if fs::symlink_metadata(&to).is_err() {
                break to;
            }
            n += 1;
        };
        // As in a delete: the log first (a log without its chunk is removed by `open`).
        match fs::remove_file(self.log_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::rename(self.chunk_path(id), &to)?;
        self.sync_dir(&self.subdir(id))?;
        self.sync_dir(&qdir)?;
        Ok(to)
    }
}

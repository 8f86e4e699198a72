//! Where things are in the store directory: the fan-out subdirectories, the names of chunk,
//! log and temporary files, and the `FORMAT` marker.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::{dir_err, listed_size, DirStore, DirStoreError};
use crate::chunk::store::StoreError;
use crate::proto::ChunkId;

/// The format marker: its presence says every chunk file carries a checksum trailer.
pub(super) const FORMAT_FILE: &str = "FORMAT";
pub(super) const FORMAT_TMP: &str = "FORMAT.tmp";
pub(super) const FORMAT_TEXT: &str =
    "ustack DirStore format 2: chunk files carry block CRC32C trailers\n";
/// Where [`DirStore::scrub`] moves damaged chunk files.
pub(super) const QUARANTINE_DIR: &str = "quarantine";
pub(super) const FANOUT: usize = 256;
const LOG_SUFFIX: &str = ".log";
const TMP_SUFFIX: &str = ".tmp";

// ---- names ------------------------------------------------------------------------------------

/// The fan-out subdirectory index of a chunk: the XOR of its 16 bytes.
pub(super) fn fanout(id: ChunkId) -> usize {
    id.0.to_le_bytes().iter().fold(0u8, |a, b| a ^ b) as usize
}

pub(super) fn subdir_name(index: usize) -> String {
    format!("{index:02x}")
}

/// What a directory entry's name says it is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum EntryKind {
    Chunk,
    Log,
    Temp,
}

pub(super) fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses `<32 lowercase hex>[.log|.tmp]`; anything else is foreign.
pub(super) fn parse_name(name: &str) -> Option<(ChunkId, EntryKind)> {
    let (stem, kind) = if let Some(stem) = name.strip_suffix(LOG_SUFFIX) {
        (stem, EntryKind::Log)
    } else if let Some(stem) = name.strip_suffix(TMP_SUFFIX) {
        (stem, EntryKind::Temp)
    } else {
        (name, EntryKind::Chunk)
    };
    if stem.len() != 32 || !is_lower_hex(stem) {
        return None;
    }
    let id = u128::from_str_radix(stem, 16).ok()?;
    Some((ChunkId(id), kind))
}

impl DirStore {
    /// Whether the format marker is there (and names this format).
    pub(super) fn read_format(&self) -> Result<bool, DirStoreError> {
        let path = self.dir.join(FORMAT_FILE);
        match fs::read_to_string(&path) {
            Ok(text) if text == FORMAT_TEXT => Ok(true),
            Ok(text) => Err(DirStoreError::UnknownFormat {
                path,
                found: text.chars().take(80).collect(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(DirStoreError::Recovery {
                path,
                action: "reading the format marker",
                source,
            }),
        }
    }

    /// The path of a chunk's file (which may not exist).
    pub fn chunk_path(&self, id: ChunkId) -> PathBuf {
        self.subdir(id).join(format!("{id}"))
    }

    pub(super) fn subdir(&self, id: ChunkId) -> PathBuf {
        self.dir.join(subdir_name(fanout(id)))
    }

    pub(super) fn log_path(&self, id: ChunkId) -> PathBuf {
        self.subdir(id).join(format!("{id}{LOG_SUFFIX}"))
    }

    pub(super) fn tmp_path(&self, id: ChunkId) -> PathBuf {
        self.subdir(id).join(format!("{id}{TMP_SUFFIX}"))
    }
}

impl DirStore {
    /// Creates the fan-out subdirectories that are missing (and syncs the store directory
    /// when it made any); an entry of that name that is not a directory is an error.
    pub(super) fn make_subdirs(&self) -> Result<(), DirStoreError> {
        let mut created = false;
        for index in 0..FANOUT {
            let sub = self.dir.join(subdir_name(index));
            match fs::create_dir(&sub) {
                Ok(()) => created = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let meta = fs::metadata(&sub).map_err(dir_err(&sub))?;
                    if !meta.is_dir() {
                        return Err(DirStoreError::Directory {
                            path: sub,
                            source: io::Error::new(
                                io::ErrorKind::AlreadyExists,
                                "exists and is not a directory",
                            ),
                        });
                    }
                }
                Err(e) => return Err(dir_err(&sub)(e)),
            }
        }
        if created {
            self.sync_dir(&self.dir).map_err(dir_err(&self.dir))?;
        }
        Ok(())
    }

    /// One page of [`ChunkStore::list`](crate::chunk::ChunkStore::list) (see its docs there).
    pub(super) fn list_page(
        &self,
        after: Option<ChunkId>,
        max: usize,
    ) -> Result<Vec<crate::proto::ListEntry>, StoreError> {
        let mut out = Vec::with_capacity(max.min(1024));
        let first = after.map_or(0, fanout);
        for index in first..FANOUT {
            if out.len() >= max {
                break;
            }
            let sub = self.dir.join(subdir_name(index));
            let failed = |source| StoreError::List {
                what: sub.display().to_string(),
                source,
            };
            let mut found = Vec::new();
            for entry in fs::read_dir(&sub).map_err(failed)? {
                let entry = entry.map_err(failed)?;
                let Some((id, EntryKind::Chunk)) = entry.file_name().to_str().and_then(parse_name)
                else {
                    continue;
                };
                if fanout(id) == index && (index != first || after.is_none_or(|a| id > a)) {
                    found.push((id, entry));
                }
            }
            found.sort_unstable_by_key(|(id, _)| *id);
            for (id, entry) in found {
                if out.len() >= max {
                    break;
                }
                // The entry itself, never a symlink's target.
                match entry.metadata() {
                    Ok(meta) if meta.is_file() => out.push(crate::proto::ListEntry {
                        id,
                        size: listed_size(&meta),
                    }),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(failed(e)),
                }
            }
        }
        Ok(out)
    }
}

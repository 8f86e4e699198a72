//! Where things are in the store directory: the fan-out subdirectories, the names of chunk,
//! log and temporary files, and the `FORMAT` marker.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::{DirStore, DirStoreError};
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

//! Settings of the object store ([`Objects`](super::objects::Objects)).

use std::path::PathBuf;

/// Settings of [`Objects`](super::objects::Objects).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectsConfig {
    /// Where the index lives: `dir/index.redb` (the directory is created if missing).
    pub dir: PathBuf,
    /// Bytes per chunk (the last chunk of an object may be shorter). Default 4 MiB; at least 1,
    /// at most the protocol's chunk limit (64 MiB) and the store's.
    pub chunk_bytes: u32,
    /// Smallest part of a multipart upload, except the last. Default 5 MiB (as S3).
    pub min_part_bytes: u64,
    /// Largest object. Default 5 TiB (as S3).
    pub max_object_bytes: u64,
}

impl ObjectsConfig {
    /// Default chunk size: 4 MiB.
    pub const DEFAULT_CHUNK_BYTES: u32 = 4 << 20;
    /// Default smallest part: 5 MiB.
    pub const DEFAULT_MIN_PART_BYTES: u64 = 5 << 20;
    /// Default largest object: 5 TiB.
    pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 5 << 40;

    /// The defaults, with the index in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> ObjectsConfig {
        ObjectsConfig {
            dir: dir.into(),
            chunk_bytes: Self::DEFAULT_CHUNK_BYTES,
            min_part_bytes: Self::DEFAULT_MIN_PART_BYTES,
            max_object_bytes: Self::DEFAULT_MAX_OBJECT_BYTES,
        }
    }
}

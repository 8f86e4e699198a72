//! Objects as chunks of a [`ChunkStore`], found through the durable [key index](super::index).
//!
//! An object of `n` bytes is `ceil(n / chunk_bytes)` chunks (an empty object has none), written
//! as the body arrives ([`Objects::put_data`]: no chunk is buffered whole), its MD5 taken in the
//! same pass. Chunk ids are `NAMESPACE << 64 | n`, `n` from a counter kept in memory and started,
//! at [`Objects::open`], above every id of the namespace found in the store or the index; chunks
//! of other ids are not the service's and are left alone.
//!
//! # Crash consistency
//!
//! Every change follows one order: the new chunks are written (each [`ChunkStore::write`]
//! returns once its bytes are as durable as the store promises), then the index transaction
//! that makes them reachable commits (redb, [`Durability::Immediate`](redb::Durability)), then
//! the chunks that commit made unreachable (a replaced or deleted object's, an aborted
//! upload's) are deleted. A crash before the commit leaves chunks nothing references; a crash
//! after it, chunks nothing references any more. [`Objects::open`] lists the store's chunks and
//! deletes every one of the namespace that no object and no uploaded part references, so after
//! it the store holds exactly what the index references, and every object the index shows has
//! all its bytes.
//!
//! Deleting unreachable chunks right after the commit means a GET still reading an object that
//! is overwritten or deleted meanwhile fails at its next [`Objects::read`] (the chunk is gone):
//! the reader sees an error, never other bytes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};

use super::index::{
    self, ChunkRef, Entry, Index, ListFrom, Meta, ObjectRecord, PartRecord, UploadRecord,
    UPLOAD_ID_LEN,
};
use crate::chunk::{ChunkStore, StoreError};
use crate::proto::{ChunkId, Limits};

/// The high 64 bits of every chunk id the object service allocates ("S3OBJECT").
pub const CHUNK_NAMESPACE: u64 = 0x5333_4f42_4a45_4354;

/// The largest part S3 accepts (5 GiB).
pub const MAX_PART_BYTES: u64 = 5 << 30;

/// The highest part number.
pub const MAX_PART_NUMBER: u32 = 10_000;

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Entries per page of [`ChunkStore::list`] during recovery.
const LIST_PAGE: usize = 1000;

/// Bytes copied per step of [`Objects::copy`].
const COPY_STEP: usize = 256 << 10;

/// Settings of [`Objects`].
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

/// What [`Objects::open`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Chunks of the namespace that nothing referenced, deleted (left by a crash).
    pub chunks_swept: u64,
    /// Objects in the index.
    pub objects: u64,
    /// Multipart uploads in progress.
    pub uploads: u64,
    /// Uploaded parts of those uploads.
    pub parts: u64,
    /// Chunks referenced and present.
    pub chunks_kept: u64,
    /// Chunks the index references that the store does not hold (data lost underneath the
    /// service; logged). 0 unless the store was damaged or changed by someone else.
    pub chunks_missing: u64,
    /// Chunks outside [`CHUNK_NAMESPACE`], left alone.
    pub foreign_chunks: u64,
}

/// An object's description, and where its bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key (for a part: the upload's key).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The ETag, quoted: the hex MD5 of the bytes, or for a completed multipart upload the hex
    /// MD5 of the parts' binary MD5s followed by `-N`.
    pub etag: String,
    /// When it was written.
    pub mtime: SystemTime,
    /// The Content-Type given at PUT.
    pub content_type: Option<String>,
    /// The user metadata (`x-amz-meta-*`) given at PUT: name (without the prefix), value.
    pub user_meta: Vec<(String, String)>,
    /// The chunks, in order.
    pub(crate) chunks: Vec<ChunkRef>,
    /// Where each chunk ends in the object (running sum of the lengths).
    pub(crate) ends: Vec<u64>,
}

impl ObjectInfo {
    fn new(key: String, rec: ObjectRecord) -> ObjectInfo {
        let etag = rec.etag();
        let mut end = 0;
        let ends = rec
            .chunks
            .iter()
            .map(|c| {
                end += u64::from(c.len);
                end
            })
            .collect();
        ObjectInfo {
            key,
            size: rec.size,
            etag,
            mtime: time_of(rec.mtime_ns),
            content_type: rec.meta.content_type,
            user_meta: rec.meta.user_meta,
            chunks: rec.chunks,
            ends,
        }
    }

    /// The object's chunks, in order.
    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }
}

/// What a PUT (or an upload's creation) carries besides the bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutMeta {
    /// Content-Type.
    pub content_type: Option<String>,
    /// User metadata: name (without `x-amz-meta-`), value.
    pub user_meta: Vec<(String, String)>,
    /// The decoded Content-MD5, if the client sent one: the bytes must match it.
    pub content_md5: Option<[u8; 16]>,
}

/// Where a [`Put`]'s bytes go when committed.
#[derive(Clone, Debug)]
enum Target {
    Object {
        bucket: String,
        key: String,
    },
    Part {
        bucket: String,
        key: String,
        upload: [u8; UPLOAD_ID_LEN],
        part: u32,
    },
}

/// An object (or a part) being written: from [`Objects::begin_put`] or
/// [`Objects::begin_part`], fed with [`Objects::put_data`], ended by [`Objects::commit`] or
/// [`Objects::abort`]. Dropped without either, its chunks stay in the store until the next
/// [`Objects::open`] sweeps them.
pub struct Put {
    target: Target,
    len: u64,
    written: u64,
    md5: Md5,
    chunks: Vec<ChunkRef>,
    /// A `put_data` failed or was given too much: the put can only be aborted.
    broken: bool,
}

impl std::fmt::Debug for Put {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Put")
            .field("target", &self.target)
            .field("len", &self.len)
            .field("written", &self.written)
            .field("chunks", &self.chunks.len())
            .field("broken", &self.broken)
            .finish()
    }
}

impl Put {
    /// The Content-Length given at the start.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the put is of an empty body.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes given so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

/// A ListObjectsV2 query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only keys that start with this.
    pub prefix: String,
    /// Roll keys whose rest (after the prefix) holds this up into common prefixes.
    pub delimiter: Option<String>,
    /// Only keys after this (ignored with a continuation token).
    pub start_after: Option<String>,
    /// A [`ListPage::next_continuation`] of an earlier page.
    pub continuation: Option<String>,
    /// Entries (objects and common prefixes) per page: 0..=1000 (more is taken as 1000; 0
    /// gives an empty page). S3's default, for a request without max-keys, is 1000.
    pub max_keys: u32,
}

/// A page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Objects, in key order.
    pub objects: Vec<ObjectInfo>,
    /// Common prefixes, in order, each once.
    pub common_prefixes: Vec<String>,
    /// Whether more entries follow.
    pub truncated: bool,
    /// The token of the next page, when truncated.
    pub next_continuation: Option<String>,
}

/// A part of a multipart upload, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartInfo {
    /// Part number, 1..=10000.
    pub number: u32,
    /// Size in bytes.
    pub size: u64,
    /// The part's ETag, quoted.
    pub etag: String,
    /// When it was uploaded.
    pub mtime: SystemTime,
}

/// A page of [`Objects::list_parts`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartsPage {
    /// Parts, by number.
    pub parts: Vec<PartInfo>,
    /// Whether more parts follow.
    pub truncated: bool,
    /// The marker of the next page, when truncated.
    pub next_marker: Option<u32>,
}

/// Why an object operation failed; [`ObjError::s3_code`] and [`ObjError::status`] say how S3
/// answers it.
#[derive(Debug, thiserror::Error)]
pub enum ObjError {
    /// The bucket does not exist.
    #[error("the specified bucket does not exist")]
    NoSuchBucket,
    /// The key does not exist.
    #[error("the specified key does not exist")]
    NoSuchKey,
    /// The upload does not exist (never created, completed or aborted).
    #[error("the specified multipart upload does not exist")]
    NoSuchUpload,
    /// Creating a bucket that exists.
    #[error("the bucket already exists")]
    BucketAlreadyOwnedByYou,
    /// Deleting a bucket that holds objects.
    #[error("the bucket is not empty")]
    BucketNotEmpty,
    /// A bucket name against the naming rules.
    #[error("the bucket name is not valid")]
    InvalidBucketName,
    /// A key against the key rules (empty, a NUL byte, a "." or ".." segment).
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A key longer than 1024 bytes.
    #[error("the key is longer than 1024 bytes")]
    KeyTooLong,
    /// An object or part larger than allowed.
    #[error("the object exceeds the maximum allowed size")]
    EntityTooLarge,
    /// A part other than the last smaller than the minimum.
    #[error("a part other than the last is smaller than the minimum allowed")]
    EntityTooSmall,
    /// A listed part that was not uploaded, or whose ETag differs.
    #[error("a listed part was not uploaded, or its ETag does not match")]
    InvalidPart,
    /// Parts not listed in ascending order.
    #[error("the list of parts was not in ascending order")]
    InvalidPartOrder,
    /// The bytes do not match the Content-MD5.
    #[error("the Content-MD5 does not match the bytes received")]
    BadDigest,
    /// Fewer or more bytes than the Content-Length.
    #[error("the body does not have the length announced")]
    IncompleteBody,
    /// Any other bad argument.
    #[error("{0}")]
    InvalidArgument(String),
    /// The chunk store failed.
    #[error("chunk store: {0}")]
    Store(#[from] StoreError),
    /// The index (redb) failed, or holds a damaged record.
    #[error("index: {0}")]
    Index(String),
    /// A chunk holds fewer bytes than the index says (damage underneath the service).
    #[error("object data damaged: {0}")]
    Damaged(String),
    /// A bad [`ObjectsConfig`], or the index directory cannot be made.
    #[error("configuration: {0}")]
    Config(String),
}

impl ObjError {
    /// The S3 error code.
    pub fn s3_code(&self) -> &'static str {
        match self {
            ObjError::NoSuchBucket => "NoSuchBucket",
            ObjError::NoSuchKey => "NoSuchKey",
            ObjError::NoSuchUpload => "NoSuchUpload",
            ObjError::BucketAlreadyOwnedByYou => "BucketAlreadyOwnedByYou",
            ObjError::BucketNotEmpty => "BucketNotEmpty",
            ObjError::InvalidBucketName => "InvalidBucketName",
            ObjError::InvalidKey(_) | ObjError::InvalidArgument(_) => "InvalidArgument",
            ObjError::KeyTooLong => "KeyTooLongError",
            ObjError::EntityTooLarge => "EntityTooLarge",
            ObjError::EntityTooSmall => "EntityTooSmall",
            ObjError::InvalidPart => "InvalidPart",
            ObjError::InvalidPartOrder => "InvalidPartOrder",
            ObjError::BadDigest => "BadDigest",
            ObjError::IncompleteBody => "IncompleteBody",
            // A full store is an InternalError too (S3 has no "no space" answer; clients retry
            // a 500 with backoff), with the store's message.
            ObjError::Store(_)
            | ObjError::Index(_)
            | ObjError::Damaged(_)
            | ObjError::Config(_) => "InternalError",
        }
    }

    /// The HTTP status: 404 for the NoSuch* codes, 409 for the bucket conflicts, 500 for
    /// failures of the service, 400 for every other client error.
    pub fn status(&self) -> u16 {
        match self {
            ObjError::NoSuchBucket | ObjError::NoSuchKey | ObjError::NoSuchUpload => 404,
            ObjError::BucketAlreadyOwnedByYou | ObjError::BucketNotEmpty => 409,
            ObjError::Store(_)
            | ObjError::Index(_)
            | ObjError::Damaged(_)
            | ObjError::Config(_) => 500,
            _ => 400,
        }
    }
}

/// Checks a bucket name against the S3 rules: 3 to 63 characters of lowercase letters, digits,
/// '-' and '.', starting and ending with a letter or digit, no two periods in a row, not
/// shaped like an IPv4 address.
pub fn check_bucket_name(b: &str) -> Result<(), ObjError> {
    let bytes = b.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = (3..=63).contains(&bytes.len())
        && bytes.iter().all(|c| alnum(c) || *c == b'-' || *c == b'.')
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && !b.contains("..")
        && b.parse::<std::net::Ipv4Addr>().is_err();
    if ok {
        Ok(())
    } else {
        Err(ObjError::InvalidBucketName)
    }
}

/// Checks a key: 1 to 1024 bytes, no NUL byte, no path segment (split on '/') that is "." or
/// "..". Other control characters are allowed, and so is a trailing '/'.
pub fn check_key(key: &str) -> Result<(), ObjError> {
    if key.is_empty() {
        return Err(ObjError::InvalidKey("the key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ObjError::KeyTooLong);
    }
    if key.contains('\0') {
        return Err(ObjError::InvalidKey("the key holds a NUL byte".into()));
    }
    if key.split('/').any(|s| s == "." || s == "..") {
        return Err(ObjError::InvalidKey(
            "the key holds a path segment \".\" or \"..\"".into(),
        ));
    }
    Ok(())
}

fn now_ns() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn time_of(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// 16 random bytes from the kernel.
fn random_id() -> Result<[u8; UPLOAD_ID_LEN], ObjError> {
    use std::io::Read;
    let mut id = [0u8; UPLOAD_ID_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .map_err(|e| ObjError::Index(format!("reading /dev/urandom: {e}")))?;
    Ok(id)
}

fn parse_upload_id(s: &str) -> Result<[u8; UPLOAD_ID_LEN], ObjError> {
    index::unhex(s)
        .and_then(|b| b.try_into().ok())
        .ok_or(ObjError::NoSuchUpload)
}

/// A continuation token: `k` or `p` (the last entry was a key or a common prefix) and the hex
/// of its bytes.
fn encode_token(e: &Entry) -> String {
    match e {
        Entry::Object(k, _) => format!("k{}", index::hex(k.as_bytes())),
        Entry::Prefix(p) => format!("p{}", index::hex(p.as_bytes())),
    }
}

fn decode_token(t: &str) -> Result<ListFrom, ObjError> {
    let bad = || ObjError::InvalidArgument("the continuation token is not valid".into());
    let (kind, rest) = t.split_at_checked(1).ok_or_else(bad)?;
    let s = index::unhex(rest)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    match kind {
        "k" => Ok(ListFrom::AfterKey(s)),
        "p" => Ok(ListFrom::AfterPrefix(s)),
        _ => Err(bad()),
    }
}

/// The object service's storage: objects and multipart uploads over a [`ChunkStore`] and a
/// durable index. `Send + Sync`; every method takes `&self`.
pub struct Objects<S: ChunkStore> {
    store: S,
    index: Index,
    cfg: ObjectsConfig,
    /// The low 64 bits of the next chunk id.
    next_chunk: AtomicU64,
}

impl<S: ChunkStore> std::fmt::Debug for Objects<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("cfg", &self.cfg)
            .field("next_chunk", &self.next_chunk)
            .finish_non_exhaustive()
    }
}

impl<S: ChunkStore> Objects<S> {
    /// Opens the index (creating it if missing) over `store`, and recovers: every chunk of
    /// [`CHUNK_NAMESPACE`] that no object or uploaded part references is deleted. The store
    /// must implement [`ChunkStore::list`]; chunks outside the namespace are counted and left
    /// alone. Costs a pass over the index and a listing of the store.
    pub fn open(store: S, cfg: ObjectsConfig) -> Result<(Objects<S>, Recovered), ObjError> {
        if cfg.chunk_bytes == 0 || u64::from(cfg.chunk_bytes) > Limits::DEFAULT_CHUNK_LEN_MAX {
            return Err(ObjError::Config(format!(
                "chunk_bytes {} is not in 1..={}",
                cfg.chunk_bytes,
                Limits::DEFAULT_CHUNK_LEN_MAX
            )));
        }
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| ObjError::Config(format!("creating {}: {e}", cfg.dir.display())))?;
        let index = Index::open(&cfg.dir.join("index.redb"))?;
        let census = index.census()?;
        let mut rec = Recovered {
            objects: census.objects,
            uploads: census.uploads,
            parts: census.parts,
            ..Recovered::default()
        };
        let ours = |id: u128| (id >> 64) as u64 == CHUNK_NAMESPACE;
        let mut max = census
            .referenced
            .iter()
            .filter(|&&id| ours(id))
            .map(|&id| id as u64)
            .max();
        let mut after = None;
        loop {
            let page = store.list(after, LIST_PAGE)?;
            for e in &page {
                if !ours(e.id.0) {
                    rec.foreign_chunks += 1;
                } else if census.referenced.contains(&e.id.0) {
                    rec.chunks_kept += 1;
                    max = max.max(Some(e.id.0 as u64));
                } else {
                    match store.delete(e.id) {
                        Ok(()) | Err(StoreError::NotFound(_)) => {}
                        Err(err) => return Err(err.into()),
                    }
                    rec.chunks_swept += 1;
                    max = max.max(Some(e.id.0 as u64));
                }
            }
            match page.last() {
                Some(last) if page.len() == LIST_PAGE => after = Some(last.id),
                _ => break,
            }
        }
        rec.chunks_missing = (census.referenced.len() as u64).saturating_sub(rec.chunks_kept);
        if rec.chunks_missing > 0 {
            tracing::error!(
                missing = rec.chunks_missing,
                "the object index references chunks the store does not hold"
            );
        }
        if rec.chunks_swept > 0 {
            tracing::info!(
                swept = rec.chunks_swept,
                "deleted chunks no object references"
            );
        }
        let next = max.map_or(0, |m| m.saturating_add(1));
        let objects = Objects {
            store,
            index,
            cfg,
            next_chunk: AtomicU64::new(next),
        };
        Ok((objects, rec))
    }

    /// The chunk store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &ObjectsConfig {
        &self.cfg
    }

    fn new_chunk_id(&self) -> ChunkId {
        let n = self.next_chunk.fetch_add(1, Ordering::Relaxed);
        ChunkId(u128::from(CHUNK_NAMESPACE) << 64 | u128::from(n))
    }

    /// Deletes chunks nothing references any more (after the commit that made them so). A
    /// failure is logged: the next open sweeps what is left.
    fn delete_chunks(&self, chunks: &[ChunkRef]) {
        for c in chunks {
            match self.store.delete(c.id) {
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(chunk = %c.id, error = %e, "deleting an unreferenced chunk")
                }
            }
        }
    }

    // ---- buckets ----

    /// Creates a bucket. `BucketAlreadyOwnedByYou` if it exists.
    pub fn create_bucket(&self, b: &str) -> Result<(), ObjError> {
        check_bucket_name(b)?;
        self.index.create_bucket(b, now_ns())
    }

    /// Whether the bucket exists: `NoSuchBucket` if not.
    pub fn head_bucket(&self, b: &str) -> Result<(), ObjError> {
        if self.index.bucket_exists(b)? {
            Ok(())
        } else {
            Err(ObjError::NoSuchBucket)
        }
    }

    /// Deletes a bucket that holds no object (`BucketNotEmpty` otherwise); its multipart
    /// uploads in progress are aborted with it.
    pub fn delete_bucket(&self, b: &str) -> Result<(), ObjError> {
        let garbage = self.index.delete_bucket(b)?;
        self.delete_chunks(&garbage);
        Ok(())
    }

    /// Every bucket, by name, with its creation time.
    pub fn list_buckets(&self) -> Result<Vec<(String, SystemTime)>, ObjError> {
        let list = self.index.list_buckets()?;
        Ok(list.into_iter().map(|(b, t)| (b, time_of(t))).collect())
    }

    // ---- writing ----

    /// Starts a PUT of `len` bytes (the Content-Length) to `key`.
    pub fn begin_put(&self, b: &str, key: &str, len: u64) -> Result<Put, ObjError> {
        check_key(key)?;
        if len > self.cfg.max_object_bytes {
            return Err(ObjError::EntityTooLarge);
        }
        self.head_bucket(b)?;
        Ok(self.new_put(
            Target::Object {
                bucket: b.to_string(),
                key: key.to_string(),
            },
            len,
        ))
    }

    /// Starts an UploadPart of `len` bytes: part `part` (1..=10000) of upload `upload_id`.
    pub fn begin_part(
        &self,
        b: &str,
        key: &str,
        upload_id: &str,
        part: u32,
        len: u64,
    ) -> Result<Put, ObjError> {
        check_key(key)?;
        if !(1..=MAX_PART_NUMBER).contains(&part) {
            return Err(ObjError::InvalidArgument(format!(
                "part number {part} is not in 1..={MAX_PART_NUMBER}"
            )));
        }
        if len > MAX_PART_BYTES.min(self.cfg.max_object_bytes) {
            return Err(ObjError::EntityTooLarge);
        }
        let upload = parse_upload_id(upload_id)?;
        self.index.get_upload(b, key, &upload)?;
        Ok(self.new_put(
            Target::Part {
                bucket: b.to_string(),
                key: key.to_string(),
                upload,
                part,
            },
            len,
        ))
    }

    fn new_put(&self, target: Target, len: u64) -> Put {
        let chunks = len.div_ceil(u64::from(self.cfg.chunk_bytes));
        Put {
            target,
            len,
            written: 0,
            md5: Md5::new(),
            chunks: Vec::with_capacity(chunks.min(1024) as usize),
            broken: false,
        }
    }

    /// Writes the next piece of the body (any slicing) into the put's chunks.
    /// `IncompleteBody` if it goes past the Content-Length. After an error the put can only be
    /// aborted (a commit fails).
    pub fn put_data(&self, p: &mut Put, data: &[u8]) -> Result<(), ObjError> {
        if p.broken {
            return Err(ObjError::IncompleteBody);
        }
        if data.len() as u64 > p.len - p.written {
            p.broken = true;
            return Err(ObjError::IncompleteBody);
        }
        p.md5.update(data);
        let cb = u64::from(self.cfg.chunk_bytes);
        let mut rest = data;
        while !rest.is_empty() {
            let within = p.written % cb;
            if within == 0 {
                let id = self.new_chunk_id();
                p.chunks.push(ChunkRef { id, len: 0 });
            }
            let n = rest.len().min((cb - within) as usize);
            let last = p.chunks.last_mut().expect("a chunk was started");
            if let Err(e) = self.store.write(last.id, within, &rest[..n]) {
                p.broken = true;
                return Err(e.into());
            }
            last.len += n as u32;
            p.written += n as u64;
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Ends a put: checks the length and the Content-MD5, then commits the index (the object
    /// replaces any of its key, a part any of its number) and deletes the chunks the commit
    /// made unreachable. On a failure before the commit the put's chunks are deleted; on an
    /// index failure they are left for the next open's sweep (the commit's outcome is unknown).
    /// For a part, the answer describes the part.
    pub fn commit(&self, p: Put, meta: PutMeta) -> Result<ObjectInfo, ObjError> {
        let result = self.commit_inner(&p, meta);
        if let Err(e) = &result {
            if !matches!(e, ObjError::Index(_)) {
                self.delete_chunks(&p.chunks);
            }
        }
        result
    }

    fn commit_inner(&self, p: &Put, meta: PutMeta) -> Result<ObjectInfo, ObjError> {
        if p.broken || p.written != p.len {
            return Err(ObjError::IncompleteBody);
        }
        let md5: [u8; 16] = p.md5.clone().finalize().into();
        if meta.content_md5.is_some_and(|m| m != md5) {
            return Err(ObjError::BadDigest);
        }
        let mtime_ns = now_ns();
        match &p.target {
            Target::Object { bucket, key } => {
                let rec = ObjectRecord {
                    size: p.len,
                    md5,
                    parts: 0,
                    mtime_ns,
                    meta: Meta {
                        content_type: meta.content_type,
                        user_meta: meta.user_meta,
                    },
                    chunks: p.chunks.clone(),
                };
                let old = self.index.put_object(bucket, key, &rec)?;
                self.delete_chunks(&old);
                Ok(ObjectInfo::new(key.clone(), rec))
            }
            Target::Part {
                bucket,
                key,
                upload,
                part,
            } => {
                let rec = PartRecord {
                    size: p.len,
                    md5,
                    mtime_ns,
                    chunks: p.chunks.clone(),
                };
                let old = self.index.put_part(bucket, key, upload, *part, &rec)?;
                self.delete_chunks(&old);
                let obj = ObjectRecord {
                    size: rec.size,
                    md5,
                    parts: 0,
                    mtime_ns,
                    meta: Meta::default(),
                    chunks: rec.chunks,
                };
                Ok(ObjectInfo::new(key.clone(), obj))
            }
        }
    }

    /// Abandons a put: deletes the chunks written so far.
    pub fn abort(&self, p: Put) {
        self.delete_chunks(&p.chunks);
    }

    // ---- reading ----

    /// The object's description. `NoSuchKey` if it does not exist.
    pub fn head(&self, b: &str, key: &str) -> Result<ObjectInfo, ObjError> {
        check_key(key)?;
        match self.index.get_object(b, key)? {
            Some(rec) => Ok(ObjectInfo::new(key.to_string(), rec)),
            None => Err(ObjError::NoSuchKey),
        }
    }

    /// Reads the object's bytes from `offset` into `buf`, across chunks: fewer than
    /// `buf.len()` only at the end of the object (0 at or past it).
    pub fn read(&self, o: &ObjectInfo, offset: u64, buf: &mut [u8]) -> Result<usize, ObjError> {
        let mut done = 0;
        let mut at = offset;
        let mut i = o.ends.partition_point(|&end| end <= offset);
        while done < buf.len() && i < o.chunks.len() {
            let c = o.chunks[i];
            let start = o.ends[i] - u64::from(c.len);
            let want = (buf.len() - done).min((o.ends[i] - at) as usize);
            let got = self
                .store
                .read(c.id, at - start, &mut buf[done..done + want])?;
            if got.len != want {
                return Err(ObjError::Damaged(format!(
                    "chunk {} of {:?} holds {} bytes, the index says {}",
                    c.id, o.key, got.chunk_size, c.len
                )));
            }
            done += want;
            at += want as u64;
            i += 1;
        }
        Ok(done)
    }

    /// Deletes an object; a missing key is not an error (S3 answers 204 either way).
    pub fn delete(&self, b: &str, key: &str) -> Result<(), ObjError> {
        check_key(key)?;
        let old = self.index.delete_object(b, key)?;
        self.delete_chunks(&old);
        Ok(())
    }

    /// CopyObject: the source's bytes into new chunks of the destination (nothing shared),
    /// with the source's content type and user metadata; the ETag is the MD5 of the bytes.
    pub fn copy(
        &self,
        src_b: &str,
        src_key: &str,
        dst_b: &str,
        dst_key: &str,
    ) -> Result<ObjectInfo, ObjError> {
        let src = self.head(src_b, src_key)?;
        let mut put = self.begin_put(dst_b, dst_key, src.size)?;
        let mut buf = vec![0u8; COPY_STEP.min(src.size as usize)];
        while put.written < src.size {
            let step = self
                .read(&src, put.written, &mut buf)
                .and_then(|n| match n {
                    0 => Err(ObjError::Damaged(format!("{src_key:?} ended early"))),
                    n => self.put_data(&mut put, &buf[..n]),
                });
            if let Err(e) = step {
                self.abort(put);
                return Err(e);
            }
        }
        let meta = PutMeta {
            content_type: src.content_type,
            user_meta: src.user_meta,
            content_md5: None,
        };
        self.commit(put, meta)
    }

    /// ListObjectsV2.
    pub fn list(&self, b: &str, q: &ListQuery) -> Result<ListPage, ObjError> {
        let from = match (&q.continuation, &q.start_after) {
            (Some(t), _) => decode_token(t)?,
            (None, Some(s)) => ListFrom::AfterKey(s.clone()),
            (None, None) => ListFrom::Start,
        };
        let max = q.max_keys.min(1000) as usize;
        if max == 0 {
            self.head_bucket(b)?;
            return Ok(ListPage::default());
        }
        let delimiter = q.delimiter.as_deref().filter(|d| !d.is_empty());
        let (entries, more) = self
            .index
            .list_objects(b, &q.prefix, delimiter, &from, max)?;
        let mut page = ListPage {
            truncated: more,
            next_continuation: entries.last().filter(|_| more).map(encode_token),
            ..ListPage::default()
        };
        for e in entries {
            match e {
                Entry::Object(key, rec) => page.objects.push(ObjectInfo::new(key, rec)),
                Entry::Prefix(p) => page.common_prefixes.push(p),
            }
        }
        Ok(page)
    }

    // ---- multipart uploads ----

    /// CreateMultipartUpload: returns the upload id (32 hex digits, random). The metadata is
    /// what the completed object will carry.
    pub fn create_upload(&self, b: &str, key: &str, meta: PutMeta) -> Result<String, ObjError> {
        check_key(key)?;
        let id = random_id()?;
        let rec = UploadRecord {
            initiated_ns: now_ns(),
            meta: Meta {
                content_type: meta.content_type,
                user_meta: meta.user_meta,
            },
        };
        self.index.create_upload(b, key, &id, &rec)?;
        Ok(index::hex(&id))
    }

    /// ListParts: up to `max` (at most 1000) parts numbered above `marker`.
    pub fn list_parts(
        &self,
        b: &str,
        key: &str,
        upload_id: &str,
        marker: u32,
        max: u32,
    ) -> Result<PartsPage, ObjError> {
        let id = parse_upload_id(upload_id)?;
        let max = max.min(1000) as usize;
        let (parts, truncated) = self.index.list_parts(b, key, &id, marker, max)?;
        let parts: Vec<PartInfo> = parts
            .into_iter()
            .map(|(number, r)| PartInfo {
                number,
                size: r.size,
                etag: index::etag(&r.md5, 0),
                mtime: time_of(r.mtime_ns),
            })
            .collect();
        Ok(PartsPage {
            next_marker: parts.last().filter(|_| truncated).map(|p| p.number),
            parts,
            truncated,
        })
    }

    /// CompleteMultipartUpload with the client's list of (part number, ETag): ascending
    /// (`InvalidPartOrder`), each uploaded with that ETag (`InvalidPart`), each but the last at
    /// least `min_part_bytes` (`EntityTooSmall`). The object takes the parts' chunks; parts
    /// left out are deleted.
    pub fn complete_upload(
        &self,
        b: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<ObjectInfo, ObjError> {
        check_key(key)?;
        let id = parse_upload_id(upload_id)?;
        if parts.is_empty() {
            return Err(ObjError::InvalidArgument(
                "the list of parts is empty".into(),
            ));
        }
        let done = self
            .index
            .complete_upload(b, key, &id, parts, &self.cfg, now_ns())?;
        self.delete_chunks(&done.garbage);
        Ok(ObjectInfo::new(key.to_string(), done.record))
    }

    /// AbortMultipartUpload: removes the upload and deletes its parts.
    pub fn abort_upload(&self, b: &str, key: &str, upload_id: &str) -> Result<(), ObjError> {
        let id = parse_upload_id(upload_id)?;
        let garbage = self.index.abort_upload(b, key, &id)?;
        self.delete_chunks(&garbage);
        Ok(())
    }

    /// ListMultipartUploads: up to `max` (at most 1000) uploads in progress whose key starts
    /// with `prefix`, by key then upload id: (key, upload id, initiated).
    pub fn list_uploads(
        &self,
        b: &str,
        prefix: &str,
        max: u32,
    ) -> Result<Vec<(String, String, SystemTime)>, ObjError> {
        let max = max.min(1000) as usize;
        let list = self.index.list_uploads(b, prefix, max)?;
        Ok(list
            .into_iter()
            .map(|(k, id, t)| (k, index::hex(&id), time_of(t)))
            .collect())
    }
}

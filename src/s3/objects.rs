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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};

pub use super::config::ObjectsConfig;
pub use super::error::ObjError;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::chunk::{DirStore, DirStoreConfig, MemStore, SyncPolicy};
    use std::path::PathBuf;

    const KIB: usize = 1024;
    const CHUNK: usize = 64 * KIB;

    /// A directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "ustack-s3-objects-{}-{n}-{tag}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn config(dir: &Path, chunk: usize) -> ObjectsConfig {
        ObjectsConfig {
            chunk_bytes: chunk as u32,
            min_part_bytes: 1000,
            ..ObjectsConfig::new(dir.join("index"))
        }
    }

    fn mem_objects(dir: &TempDir) -> Objects<Arc<MemStore>> {
        let store = Arc::new(MemStore::new(1 << 30));
        Objects::open(store, config(&dir.0, CHUNK)).unwrap().0
    }

    fn dir_store(dir: &Path) -> DirStore {
        let cfg = DirStoreConfig {
            sync: SyncPolicy::Never,
            ..DirStoreConfig::default()
        };
        DirStore::open(dir.join("chunks"), cfg).unwrap()
    }

    fn count_chunks(store: &impl ChunkStore) -> usize {
        let (mut n, mut after) = (0, None);
        loop {
            let page = store.list(after, 100).unwrap();
            n += page.len();
            match page.last() {
                Some(e) if page.len() == 100 => after = Some(e.id),
                _ => return n,
            }
        }
    }

    /// Bytes that differ at every position for every seed.
    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| ((i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect()
    }

    fn put_in<S: ChunkStore>(
        o: &Objects<S>,
        b: &str,
        key: &str,
        data: &[u8],
        piece: usize,
    ) -> Result<ObjectInfo, ObjError> {
        let mut p = o.begin_put(b, key, data.len() as u64)?;
        for part in data.chunks(piece) {
            o.put_data(&mut p, part)?;
        }
        o.commit(p, PutMeta::default())
    }

    fn put<S: ChunkStore>(o: &Objects<S>, b: &str, key: &str, data: &[u8]) -> ObjectInfo {
        put_in(o, b, key, data, 100 * KIB).unwrap()
    }

    /// The object's bytes, read in odd-sized pieces.
    fn get<S: ChunkStore>(o: &Objects<S>, b: &str, key: &str) -> Vec<u8> {
        let info = o.head(b, key).unwrap();
        let mut out = vec![0u8; info.size as usize];
        let mut at = 0;
        while at < out.len() {
            let end = (at + 7001).min(out.len());
            let n = o.read(&info, at as u64, &mut out[at..end]).unwrap();
            assert_eq!(n, end - at, "short read inside the object");
            at = end;
        }
        assert_eq!(o.read(&info, info.size, &mut [0u8; 10]).unwrap(), 0);
        out
    }

    fn md5_hex(data: &[u8]) -> String {
        index::hex(&<[u8; 16]>::from(Md5::digest(data)))
    }

    fn round_trips<S: ChunkStore>(o: &Objects<S>) {
        o.create_bucket("bkt").unwrap();
        let sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, CHUNK * 7 / 2];
        let mut chunks = 0;
        for (i, &size) in sizes.iter().enumerate() {
            let data = pattern(i as u64, size);
            let key = format!("obj{i}");
            let info = put_in(o, "bkt", &key, &data, [1000, 100 * KIB, CHUNK + 3][i % 3]).unwrap();
            assert_eq!(info.size, size as u64);
            assert_eq!(info.chunks().len(), size.div_ceil(CHUNK));
            assert!(info.chunks().iter().all(|c| c.len as usize <= CHUNK));
            assert_eq!(info.etag, format!("\"{}\"", md5_hex(&data)));
            chunks += size.div_ceil(CHUNK);
            assert_eq!(get(o, "bkt", &key), data);
            // One read across every chunk boundary.
            let head = o.head("bkt", &key).unwrap();
            assert_eq!(head, info);
            if size > 2 {
                let mut buf = vec![0u8; size - 2];
                assert_eq!(o.read(&head, 1, &mut buf).unwrap(), size - 2);
                assert_eq!(buf, data[1..size - 1]);
                let mut tail = vec![0u8; 10];
                assert_eq!(o.read(&head, size as u64 - 1, &mut tail).unwrap(), 1);
                assert_eq!(tail[0], data[size - 1]);
            }
        }
        assert_eq!(count_chunks(o.store()), chunks);
    }

    #[test]
    fn round_trips_across_chunk_boundaries_mem() {
        let dir = TempDir::new("rt-mem");
        round_trips(&mem_objects(&dir));
    }

    #[test]
    fn round_trips_across_chunk_boundaries_dir() {
        let dir = TempDir::new("rt-dir");
        let (o, _) = Objects::open(dir_store(&dir.0), config(&dir.0, CHUNK)).unwrap();
        round_trips(&o);
    }

    #[test]
    fn objects_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Objects<DirStore>>();
        check::<Objects<Arc<MemStore>>>();
        check::<Put>();
    }

    #[test]
    fn overwrite_and_delete_free_the_old_chunks() {
        let dir = TempDir::new("overwrite");
        let o = mem_objects(&dir);
        o.create_bucket("bkt").unwrap();
        let first = pattern(1, CHUNK * 7 / 2);
        put(&o, "bkt", "k", &first);
        assert_eq!(count_chunks(o.store()), 4);
        let second = pattern(2, CHUNK + 100);
        put(&o, "bkt", "k", &second);
        assert_eq!(count_chunks(o.store()), 2);
        assert_eq!(get(&o, "bkt", "k"), second);
        o.delete("bkt", "k").unwrap();
        assert_eq!(count_chunks(o.store()), 0);
        assert!(matches!(o.head("bkt", "k"), Err(ObjError::NoSuchKey)));
        o.delete("bkt", "k").unwrap();
        o.delete("bkt", "never").unwrap();
        assert!(matches!(
            o.delete("nobkt", "k"),
            Err(ObjError::NoSuchBucket)
        ));
    }

    #[test]
    fn wrong_lengths_and_digests_leave_nothing() {
        let dir = TempDir::new("lengths");
        let o = mem_objects(&dir);
        o.create_bucket("bkt").unwrap();
        // Fewer bytes than announced.
        let mut p = o.begin_put("bkt", "k", 3 * CHUNK as u64).unwrap();
        o.put_data(&mut p, &pattern(0, CHUNK + 5)).unwrap();
        let e = o.commit(p, PutMeta::default()).unwrap_err();
        assert!(matches!(e, ObjError::IncompleteBody), "{e}");
        assert_eq!(count_chunks(o.store()), 0);
        // More bytes than announced.
        let mut p = o.begin_put("bkt", "k", 10).unwrap();
        o.put_data(&mut p, b"0123456789").unwrap();
        assert!(matches!(
            o.put_data(&mut p, b"x"),
            Err(ObjError::IncompleteBody)
        ));
        assert!(matches!(
            o.commit(p, PutMeta::default()),
            Err(ObjError::IncompleteBody)
        ));
        assert_eq!(count_chunks(o.store()), 0);
        // Content-MD5.
        let fox = b"The quick brown fox jumps over the lazy dog";
        let good: [u8; 16] = index::unhex("9e107d9d372bb6826bd81d3542a419d6")
            .unwrap()
            .try_into()
            .unwrap();
        let mut bad = good;
        bad[0] ^= 1;
        for (md5, ok) in [(bad, false), (good, true)] {
            let mut p = o.begin_put("bkt", "fox", fox.len() as u64).unwrap();
            o.put_data(&mut p, fox).unwrap();
            let meta = PutMeta {
                content_md5: Some(md5),
                ..PutMeta::default()
            };
            match o.commit(p, meta) {
                Ok(info) => {
                    assert!(ok);
                    assert_eq!(info.etag, "\"9e107d9d372bb6826bd81d3542a419d6\"");
                }
                Err(e) => {
                    assert!(!ok);
                    assert!(matches!(e, ObjError::BadDigest));
                    assert_eq!((e.s3_code(), e.status()), ("BadDigest", 400));
                    assert!(matches!(o.head("bkt", "fox"), Err(ObjError::NoSuchKey)));
                    assert_eq!(count_chunks(o.store()), 0);
                }
            }
        }
        // Aborted: its chunks go.
        let mut p = o.begin_put("bkt", "k", 2 * CHUNK as u64).unwrap();
        o.put_data(&mut p, &pattern(3, CHUNK + 1)).unwrap();
        o.abort(p);
        assert_eq!(count_chunks(o.store()), 1, "only the fox");
        // Too large.
        let e = o.begin_put("bkt", "huge", (5 << 40) + 1).unwrap_err();
        assert_eq!((e.s3_code(), e.status()), ("EntityTooLarge", 400));
    }

    #[test]
    fn known_etags() {
        let dir = TempDir::new("etags");
        let o = mem_objects(&dir);
        o.create_bucket("bkt").unwrap();
        let empty = put(&o, "bkt", "empty", b"");
        assert_eq!(empty.etag, "\"d41d8cd98f00b204e9800998ecf8427e\"");
        assert!(empty.chunks().is_empty());
        assert_eq!(get(&o, "bkt", "empty"), b"");
        let abc = put(&o, "bkt", "abc", b"abc");
        assert_eq!(abc.etag, "\"900150983cd24fb0d6963f7d28e17f72\"");
        // Multipart: MD5 of the parts' binary MD5s, then -N.
        let o2 = Objects::open(
            Arc::new(MemStore::new(1 << 20)),
            ObjectsConfig {
                min_part_bytes: 1,
                ..config(&dir.0.join("o2"), CHUNK)
            },
        )
        .unwrap()
        .0;
        o2.create_bucket("bkt").unwrap();
        let id = o2.create_upload("bkt", "mp", PutMeta::default()).unwrap();
        let e1 = upload_part(&o2, "bkt", "mp", &id, 1, b"abc");
        let e2 = upload_part(
            &o2,
            "bkt",
            "mp",
            &id,
            2,
            b"The quick brown fox jumps over the lazy dog",
        );
        let info = o2
            .complete_upload("bkt", "mp", &id, &[(1, e1), (2, e2)])
            .unwrap();
        assert_eq!(info.etag, "\"e9f237c088de2b6f45bd708954dc16d5-2\"");
        assert_eq!(
            get(&o2, "bkt", "mp"),
            b"abcThe quick brown fox jumps over the lazy dog"
        );
    }

    #[test]
    fn key_rules() {
        let dir = TempDir::new("keys");
        let o = mem_objects(&dir);
        o.create_bucket("bkt").unwrap();
        let long = "k".repeat(1024);
        let good = [
            "a",
            "a/",
            "a//b",
            "dir/sub/",
            "ctl\x1fchar",
            "...",
            ".a",
            "a.",
            "a./.b",
            "/lead",
            "\u{e9}t\u{e9}",
            long.as_str(),
        ];
        for key in good {
            put(&o, "bkt", key, key.as_bytes());
            assert_eq!(get(&o, "bkt", key), key.as_bytes(), "{key:?}");
        }
        let too_long = "k".repeat(1025);
        let e = o.begin_put("bkt", &too_long, 1).unwrap_err();
        assert!(matches!(e, ObjError::KeyTooLong));
        assert_eq!((e.s3_code(), e.status()), ("KeyTooLongError", 400));
        let bad = [
            "", "a\0b", ".", "..", "a/..", "../a", "a/../b", "a/.", "./a", "a/./b",
        ];
        for key in bad {
            let e = o.begin_put("bkt", key, 1).unwrap_err();
            assert!(matches!(e, ObjError::InvalidKey(_)), "{key:?}: {e}");
            assert_eq!((e.s3_code(), e.status()), ("InvalidArgument", 400));
            assert!(o.head("bkt", key).is_err());
            assert!(o.create_upload("bkt", key, PutMeta::default()).is_err());
        }
    }

    #[test]
    fn bucket_rules() {
        let dir = TempDir::new("buckets");
        let o = mem_objects(&dir);
        let long = "b".repeat(63);
        for b in ["abc", "a-b.c", "1bucket", "my.bucket.1", long.as_str()] {
            o.create_bucket(b).unwrap();
            o.head_bucket(b).unwrap();
        }
        let too_long = "b".repeat(64);
        let bad = [
            "",
            "ab",
            "Abc",
            "ab_c",
            "ab c",
            "-abc",
            "abc-",
            ".abc",
            "abc.",
            "a..b",
            "192.168.1.1",
            "ab\u{e9}",
            too_long.as_str(),
        ];
        for b in bad {
            let e = o.create_bucket(b).unwrap_err();
            assert!(matches!(e, ObjError::InvalidBucketName), "{b:?}");
            assert_eq!((e.s3_code(), e.status()), ("InvalidBucketName", 400));
        }
        let e = o.create_bucket("abc").unwrap_err();
        assert_eq!((e.s3_code(), e.status()), ("BucketAlreadyOwnedByYou", 409));
        let e = o.head_bucket("nobucket").unwrap_err();
        assert_eq!((e.s3_code(), e.status()), ("NoSuchBucket", 404));
        assert!(matches!(
            o.begin_put("nobucket", "k", 0),
            Err(ObjError::NoSuchBucket)
        ));
        assert!(matches!(
            o.list("nobucket", &ListQuery::default()),
            Err(ObjError::NoSuchBucket)
        ));
        put(&o, "abc", "k", b"x");
        let e = o.delete_bucket("abc").unwrap_err();
        assert_eq!((e.s3_code(), e.status()), ("BucketNotEmpty", 409));
        // A bucket whose name extends another's is not its content.
        o.delete_bucket("1bucket").unwrap();
        o.delete("abc", "k").unwrap();
        // Uploads in progress are aborted with their bucket.
        let id = o.create_upload("abc", "u", PutMeta::default()).unwrap();
        upload_part(&o, "abc", "u", &id, 1, &pattern(1, 2 * CHUNK));
        o.delete_bucket("abc").unwrap();
        assert_eq!(count_chunks(o.store()), 0);
        assert!(matches!(
            o.delete_bucket("abc"),
            Err(ObjError::NoSuchBucket)
        ));
        let names: Vec<String> = o.list_buckets().unwrap().into_iter().map(|b| b.0).collect();
        assert_eq!(
            names,
            ["a-b.c", long.as_str(), "my.bucket.1"].map(String::from)
        );
    }

    fn upload_part<S: ChunkStore>(
        o: &Objects<S>,
        b: &str,
        key: &str,
        id: &str,
        n: u32,
        data: &[u8],
    ) -> String {
        let mut p = o.begin_part(b, key, id, n, data.len() as u64).unwrap();
        for piece in data.chunks(30 * KIB) {
            o.put_data(&mut p, piece).unwrap();
        }
        let info = o.commit(p, PutMeta::default()).unwrap();
        assert_eq!(info.etag, format!("\"{}\"", md5_hex(data)));
        info.etag
    }

    #[test]
    fn multipart_complete_checks_the_list() {
        let dir = TempDir::new("multipart");
        let o = mem_objects(&dir);
        o.create_bucket("bkt").unwrap();
        let meta = PutMeta {
            content_type: Some("application/x-test".into()),
            user_meta: vec![("owner".into(), "me".into())],
            content_md5: None,
        };
        let id = o.create_upload("bkt", "mp", meta).unwrap();
        assert_eq!(id.len(), 32);
        let p1 = pattern(1, CHUNK + 10);
        let p2 = pattern(2, 999); // under min_part_bytes (1000)
        let p3 = pattern(3, 5000);
        let e1 = upload_part(&o, "bkt", "mp", &id, 1, &p1);
        let e2 = upload_part(&o, "bkt", "mp", &id, 2, &p2);
        let e3 = upload_part(&o, "bkt", "mp", &id, 3, &p3);
        assert_eq!(count_chunks(o.store()), 4);
        let fail = |list: &[(u32, String)]| o.complete_upload("bkt", "mp", &id, list).unwrap_err();
        let e = fail(&[(2, e2.clone()), (1, e1.clone())]);
        assert_eq!((e.s3_code(), e.status()), ("InvalidPartOrder", 400));
        let e = fail(&[(1, e1.clone()), (1, e1.clone())]);
        assert!(matches!(e, ObjError::InvalidPartOrder));
        let e = fail(&[(1, e1.clone()), (4, e3.clone())]);
        assert_eq!((e.s3_code(), e.status()), ("InvalidPart", 400));
        let e = fail(&[(1, e1.clone()), (3, e1.clone())]);
        assert!(matches!(e, ObjError::InvalidPart));
        let e = fail(&[(1, e1.clone()), (2, e2.clone()), (3, e3.clone())]);
        assert_eq!((e.s3_code(), e.status()), ("EntityTooSmall", 400));
        assert!(matches!(fail(&[]), ObjError::InvalidArgument(_)));
        // Nothing changed by the failures.
        assert_eq!(
            o.list_parts("bkt", "mp", &id, 0, 100).unwrap().parts.len(),
            3
        );
        // Re-uploading part 2: the old one's chunk goes once the new one is recorded.
        let p2 = pattern(22, 3000);
        let e2 = upload_part(&o, "bkt", "mp", &id, 2, &p2);
        assert_eq!(count_chunks(o.store()), 4);
        // Parts 1 and 3 only (unquoted ETag for 3): part 2's chunk is deleted.
        let bare3 = e3.trim_matches('"').to_uppercase();
        let info = o
            .complete_upload("bkt", "mp", &id, &[(1, e1.clone()), (3, bare3)])
            .unwrap();
        let _ = e2;
        let whole = [p1.as_slice(), p3.as_slice()].concat();
        assert_eq!(info.size, whole.len() as u64);
        assert!(info.etag.ends_with("-2\""), "{}", info.etag);
        assert_eq!(info.content_type.as_deref(), Some("application/x-test"));
        assert_eq!(info.user_meta, [("owner".to_string(), "me".to_string())]);
        assert_eq!(get(&o, "bkt", "mp"), whole);
        assert_eq!(count_chunks(o.store()), 3, "the object's chunks only");
        assert_eq!(o.head("bkt", "mp").unwrap(), info);
        // The upload is gone.
        assert!(matches!(
            o.list_parts("bkt", "mp", &id, 0, 10),
            Err(ObjError::NoSuchUpload)
        ));
        assert!(matches!(
            o.complete_upload("bkt", "mp", &id, &[(1, e1)]),
            Err(ObjError::NoSuchUpload)
        ));
        // A plain PUT over it frees its chunks.
        put(&o, "bkt", "mp", b"small");
        assert_eq!(count_chunks(o.store()), 1);
    }

    #[test]
    fn multipart_abort_and_listings() {
        let dir = TempDir::new("abort");
        let o = mem_objects(&dir);
        o.create_bucket("bkt").unwrap();
        let a = o.create_upload("bkt", "dir/a", PutMeta::default()).unwrap();
        let b1 = o.create_upload("bkt", "dir/b", PutMeta::default()).unwrap();
        let b2 = o.create_upload("bkt", "dir/b", PutMeta::default()).unwrap();
        let c = o.create_upload("bkt", "other", PutMeta::default()).unwrap();
        assert_ne!(b1, b2);
        for n in [5, 1, 3, 2, 4] {
            upload_part(
                &o,
                "bkt",
                "dir/a",
                &a,
                n,
                &pattern(u64::from(n), 1000 * n as usize),
            );
        }
        let page = o.list_parts("bkt", "dir/a", &a, 0, 2).unwrap();
        let nums: Vec<u32> = page.parts.iter().map(|p| p.number).collect();
        assert_eq!(
            (nums, page.truncated, page.next_marker),
            (vec![1, 2], true, Some(2))
        );
        assert_eq!(page.parts[1].size, 2000);
        assert_eq!(
            page.parts[1].etag,
            format!("\"{}\"", md5_hex(&pattern(2, 2000)))
        );
        let page = o.list_parts("bkt", "dir/a", &a, 2, 3).unwrap();
        let nums: Vec<u32> = page.parts.iter().map(|p| p.number).collect();
        assert_eq!(
            (nums, page.truncated, page.next_marker),
            (vec![3, 4, 5], false, None)
        );
        // Uploads, by key then id.
        let all = o.list_uploads("bkt", "", 100).unwrap();
        let keys: Vec<&str> = all.iter().map(|u| u.0.as_str()).collect();
        assert_eq!(keys, ["dir/a", "dir/b", "dir/b", "other"]);
        let (lo, hi) = if b1 < b2 { (&b1, &b2) } else { (&b2, &b1) };
        assert_eq!(
            (&all[1].1, &all[2].1, &all[0].1, &all[3].1),
            (lo, hi, &a, &c)
        );
        assert_eq!(o.list_uploads("bkt", "dir/", 100).unwrap().len(), 3);
        assert_eq!(o.list_uploads("bkt", "dir/", 1).unwrap().len(), 1);
        assert!(o.list_uploads("bkt", "x", 100).unwrap().is_empty());
        // Abort.
        assert!(count_chunks(o.store()) > 0);
        o.abort_upload("bkt", "dir/a", &a).unwrap();
        assert_eq!(count_chunks(o.store()), 0);
        let e = o.abort_upload("bkt", "dir/a", &a).unwrap_err();
        assert_eq!((e.s3_code(), e.status()), ("NoSuchUpload", 404));
        assert!(matches!(
            o.begin_part("bkt", "dir/a", &a, 1, 1),
            Err(ObjError::NoSuchUpload)
        ));
        // The upload id is bound to its key; junk ids are unknown uploads.
        assert!(matches!(
            o.begin_part("bkt", "other", &b1, 1, 1),
            Err(ObjError::NoSuchUpload)
        ));
        for junk in ["", "xyz", "00", &"g".repeat(32)] {
            assert!(matches!(
                o.abort_upload("bkt", "dir/b", junk),
                Err(ObjError::NoSuchUpload)
            ));
        }
        for n in [0, 10_001] {
            let e = o.begin_part("bkt", "dir/b", &b1, n, 1).unwrap_err();
            assert!(matches!(e, ObjError::InvalidArgument(_)));
        }
        let e = o
            .begin_part("bkt", "dir/b", &b1, 1, MAX_PART_BYTES + 1)
            .unwrap_err();
        assert!(matches!(e, ObjError::EntityTooLarge));
        // A part committed after its upload was aborted is refused and leaves nothing.
        let mut p = o.begin_part("bkt", "dir/b", &b1, 1, 10).unwrap();
        o.put_data(&mut p, &[1; 10]).unwrap();
        o.abort_upload("bkt", "dir/b", &b1).unwrap();
        assert!(matches!(
            o.commit(p, PutMeta::default()),
            Err(ObjError::NoSuchUpload)
        ));
        assert_eq!(count_chunks(o.store()), 0);
    }

    #[test]
    fn copy_makes_new_chunks() {
        let dir = TempDir::new("copy");
        let o = mem_objects(&dir);
        o.create_bucket("bkt").unwrap();
        o.create_bucket("dst").unwrap();
        let data = pattern(9, 3 * CHUNK + 17);
        let mut p = o.begin_put("bkt", "src", data.len() as u64).unwrap();
        o.put_data(&mut p, &data).unwrap();
        let meta = PutMeta {
            content_type: Some("image/png".into()),
            user_meta: vec![("k".into(), "v".into())],
            content_md5: None,
        };
        let src = o.commit(p, meta).unwrap();
        let copy = o.copy("bkt", "src", "dst", "copy").unwrap();
        assert_eq!(copy.etag, src.etag);
        assert_eq!(copy.content_type, src.content_type);
        assert_eq!(copy.user_meta, src.user_meta);
        assert!(copy.chunks().iter().all(|c| !src.chunks().contains(c)));
        o.delete("bkt", "src").unwrap();
        assert_eq!(get(&o, "dst", "copy"), data);
        // Onto itself, and of an empty object.
        o.copy("dst", "copy", "dst", "copy").unwrap();
        assert_eq!(get(&o, "dst", "copy"), data);
        assert_eq!(count_chunks(o.store()), 4);
        put(&o, "bkt", "empty", b"");
        assert_eq!(o.copy("bkt", "empty", "dst", "e").unwrap().size, 0);
        assert!(matches!(
            o.copy("bkt", "src", "dst", "x"),
            Err(ObjError::NoSuchKey)
        ));
        assert!(matches!(
            o.copy("dst", "copy", "nob", "x"),
            Err(ObjError::NoSuchBucket)
        ));
        // Of a multipart object: the ETag is the bytes' MD5.
        let id = o.create_upload("bkt", "mp", PutMeta::default()).unwrap();
        let e1 = upload_part(&o, "bkt", "mp", &id, 1, &data[..5000]);
        let e2 = upload_part(&o, "bkt", "mp", &id, 2, &data[5000..]);
        o.complete_upload("bkt", "mp", &id, &[(1, e1), (2, e2)])
            .unwrap();
        let c = o.copy("bkt", "mp", "dst", "mp").unwrap();
        assert_eq!(c.etag, src.etag);
    }

    // ---- listing against a model ----

    /// A listing entry of the model: a key or a common prefix.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Seen {
        Key(String),
        Prefix(String),
    }

    fn model(
        keys: &BTreeMap<String, ()>,
        prefix: &str,
        delim: Option<&str>,
        after: Option<&str>,
    ) -> Vec<Seen> {
        let mut out: Vec<Seen> = Vec::new();
        for k in keys.keys() {
            if after.is_some_and(|a| k.as_str() <= a) || !k.starts_with(prefix) {
                continue;
            }
            let rest = &k[prefix.len()..];
            match delim.and_then(|d| rest.find(d).map(|i| &k[..prefix.len() + i + d.len()])) {
                Some(cp) => {
                    if out.last() != Some(&Seen::Prefix(cp.to_string())) {
                        out.push(Seen::Prefix(cp.to_string()));
                    }
                }
                None => out.push(Seen::Key(k.clone())),
            }
        }
        out
    }

    /// Pages through a listing; checks each page's shape; returns the entries in order.
    fn list_all<S: ChunkStore>(o: &Objects<S>, b: &str, q: &ListQuery) -> Vec<Seen> {
        let mut q = q.clone();
        let mut out = Vec::new();
        for _ in 0..1000 {
            let page = o.list(b, &q).unwrap();
            let mut got: Vec<Seen> = page
                .objects
                .iter()
                .map(|i| Seen::Key(i.key.clone()))
                .collect();
            got.extend(page.common_prefixes.iter().cloned().map(Seen::Prefix));
            got.sort_by(|a, b| {
                let s = |e: &Seen| match e {
                    Seen::Key(s) | Seen::Prefix(s) => s.clone(),
                };
                s(a).cmp(&s(b))
            });
            assert!(got.len() <= q.max_keys as usize);
            out.extend(got.iter().cloned());
            if !page.truncated {
                assert!(page.next_continuation.is_none());
                return out;
            }
            assert_eq!(got.len(), q.max_keys as usize, "a truncated page is full");
            q.continuation = page.next_continuation;
            assert!(q.continuation.is_some());
        }
        panic!("the listing does not end");
    }

    #[test]
    fn listing_matches_a_model() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        let dir = TempDir::new("list");
        let o = mem_objects(&dir);
        let alphabet = prop::sample::select(vec!['a', 'b', '/', '-', '\u{e9}', '\u{10348}']);
        let word = |max| {
            prop::collection::vec(alphabet.clone(), 0..max)
                .prop_map(|v| v.into_iter().collect::<String>())
        };
        let keys = prop::collection::btree_map(
            word(6).prop_filter("valid", |k| check_key(k).is_ok()),
            Just(()),
            0..24,
        );
        let query = (
            word(3),
            prop::option::of(prop::sample::select(vec!["/", "b", "\u{e9}", "a/", "-"])),
            prop::option::of(word(4)),
            prop_oneof![1u32..5, Just(1000u32)],
        );
        let queries = prop::collection::vec(query, 1..8);
        let mut runner = TestRunner::new(Config {
            cases: 40,
            failure_persistence: None,
            ..Config::default()
        });
        let bucket_n = AtomicU64::new(0);
        runner
            .run(&(keys, queries), |(keys, queries)| {
                let b = format!("list{}", bucket_n.fetch_add(1, Ordering::Relaxed));
                o.create_bucket(&b).unwrap();
                for k in keys.keys() {
                    put(&o, &b, k, b"");
                }
                for (prefix, delim, after, max_keys) in queries {
                    let q = ListQuery {
                        prefix: prefix.clone(),
                        delimiter: delim.map(String::from),
                        start_after: after.clone(),
                        continuation: None,
                        max_keys,
                    };
                    let want = model(&keys, &prefix, delim, after.as_deref());
                    prop_assert_eq!(list_all(&o, &b, &q), want, "{:?}", q);
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn listing_details() {
        let dir = TempDir::new("list-details");
        let o = mem_objects(&dir);
        o.create_bucket("bkt").unwrap();
        for k in ["a", "b/1", "b/2", "b/3/x", "c"] {
            put(&o, "bkt", k, k.as_bytes());
        }
        let q = |max_keys| ListQuery {
            delimiter: Some("/".into()),
            max_keys,
            ..ListQuery::default()
        };
        let page = o.list("bkt", &q(2)).unwrap();
        assert_eq!(page.objects.len(), 1);
        assert_eq!(page.objects[0].key, "a");
        assert_eq!(page.objects[0].size, 1);
        assert_eq!(page.objects[0].etag, format!("\"{}\"", md5_hex(b"a")));
        assert_eq!(page.common_prefixes, ["b/"]);
        assert!(page.truncated);
        let page = o
            .list(
                "bkt",
                &ListQuery {
                    continuation: page.next_continuation,
                    ..q(2)
                },
            )
            .unwrap();
        assert_eq!((page.objects[0].key.as_str(), page.truncated), ("c", false));
        // A start past the prefix's keys.
        let past_prefix = ListQuery {
            prefix: "b/".into(),
            start_after: Some("b/z".into()),
            ..q(5)
        };
        assert_eq!(o.list("bkt", &past_prefix).unwrap(), ListPage::default());
        // max-keys 0: an empty page.
        assert_eq!(o.list("bkt", &q(0)).unwrap(), ListPage::default());
        // Tokens are checked.
        for t in ["", "x00", "kzz", "k\u{e9}"] {
            let e = o
                .list(
                    "bkt",
                    &ListQuery {
                        continuation: Some(t.into()),
                        ..q(5)
                    },
                )
                .unwrap_err();
            assert!(matches!(e, ObjError::InvalidArgument(_)), "{t:?}");
        }
    }

    // ---- recovery ----

    #[test]
    fn recovery_sweeps_uncommitted_chunks_and_keeps_objects() {
        let dir = TempDir::new("recovery");
        let cfg = config(&dir.0, CHUNK);
        let data = pattern(5, CHUNK * 5 / 2);
        {
            let (o, rec) = Objects::open(dir_store(&dir.0), cfg.clone()).unwrap();
            assert_eq!(rec, Recovered::default());
            o.create_bucket("bkt").unwrap();
            put(&o, "bkt", "kept", &data);
            put(&o, "bkt", "empty", b"");
            let id = o.create_upload("bkt", "mp", PutMeta::default()).unwrap();
            upload_part(&o, "bkt", "mp", &id, 1, &data[..2000]);
            // What a kill leaves: chunks written, nothing committed.
            let mut p = o.begin_put("bkt", "lost", 3 * CHUNK as u64).unwrap();
            o.put_data(&mut p, &pattern(6, 2 * CHUNK + 1)).unwrap();
            let mut q = o.begin_part("bkt", "mp", &id, 2, 5000).unwrap();
            o.put_data(&mut q, &[7; 4000]).unwrap();
            // A chunk that is not the service's.
            o.store().write(ChunkId(42), 0, b"foreign").unwrap();
            assert_eq!(count_chunks(o.store()), 3 + 1 + 3 + 1 + 1);
            drop((p, q));
        }
        let (o, rec) = Objects::open(dir_store(&dir.0), cfg.clone()).unwrap();
        let want = Recovered {
            chunks_swept: 4,
            objects: 2,
            uploads: 1,
            parts: 1,
            chunks_kept: 4,
            chunks_missing: 0,
            foreign_chunks: 1,
        };
        assert_eq!(rec, want);
        assert_eq!(count_chunks(o.store()), 5);
        assert_eq!(get(&o, "bkt", "kept"), data);
        assert_eq!(get(&o, "bkt", "empty"), b"");
        assert!(matches!(o.head("bkt", "lost"), Err(ObjError::NoSuchKey)));
        // New chunks do not reuse ids of existing ones.
        put(&o, "bkt", "new", &pattern(8, CHUNK * 3));
        assert_eq!(get(&o, "bkt", "kept"), data);
        let id = &o.list_uploads("bkt", "", 10).unwrap()[0].1;
        assert_eq!(o.list_parts("bkt", "mp", id, 0, 10).unwrap().parts.len(), 1);
        drop(o);
        let (_, rec) = Objects::open(dir_store(&dir.0), cfg).unwrap();
        assert_eq!((rec.chunks_swept, rec.objects, rec.chunks_kept), (0, 3, 7));
    }

    #[test]
    fn recovery_reports_missing_chunks_and_checks_config() {
        let dir = TempDir::new("missing");
        let store = Arc::new(MemStore::new(1 << 30));
        let cfg = config(&dir.0, CHUNK);
        let (o, _) = Objects::open(Arc::clone(&store), cfg.clone()).unwrap();
        o.create_bucket("bkt").unwrap();
        let info = put(&o, "bkt", "k", &pattern(1, 2 * CHUNK));
        drop(o);
        store.delete(info.chunks()[1].id).unwrap();
        let (o, rec) = Objects::open(Arc::clone(&store), cfg.clone()).unwrap();
        assert_eq!((rec.chunks_kept, rec.chunks_missing), (1, 1));
        let mut buf = vec![0u8; 2 * CHUNK];
        let e = o.read(&info, 0, &mut buf).unwrap_err();
        assert_eq!((e.s3_code(), e.status()), ("InternalError", 500));
        drop(o);
        for chunk_bytes in [0, (64 << 20) + 1] {
            let cfg = ObjectsConfig {
                chunk_bytes,
                ..cfg.clone()
            };
            assert!(matches!(
                Objects::open(Arc::clone(&store), cfg),
                Err(ObjError::Config(_))
            ));
        }
    }

    // ---- a real kill ----

    const KILL_ENV: &str = "USTACK_S3_OBJECTS_KILL_DIR";
    const KILL_CHUNK: usize = 16 * KIB;
    const KILL_KEYS: u64 = 12;

    /// Operation `i` of the child's sequence.
    #[derive(Debug)]
    enum KillOp {
        Put(String, u64),
        Delete(String),
    }

    fn kill_op(i: u64) -> KillOp {
        if i % 5 == 4 {
            KillOp::Delete(format!("k{}", (i * 7) % KILL_KEYS))
        } else {
            KillOp::Put(format!("k{}", i % KILL_KEYS), i)
        }
    }

    fn kill_content(i: u64) -> Vec<u8> {
        pattern(i, (i as usize * 7919) % (3 * KILL_CHUNK + 100))
    }

    fn kill_model(ops: u64) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for i in 0..ops {
            match kill_op(i) {
                KillOp::Put(k, v) => m.insert(k, v),
                KillOp::Delete(k) => m.remove(&k),
            };
        }
        m
    }

    #[test]
    #[ignore = "the child of objects_survive_sigkill"]
    fn kill_child() {
        let Some(dir) = std::env::var_os(KILL_ENV) else {
            return;
        };
        let dir = PathBuf::from(dir);
        let bucket = std::env::var("USTACK_S3_OBJECTS_KILL_BUCKET").unwrap();
        let (o, _) = Objects::open(dir_store(&dir), config(&dir, KILL_CHUNK)).unwrap();
        o.create_bucket(&bucket).unwrap();
        println!("ready");
        for i in 0.. {
            println!("begin {i}");
            match kill_op(i) {
                KillOp::Put(k, v) => {
                    put_in(&o, &bucket, &k, &kill_content(v), 5000).unwrap();
                }
                KillOp::Delete(k) => o.delete(&bucket, &k).unwrap(),
            }
            println!("done {i}");
        }
    }

    #[test]
    fn objects_survive_sigkill() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};

        let dir = TempDir::new("sigkill");
        let exe = std::env::current_exe().unwrap();
        let mut swept = 0;
        for round in 0..4u64 {
            let bucket = format!("crash{round}");
            let mut child = Command::new(&exe)
                .args([
                    "--exact",
                    "s3::objects::tests::kill_child",
                    "--ignored",
                    "--nocapture",
                ])
                .env(KILL_ENV, &dir.0)
                .env("USTACK_S3_OBJECTS_KILL_BUCKET", &bucket)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut done = None;
            // Kill a while after a put began: before, among or after its chunk writes, or in
            // its commit, depending on the round and the machine.
            let kill_after = 25 + round * 17;
            for line in lines.by_ref() {
                let line = line.unwrap();
                if let Some(i) = line.strip_prefix("done ") {
                    done = Some(i.parse::<u64>().unwrap());
                }
                if let Some(i) = line.strip_prefix("begin ") {
                    let i: u64 = i.parse().unwrap();
                    if i >= kill_after && matches!(kill_op(i), KillOp::Put(..)) {
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_micros([0, 100, 300, 1000][round as usize]));
            child.kill().unwrap();
            let status = child.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(libc::SIGKILL),
                "{status}"
            );
            // Lines printed before the kill landed count too.
            for line in lines.map_while(Result::ok) {
                if let Some(i) = line.strip_prefix("done ") {
                    done = i.parse().ok().or(done);
                }
            }
            let acked = done.expect("the child committed nothing") + 1;
            let (o, rec) = Objects::open(dir_store(&dir.0), config(&dir.0, KILL_CHUNK)).unwrap();
            assert_eq!(rec.chunks_missing, 0);
            // Every acknowledged operation is there; only the one in flight may be too.
            let before = kill_model(acked);
            let after = kill_model(acked + 1);
            let all = ListQuery {
                max_keys: 1000,
                ..ListQuery::default()
            };
            let page = o.list(&bucket, &all).unwrap();
            let mut found = BTreeMap::new();
            for info in &page.objects {
                let v = (0..=acked)
                    .find(|&v| {
                        matches!(kill_op(v), KillOp::Put(ref k, _) if *k == info.key) && {
                            info.etag == format!("\"{}\"", md5_hex(&kill_content(v)))
                        }
                    })
                    .unwrap_or_else(|| panic!("{} holds bytes never written", info.key));
                assert_eq!(get(&o, &bucket, &info.key), kill_content(v));
                found.insert(info.key.clone(), v);
            }
            assert!(
                found == before || found == after,
                "round {round}: {found:?} after {acked} ops"
            );
            // No orphans: the store holds exactly the objects' chunks, over every round.
            let mut referenced = 0;
            for b in o.list_buckets().unwrap() {
                let page = o.list(&b.0, &all).unwrap();
                referenced += page.objects.iter().map(|i| i.chunks().len()).sum::<usize>();
            }
            assert_eq!(count_chunks(o.store()), referenced);
            swept += rec.chunks_swept;
            eprintln!("sigkill round {round}: {acked} ops acknowledged; recovery {rec:?}");
        }
        eprintln!("sigkill: {swept} chunks swept in all");
    }
}

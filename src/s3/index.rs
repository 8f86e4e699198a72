//! The durable key index of the object service: buckets, objects, multipart uploads and their
//! parts, in one redb database (`<dir>/index.redb`), every change one transaction committed
//! with [`Durability::Immediate`].
//!
//! # Tables
//!
//! | table     | key                                           | value                         |
//! |-----------|-----------------------------------------------|-------------------------------|
//! | `meta`    | `"format"`                                    | `1` (the encoding below)      |
//! | `buckets` | bucket name                                   | creation time, ns since epoch |
//! | `objects` | bucket `\0` key                               | object record                 |
//! | `uploads` | bucket `\0` key `\0` upload id (16 bytes)     | upload record                 |
//! | `parts`   | upload id (16 bytes), part number (u32 BE)    | part record                   |
//!
//! Bucket names and object keys hold no NUL byte, so `bucket \0 key` sorts by bucket, then by
//! key in UTF-8 byte order, and the objects of a bucket whose keys start with `p` are exactly
//! the rows in `[bucket \0 p, bucket \0 p \xff)`: no UTF-8 string holds the byte `0xff`. That is
//! what lets a listing seek past a whole group of keys sharing a common prefix. Upload rows sort
//! by bucket, key, then upload id; the parts of an upload are one contiguous range.
//!
//! # Records
//!
//! Little-endian, with a leading version byte (1). A string is a u32 length and its bytes;
//! *meta* is a presence byte and the content type (if present), then a u32 count of user
//! metadata pairs (name, value); *chunks* is a u32 count, then per chunk its id (u128) and its
//! length (u32), in the object's byte order.
//!
//! - object: version, size u64, MD5 (16 bytes), part count u32 (0 for a plain PUT, else the N of the
//!   `-N` ETag), mtime u64 (ns since epoch), meta, chunks.
//! - part: version, size u64, MD5 (16 bytes) (of the part's bytes), mtime u64, chunks.
//! - upload: version, initiated u64, meta (what the object will carry).

use std::collections::HashSet;
use std::ops::Bound;
use std::path::Path;

use md5::{Digest, Md5};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, WriteTransaction,
};

use super::config::ObjectsConfig;
use super::error::ObjError;
use crate::proto::ChunkId;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const BUCKETS: TableDefinition<&str, u64> = TableDefinition::new("buckets");
const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
const UPLOADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("uploads");
const PARTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("parts");

/// The index format this code writes and reads.
const FORMAT: u64 = 1;
/// The version byte of every record.
const RECORD_V1: u8 = 1;
/// An upload id's length in bytes.
pub(crate) const UPLOAD_ID_LEN: usize = 16;

/// One chunk of an object or a part: which, and how many of the object's bytes it holds.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    /// The chunk in the store.
    pub id: ChunkId,
    /// Its length in bytes.
    pub len: u32,
}

/// Content type and user metadata, as given at PUT or at the creation of an upload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) content_type: Option<String>,
    pub(crate) user_meta: Vec<(String, String)>,
}

/// What the index holds for an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ObjectRecord {
    pub(crate) size: u64,
    /// MD5 of the bytes (plain PUT), or of the parts' MD5s (multipart).
    pub(crate) md5: [u8; 16],
    /// 0 for a plain PUT, else the number of parts.
    pub(crate) parts: u32,
    pub(crate) mtime_ns: u64,
    pub(crate) meta: Meta,
    pub(crate) chunks: Vec<ChunkRef>,
}

/// What the index holds for an uploaded part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PartRecord {
    pub(crate) size: u64,
    pub(crate) md5: [u8; 16],
    pub(crate) mtime_ns: u64,
    pub(crate) chunks: Vec<ChunkRef>,
}

/// What the index holds for a multipart upload in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UploadRecord {
    pub(crate) initiated_ns: u64,
    pub(crate) meta: Meta,
}

/// An entry of a listing: an object, or a common prefix standing for all keys under it.
#[derive(Debug)]
pub(crate) enum Entry {
    Object(String, ObjectRecord),
    Prefix(String),
}

/// Where a listing starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ListFrom {
    /// At the first key.
    Start,
    /// Strictly after this key.
    AfterKey(String),
    /// After every key that starts with this (a common prefix already returned).
    AfterPrefix(String),
}

/// What the index references, counted at open (for the recovery sweep).
#[derive(Debug, Default)]
pub(crate) struct Census {
    pub(crate) referenced: HashSet<u128>,
    pub(crate) objects: u64,
    pub(crate) uploads: u64,
    pub(crate) parts: u64,
}

/// The result of completing an upload: the new object, and the chunks nothing references any
/// more (the replaced object's, the parts left out).
pub(crate) struct Completed {
    pub(crate) record: ObjectRecord,
    pub(crate) garbage: Vec<ChunkRef>,
}

macro_rules! index_error {
    ($($t:ty),*) => {$(
        impl From<$t> for ObjError {
            fn from(e: $t) -> ObjError {
                ObjError::Index(e.to_string())
            }
        }
    )*};
}
index_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

fn corrupt(what: &str) -> ObjError {
    ObjError::Index(format!("damaged index record: {what}"))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The bytes of lowercase or uppercase hex `s`, or `None`.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// The ETag (quoted) of content with this MD5 and part count.
pub(crate) fn etag(md5: &[u8; 16], parts: u32) -> String {
    if parts == 0 {
        format!("\"{}\"", hex(md5))
    } else {
        format!("\"{}-{parts}\"", hex(md5))
    }
}

// ---- record encoding ------------------------------------------------------------------------

struct Enc(Vec<u8>);

impl Enc {
    fn new() -> Enc {
        Enc(vec![RECORD_V1])
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(s.as_bytes());
    }
    fn meta(&mut self, m: &Meta) {
        match &m.content_type {
            Some(t) => {
                self.0.push(1);
                self.str(t);
            }
            None => self.0.push(0),
        }
        self.u32(m.user_meta.len() as u32);
        for (k, v) in &m.user_meta {
            self.str(k);
            self.str(v);
        }
    }
    fn chunks(&mut self, chunks: &[ChunkRef]) {
        self.u32(chunks.len() as u32);
        for c in chunks {
            self.0.extend_from_slice(&c.id.0.to_le_bytes());
            self.u32(c.len);
        }
    }
}

struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn start(b: &'a [u8]) -> Result<Dec<'a>, ObjError> {
        match b.split_first() {
            Some((&RECORD_V1, rest)) => Ok(Dec(rest)),
            _ => Err(corrupt("unknown version")),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ObjError> {
        if self.0.len() < n {
            return Err(corrupt("cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, ObjError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ObjError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, ObjError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn md5(&mut self) -> Result<[u8; 16], ObjError> {
        Ok(self.take(16)?.try_into().unwrap())
    }
    fn str(&mut self) -> Result<String, ObjError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| corrupt("a string is not UTF-8"))
    }
    fn meta(&mut self) -> Result<Meta, ObjError> {
        let content_type = match self.u8()? {
            0 => None,
            1 => Some(self.str()?),
            _ => return Err(corrupt("bad content type flag")),
        };
        let n = self.u32()?;
        let mut user_meta = Vec::with_capacity(n.min(64) as usize);
        for _ in 0..n {
            user_meta.push((self.str()?, self.str()?));
        }
        Ok(Meta {
            content_type,
            user_meta,
        })
    }
    fn chunks(&mut self) -> Result<Vec<ChunkRef>, ObjError> {
        let n = self.u32()? as usize;
        if self.0.len() < n * 20 {
            return Err(corrupt("chunk list cut short"));
        }
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            let id = ChunkId(u128::from_le_bytes(self.take(16)?.try_into().unwrap()));
            chunks.push(ChunkRef {
                id,
                len: self.u32()?,
            });
        }
        Ok(chunks)
    }
    fn end(&self) -> Result<(), ObjError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(corrupt("trailing bytes"))
        }
    }
}

impl ObjectRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u64(self.size);
        e.0.extend_from_slice(&self.md5);
        e.u32(self.parts);
        e.u64(self.mtime_ns);
        e.meta(&self.meta);
        e.chunks(&self.chunks);
        e.0
    }
    pub(crate) fn decode(b: &[u8]) -> Result<ObjectRecord, ObjError> {
        let mut d = Dec::start(b)?;
        let r = ObjectRecord {
            size: d.u64()?,
            md5: d.md5()?,
            parts: d.u32()?,
            mtime_ns: d.u64()?,
            meta: d.meta()?,
            chunks: d.chunks()?,
        };
        d.end()?;
        Ok(r)
    }
    /// The quoted ETag.
    pub(crate) fn etag(&self) -> String {
        etag(&self.md5, self.parts)
    }
}

impl PartRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u64(self.size);
        e.0.extend_from_slice(&self.md5);
        e.u64(self.mtime_ns);
        e.chunks(&self.chunks);
        e.0
    }
    pub(crate) fn decode(b: &[u8]) -> Result<PartRecord, ObjError> {
        let mut d = Dec::start(b)?;
        let r = PartRecord {
            size: d.u64()?,
            md5: d.md5()?,
            mtime_ns: d.u64()?,
            chunks: d.chunks()?,
        };
        d.end()?;
        Ok(r)
    }
}

impl UploadRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u64(self.initiated_ns);
        e.meta(&self.meta);
        e.0
    }
    pub(crate) fn decode(b: &[u8]) -> Result<UploadRecord, ObjError> {
        let mut d = Dec::start(b)?;
        let r = UploadRecord {
            initiated_ns: d.u64()?,
            meta: d.meta()?,
        };
        d.end()?;
        Ok(r)
    }
}

// ---- row keys -------------------------------------------------------------------------------

/// `bucket \0`: the start of a bucket's rows in `objects` and `uploads`.
fn bucket_base(bucket: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1);
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k
}

fn object_row(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = bucket_base(bucket);
    k.extend_from_slice(key.as_bytes());
    k
}

fn upload_row(bucket: &str, key: &str, id: &[u8; UPLOAD_ID_LEN]) -> Vec<u8> {
    let mut k = object_row(bucket, key);
    k.push(0);
    k.extend_from_slice(id);
    k
}

fn part_row(id: &[u8; UPLOAD_ID_LEN], part: u32) -> Vec<u8> {
    let mut k = id.to_vec();
    k.extend_from_slice(&part.to_be_bytes());
    k
}

/// The first row past every row that starts with `p` (whose rest is UTF-8).
fn past(mut p: Vec<u8>) -> Vec<u8> {
    p.push(0xff);
    p
}

fn utf8(b: &[u8]) -> Result<String, ObjError> {
    String::from_utf8(b.to_vec()).map_err(|_| corrupt("a key is not UTF-8"))
}

/// Removes every part of upload `id`, adding their chunks to `garbage`.
fn remove_parts(
    parts: &mut Table<&[u8], &[u8]>,
    id: &[u8; UPLOAD_ID_LEN],
    garbage: &mut Vec<ChunkRef>,
) -> Result<(), ObjError> {
    let (lo, hi) = (part_row(id, 0), part_row(id, u32::MAX));
    let mut rows = Vec::new();
    for row in parts.range(lo.as_slice()..=hi.as_slice())? {
        let (k, v) = row?;
        rows.push(k.value().to_vec());
        garbage.extend(PartRecord::decode(v.value())?.chunks);
    }
    for k in rows {
        parts.remove(k.as_slice())?;
    }
    Ok(())
}

/// Whether `given` (an ETag from a client: quoted or not, any case) names `md5`.
fn etag_matches(given: &str, md5: &[u8; 16]) -> bool {
    let g = given.trim().trim_matches('"');
    unhex(g).is_some_and(|b| b == md5)
}

/// The durable index: a redb database.
pub(crate) struct Index {
    db: Database,
}

impl Index {
    /// Opens (or creates) the index at `path`; redb repairs it if a crash left it unclean.
    pub(crate) fn open(path: &Path) -> Result<Index, ObjError> {
        let db = Database::create(path)?;
        let index = Index { db };
        let txn = index.write()?;
        {
            let mut meta = txn.open_table(META)?;
            let format = meta.get("format")?.map(|v| v.value());
            match format {
                None => {
                    meta.insert("format", FORMAT)?;
                }
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(ObjError::Index(format!(
                        "index format {other}, this build reads {FORMAT}"
                    )))
                }
            }
            txn.open_table(BUCKETS)?;
            txn.open_table(OBJECTS)?;
            txn.open_table(UPLOADS)?;
            txn.open_table(PARTS)?;
        }
        txn.commit()?;
        Ok(index)
    }

    fn write(&self) -> Result<WriteTransaction, ObjError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        Ok(txn)
    }

    /// Every chunk the index references, and how many objects, uploads and parts it holds.
    pub(crate) fn census(&self) -> Result<Census, ObjError> {
        let txn = self.db.begin_read()?;
        let mut c = Census::default();
        for row in txn.open_table(OBJECTS)?.range(..)? {
            let (_, v) = row?;
            let rec = ObjectRecord::decode(v.value())?;
            c.referenced.extend(rec.chunks.iter().map(|r| r.id.0));
            c.objects += 1;
        }
        for row in txn.open_table(PARTS)?.range(..)? {
            let (_, v) = row?;
            let rec = PartRecord::decode(v.value())?;
            c.referenced.extend(rec.chunks.iter().map(|r| r.id.0));
            c.parts += 1;
        }
        c.uploads = txn.open_table(UPLOADS)?.len()?;
        Ok(c)
    }

    // ---- buckets ----

    pub(crate) fn create_bucket(&self, bucket: &str, now_ns: u64) -> Result<(), ObjError> {
        let txn = self.write()?;
        {
            let mut buckets = txn.open_table(BUCKETS)?;
            if buckets.get(bucket)?.is_some() {
                return Err(ObjError::BucketAlreadyOwnedByYou);
            }
            buckets.insert(bucket, now_ns)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub(crate) fn bucket_exists(&self, bucket: &str) -> Result<bool, ObjError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(BUCKETS)?.get(bucket)?.is_some())
    }

    /// Removes an empty bucket, aborting its uploads; returns their chunks.
    pub(crate) fn delete_bucket(&self, bucket: &str) -> Result<Vec<ChunkRef>, ObjError> {
        let txn = self.write()?;
        let mut garbage = Vec::new();
        {
            let mut buckets = txn.open_table(BUCKETS)?;
            if buckets.remove(bucket)?.is_none() {
                return Err(ObjError::NoSuchBucket);
            }
            let base = bucket_base(bucket);
            let end = past(base.clone());
            let objects = txn.open_table(OBJECTS)?;
            if objects
                .range(base.as_slice()..end.as_slice())?
                .next()
                .is_some()
            {
                return Err(ObjError::BucketNotEmpty);
            }
            let mut uploads = txn.open_table(UPLOADS)?;
            let mut parts = txn.open_table(PARTS)?;
            let mut rows = Vec::new();
            for row in uploads.range(base.as_slice()..end.as_slice())? {
                rows.push(row?.0.value().to_vec());
            }
            for row in rows {
                let id: [u8; UPLOAD_ID_LEN] = row[row.len() - UPLOAD_ID_LEN..].try_into().unwrap();
                remove_parts(&mut parts, &id, &mut garbage)?;
                uploads.remove(row.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(garbage)
    }

    pub(crate) fn list_buckets(&self) -> Result<Vec<(String, u64)>, ObjError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in txn.open_table(BUCKETS)?.range(..)? {
            let (k, v) = row?;
            out.push((k.value().to_string(), v.value()));
        }
        Ok(out)
    }

    // ---- objects ----

    /// Records an object (replacing any of that key); returns the replaced object's chunks.
    pub(crate) fn put_object(
        &self,
        bucket: &str,
        key: &str,
        rec: &ObjectRecord,
    ) -> Result<Vec<ChunkRef>, ObjError> {
        let txn = self.write()?;
        let old;
        {
            if txn.open_table(BUCKETS)?.get(bucket)?.is_none() {
                return Err(ObjError::NoSuchBucket);
            }
            let mut objects = txn.open_table(OBJECTS)?;
            let row = object_row(bucket, key);
            let prev = objects.insert(row.as_slice(), rec.encode().as_slice())?;
            old = match prev {
                Some(v) => ObjectRecord::decode(v.value())?.chunks,
                None => Vec::new(),
            };
        }
        txn.commit()?;
        Ok(old)
    }

    pub(crate) fn get_object(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<ObjectRecord>, ObjError> {
        let txn = self.db.begin_read()?;
        if txn.open_table(BUCKETS)?.get(bucket)?.is_none() {
            return Err(ObjError::NoSuchBucket);
        }
        let objects = txn.open_table(OBJECTS)?;
        let row = object_row(bucket, key);
        let rec = objects.get(row.as_slice())?;
        rec.map(|v| ObjectRecord::decode(v.value())).transpose()
    }

    /// Removes an object if it exists; returns its chunks.
    pub(crate) fn delete_object(&self, bucket: &str, key: &str) -> Result<Vec<ChunkRef>, ObjError> {
        let txn = self.write()?;
        let old;
        {
            if txn.open_table(BUCKETS)?.get(bucket)?.is_none() {
                return Err(ObjError::NoSuchBucket);
            }
            let mut objects = txn.open_table(OBJECTS)?;
            let row = object_row(bucket, key);
            let prev = objects.remove(row.as_slice())?;
            old = match prev {
                Some(v) => ObjectRecord::decode(v.value())?.chunks,
                None => return Ok(Vec::new()),
            };
        }
        txn.commit()?;
        Ok(old)
    }

    /// Up to `max` entries of a listing, and whether more follow. Keys start with `prefix`; with
    /// a delimiter, the keys whose rest (after the prefix) holds it are rolled up into one
    /// common prefix each (up to and including the delimiter's first occurrence), and the
    /// listing seeks past all of them at once.
    pub(crate) fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        from: &ListFrom,
        max: usize,
    ) -> Result<(Vec<Entry>, bool), ObjError> {
        let txn = self.db.begin_read()?;
        if txn.open_table(BUCKETS)?.get(bucket)?.is_none() {
            return Err(ObjError::NoSuchBucket);
        }
        let objects = txn.open_table(OBJECTS)?;
        let base_len = bucket.len() + 1;
        let first = object_row(bucket, prefix);
        let end = past(first.clone());
        let mut lo = match from {
            ListFrom::Start => Bound::Included(first.clone()),
            ListFrom::AfterKey(k) => {
                let c = object_row(bucket, k);
                if c >= first {
                    Bound::Excluded(c)
                } else {
                    Bound::Included(first.clone())
                }
            }
            ListFrom::AfterPrefix(p) => {
                let c = past(object_row(bucket, p));
                Bound::Included(c.max(first.clone()))
            }
        };
        let delimiter = delimiter.filter(|d| !d.is_empty()).map(str::as_bytes);
        let mut out = Vec::new();
        'seek: loop {
            let range = (
                lo.as_ref().map(Vec::as_slice),
                Bound::Excluded(end.as_slice()),
            );
            for row in objects.range(range)? {
                let (k, v) = row?;
                if out.len() == max {
                    return Ok((out, true));
                }
                let key = &k.value()[base_len..];
                let rest = &key[prefix.len()..];
                let at = delimiter.and_then(|d| {
                    rest.windows(d.len())
                        .position(|w| w == d)
                        .map(|i| prefix.len() + i + d.len())
                });
                if let Some(at) = at {
                    let cp = &key[..at];
                    lo = Bound::Included(past(k.value()[..base_len + at].to_vec()));
                    out.push(Entry::Prefix(utf8(cp)?));
                    continue 'seek;
                }
                out.push(Entry::Object(utf8(key)?, ObjectRecord::decode(v.value())?));
            }
            return Ok((out, false));
        }
    }

    // ---- multipart uploads ----

    pub(crate) fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        id: &[u8; UPLOAD_ID_LEN],
        rec: &UploadRecord,
    ) -> Result<(), ObjError> {
        let txn = self.write()?;
        {
            if txn.open_table(BUCKETS)?.get(bucket)?.is_none() {
                return Err(ObjError::NoSuchBucket);
            }
            let row = upload_row(bucket, key, id);
            txn.open_table(UPLOADS)?
                .insert(row.as_slice(), rec.encode().as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    pub(crate) fn get_upload(
        &self,
        bucket: &str,
        key: &str,
        id: &[u8; UPLOAD_ID_LEN],
    ) -> Result<UploadRecord, ObjError> {
        let txn = self.db.begin_read()?;
        let row = upload_row(bucket, key, id);
        let uploads = txn.open_table(UPLOADS)?;
        let rec = uploads.get(row.as_slice())?;
        match rec {
            Some(v) => UploadRecord::decode(v.value()),
            None => Err(ObjError::NoSuchUpload),
        }
    }

    /// Records a part (replacing one of that number); returns the replaced part's chunks.
    pub(crate) fn put_part(
        &self,
        bucket: &str,
        key: &str,
        id: &[u8; UPLOAD_ID_LEN],
        part: u32,
        rec: &PartRecord,
    ) -> Result<Vec<ChunkRef>, ObjError> {
        let txn = self.write()?;
        let old;
        {
            let row = upload_row(bucket, key, id);
            if txn.open_table(UPLOADS)?.get(row.as_slice())?.is_none() {
                return Err(ObjError::NoSuchUpload);
            }
            let mut parts = txn.open_table(PARTS)?;
            let row = part_row(id, part);
            let prev = parts.insert(row.as_slice(), rec.encode().as_slice())?;
            old = match prev {
                Some(v) => PartRecord::decode(v.value())?.chunks,
                None => Vec::new(),
            };
        }
        txn.commit()?;
        Ok(old)
    }

    /// Up to `max` parts numbered above `marker`, and whether more follow.
    pub(crate) fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        id: &[u8; UPLOAD_ID_LEN],
        marker: u32,
        max: usize,
    ) -> Result<(Vec<(u32, PartRecord)>, bool), ObjError> {
        let txn = self.db.begin_read()?;
        let row = upload_row(bucket, key, id);
        if txn.open_table(UPLOADS)?.get(row.as_slice())?.is_none() {
            return Err(ObjError::NoSuchUpload);
        }
        let parts = txn.open_table(PARTS)?;
        let (lo, hi) = (part_row(id, marker), part_row(id, u32::MAX));
        let mut out = Vec::new();
        let range = (
            Bound::Excluded(lo.as_slice()),
            Bound::Included(hi.as_slice()),
        );
        for row in parts.range(range)? {
            let (k, v) = row?;
            if out.len() == max {
                return Ok((out, true));
            }
            let n = u32::from_be_bytes(k.value()[UPLOAD_ID_LEN..].try_into().unwrap());
            out.push((n, PartRecord::decode(v.value())?));
        }
        Ok((out, false))
    }

    /// Turns an upload into an object, in one transaction: checks the client's part list,
    /// records the object (its chunks are the listed parts' chunks, in order), removes the
    /// upload and all its parts.
    pub(crate) fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        id: &[u8; UPLOAD_ID_LEN],
        list: &[(u32, String)],
        cfg: &ObjectsConfig,
        now_ns: u64,
    ) -> Result<Completed, ObjError> {
        let txn = self.write()?;
        let mut garbage = Vec::new();
        let record;
        {
            let mut uploads = txn.open_table(UPLOADS)?;
            let row = upload_row(bucket, key, id);
            let upload = match uploads.remove(row.as_slice())? {
                Some(v) => UploadRecord::decode(v.value())?,
                None => return Err(ObjError::NoSuchUpload),
            };
            let mut parts = txn.open_table(PARTS)?;
            let mut chunks = Vec::new();
            let (mut size, mut md5s) = (0u64, Md5::new());
            if list.windows(2).any(|w| w[0].0 >= w[1].0) {
                return Err(ObjError::InvalidPartOrder);
            }
            for (i, (n, given)) in list.iter().enumerate() {
                let prow = part_row(id, *n);
                let part = match parts.remove(prow.as_slice())? {
                    Some(v) => PartRecord::decode(v.value())?,
                    None => return Err(ObjError::InvalidPart),
                };
                if !etag_matches(given, &part.md5) {
                    return Err(ObjError::InvalidPart);
                }
                if i + 1 < list.len() && part.size < cfg.min_part_bytes {
                    return Err(ObjError::EntityTooSmall);
                }
                size += part.size;
                md5s.update(part.md5);
                chunks.extend(part.chunks);
            }
            if size > cfg.max_object_bytes {
                return Err(ObjError::EntityTooLarge);
            }
            remove_parts(&mut parts, id, &mut garbage)?;
            record = ObjectRecord {
                size,
                md5: md5s.finalize().into(),
                parts: list.len() as u32,
                mtime_ns: now_ns,
                meta: upload.meta,
                chunks,
            };
            if txn.open_table(BUCKETS)?.get(bucket)?.is_none() {
                return Err(ObjError::NoSuchBucket);
            }
            let orow = object_row(bucket, key);
            let mut objects = txn.open_table(OBJECTS)?;
            let prev = objects.insert(orow.as_slice(), record.encode().as_slice())?;
            if let Some(v) = prev {
                garbage.extend(ObjectRecord::decode(v.value())?.chunks);
            }
        }
        txn.commit()?;
        Ok(Completed { record, garbage })
    }

    /// Removes an upload and its parts; returns their chunks.
    pub(crate) fn abort_upload(
        &self,
        bucket: &str,
        key: &str,
        id: &[u8; UPLOAD_ID_LEN],
    ) -> Result<Vec<ChunkRef>, ObjError> {
        let txn = self.write()?;
        let mut garbage = Vec::new();
        {
            let row = upload_row(bucket, key, id);
            if txn.open_table(UPLOADS)?.remove(row.as_slice())?.is_none() {
                return Err(ObjError::NoSuchUpload);
            }
            remove_parts(&mut txn.open_table(PARTS)?, id, &mut garbage)?;
        }
        txn.commit()?;
        Ok(garbage)
    }

    /// Up to `max` uploads of the bucket whose key starts with `prefix`: key, id, initiated.
    pub(crate) fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<(String, [u8; UPLOAD_ID_LEN], u64)>, ObjError> {
        let txn = self.db.begin_read()?;
        if txn.open_table(BUCKETS)?.get(bucket)?.is_none() {
            return Err(ObjError::NoSuchBucket);
        }
        let first = object_row(bucket, prefix);
        let end = past(first.clone());
        let base_len = bucket.len() + 1;
        let mut out = Vec::new();
        let uploads = txn.open_table(UPLOADS)?;
        for row in uploads.range(first.as_slice()..end.as_slice())? {
            if out.len() == max {
                break;
            }
            let (k, v) = row?;
            let k = k.value();
            if k.len() < base_len + 1 + UPLOAD_ID_LEN {
                return Err(corrupt("short upload row"));
            }
            let split = k.len() - UPLOAD_ID_LEN;
            let key = utf8(&k[base_len..split - 1])?;
            let id = k[split..].try_into().unwrap();
            out.push((key, id, UploadRecord::decode(v.value())?.initiated_ns));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_meta() -> Meta {
        Meta {
            content_type: Some("text/plain".into()),
            user_meta: vec![("a".into(), "1".into()), ("b\u{e9}".into(), String::new())],
        }
    }

    fn sample_chunks(n: u32) -> Vec<ChunkRef> {
        (0..n)
            .map(|i| ChunkRef {
                id: ChunkId(u128::MAX - u128::from(i)),
                len: 1000 + i,
            })
            .collect()
    }

    #[test]
    fn records_round_trip() {
        let obj = ObjectRecord {
            size: 12345,
            md5: [7; 16],
            parts: 3,
            mtime_ns: 1_700_000_000_123_456_789,
            meta: sample_meta(),
            chunks: sample_chunks(5),
        };
        assert_eq!(ObjectRecord::decode(&obj.encode()).unwrap(), obj);
        let empty = ObjectRecord {
            size: 0,
            md5: [0; 16],
            parts: 0,
            mtime_ns: 0,
            meta: Meta::default(),
            chunks: Vec::new(),
        };
        assert_eq!(ObjectRecord::decode(&empty.encode()).unwrap(), empty);
        let part = PartRecord {
            size: 99,
            md5: [9; 16],
            mtime_ns: 5,
            chunks: sample_chunks(2),
        };
        assert_eq!(PartRecord::decode(&part.encode()).unwrap(), part);
        let upload = UploadRecord {
            initiated_ns: 77,
            meta: sample_meta(),
        };
        assert_eq!(UploadRecord::decode(&upload.encode()).unwrap(), upload);
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let obj = ObjectRecord {
            size: 1,
            md5: [1; 16],
            parts: 0,
            mtime_ns: 2,
            meta: sample_meta(),
            chunks: sample_chunks(3),
        };
        let bytes = obj.encode();
        for cut in 0..bytes.len() {
            assert!(matches!(
                ObjectRecord::decode(&bytes[..cut]),
                Err(ObjError::Index(_))
            ));
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(ObjectRecord::decode(&longer).is_err());
        let mut version = bytes;
        version[0] = 2;
        assert!(ObjectRecord::decode(&version).is_err());
    }

    #[test]
    fn hex_etags_and_row_order() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(unhex("00abFF"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        let md5 = [0x11; 16];
        assert_eq!(etag(&md5, 0), format!("\"{}\"", "11".repeat(16)));
        assert_eq!(etag(&md5, 12), format!("\"{}-12\"", "11".repeat(16)));
        assert!(etag_matches(&etag(&md5, 0), &md5));
        assert!(etag_matches(&"11".repeat(16), &md5));
        assert!(!etag_matches(&"12".repeat(16), &md5));
        assert!(!etag_matches("", &md5));
        // A bucket's rows sort by key bytes, and a key's upload rows before a longer key's.
        assert!(object_row("b", "a") < object_row("b", "a/"));
        assert!(object_row("b", "zzz") < object_row("b0", ""));
        assert!(upload_row("b", "a", &[0xff; 16]) < upload_row("b", "a/", &[0; 16]));
        assert!(past(object_row("b", "a/")) > object_row("b", "a/\u{10ffff}"));
    }
}

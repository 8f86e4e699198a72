//! [`MemStore`]: chunks in memory, for tests, benchmarks and caches.
//!
//! Each chunk is a `Vec<u8>` behind its own `RwLock`; the id -> chunk map is split into
//! 64 shards, each behind its own `RwLock`, so operations on different chunks do not
//! wait for each other (a shard lock is held only to look a chunk up, insert or remove it; the
//! copy of the data happens under the chunk's lock, or under no lock at all when a chunk is
//! created). Reads of one chunk run in parallel; a write or delete of a chunk excludes the other
//! operations on that chunk, so a read or STAT never sees half a write.
//!
//! Space: a byte budget counts the content bytes of all chunks (a chunk's size, gaps included).
//! A write that would take the total past the budget fails with [`StoreError::NoSpace`] and
//! changes nothing; so does one for which the allocator has no memory. The heap may hold up to
//! about twice the content bytes, because a growing `Vec` doubles its capacity.
//!
//! LIST: chunks are listed by shard, then by id within a shard (the listing order of
//! [`ChunkStore::list`]; a shard is a fixed hash of the id). A page reads only the shards it
//! needs, from the cursor's on, and sorts the ids after the cursor in each: O(chunks in those
//! shards), under each shard's read lock in turn, never under two locks at once.
//!
//! STAT: the CRC32C of a chunk is computed on the first STAT, O(size) (a few milliseconds for a
//! 64 MiB chunk with the CPU's CRC instruction), and cached with the chunk. A write that appends
//! exactly at the end keeps a cached CRC up to date (one CRC pass over the written bytes); any
//! other write drops it, and the next STAT computes it again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::store::{ChunkStat, ChunkStore, ReadInfo, SharedRead, StoreError};
use crate::copies::{self, Pass};
use crate::proto::{copy_crc, crc32c, crc32c_combine, ChunkId, Limits, ListEntry};

/// Number of shards of the chunk map.
const SHARDS: usize = 64;

/// `MemChunk::crc` when no CRC is cached (a valid cache entry has bit 32 set).
const CRC_NONE: u64 = 0;
const CRC_VALID: u64 = 1 << 32;

/// A chunk store in memory, with a byte budget and a chunk size limit.
///
/// ```
/// use ustack::chunk::{ChunkStore, MemStore};
/// use ustack::proto::ChunkId;
///
/// let store = MemStore::new(1 << 20);
/// assert_eq!(store.write(ChunkId(7), 4, b"data").unwrap(), 8);
/// let mut buf = [0xFFu8; 16];
/// let read = store.read(ChunkId(7), 0, &mut buf).unwrap();
/// assert_eq!(&buf[..read.len], b"\0\0\0\0data");
/// assert_eq!(store.used_bytes(), 8);
/// ```
#[derive(Debug)]
pub struct MemStore {
    shards: Box<[RwLock<Shard>]>,
    budget_bytes: u64,
    used_bytes: AtomicU64,
    chunk_len_max: u64,
}

/// One shard of the chunk map.
type Shard = HashMap<ChunkId, Arc<RwLock<MemChunk>>>;

#[derive(Debug)]
struct MemChunk {
    /// Shared with READ answers still being sent ([`ChunkStore::read_shared`]): a write to a
    /// chunk whose snapshot is out copies it first (`Arc::make_mut`), so the answer keeps the
    /// bytes its CRC was taken over.
    data: Arc<Vec<u8>>,
    /// `CRC_VALID | crc` when the CRC of `data` is known, else `CRC_NONE`. Written by writers
    /// (who hold the chunk's write lock) and by STAT (which holds the read lock, so no writer
    /// can change `data` between computing the CRC and storing it).
    crc: AtomicU64,
    /// Set by `delete` after removing the chunk from the map: a writer that looked the chunk up
    /// before the delete must start over instead of writing into a chunk nobody can see.
    deleted: bool,
}

enum Create {
    Done(u64),
    /// Someone else created the chunk first.
    Raced,
}

impl MemStore {
    /// A store that holds at most `budget_bytes` of chunk content, with chunks of up to
    /// [`Limits::DEFAULT_CHUNK_LEN_MAX`] (64 MiB) each.
    pub fn new(budget_bytes: u64) -> MemStore {
        MemStore {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            budget_bytes,
            used_bytes: AtomicU64::new(0),
            chunk_len_max: Limits::DEFAULT_CHUNK_LEN_MAX,
        }
    }

    /// Sets the chunk size limit: a write reaching past `chunk_len_max` bytes fails with
    /// [`StoreError::ChunkTooLarge`].
    pub fn with_chunk_len_max(mut self, chunk_len_max: u64) -> MemStore {
        self.chunk_len_max = chunk_len_max;
        self
    }

    /// The byte budget.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// Content bytes held now (the sum of the chunks' sizes).
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// The chunk size limit.
    pub fn chunk_len_max(&self) -> u64 {
        self.chunk_len_max
    }

    /// Number of chunks held now.
    pub fn chunk_count(&self) -> usize {
        self.shards.iter().map(|s| read_lock(s).len()).sum()
    }

    fn shard(&self, id: ChunkId) -> &RwLock<Shard> {
        &self.shards[shard_index(id)]
    }

    fn lookup(&self, id: ChunkId) -> Option<Arc<RwLock<MemChunk>>> {
        read_lock(self.shard(id)).get(&id).cloned()
    }

    /// Takes `bytes` from the budget, or says NoSpace.
    fn reserve(&self, id: ChunkId, bytes: u64) -> Result<(), StoreError> {
        let budget = self.budget_bytes;
        self.used_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= budget)
            })
            .map(drop)
            .map_err(|_| StoreError::NoSpace(id))
    }

    fn release(&self, bytes: u64) {
        self.used_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Creates the chunk with the data in place, copying outside every lock; inserts it unless
    /// another writer created it meanwhile.
    fn create(
        &self,
        id: ChunkId,
        offset: u64,
        data: &[u8],
        crc: Option<u32>,
        end: u64,
    ) -> Result<Create, StoreError> {
        self.reserve(id, end)?;
        let mut bytes = Vec::new();
        if bytes.try_reserve_exact(end as usize).is_err() {
            self.release(end);
            return Err(StoreError::NoSpace(id));
        }
        bytes.resize(offset as usize, 0);
        bytes.extend_from_slice(data);
        // A chunk written whole from its start has the CRC the request carried.
        let cached = match crc {
            Some(c) if offset == 0 => CRC_VALID | u64::from(c),
            _ => CRC_NONE,
        };
        let chunk = MemChunk {
            data: Arc::new(bytes),
            crc: AtomicU64::new(cached),
            deleted: false,
        };
        let mut shard = write_lock(self.shard(id));
        if shard.contains_key(&id) {
            drop(shard);
            self.release(end);
            return Ok(Create::Raced);
        }
        shard.insert(id, Arc::new(RwLock::new(chunk)));
        Ok(Create::Done(end))
    }

    fn write_into(
        &self,
        chunk: &mut MemChunk,
        id: ChunkId,
        offset: u64,
        data: &[u8],
        data_crc: Option<u32>,
        end: u64,
    ) -> Result<u64, StoreError> {
        let old = chunk.data.len() as u64;
        let growth = end.saturating_sub(old);
        if growth > 0 {
            self.reserve(id, growth)?;
        }
        // A snapshot lent to a READ answer keeps the old bytes: copy before changing them.
        let bytes = Arc::make_mut(&mut chunk.data);
        if growth > 0 && bytes.try_reserve(growth as usize).is_err() {
            self.release(growth);
            return Err(StoreError::NoSpace(id));
        }
        let cached = *chunk.crc.get_mut();
        let offset = offset as usize;
        if offset as u64 >= old {
            bytes.resize(offset, 0);
            bytes.extend_from_slice(data);
        } else {
            let in_place = (end.min(old) as usize) - offset;
            bytes[offset..offset + in_place].copy_from_slice(&data[..in_place]);
            bytes.extend_from_slice(&data[in_place..]);
        }
        // An append at the end extends a cached CRC (with the request's CRC of the data when
        // given); a rewrite of the whole chunk from its start takes the request's CRC;
        // anything else invalidates it.
        let crc = if cached & CRC_VALID != 0 && offset as u64 == old {
            let dc = data_crc.unwrap_or_else(|| {
                copies::count(Pass::Read, data.len());
                crc32c(data)
            });
            CRC_VALID | u64::from(crc32c_combine(cached as u32, dc, data.len()))
        } else if offset == 0 && end >= old {
            match data_crc {
                Some(c) => CRC_VALID | u64::from(c),
                None => CRC_NONE,
            }
        } else {
            CRC_NONE
        };
        *chunk.crc.get_mut() = crc;
        Ok(old.max(end))
    }
}

impl ChunkStore for MemStore {
    fn write(&self, id: ChunkId, offset: u64, data: &[u8]) -> Result<u64, StoreError> {
        self.write_with(id, offset, data, None)
    }

    fn write_crc(
        &self,
        id: ChunkId,
        offset: u64,
        data: &[u8],
        crc: u32,
    ) -> Result<u64, StoreError> {
        self.write_with(id, offset, data, Some(crc))
    }

    fn read_shared(
        &self,
        id: ChunkId,
        offset: u64,
        len: usize,
    ) -> Option<Result<SharedRead, StoreError>> {
        Some(self.read_shared_inner(id, offset, len))
    }

    fn read(&self, id: ChunkId, offset: u64, buf: &mut [u8]) -> Result<ReadInfo, StoreError> {
        self.read_with(id, offset, buf, false).map(|(info, _)| info)
    }

    /// One pass: the copy takes the CRC as it goes, or the cached CRC serves a whole-chunk
    /// read.
    fn read_crc(
        &self,
        id: ChunkId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(ReadInfo, u32), StoreError> {
        self.read_with(id, offset, buf, true)
    }

    fn may_block(&self) -> bool {
        false
    }

    fn delete(&self, id: ChunkId) -> Result<(), StoreError> {
        let chunk = write_lock(self.shard(id))
            .remove(&id)
            .ok_or(StoreError::NotFound(id))?;
        let mut chunk = write_lock(&chunk);
        chunk.deleted = true;
        self.release(chunk.data.len() as u64);
        chunk.data = Arc::new(Vec::new());
        Ok(())
    }

    /// Lists by (shard, id): see the [module docs](self).
    fn list(&self, after: Option<ChunkId>, max: usize) -> Result<Vec<ListEntry>, StoreError> {
        let mut out = Vec::with_capacity(max.min(1024));
        let first = after.map_or(0, shard_index);
        for index in first..SHARDS {
            // Within the shard, after the cursor (in the cursor's shard) or from its start.
            let mut from = if index == first { after } else { None };
            while out.len() < max {
                let want = max - out.len();
                // The ids of this shard after `from`, the `want` smallest of them in order, with
                // their chunks (sizes are read after the shard lock is let go).
                let mut found: Vec<(ChunkId, Arc<RwLock<MemChunk>>)> =
                    read_lock(&self.shards[index])
                        .iter()
                        .filter(|(id, _)| from.is_none_or(|f| **id > f))
                        .map(|(id, c)| (*id, Arc::clone(c)))
                        .collect();
                let exhausted = found.len() <= want;
                if !exhausted {
                    found.select_nth_unstable_by_key(want, |(id, _)| *id);
                    found.truncate(want);
                }
                found.sort_unstable_by_key(|(id, _)| *id);
                from = found.last().map(|(id, _)| *id);
                for (id, chunk) in found {
                    let chunk = read_lock(&chunk);
                    // Deleted since the shard was read: not listed (and the shard is read again
                    // after the last id, so no chunk behind it is skipped).
                    if !chunk.deleted {
                        out.push(ListEntry {
                            id,
                            size: chunk.data.len() as u64,
                        });
                    }
                }
                if exhausted {
                    break;
                }
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    fn stat(&self, id: ChunkId) -> Result<ChunkStat, StoreError> {
        let chunk = self.lookup(id).ok_or(StoreError::NotFound(id))?;
        let chunk = read_lock(&chunk);
        if chunk.deleted {
            return Err(StoreError::NotFound(id));
        }
        let cached = chunk.crc.load(Ordering::Relaxed);
        let crc = if cached & CRC_VALID != 0 {
            cached as u32
        } else {
            let crc = crc32c(&chunk.data);
            chunk
                .crc
                .store(CRC_VALID | u64::from(crc), Ordering::Relaxed);
            crc
        };
        Ok(ChunkStat {
            size: chunk.data.len() as u64,
            crc,
        })
    }
}

impl MemStore {
    fn write_with(
        &self,
        id: ChunkId,
        offset: u64,
        data: &[u8],
        crc: Option<u32>,
    ) -> Result<u64, StoreError> {
        let end = write_end(id, offset, data.len(), self.chunk_len_max)?;
        copies::count(Pass::Store, data.len());
        loop {
            let Some(chunk) = self.lookup(id) else {
                match self.create(id, offset, data, crc, end)? {
                    Create::Done(size) => return Ok(size),
                    Create::Raced => continue,
                }
            };
            let mut chunk = write_lock(&chunk);
            if chunk.deleted {
                // Deleted after we looked it up: this write creates the chunk anew.
                continue;
            }
            return self.write_into(&mut chunk, id, offset, data, crc, end);
        }
    }

    /// Runs `f` on the chunk under its read lock, with the range `offset..` of up to `len`
    /// bytes clipped to the chunk (`start`, `len`), and the cached CRC when that range is the
    /// whole chunk. Not found and out of range as `read` says.
    fn with_range<R>(
        &self,
        id: ChunkId,
        offset: u64,
        len: usize,
        f: impl FnOnce(&MemChunk, usize, usize, Option<u32>) -> R,
    ) -> Result<R, StoreError> {
        let chunk = self.lookup(id).ok_or(StoreError::NotFound(id))?;
        let chunk = read_lock(&chunk);
        if chunk.deleted {
            return Err(StoreError::NotFound(id));
        }
        let size = chunk.data.len() as u64;
        if offset > size {
            return Err(StoreError::OutOfRange { id, offset, size });
        }
        let len = len.min((size - offset) as usize);
        let start = offset as usize;
        let cached = chunk.crc.load(Ordering::Relaxed);
        let whole_crc =
            (start == 0 && len as u64 == size && cached & CRC_VALID != 0).then_some(cached as u32);
        Ok(f(&chunk, start, len, whole_crc))
    }

    fn read_shared_inner(
        &self,
        id: ChunkId,
        offset: u64,
        len: usize,
    ) -> Result<SharedRead, StoreError> {
        self.with_range(id, offset, len, |chunk, start, len, whole_crc| {
            let crc = whole_crc.unwrap_or_else(|| {
                copies::count(Pass::Read, len);
                crc32c(&chunk.data[start..start + len])
            });
            SharedRead {
                bytes: Arc::clone(&chunk.data) as Arc<dyn AsRef<[u8]> + Send + Sync>,
                start,
                len,
                crc,
                chunk_size: chunk.data.len() as u64,
            }
        })
    }

    fn read_with(
        &self,
        id: ChunkId,
        offset: u64,
        buf: &mut [u8],
        want_crc: bool,
    ) -> Result<(ReadInfo, u32), StoreError> {
        self.with_range(id, offset, buf.len(), |chunk, start, len, whole_crc| {
            let src = &chunk.data[start..start + len];
            copies::count(Pass::Store, len);
            let crc = match (want_crc, whole_crc) {
                (true, None) => copy_crc(&mut buf[..len], src, 0),
                (_, known) => {
                    buf[..len].copy_from_slice(src);
                    known.unwrap_or(0)
                }
            };
            let info = ReadInfo {
                len,
                chunk_size: chunk.data.len() as u64,
            };
            (info, crc)
        })
    }
}

/// `offset + len`, checked against the chunk size limit.
pub(super) fn write_end(
    id: ChunkId,
    offset: u64,
    len: usize,
    chunk_len_max: u64,
) -> Result<u64, StoreError> {
    let len = len as u64;
    match offset.checked_add(len) {
        Some(end) if end <= chunk_len_max => Ok(end),
        _ => Err(StoreError::ChunkTooLarge {
            id,
            offset,
            len,
            limit: chunk_len_max,
        }),
    }
}

// A panic while a lock is held cannot leave a chunk half-updated in a way later operations
// would trip over (the updates under a lock are copies and a length change), so poisoned locks
// are used as they are.
/// The shard of the chunk map that holds `id`: a fixed hash of the id (also the first key of
/// the listing order).
fn shard_index(id: ChunkId) -> usize {
    let v = id.0;
    let folded = (v as u64) ^ ((v >> 64) as u64);
    let h = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    h as usize % SHARDS
}

fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_store(f: &mut dyn FnMut(&dyn ChunkStore, u64)) {
        let limit = 8 << 20;
        let store = MemStore::new(1 << 30).with_chunk_len_max(limit);
        f(&store, limit);
    }

    crate::chunk::store_contract::contract_tests!(with_store);

    #[test]
    fn a_lent_read_keeps_its_bytes_when_the_chunk_is_written() {
        let store = MemStore::new(1 << 20);
        let v1 = vec![1u8; 5000];
        store.write_crc(ChunkId(3), 0, &v1, crc32c(&v1)).unwrap();
        let lent = store
            .read_shared(ChunkId(3), 1000, 10_000)
            .unwrap()
            .unwrap();
        assert_eq!((lent.len, lent.chunk_size), (4000, 5000));
        assert_eq!(lent.crc, crc32c(&v1[1000..]));
        // Overwritten in place and grown while the answer is out: the answer keeps version 1.
        store.write(ChunkId(3), 0, &[2u8; 6000]).unwrap();
        assert!(lent.as_slice().iter().all(|&b| b == 1));
        let mut buf = [0u8; 6000];
        assert_eq!(store.read(ChunkId(3), 0, &mut buf).unwrap().len, 6000);
        assert!(buf.iter().all(|&b| b == 2));
        // A whole-chunk lend uses the CRC kept from the request, and it is right.
        let v3: Vec<u8> = (0..7000u32).map(|i| i as u8).collect();
        store.write_crc(ChunkId(3), 0, &v3, crc32c(&v3)).unwrap();
        let whole = store.read_shared(ChunkId(3), 0, 1 << 20).unwrap().unwrap();
        assert_eq!(whole.crc, crc32c(&v3));
        assert_eq!(store.stat(ChunkId(3)).unwrap().crc, crc32c(&v3));
        let tail = [9u8; 100];
        store
            .write_crc(ChunkId(3), 7000, &tail, crc32c(&tail))
            .unwrap();
        let mut all = v3.clone();
        all.extend_from_slice(&tail);
        assert_eq!(store.stat(ChunkId(3)).unwrap().crc, crc32c(&all));
        assert!(matches!(
            store.read_shared(ChunkId(3), 9000, 1),
            Some(Err(StoreError::OutOfRange { .. }))
        ));
        assert!(matches!(
            store.read_shared(ChunkId(4), 0, 1),
            Some(Err(StoreError::NotFound(_)))
        ));
    }

    #[test]
    fn budget_gives_no_space_and_changes_nothing() {
        let store = MemStore::new(10_000);
        store.write(ChunkId(1), 0, &[1u8; 6_000]).unwrap();
        assert_eq!(store.used_bytes(), 6_000);

        // A new chunk that does not fit.
        let err = store.write(ChunkId(2), 0, &[2u8; 5_000]).unwrap_err();
        assert!(matches!(err, StoreError::NoSpace(ChunkId(2))), "{err:?}");
        assert!(matches!(
            store.stat(ChunkId(2)),
            Err(StoreError::NotFound(_))
        ));
        // Growth of an existing chunk that does not fit (a gap counts too).
        let err = store.write(ChunkId(1), 9_000, &[3u8; 1_001]).unwrap_err();
        assert_eq!(err.status(), crate::proto::Status::NoSpace);
        assert_eq!(store.stat(ChunkId(1)).unwrap().size, 6_000);
        assert_eq!(store.used_bytes(), 6_000);

        // Overwrites in place need no budget; growth up to the budget exactly is fine.
        store.write(ChunkId(1), 0, &[4u8; 6_000]).unwrap();
        store.write(ChunkId(2), 0, &[5u8; 4_000]).unwrap();
        assert_eq!(store.used_bytes(), 10_000);
        assert!(matches!(
            store.write(ChunkId(3), 0, &[0u8; 1]),
            Err(StoreError::NoSpace(_))
        ));
        // Zero-length writes at or below the end need nothing, and create empty chunks.
        store.write(ChunkId(3), 0, &[]).unwrap();
        assert_eq!(store.stat(ChunkId(3)).unwrap().size, 0);

        // Deleting gives the space back.
        store.delete(ChunkId(1)).unwrap();
        assert_eq!(store.used_bytes(), 4_000);
        store.write(ChunkId(4), 0, &[6u8; 6_000]).unwrap();
        assert_eq!(store.used_bytes(), 10_000);
        assert_eq!(store.chunk_count(), 3);
    }

    #[test]
    fn cached_crc_follows_appends_and_overwrites() {
        let store = MemStore::new(1 << 20);
        let id = ChunkId(9);
        let mut model = Vec::new();
        let steps: [(u64, &[u8]); 6] = [
            (0, b"hello"),
            (5, b" world"),
            (20, b"gap"),
            (2, b"XY"),
            (23, b"!"),
            (24, b""),
        ];
        for (offset, data) in steps {
            store.write(id, offset, data).unwrap();
            let end = offset as usize + data.len();
            if model.len() < end {
                model.resize(end, 0);
            }
            model[offset as usize..end].copy_from_slice(data);
            // STAT twice: the second answer comes from the cache.
            for _ in 0..2 {
                let stat = store.stat(id).unwrap();
                assert_eq!(stat.size, model.len() as u64);
                assert_eq!(stat.crc, crc32c(&model), "after writing at {offset}");
            }
        }
    }
}

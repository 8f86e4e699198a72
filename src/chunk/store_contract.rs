//! The [`ChunkStore`] contract as test functions: what every store must do for the chunk server
//! to be right on top of it (docs/PROTOCOL.md section 4, and the trait's documentation).
//!
//! ustack runs it against `MemStore` and `DirStore`; a store of your own runs it with one
//! [`contract_tests!`] in its tests. Give the macro a function that builds a fresh, empty store
//! and hands it to the closure with its chunk size limit (at least 8 MiB; writes up to 4 MiB
//! reach up to 16 MiB into a chunk when the limit allows). It generates one `#[test]` per
//! contract function:
//!
//! ```
//! # mod doc {
//! use ustack::chunk::{ChunkStore, MemStore};
//!
//! /// The store under test: here a `MemStore` wrapped in a type of your own.
//! struct MyStore(MemStore);
//! # impl ChunkStore for MyStore {
//! #     fn write(&self, id: ustack::proto::ChunkId, offset: u64, data: &[u8])
//! #         -> Result<u64, ustack::chunk::StoreError> { self.0.write(id, offset, data) }
//! #     fn read(&self, id: ustack::proto::ChunkId, offset: u64, buf: &mut [u8])
//! #         -> Result<ustack::chunk::ReadInfo, ustack::chunk::StoreError> { self.0.read(id, offset, buf) }
//! #     fn delete(&self, id: ustack::proto::ChunkId) -> Result<(), ustack::chunk::StoreError> { self.0.delete(id) }
//! #     fn stat(&self, id: ustack::proto::ChunkId)
//! #         -> Result<ustack::chunk::ChunkStat, ustack::chunk::StoreError> { self.0.stat(id) }
//! # }
//!
//! fn with_store(test: &mut dyn FnMut(&dyn ChunkStore, u64)) {
//!     let store = MyStore(MemStore::new(1 << 30));
//!     test(&store, MemStore::new(0).chunk_len_max());
//!     // Checks of your own after each contract test can go here (files left over, ...).
//! }
//!
//! ustack::testing::store_contract::contract_tests!(with_store);
//! # }
//! ```
//!
//! Each function takes the store and its limit and panics on the first broken rule, so a
//! single one can also be called by hand (e.g. again with another configuration of the store).
//! LIST is optional in the trait: a store whose [`ChunkStore::list`] answers
//! [`StoreError::Unsupported`] passes [`list_pages_through_every_chunk_once`] if it says so
//! every time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::chunk::{ChunkStat, ChunkStore, StoreError};
use crate::dev::sim::SplitMix64;
use crate::proto::{crc32c, ChunkId, ListEntry, Status};

/// Largest write the protocol carries (the default payload limit).
const WRITE_LEN_MAX: usize = 4 << 20;

/// Generates one `#[test]` per contract function for a store: see the [module docs](self).
/// `$with_store` is a `fn(&mut dyn FnMut(&dyn ChunkStore, u64))` that builds a fresh store and
/// calls the closure with it and its chunk size limit (at least 8 MiB).
#[doc(hidden)]
#[macro_export]
macro_rules! __ustack_store_contract_tests {
    ($with_store:path) => {
        $crate::__ustack_store_contract_tests!(@each $with_store,
            round_trips_at_random_offsets_and_sizes,
            gaps_read_as_zeros,
            reads_at_and_past_the_end,
            missing_chunks_are_not_found,
            stat_crc_is_crc32c_of_the_content,
            chunk_size_limit,
            overwrites_and_zero_length_writes,
            delete_then_recreate,
            concurrent_writers_on_different_chunks,
            concurrent_writers_and_readers_on_one_chunk,
            list_pages_through_every_chunk_once,
        );
    };
    (@each $with_store:path, $($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                $with_store(&mut |store, limit| {
                    $crate::chunk::store_contract::$name(store, limit)
                });
            }
        )*
    };
}
#[doc(inline)]
pub use __ustack_store_contract_tests as contract_tests;

/// A small seeded generator ([`SplitMix64`]) with the draws the contract makes, so failures
/// reproduce.
pub(crate) struct Rng(SplitMix64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// A length in `1..=max`, log-uniform, so small and large sizes are both common.
    pub(crate) fn len(&mut self, max: usize) -> usize {
        let bits = self.range(0, u64::from(usize::BITS - max.leading_zeros()));
        let hi = (1u64 << bits).min(max as u64);
        self.range(1, hi.max(1)) as usize
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for piece in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            piece.copy_from_slice(&v[..piece.len()]);
        }
    }
}

/// Applies a write to a model of the chunk.
fn model_write(model: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[offset as usize..end].copy_from_slice(data);
}

/// Reads the whole chunk back through `read`, in pieces of `piece` bytes.
fn read_all(store: &dyn ChunkStore, id: ChunkId, piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; piece];
    loop {
        let info = store.read(id, out.len() as u64, &mut buf).unwrap();
        out.extend_from_slice(&buf[..info.len]);
        if info.len < piece {
            assert_eq!(out.len() as u64, info.chunk_size);
            return out;
        }
    }
}

/// Random writes (1 B to 4 MiB, log-uniform; overwrites, appends, gaps) on four chunks, each
/// followed by a random read, checked against a model; then every chunk read whole and STATed.
pub fn round_trips_at_random_offsets_and_sizes(store: &dyn ChunkStore, limit: u64) {
    let seed = 0x5EED_0001;
    let mut rng = Rng::new(seed);
    let mut models: HashMap<ChunkId, Vec<u8>> = HashMap::new();
    let ids = [
        ChunkId(1),
        ChunkId(u128::MAX),
        ChunkId(1 << 100),
        ChunkId(42),
    ];
    let mut data = vec![0u8; WRITE_LEN_MAX];
    for step in 0..40 {
        let id = ids[rng.range(0, 3) as usize];
        let len = rng.len(WRITE_LEN_MAX);
        let model = models.entry(id).or_default();
        // Mostly near the current end (overwrites, appends, small gaps), sometimes anywhere.
        let reach = (model.len() as u64 + 64 * 1024).min(limit - len as u64);
        let offset = if rng.range(0, 3) == 0 {
            rng.range(0, limit - len as u64).min(16 << 20)
        } else {
            rng.range(0, reach)
        };
        let data = &mut data[..len];
        rng.fill(data);
        let size = store.write(id, offset, data).unwrap();
        model_write(model, offset, data);
        assert_eq!(size, model.len() as u64, "seed {seed:#x} step {step}");

        // A random read of the chunk just written.
        let start = rng.range(0, model.len() as u64);
        let want = rng.len(WRITE_LEN_MAX);
        let mut buf = vec![0xAAu8; want];
        let info = store.read(id, start, &mut buf).unwrap();
        let expect = &model[start as usize..(start as usize + want).min(model.len())];
        assert_eq!(info.chunk_size, model.len() as u64);
        assert_eq!(info.len, expect.len());
        assert!(buf[..info.len] == *expect, "seed {seed:#x} step {step}");
    }
    for (id, model) in &models {
        assert!(read_all(store, *id, 1 << 20) == *model);
        let stat = store.stat(*id).unwrap();
        assert_eq!(stat.size, model.len() as u64);
        assert_eq!(stat.crc, crc32c(model));
    }
}

/// A chunk created past offset 0 and grown past its end twice: the bytes in between read as
/// zeros.
pub fn gaps_read_as_zeros(store: &dyn ChunkStore, _limit: u64) {
    let id = ChunkId(0x6A95);
    // A chunk created past offset 0, then grown past its end twice.
    assert_eq!(store.write(id, 1000, b"abc").unwrap(), 1003);
    assert_eq!(store.write(id, 5000, b"de").unwrap(), 5002);
    assert_eq!(store.write(id, (1 << 20) + 7, b"f").unwrap(), (1 << 20) + 8);
    let all = read_all(store, id, 4096);
    let mut model = Vec::new();
    model_write(&mut model, 1000, b"abc");
    model_write(&mut model, 5000, b"de");
    model_write(&mut model, (1 << 20) + 7, b"f");
    assert!(all == model);
    assert!(all[..1000].iter().all(|&b| b == 0));
    assert!(all[1003..5000].iter().all(|&b| b == 0));
}

/// Reads: short at the end, empty exactly at the end, `OutOfRange` past it (with the id,
/// offset and size); an empty chunk.
pub fn reads_at_and_past_the_end(store: &dyn ChunkStore, _limit: u64) {
    let id = ChunkId(77);
    store.write(id, 0, &[9u8; 100]).unwrap();
    let mut buf = [0u8; 64];
    // Short read at the end.
    let info = store.read(id, 60, &mut buf).unwrap();
    assert_eq!((info.len, info.chunk_size), (40, 100));
    // Exactly at the end: 0 bytes, OK.
    let info = store.read(id, 100, &mut buf).unwrap();
    assert_eq!((info.len, info.chunk_size), (0, 100));
    // An empty buffer anywhere inside is fine too.
    assert_eq!(store.read(id, 50, &mut []).unwrap().len, 0);
    // Past the end.
    for offset in [101, 1 << 40, u64::MAX] {
        match store.read(id, offset, &mut buf) {
            Err(StoreError::OutOfRange {
                id: got,
                offset: o,
                size: 100,
            }) => assert_eq!((got, o), (id, offset)),
            other => panic!("read at {offset}: {other:?}"),
        }
    }
    // An empty chunk: reading at 0 gives 0 bytes, at 1 is out of range.
    let empty = ChunkId(78);
    assert_eq!(store.write(empty, 0, &[]).unwrap(), 0);
    assert_eq!(store.read(empty, 0, &mut buf).unwrap().len, 0);
    assert!(matches!(
        store.read(empty, 1, &mut buf),
        Err(StoreError::OutOfRange { .. })
    ));
}

/// READ, STAT and DELETE of chunks that were never written: `NotFound` with the id.
pub fn missing_chunks_are_not_found(store: &dyn ChunkStore, _limit: u64) {
    for id in [ChunkId(0), ChunkId(5), ChunkId(u128::MAX)] {
        let mut buf = [0u8; 8];
        assert!(matches!(store.read(id, 0, &mut buf), Err(StoreError::NotFound(i)) if i == id));
        assert!(matches!(store.stat(id), Err(StoreError::NotFound(i)) if i == id));
        assert!(matches!(store.delete(id), Err(StoreError::NotFound(i)) if i == id));
        assert_eq!(store.stat(id).unwrap_err().status(), Status::NotFound);
    }
}

/// STAT: the size and the CRC32C of the whole content after each of a series of writes.
pub fn stat_crc_is_crc32c_of_the_content(store: &dyn ChunkStore, _limit: u64) {
    let mut rng = Rng::new(0x5EED_0002);
    let id = ChunkId(0xC0C);
    store.write(id, 0, &[]).unwrap();
    assert_eq!(store.stat(id).unwrap(), ChunkStat { size: 0, crc: 0 });
    let mut model = Vec::new();
    for _ in 0..12 {
        let len = rng.len(1 << 20);
        let offset = rng.range(0, model.len() as u64 + 100);
        let mut data = vec![0u8; len];
        rng.fill(&mut data);
        store.write(id, offset, &data).unwrap();
        model_write(&mut model, offset, &data);
        let stat = store.stat(id).unwrap();
        assert_eq!(stat.size, model.len() as u64);
        assert_eq!(stat.crc, crc32c(&model));
    }
    store.write(ChunkId(0xC0D), 0, b"123456789").unwrap();
    assert_eq!(store.stat(ChunkId(0xC0D)).unwrap().crc, 0xE306_9283);
}

/// A write may end exactly at the limit; one past it fails with `ChunkTooLarge` (offsets near
/// `u64::MAX` included), changes nothing and creates no chunk.
pub fn chunk_size_limit(store: &dyn ChunkStore, limit: u64) {
    let id = ChunkId(0x1171);
    // Ending exactly at the limit is fine.
    assert_eq!(store.write(id, limit - 1, b"z").unwrap(), limit);
    for (offset, len) in [(limit - 1, 2), (limit, 1), (u64::MAX, 1), (u64::MAX - 1, 4)] {
        let data = vec![7u8; len];
        match store.write(id, offset, &data) {
            Err(
                e @ StoreError::ChunkTooLarge {
                    id: got,
                    offset: o,
                    len: l,
                    limit: lim,
                },
            ) => {
                assert_eq!((got, o, l, lim), (id, offset, len as u64, limit));
                assert_eq!(e.status(), Status::ChunkTooLarge);
            }
            other => panic!("write of {len} at {offset}: {other:?}"),
        }
    }
    // Nothing changed, and a rejected write does not create a chunk.
    assert_eq!(store.stat(id).unwrap().size, limit);
    let fresh = ChunkId(0x1172);
    assert!(matches!(
        store.write(fresh, limit, b"x"),
        Err(StoreError::ChunkTooLarge { .. })
    ));
    assert!(matches!(store.stat(fresh), Err(StoreError::NotFound(_))));
}

/// Overwrites inside, across and at the end of a chunk; zero-length writes create a chunk, and
/// past the end grow it with zeros.
pub fn overwrites_and_zero_length_writes(store: &dyn ChunkStore, _limit: u64) {
    let id = ChunkId(0x0E);
    let mut model = Vec::new();
    let steps: [(u64, &[u8]); 7] = [
        (0, &[1u8; 100]),
        (10, &[2u8; 20]), // inside
        (90, &[3u8; 30]), // across the end: grows to 120
        (0, &[4u8; 5]),   // at the start
        (120, &[5u8; 1]), // exactly at the end
        (50, b""),        // zero-length inside: nothing changes
        (200, b""),       // zero-length past the end: grows the chunk with zeros
    ];
    for (offset, data) in steps {
        let size = store.write(id, offset, data).unwrap();
        model_write(&mut model, offset, data);
        assert_eq!(size, model.len() as u64, "write at {offset}");
        assert!(read_all(store, id, 7) == model, "after write at {offset}");
    }
    assert_eq!(model.len(), 200);
    // A zero-length write creates a chunk.
    assert_eq!(store.write(ChunkId(0x0F), 0, b"").unwrap(), 0);
    assert_eq!(store.stat(ChunkId(0x0F)).unwrap().size, 0);
    assert_eq!(store.write(ChunkId(0x10), 33, b"").unwrap(), 33);
    assert!(read_all(store, ChunkId(0x10), 8) == [0u8; 33]);
}

/// DELETE removes the chunk (a second one is `NotFound`); a chunk written again under its id
/// holds nothing of the old content.
pub fn delete_then_recreate(store: &dyn ChunkStore, _limit: u64) {
    let id = ChunkId(0xDE1);
    store.write(id, 0, &[1u8; 5000]).unwrap();
    store.write(id, 100, &[2u8; 10]).unwrap();
    store.delete(id).unwrap();
    assert!(matches!(store.stat(id), Err(StoreError::NotFound(_))));
    assert!(matches!(store.delete(id), Err(StoreError::NotFound(_))));
    // Recreated: none of the old content is left.
    assert_eq!(store.write(id, 10, b"new").unwrap(), 13);
    let mut expect = vec![0u8; 10];
    expect.extend_from_slice(b"new");
    assert!(read_all(store, id, 4) == expect);
    assert_eq!(store.stat(id).unwrap().crc, crc32c(&expect));
}

/// Four threads each writing, reading and deleting a chunk of their own.
pub fn concurrent_writers_on_different_chunks(store: &dyn ChunkStore, _limit: u64) {
    let threads = 4u64;
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut rng = Rng::new(0x5EED_1000 + t);
                let id = ChunkId(0xD1F0 + u128::from(t));
                let mut model = Vec::new();
                for _ in 0..25 {
                    let len = rng.len(256 * 1024);
                    let offset = rng.range(0, model.len() as u64 + 1000);
                    let mut data = vec![0u8; len];
                    rng.fill(&mut data);
                    let size = store.write(id, offset, &data).unwrap();
                    model_write(&mut model, offset, &data);
                    assert_eq!(size, model.len() as u64);
                    if rng.range(0, 4) == 0 {
                        assert!(read_all(store, id, 64 * 1024) == model);
                    }
                }
                assert!(read_all(store, id, 1 << 20) == model);
                assert_eq!(store.stat(id).unwrap().crc, crc32c(&model));
                store.delete(id).unwrap();
            });
        }
    });
}

/// Writers on disjoint regions of one chunk and readers of the whole: a read never sees half
/// of a write, and the end holds each writer's last write.
pub fn concurrent_writers_and_readers_on_one_chunk(store: &dyn ChunkStore, _limit: u64) {
    // Each writer owns one region of the same chunk and fills it with one byte value per
    // write; readers check that every region they see holds one value (a read never sees half
    // of a write) and the final content holds each writer's last value.
    const REGION: usize = 64 * 1024;
    const WRITERS: usize = 4;
    const ROUNDS: usize = 30;
    let id = ChunkId(0x5A3E);
    let done = AtomicBool::new(false);
    let value = |writer: usize, round: usize| (1 + writer * ROUNDS + round) as u8;
    std::thread::scope(|s| {
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            writers.push(s.spawn(move || {
                for round in 0..ROUNDS {
                    let data = vec![value(w, round); REGION];
                    let size = store.write(id, (w * REGION) as u64, &data).unwrap();
                    assert!(size >= ((w + 1) * REGION) as u64);
                }
            }));
        }
        for _ in 0..2 {
            s.spawn(|| {
                let mut buf = vec![0u8; WRITERS * REGION];
                let mut reads = 0u32;
                while !done.load(Ordering::Relaxed) || reads < 5 {
                    reads += 1;
                    let info = match store.read(id, 0, &mut buf) {
                        Ok(info) => info,
                        Err(StoreError::NotFound(_)) => continue,
                        Err(e) => panic!("read: {e}"),
                    };
                    assert_eq!(info.len as u64, info.chunk_size);
                    assert_eq!(info.len % REGION, 0, "size is a whole number of regions");
                    for (r, region) in buf[..info.len].chunks(REGION).enumerate() {
                        let first = region[0];
                        assert!(
                            region.iter().all(|&b| b == first),
                            "region {r} holds parts of two writes"
                        );
                    }
                }
            });
        }
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
    });
    let all = read_all(store, id, 100_000);
    assert_eq!(all.len(), WRITERS * REGION);
    for (w, region) in all.chunks(REGION).enumerate() {
        assert!(region.iter().all(|&b| b == value(w, ROUNDS - 1)));
    }
    assert_eq!(store.stat(id).unwrap().crc, crc32c(&all));
}

/// Every chunk in listing order, `page` entries at a time, following the cursor: each page
/// holds at most `page` entries, and a short page is the last.
pub fn list_all(store: &dyn ChunkStore, page: usize) -> Vec<ListEntry> {
    let mut all: Vec<ListEntry> = Vec::new();
    let mut after = None;
    loop {
        let got = store.list(after, page).unwrap();
        assert!(
            got.len() <= page,
            "{} entries for a page of {page}",
            got.len()
        );
        let short = got.len() < page;
        after = got.last().map(|e| e.id);
        all.extend(got);
        if short || page == 0 {
            return all;
        }
    }
}

/// LIST: paging with any page size returns every chunk exactly once with its size, in one
/// order (the same for every page size); any id is a cursor (a deleted one, one never stored);
/// an empty store and a page of 0 list nothing.
///
/// A store that does not list ([`ChunkStore::list`]'s default) passes if it answers every LIST
/// with [`StoreError::Unsupported`], before and after chunks are written.
pub fn list_pages_through_every_chunk_once(store: &dyn ChunkStore, _limit: u64) {
    if let Err(StoreError::Unsupported { .. }) = store.list(None, 10) {
        store.write(ChunkId(1), 0, b"listed?").unwrap();
        for (after, max) in [(None, 10), (Some(ChunkId(0)), 1), (None, 0)] {
            assert!(
                matches!(store.list(after, max), Err(StoreError::Unsupported { .. })),
                "a store that cannot list says so every time (after {after:?}, max {max})"
            );
        }
        return;
    }
    assert!(store.list(None, 10).unwrap().is_empty());
    assert!(store.list(Some(ChunkId(5)), 10).unwrap().is_empty());
    let mut rng = Rng::new(0x11_57);
    let mut model: HashMap<ChunkId, u64> = HashMap::new();
    // Random ids, and the extreme ones; sizes from 0 (a zero-length write creates a chunk).
    let mut ids: Vec<ChunkId> = (0..150)
        .map(|_| ChunkId(u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())))
        .collect();
    ids.extend([ChunkId(0), ChunkId(1), ChunkId(u128::MAX)]);
    for id in ids {
        let size = rng.range(0, 300);
        store.write(id, 0, &vec![7u8; size as usize]).unwrap();
        model.insert(id, size);
    }
    let all = list_all(store, 1000);
    assert_eq!(all.len(), model.len(), "each chunk once");
    for e in &all {
        assert_eq!(model.get(&e.id), Some(&e.size), "{e:?}");
    }
    for page in [
        1,
        2,
        7,
        64,
        all.len() - 1,
        all.len(),
        all.len() + 1,
        1 << 20,
    ] {
        assert_eq!(list_all(store, page), all, "pages of {page}");
    }
    assert!(store.list(None, 0).unwrap().is_empty());
    assert!(store
        .list(Some(all[all.len() - 1].id), 10)
        .unwrap()
        .is_empty());
    // A cursor is a position: after deleting the chunk it names, the listing goes on after it.
    store.delete(all[40].id).unwrap();
    assert_eq!(store.list(Some(all[40].id), 1000).unwrap(), all[41..]);
    assert_eq!(store.list(Some(all[39].id), 3).unwrap(), all[41..44]);
    // An id never stored is a cursor too: what follows it is a tail of the listing.
    let rest: Vec<ListEntry> = all.iter().filter(|e| e.id != all[40].id).copied().collect();
    for _ in 0..20 {
        let cursor = ChunkId(u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()));
        let tail = store.list(Some(cursor), 1000).unwrap();
        assert_eq!(tail, rest[rest.len() - tail.len()..], "after {cursor}");
    }
}

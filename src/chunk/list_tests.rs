//! LIST on the crate's stores beyond the contract ([`store_contract`](crate::chunk::store_contract)):
//! the documented orders, pages of one and larger than the store, pages that cross `DirStore`
//! subdirectories, and the entries `DirStore` must not list.

use std::fs;
use std::path::{Path, PathBuf};

use super::{ChunkStore, DirStore, DirStoreConfig, MemStore, SyncPolicy};
use crate::chunk::store_contract::{list_all, Rng};
use crate::proto::{ChunkId, ListEntry};

/// A directory of its own under the system's temporary directory, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "ustack-list-{tag}-{}-{:x}",
            std::process::id(),
            Rng::new(u64::from(std::process::id())).next_u64()
        ));
        let _ = fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn dir_store(path: &Path) -> DirStore {
    let config = DirStoreConfig {
        sync: SyncPolicy::Never,
        ..DirStoreConfig::default()
    };
    DirStore::open(path, config).unwrap()
}

/// The XOR of an id's 16 bytes: its DirStore subdirectory.
fn subdir_of(id: ChunkId) -> u8 {
    id.0.to_le_bytes().iter().fold(0, |a, b| a ^ b)
}

fn random_id(rng: &mut Rng) -> ChunkId {
    ChunkId(u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()))
}

/// Writes `n` chunks with random ids and sizes; returns them as entries.
fn fill(store: &dyn ChunkStore, n: usize, seed: u64) -> Vec<ListEntry> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let e = ListEntry {
                id: random_id(&mut rng),
                size: rng.range(0, 100),
            };
            store.write(e.id, 0, &vec![1u8; e.size as usize]).unwrap();
            e
        })
        .collect()
}

#[test]
fn dir_store_lists_by_subdirectory_then_id_across_subdirectories() {
    let dir = TempDir::new("order");
    let store = dir_store(&dir.0);
    let mut written = fill(&store, 600, 1);
    // Chunks in the first and last subdirectories, and two in one subdirectory.
    for id in [0u128, 1 << 8 | 1, 0xff, 0x1ff << 1] {
        store.write(ChunkId(id), 0, b"edge").unwrap();
        written.push(ListEntry {
            id: ChunkId(id),
            size: 4,
        });
    }
    written.sort_by_key(|e| (subdir_of(e.id), e.id));
    assert_eq!(list_all(&store, 100_000), written);
    // Pages of 1, of 100 (each spans several subdirectories), and larger than the store.
    for page in [1, 100, 604, 605, 5000] {
        assert_eq!(list_all(&store, page), written, "pages of {page}");
    }
    let subdirs = |page: &[ListEntry]| {
        let mut s: Vec<u8> = page.iter().map(|e| subdir_of(e.id)).collect();
        s.dedup();
        s.len()
    };
    let first = store.list(None, 100).unwrap();
    assert!(subdirs(&first) > 1, "a page of 100 spans subdirectories");
    // A cursor in one subdirectory continues in the next ones.
    let next = store.list(Some(first[99].id), 100).unwrap();
    assert_eq!(next, written[100..200]);
}

#[test]
fn dir_store_lists_only_chunk_files() {
    let dir = TempDir::new("foreign");
    let outside = TempDir::new("outside");
    fs::create_dir_all(&outside.0).unwrap();
    let target = outside.0.join("looks-like-a-chunk");
    fs::write(&target, b"not in the store").unwrap();
    let store = dir_store(&dir.0);
    let id = ChunkId(0xabcd_1234);
    store.write(id, 0, b"mine").unwrap();
    // A chunk with a log beside it (an overwrite leaves an idle log).
    let logged = ChunkId(0x77);
    store.write(logged, 0, b"first").unwrap();
    store.write(logged, 0, b"F").unwrap();
    let sub = |id: ChunkId| dir.0.join(format!("{:02x}", subdir_of(id)));
    let other = ChunkId(0x5678);
    let upper = ChunkId(0xdead_beef);
    let foreign: Vec<PathBuf> = vec![
        dir.0.join("README"),
        dir.0.join(format!("{other}")),
        sub(id).join("notes.txt"),
        sub(id).join(format!("{other:?}")),
        sub(other).join(format!("{other}.tmp")),
        sub(other).join(format!("{other}.log")),
        sub(other).join(format!("{other}.bak")),
        sub(upper).join(format!("{upper}").to_uppercase()),
        sub(other).join(format!("{:031x}", 5u8)),
        sub(other).join(format!("0{other}")),
        // The right name in the wrong subdirectory.
        dir.0
            .join(format!("{:02x}", subdir_of(other) ^ 1))
            .join(format!("{other}")),
    ];
    for path in &foreign {
        fs::write(path, b"foreign").unwrap();
    }
    // A directory and a symlink under chunk names.
    let dir_id = ChunkId(0x9999);
    fs::create_dir(sub(dir_id).join(format!("{dir_id}"))).unwrap();
    let link_id = ChunkId(0x8888);
    std::os::unix::fs::symlink(&target, sub(link_id).join(format!("{link_id}"))).unwrap();
    let mut want = vec![
        ListEntry { id, size: 4 },
        ListEntry {
            id: logged,
            size: 5,
        },
    ];
    want.sort_by_key(|e| (subdir_of(e.id), e.id));
    for page in [1, 2, 3, 1000] {
        assert_eq!(list_all(&store, page), want, "pages of {page}");
    }
    // Listing touched nothing.
    for path in &foreign {
        assert_eq!(fs::read(path).unwrap(), b"foreign", "{}", path.display());
    }
    assert_eq!(fs::read(&target).unwrap(), b"not in the store");
}

#[test]
fn mem_store_pages_of_one_and_larger_than_the_store() {
    let store = MemStore::new(1 << 30);
    let mut written = fill(&store, 500, 2);
    let all = list_all(&store, 1);
    assert_eq!(all.len(), 500);
    for page in [7, 499, 500, 501, 1 << 30] {
        assert_eq!(list_all(&store, page), all, "pages of {page}");
    }
    written.sort();
    let mut listed = all.clone();
    listed.sort();
    assert_eq!(listed, written);
    // Within a shard, ids ascend: consecutive entries either ascend or start a new shard, and
    // the listing moves through at most 64 shards.
    let starts = all.windows(2).filter(|w| w[1].id < w[0].id).count();
    assert!(starts < 64, "{starts} descents");
    // A deleted chunk is not listed; the rest keep their places.
    store.delete(all[10].id).unwrap();
    let after: Vec<ListEntry> = all.iter().filter(|e| e.id != all[10].id).copied().collect();
    assert_eq!(list_all(&store, 3), after);
}

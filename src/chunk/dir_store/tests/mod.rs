use std::sync::atomic::{AtomicU32, Ordering};

use super::layout::{fanout, parse_name, subdir_name, EntryKind, FANOUT, FORMAT_FILE};
use super::*;
use crate::chunk::store_contract::{contract_tests, Rng};
use crate::proto::crc32c;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ustack-dirstore-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const TEST_LIMIT: u64 = 8 << 20;

fn config(sync: SyncPolicy) -> DirStoreConfig {
    DirStoreConfig {
        sync,
        chunk_len_max: TEST_LIMIT,
        ..DirStoreConfig::default()
    }
}

fn with_store(f: &mut dyn FnMut(&dyn ChunkStore, u64)) {
    let dir = TempDir::new("contract");
    let store = DirStore::open(&dir.0, config(SyncPolicy::Never)).unwrap();
    f(&store, TEST_LIMIT);
    // Whatever the test did, the directory reopens clean: nothing left to recover.
    drop(store);
    let store = DirStore::open(&dir.0, config(SyncPolicy::Never)).unwrap();
    let r = store.recovery();
    assert_eq!(
        *r,
        RecoveryReport {
            chunks: r.chunks,
            ..RecoveryReport::default()
        }
    );
}

contract_tests!(with_store);

/// A few contract tests again with real syncs (slower: two fdatasyncs per write).
#[test]
fn contract_with_sync_always() {
    let dir = TempDir::new("always");
    let store = DirStore::open(&dir.0, config(SyncPolicy::Always)).unwrap();
    use crate::chunk::store_contract as c;
    c::overwrites_and_zero_length_writes(&store, TEST_LIMIT);
    c::delete_then_recreate(&store, TEST_LIMIT);
    c::concurrent_writers_on_different_chunks(&store, TEST_LIMIT);
    c::round_trips_at_random_offsets_and_sizes(&store, TEST_LIMIT);
}

fn read_all(store: &DirStore, id: ChunkId) -> Option<Vec<u8>> {
    let stat = match store.stat(id) {
        Ok(stat) => stat,
        Err(StoreError::NotFound(_)) => return None,
        Err(e) => panic!("stat {id}: {e}"),
    };
    let mut buf = vec![0u8; stat.size as usize];
    let info = store.read(id, 0, &mut buf).unwrap();
    assert_eq!(info.len as u64, stat.size);
    assert_eq!(crc32c(&buf), stat.crc, "STAT crc of {id}");
    Some(buf)
}

#[test]
fn every_id_maps_inside_the_directory() {
    let dir = TempDir::new("names");
    let store = DirStore::open(&dir.0, config(SyncPolicy::Never)).unwrap();
    let mut rng = Rng::new(0x5EED_2000);
    let mut ids = vec![
        0u128,
        1,
        u128::MAX,
        1 << 127,
        u128::MAX >> 1,
        0x2e2e_2f2e_2e2f,
    ];
    for shift in 0..128 {
        ids.push(1 << shift);
        ids.push(!(1u128 << shift));
    }
    for _ in 0..1000 {
        ids.push(u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()));
    }
    for &id in &ids {
        let id = ChunkId(id);
        for path in [store.chunk_path(id), store.log_path(id), store.tmp_path(id)] {
            let rel = path.strip_prefix(&dir.0).unwrap();
            let parts: Vec<_> = rel.components().collect();
            assert_eq!(parts.len(), 2, "{}", path.display());
            for part in parts {
                let std::path::Component::Normal(name) = part else {
                    panic!("{}: {part:?}", path.display());
                };
                let name = name.to_str().unwrap();
                assert!(name
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'.' | b'l' | b'o' | b'g' | b't' | b'm' | b'p')));
            }
        }
        let name = store.chunk_path(id);
        let name = name.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_name(name), Some((id, EntryKind::Chunk)));
    }
    // The extreme ids really work, and land where the names say.
    for &id in &ids[..6] {
        let id = ChunkId(id);
        store.write(id, 0, &id.0.to_le_bytes()).unwrap();
        assert!(store.chunk_path(id).is_file());
        assert_eq!(read_all(&store, id).unwrap(), id.0.to_le_bytes());
    }
    // The only top-level entries are the lock file and the fan-out directories.
    let mut top: Vec<String> = fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    let mut expect: Vec<String> = (0..FANOUT).map(subdir_name).collect();
    expect.push(LOCK_FILE.into());
    expect.push(FORMAT_FILE.into());
    expect.sort();
    assert_eq!(top, expect);
}

#[test]
fn chunks_survive_reopen_and_the_directory_is_locked() {
    let dir = TempDir::new("reopen");
    let a = ChunkId(0xA);
    let b = ChunkId(0xB);
    let c = ChunkId(0xC);
    {
        let store = DirStore::open(&dir.0, config(SyncPolicy::Always)).unwrap();
        assert!(matches!(
            DirStore::open(&dir.0, config(SyncPolicy::Always)),
            Err(DirStoreError::Locked { .. })
        ));
        store.write(a, 0, b"created").unwrap();
        store.write(a, 7, b" and extended").unwrap();
        store.write(a, 0, b"CREATED").unwrap();
        store.write(b, 100, b"with a gap").unwrap();
        store.write(c, 0, b"deleted").unwrap();
        store.delete(c).unwrap();
    }
    let store = DirStore::open(&dir.0, config(SyncPolicy::Always)).unwrap();
    assert_eq!(
        *store.recovery(),
        RecoveryReport {
            chunks: 2,
            ..RecoveryReport::default()
        }
    );
    assert_eq!(read_all(&store, a).unwrap(), b"CREATED and extended");
    let mut expect = vec![0u8; 100];
    expect.extend_from_slice(b"with a gap");
    assert_eq!(read_all(&store, b).unwrap(), expect);
    assert_eq!(read_all(&store, c), None);
    // Logs are created by the first extend/overwrite, kept, and removed by delete.
    assert!(store.log_path(a).exists());
    assert!(!store.log_path(b).exists());
    store.write(b, 0, b"c").unwrap();
    assert!(store.log_path(b).exists());
    store.delete(a).unwrap();
    assert!(!store.log_path(a).exists());
}

#[test]
fn invalid_config_and_unusable_directory_are_errors() {
    let dir = TempDir::new("config");
    let bad = DirStoreConfig {
        lock_stripes: 0,
        ..DirStoreConfig::default()
    };
    let err = DirStore::open(&dir.0, bad).unwrap_err();
    assert!(
        matches!(
            err,
            DirStoreError::InvalidConfig {
                field: "lock_stripes",
                ..
            }
        ),
        "{err}"
    );
    let bad = DirStoreConfig {
        chunk_len_max: 0,
        ..DirStoreConfig::default()
    };
    assert!(matches!(
        DirStore::open(&dir.0, bad),
        Err(DirStoreError::InvalidConfig { .. })
    ));
    // A file where the directory should be.
    fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("file");
    fs::write(&file, b"x").unwrap();
    let err = DirStore::open(&file, DirStoreConfig::default()).unwrap_err();
    assert!(matches!(err, DirStoreError::Directory { .. }), "{err}");
    // A file where a fan-out directory should be.
    let store_dir = dir.0.join("store");
    fs::create_dir_all(&store_dir).unwrap();
    fs::write(store_dir.join("7f"), b"x").unwrap();
    let err = DirStore::open(&store_dir, DirStoreConfig::default()).unwrap_err();
    assert!(
        matches!(&err, DirStoreError::Directory { path, .. } if path.ends_with("7f")),
        "{err}"
    );
}

#[test]
fn foreign_entries_are_left_alone() {
    let dir = TempDir::new("foreign");
    let outside = TempDir::new("outside");
    fs::create_dir_all(&outside.0).unwrap();
    let target = outside.0.join("precious");
    fs::write(&target, b"precious").unwrap();

    let id = ChunkId(0xabcd_1234);
    let victim = ChunkId(0x5678);
    let (good_sub, wrong_sub) = {
        let store = DirStore::open(&dir.0, config(SyncPolicy::Never)).unwrap();
        store.write(id, 0, b"mine").unwrap();
        (
            store.subdir(id),
            store.dir.join(subdir_name(fanout(id) ^ 1)),
        )
    };
    let upper = format!("{id}").to_uppercase();
    let foreign: Vec<PathBuf> = vec![
        dir.0.join("README"),
        dir.0.join("0G"),
        dir.0.join("AB"),
        good_sub.join("notes.txt"),
        good_sub.join(format!("{id}.bak")),
        good_sub.join(format!("{:031x}", 5u8)),
        wrong_sub.join(format!("{id}")),
        wrong_sub.join(format!("{id}.tmp")),
        good_sub.join(upper),
    ];
    for path in &foreign {
        fs::write(path, b"foreign").unwrap();
    }
    // A directory and a symlink under chunk names.
    let dir_id = ChunkId(0x9999);
    let as_dir = dir
        .0
        .join(subdir_name(fanout(dir_id)))
        .join(format!("{dir_id}"));
    fs::create_dir(&as_dir).unwrap();
    let link = dir
        .0
        .join(subdir_name(fanout(victim)))
        .join(format!("{victim}"));
    std::os::unix::fs::symlink(&target, &link).unwrap();

    let store = DirStore::open(&dir.0, config(SyncPolicy::Never)).unwrap();
    assert_eq!(store.recovery().foreign_entries, foreign.len() as u64 + 2);
    assert_eq!(store.recovery().chunks, 1);
    for path in &foreign {
        assert_eq!(fs::read(path).unwrap(), b"foreign", "{}", path.display());
    }
    assert_eq!(read_all(&store, id).unwrap(), b"mine");
    // The symlink is never followed, for reading or writing.
    let mut buf = [0u8; 16];
    assert!(matches!(
        store.read(victim, 0, &mut buf),
        Err(StoreError::Io { .. })
    ));
    assert!(matches!(store.stat(victim), Err(StoreError::Io { .. })));
    assert!(matches!(
        store.write(victim, 0, b"evil"),
        Err(StoreError::Io { .. })
    ));
    assert!(matches!(
        store.read(dir_id, 0, &mut buf),
        Err(StoreError::Io { .. })
    ));
    assert_eq!(fs::read(&target).unwrap(), b"precious");
    assert!(as_dir.is_dir());
}

mod crash_states;
mod full_disk;
mod integrity;
mod sigkill;

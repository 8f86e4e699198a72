use std::os::unix::fs::FileExt;

use super::super::layout::{fanout, subdir_name, QUARANTINE_DIR};
use super::crash_states::{chunk_file, extend_log, with};
use super::*;
use crate::chunk::block_sums::BLOCK;

// ---- integrity: damage on disk is found, never served ------------------------------------

fn flip_byte(path: &Path, at: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[b[0] ^ 0x20], at).unwrap();
}

fn is_corrupt<T: std::fmt::Debug>(r: Result<T, StoreError>, id: ChunkId) -> String {
    match r {
        Err(StoreError::Corrupt { id: got, detail }) if got == id => detail,
        r => panic!("expected Corrupt for {id}, got {r:?}"),
    }
}

#[test]
fn a_flipped_byte_is_corrupt_for_reads_of_its_block_only() {
    let dir = TempDir::new("flip");
    let store = DirStore::open(&dir.0, config(SyncPolicy::Never)).unwrap();
    let id = ChunkId(0xf11b);
    let mut rng = Rng::new(0x5EED_8000);
    let mut data = vec![0u8; 5 * BLOCK + 123];
    rng.fill(&mut data);
    store.write(id, 0, &data).unwrap();
    let before = store.stat(id).unwrap();
    flip_byte(&store.chunk_path(id), 2 * BLOCK as u64 + 77);
    assert_eq!(store.corrupt_found(), 0);

    // Any read that touches block 2, whole or in part, is Corrupt and names the block.
    let mut buf = vec![0u8; data.len()];
    let detail = is_corrupt(store.read(id, 0, &mut buf), id);
    assert!(detail.contains("block 2 (bytes 8192..12288)"), "{detail}");
    assert!(detail.contains("stored crc 0x"), "{detail}");
    assert_eq!(store.corrupt_found(), 1);
    is_corrupt(
        store.read_crc(id, 2 * BLOCK as u64 + 70, &mut buf[..10]),
        id,
    );
    is_corrupt(store.read(id, BLOCK as u64 + 5, &mut buf[..BLOCK + 10]), id);
    assert_eq!(store.corrupt_found(), 3);
    // Other blocks still read, whole or in part, with the right CRC.
    for (offset, len) in [(0, 2 * BLOCK), (3 * BLOCK + 1, 2 * BLOCK + 100), (7, 100)] {
        let (info, crc) = store.read_crc(id, offset as u64, &mut buf[..len]).unwrap();
        assert_eq!(info.len, len);
        assert_eq!(&buf[..len], &data[offset..offset + len]);
        assert_eq!(crc, crc32c(&data[offset..offset + len]));
    }
    // STAT reads only the trailer: it still gives the CRC the chunk should have.
    assert_eq!(store.stat(id).unwrap(), before);
    // A write over part of the damaged block is refused; one that replaces the block
    // whole is allowed and heals it.
    is_corrupt(store.write(id, 2 * BLOCK as u64 + 10, b"patch"), id);
    assert_eq!(store.corrupt_found(), 4);
    store
        .write(id, 2 * BLOCK as u64, &data[2 * BLOCK..3 * BLOCK])
        .unwrap();
    assert_eq!(read_all(&store, id).unwrap(), data);
    // Damage in the stored sums is damage too.
    let sums_at = data.len() as u64 + 4;
    flip_byte(&store.chunk_path(id), sums_at);
    is_corrupt(store.read(id, BLOCK as u64, &mut buf[..10]), id);
    is_corrupt(store.stat(id), id);
    is_corrupt(store.write(id, 0, b"x"), id);
    // Delete always works.
    store.delete(id).unwrap();
    assert!(matches!(store.stat(id), Err(StoreError::NotFound(_))));
}

#[test]
fn a_truncated_or_grown_chunk_is_corrupt() {
    let dir = TempDir::new("trunc");
    let store = DirStore::open(&dir.0, config(SyncPolicy::Never)).unwrap();
    let mut data = vec![0u8; 3 * BLOCK + 5];
    Rng::new(0x5EED_8100).fill(&mut data);
    let ids = [ChunkId(1), ChunkId(2), ChunkId(3), ChunkId(4)];
    for id in ids {
        store.write(id, 0, &data).unwrap();
        assert_eq!(store.stat(id).unwrap().size, data.len() as u64);
    }
    let file_len = fs::metadata(store.chunk_path(ids[0])).unwrap().len();
    let cut = |id: ChunkId, len: u64| {
        OpenOptions::new()
            .write(true)
            .open(store.chunk_path(id))
            .unwrap()
            .set_len(len)
            .unwrap()
    };
    cut(ids[0], file_len - 1); // the footer's last byte
    cut(ids[1], data.len() as u64); // the whole trailer
    cut(ids[2], 10); // most of the data
    cut(ids[3], file_len + 4096); // grown
    let mut buf = vec![0u8; 16];
    for id in ids {
        let detail = is_corrupt(store.stat(id), id);
        assert!(
            detail.contains("cut short") || detail.contains("no checksum footer"),
            "{detail}"
        );
        is_corrupt(store.read(id, 0, &mut buf), id);
    }
    assert_eq!(store.corrupt_found(), 8);
}

#[test]
fn partial_block_reads_and_writes_at_odd_offsets_round_trip() {
    let dir = TempDir::new("odd");
    let store = DirStore::open(&dir.0, config(SyncPolicy::Never)).unwrap();
    let mut rng = Rng::new(0x5EED_8200);
    let id = ChunkId(0x0dd);
    let mut model: Vec<u8> = Vec::new();
    for round in 0..300 {
        let len = rng.len(3 * BLOCK);
        let offset = rng.range(0, model.len() as u64 + 2 * BLOCK as u64) as usize;
        let mut data = vec![0u8; len];
        rng.fill(&mut data);
        let size = store.write(id, offset as u64, &data).unwrap();
        model = with(&model, offset, &data);
        assert_eq!(size, model.len() as u64, "round {round}");
        for _ in 0..4 {
            let at = rng.range(0, model.len() as u64) as usize;
            let want = rng.len(3 * BLOCK);
            let mut buf = vec![0u8; want];
            let (info, crc) = store.read_crc(id, at as u64, &mut buf).unwrap();
            let expect = &model[at..(at + want).min(model.len())];
            assert_eq!(&buf[..info.len], expect, "round {round}: read {at}+{want}");
            assert_eq!(crc, crc32c(expect), "round {round}: crc of {at}+{want}");
        }
        assert_eq!(store.stat(id).unwrap().crc, crc32c(&model), "round {round}");
    }
    drop(store);
    // What is on disk is exactly the data and its trailer.
    let store = DirStore::open(&dir.0, config(SyncPolicy::Never)).unwrap();
    assert_eq!(fs::read(store.chunk_path(id)).unwrap(), chunk_file(&model));
    assert_eq!(store.corrupt_found(), 0);
}

#[test]
fn scrub_finds_exactly_the_damaged_chunks_and_quarantines_them() {
    let dir = TempDir::new("scrub");
    let store = DirStore::open(&dir.0, config(SyncPolicy::Always)).unwrap();
    let mut rng = Rng::new(0x5EED_8300);
    let ids: Vec<ChunkId> = (0..20).map(|i| ChunkId(0x5c0b_0000 + i)).collect();
    let mut sizes = 0;
    for (i, &id) in ids.iter().enumerate() {
        let mut data = vec![0u8; 1 + i * 3000];
        rng.fill(&mut data);
        store.write(id, 0, &data).unwrap();
        sizes += data.len() as u64;
    }
    let clean = store.scrub(false).unwrap();
    assert_eq!((clean.chunks, clean.bytes), (20, sizes));
    assert!(clean.damaged.is_empty());

    let (flipped, truncated, footer) = (ids[7], ids[12], ids[19]);
    flip_byte(&store.chunk_path(flipped), 7 * 3000 / 2);
    let path = store.chunk_path(truncated);
    let len = fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let len = fs::metadata(store.chunk_path(footer)).unwrap().len();
    flip_byte(&store.chunk_path(footer), len - 10);

    let report = store.scrub(false).unwrap();
    let mut found: Vec<ChunkId> = report.damaged.iter().map(|f| f.id).collect();
    found.sort();
    assert_eq!(found, vec![flipped, truncated, footer], "{report:?}");
    assert!(report.damaged.iter().all(|f| f.quarantined.is_none()));
    assert_eq!(report.chunks, 20);
    assert_eq!(store.corrupt_found(), 3);
    let flip_detail = &report
        .damaged
        .iter()
        .find(|f| f.id == flipped)
        .unwrap()
        .detail;
    assert!(flip_detail.contains("block 2 "), "{flip_detail}");

    // Still there: a write over part of the damaged block is refused.
    is_corrupt(store.write(flipped, 7 * 3000 / 2, b"x"), flipped);
    let report = store.scrub(true).unwrap();
    assert_eq!(report.damaged.len(), 3);
    for f in &report.damaged {
        let to = f.quarantined.as_ref().unwrap();
        assert!(
            to.starts_with(dir.0.join(QUARANTINE_DIR)),
            "{}",
            to.display()
        );
        assert!(to.is_file());
        assert!(!store.chunk_path(f.id).exists());
        assert!(!store.log_path(f.id).exists());
        assert!(matches!(store.stat(f.id), Err(StoreError::NotFound(_))));
    }
    // The damaged chunks can be written again; the store scrubs clean.
    store.write(flipped, 0, b"again").unwrap();
    let report = store.scrub(false).unwrap();
    assert!(report.damaged.is_empty());
    assert_eq!(report.chunks, 18);
    // A second quarantine of the same chunk does not overwrite the first.
    flip_byte(&store.chunk_path(flipped), 1);
    let report = store.scrub(true).unwrap();
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(fs::read_dir(dir.0.join(QUARANTINE_DIR)).unwrap().count(), 4);
    // The quarantine is the store's own: not foreign, never taken for chunks.
    drop(store);
    let store = DirStore::open(&dir.0, config(SyncPolicy::Always)).unwrap();
    let r = store.recovery();
    assert_eq!((r.foreign_entries, r.chunks), (0, 17), "{r:?}");
}

/// Turns a store's files back into the checksum-less format of the previous version.
fn strip_to_legacy(store_dir: &Path, ids: &[ChunkId], data: &[Vec<u8>]) {
    let store = DirStore::open(store_dir, config(SyncPolicy::Never)).unwrap();
    for (id, d) in ids.iter().zip(data) {
        fs::write(store.chunk_path(*id), d).unwrap();
    }
    drop(store);
    fs::remove_file(store_dir.join(FORMAT_FILE)).unwrap();
}

#[test]
fn a_store_without_checksums_is_migrated_by_open() {
    let dir = TempDir::new("migrate");
    let mut rng = Rng::new(0x5EED_8400);
    let ids: Vec<ChunkId> = (0..6).map(|i| ChunkId(0x01d0_0000 + i)).collect();
    let mut data: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            let mut d = vec![0u8; [0, 1, 4096, 4097, 100_000, 3][i]];
            rng.fill(&mut d);
            d
        })
        .collect();
    {
        let store = DirStore::open(&dir.0, config(SyncPolicy::Always)).unwrap();
        for (id, d) in ids.iter().zip(&data) {
            store.write(*id, 0, d).unwrap();
        }
    }
    strip_to_legacy(&dir.0, &ids, &data);
    // And the old version crashed in the middle of an append to chunk 4: its extend record
    // (old format: no trailer) must be rolled back before the migration.
    let old_store = DirStore::open(&dir.0, config(SyncPolicy::Never)).unwrap();
    let (log_path, chunk_path) = (old_store.log_path(ids[4]), old_store.chunk_path(ids[4]));
    let (tmp_path, chunk5) = (old_store.tmp_path(ids[5]), old_store.chunk_path(ids[5]));
    drop(old_store);
    // (that open migrated the store again: strip it once more)
    strip_to_legacy(&dir.0, &ids, &data);
    fs::write(
        &log_path,
        extend_log(ids[4], 100_000, &[9u8; 5000], 100_000),
    )
    .unwrap();
    fs::write(&chunk_path, with(&data[4], 100_000, &[9u8; 2000])).unwrap();

    let store = DirStore::open(&dir.0, config(SyncPolicy::Always)).unwrap();
    let r = *store.recovery();
    assert_eq!(
        (r.chunks, r.chunks_migrated, r.extends_rolled_back),
        (6, 6, 1),
        "{r:?}"
    );
    assert!(dir.0.join(FORMAT_FILE).is_file());
    for (id, d) in ids.iter().zip(&data) {
        assert_eq!(&read_all(&store, *id).unwrap(), d);
        assert_eq!(fs::read(store.chunk_path(*id)).unwrap(), chunk_file(d));
    }
    // New writes and a reopen: nothing more to migrate.
    store.write(ids[1], 1, b"more").unwrap();
    data[1] = with(&data[1], 1, b"more");
    drop(store);
    let store = DirStore::open(&dir.0, config(SyncPolicy::Always)).unwrap();
    assert_eq!(store.recovery().chunks_migrated, 0);
    assert_eq!(read_all(&store, ids[1]).unwrap(), data[1]);
    drop(store);

    // A crash in the middle of a migration: some chunks migrated, one half-copied into its
    // .tmp, no marker yet. Open finishes the job.
    strip_to_legacy(&dir.0, &ids, &data);
    for (id, d) in ids.iter().zip(&data).take(3) {
        let path = dir.0.join(subdir_name(fanout(*id))).join(id.to_string());
        fs::write(path, chunk_file(d)).unwrap();
    }
    fs::write(&tmp_path, &chunk_file(&data[5])[..2]).unwrap();
    assert_eq!(fs::read(&chunk5).unwrap(), data[5]);
    let store = DirStore::open(&dir.0, config(SyncPolicy::Always)).unwrap();
    let r = *store.recovery();
    assert_eq!(
        (r.chunks, r.chunks_migrated, r.temp_files_removed),
        (6, 3, 1),
        "{r:?}"
    );
    for (id, d) in ids.iter().zip(&data) {
        assert_eq!(&read_all(&store, *id).unwrap(), d);
    }
    assert!(store.scrub(false).unwrap().damaged.is_empty());
}

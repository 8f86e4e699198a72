use super::super::record::{read_log, LogState, Record, RecordKind, RECORD_HEADER_LEN};
use super::*;
use crate::chunk::block_sums::BLOCK;

// ---- recovery from the states a crash leaves ----------------------------------------------

/// Writes the files of one crash state, opens the store, and checks the chunk.
struct CrashCase {
    name: &'static str,
    /// Chunk file content before opening (None: no chunk file).
    chunk: Option<Vec<u8>>,
    /// Log file content (None: no log).
    log: Option<Vec<u8>>,
    /// Temp file content (None: none).
    tmp: Option<Vec<u8>>,
    /// What the chunk must read after open (None: absent).
    expect: Option<Vec<u8>>,
    /// The report `open` must give (with `chunks` filled in from `expect`).
    report: RecoveryReport,
}

fn redo_log(id: ChunkId, offset: u64, data: &[u8], old_size: u64) -> Vec<u8> {
    let record = Record {
        kind: RecordKind::Redo,
        id,
        offset,
        len: data.len() as u64,
        old_size,
        data_crc: crc32c(data),
    };
    let mut log = record.emit().to_vec();
    log.extend_from_slice(data);
    log
}

pub(super) fn extend_log(id: ChunkId, offset: u64, data: &[u8], old_size: u64) -> Vec<u8> {
    Record {
        kind: RecordKind::Extend,
        id,
        offset,
        len: data.len() as u64,
        old_size,
        data_crc: crc32c(data),
    }
    .emit()
    .to_vec()
}

pub(super) fn with(base: &[u8], offset: usize, data: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    if v.len() < offset + data.len() {
        v.resize(offset + data.len(), 0);
    }
    v[offset..offset + data.len()].copy_from_slice(data);
    v
}

/// A chunk file as the store writes it: the data, then its checksum trailer.
pub(super) fn chunk_file(data: &[u8]) -> Vec<u8> {
    let all: Vec<u32> = data.chunks(BLOCK).map(crc32c).collect();
    let mut file = data.to_vec();
    file.extend_from_slice(&sums::emit_trailer(data.len() as u64, &all));
    file
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one table of crash states, each a few lines, read best side by side"
)]
fn open_repairs_every_crash_state() {
    let id = ChunkId(0x00c0_ffee_0000_0000_0000_0000_0000_0001);
    let mut rng = Rng::new(0x5EED_3000);
    let mut bytes = |n: usize| {
        let mut v = vec![0u8; n];
        rng.fill(&mut v);
        v
    };
    let old = bytes(300_000);
    let new = bytes(100_000);
    let at = 123_457usize; // overwrite at old[at..at + new.len()]
    let overwritten = with(&old, at, &new);
    let appended = with(&old, old.len(), &new);
    let gap = 5_000usize;
    let gapped = with(&old, old.len() + gap, &new);
    let at_end = old.len() - 1_000; // an overwrite that grows the chunk
    let grown = with(&old, at_end, &new);
    let redo = redo_log(id, at as u64, &new, old.len() as u64);
    let redo_grow = redo_log(id, at_end as u64, &new, old.len() as u64);
    let extend = extend_log(id, old.len() as u64, &new, old.len() as u64);
    let extend_gap = extend_log(id, (old.len() + gap) as u64, &new, old.len() as u64);
    let report = RecoveryReport::default();
    let old_file = chunk_file(&old);
    let old_trailer_len = sums::trailer_len(old.len() as u64) as usize;
    assert!(gap > old_trailer_len);

    let mut torn_redo_data = redo.clone();
    torn_redo_data.truncate(RECORD_HEADER_LEN + new.len() / 2);
    let mut torn_redo_flipped = redo.clone();
    torn_redo_flipped[RECORD_HEADER_LEN + 777] ^= 0x10;
    let mut torn_header = extend.clone();
    torn_header[40] ^= 1; // the length field
    let other_id = extend_log(ChunkId(id.0 + 1), old.len() as u64, &new, old.len() as u64);
    // Torn in-place writes: the data half written, the trailer still the old one.
    let half_overwrite = with(&old_file, at, &new[..new.len() / 2 + 3]);
    let half_grow = with(&old_file, at_end, &new[..new.len() / 2 + 3]);
    // The data written, not yet its sums (or only some of them).
    let overwrite_no_sums = with(&old_file, at, &new);
    let mut overwrite_some_sums = overwrite_no_sums.clone();
    let k = at / BLOCK + 3;
    overwrite_some_sums[old.len() + 4 * k..old.len() + 4 * k + 4]
        .copy_from_slice(&crc32c(&overwritten[k * BLOCK..(k + 1) * BLOCK]).to_le_bytes());
    // An append writes over the old trailer.
    let half_append = with(&old_file, old.len(), &new[..4096 * 3 + 17]);
    // Power loss: the size reached the disk, the data blocks did not (they read as zeros).
    let append_without_data = with(&old_file, old.len(), &vec![0u8; new.len()]);
    let append_no_trailer = with(&old_file, old.len(), &new);
    let mut append_half_trailer = chunk_file(&appended);
    append_half_trailer.truncate(appended.len() + 100);
    // A gap: the old trailer zeroed, nothing else yet.
    let gap_zeroed = with(&old_file, old.len(), &vec![0u8; old_trailer_len]);
    // Power loss: the data persisted, the zeroing of the old trailer in the gap did not.
    let gap_not_zeroed = with(&old_file, old.len() + gap, &new);

    let cases = vec![
        CrashCase {
            name: "create: leftover temp file, no chunk",
            chunk: None,
            log: None,
            tmp: Some(new[..5000].to_vec()),
            expect: None,
            report: RecoveryReport {
                temp_files_removed: 1,
                ..report
            },
        },
        CrashCase {
            name: "create: empty temp file",
            chunk: None,
            log: None,
            tmp: Some(Vec::new()),
            expect: None,
            report: RecoveryReport {
                temp_files_removed: 1,
                ..report
            },
        },
        CrashCase {
            name: "create: renamed, nothing else to do",
            chunk: Some(chunk_file(&new)),
            log: None,
            tmp: None,
            expect: Some(new.clone()),
            report,
        },
        CrashCase {
            name: "overwrite: log created, record not written",
            chunk: Some(old_file.clone()),
            log: Some(Vec::new()),
            tmp: None,
            expect: Some(old.clone()),
            report,
        },
        CrashCase {
            name: "overwrite: record data cut short",
            chunk: Some(old_file.clone()),
            log: Some(torn_redo_data),
            tmp: None,
            expect: Some(old.clone()),
            report: RecoveryReport {
                logs_discarded: 1,
                ..report
            },
        },
        CrashCase {
            name: "overwrite: record data half-persisted (CRC fails)",
            chunk: Some(old_file.clone()),
            log: Some(torn_redo_flipped),
            tmp: None,
            expect: Some(old.clone()),
            report: RecoveryReport {
                logs_discarded: 1,
                ..report
            },
        },
        CrashCase {
            name: "overwrite: record header cut short",
            chunk: Some(old_file.clone()),
            log: Some(redo[..40].to_vec()),
            tmp: None,
            expect: Some(old.clone()),
            report: RecoveryReport {
                logs_discarded: 1,
                ..report
            },
        },
        CrashCase {
            name: "overwrite: valid record, chunk not yet touched",
            chunk: Some(old_file.clone()),
            log: Some(redo.clone()),
            tmp: None,
            expect: Some(overwritten.clone()),
            report: RecoveryReport {
                overwrites_replayed: 1,
                ..report
            },
        },
        CrashCase {
            name: "overwrite: valid record, chunk torn",
            chunk: Some(half_overwrite),
            log: Some(redo.clone()),
            tmp: None,
            expect: Some(overwritten.clone()),
            report: RecoveryReport {
                overwrites_replayed: 1,
                ..report
            },
        },
        CrashCase {
            name: "overwrite: valid record, data written, sums not",
            chunk: Some(overwrite_no_sums),
            log: Some(redo.clone()),
            tmp: None,
            expect: Some(overwritten.clone()),
            report: RecoveryReport {
                overwrites_replayed: 1,
                ..report
            },
        },
        CrashCase {
            name: "overwrite: valid record, data and some sums written, footer not",
            chunk: Some(overwrite_some_sums),
            log: Some(redo.clone()),
            tmp: None,
            expect: Some(overwritten.clone()),
            report: RecoveryReport {
                overwrites_replayed: 1,
                ..report
            },
        },
        CrashCase {
            name: "overwrite: valid record, chunk complete",
            chunk: Some(chunk_file(&overwritten)),
            log: Some(redo.clone()),
            tmp: None,
            expect: Some(overwritten.clone()),
            report: RecoveryReport {
                overwrites_replayed: 1,
                ..report
            },
        },
        CrashCase {
            name: "overwrite growing the chunk: valid record, chunk torn",
            chunk: Some(half_grow),
            log: Some(redo_grow.clone()),
            tmp: None,
            expect: Some(grown.clone()),
            report: RecoveryReport {
                overwrites_replayed: 1,
                sums_rebuilt: 1,
                ..report
            },
        },
        CrashCase {
            name: "overwrite growing the chunk: valid record, chunk complete",
            chunk: Some(chunk_file(&grown)),
            log: Some(redo_grow),
            tmp: None,
            expect: Some(grown.clone()),
            report: RecoveryReport {
                overwrites_replayed: 1,
                ..report
            },
        },
        CrashCase {
            name: "extend: record header corrupt",
            chunk: Some(old_file.clone()),
            log: Some(torn_header),
            tmp: None,
            expect: Some(old.clone()),
            report: RecoveryReport {
                logs_discarded: 1,
                ..report
            },
        },
        CrashCase {
            name: "extend: valid record, chunk not yet touched",
            chunk: Some(old_file.clone()),
            log: Some(extend.clone()),
            tmp: None,
            expect: Some(old.clone()),
            report: RecoveryReport {
                extends_rolled_back: 1,
                ..report
            },
        },
        CrashCase {
            name: "extend: valid record, append cut short (over the old trailer)",
            chunk: Some(half_append),
            log: Some(extend.clone()),
            tmp: None,
            expect: Some(old.clone()),
            report: RecoveryReport {
                extends_rolled_back: 1,
                sums_rebuilt: 1,
                ..report
            },
        },
        CrashCase {
            name: "extend: valid record, size persisted but not the data",
            chunk: Some(append_without_data),
            log: Some(extend.clone()),
            tmp: None,
            expect: Some(old.clone()),
            report: RecoveryReport {
                extends_rolled_back: 1,
                sums_rebuilt: 1,
                ..report
            },
        },
        CrashCase {
            name: "extend: valid record, data written, trailer not",
            chunk: Some(append_no_trailer),
            log: Some(extend.clone()),
            tmp: None,
            expect: Some(appended.clone()),
            report: RecoveryReport {
                extends_complete: 1,
                sums_rebuilt: 1,
                ..report
            },
        },
        CrashCase {
            name: "extend: valid record, data written, trailer cut short",
            chunk: Some(append_half_trailer),
            log: Some(extend.clone()),
            tmp: None,
            expect: Some(appended.clone()),
            report: RecoveryReport {
                extends_complete: 1,
                sums_rebuilt: 1,
                ..report
            },
        },
        CrashCase {
            name: "extend: valid record, append complete",
            chunk: Some(chunk_file(&appended)),
            log: Some(extend.clone()),
            tmp: None,
            expect: Some(appended.clone()),
            report: RecoveryReport {
                extends_complete: 1,
                ..report
            },
        },
        CrashCase {
            name: "extend after a gap: hole written, data not",
            chunk: Some(with(&old_file, old.len() + gap - 1, &[0])),
            log: Some(extend_gap.clone()),
            tmp: None,
            expect: Some(old.clone()),
            report: RecoveryReport {
                extends_rolled_back: 1,
                ..report
            },
        },
        CrashCase {
            name: "extend after a gap: old trailer zeroed, data not written",
            chunk: Some(gap_zeroed),
            log: Some(extend_gap.clone()),
            tmp: None,
            expect: Some(old.clone()),
            report: RecoveryReport {
                extends_rolled_back: 1,
                sums_rebuilt: 1,
                ..report
            },
        },
        CrashCase {
            name: "extend after a gap: data persisted, old trailer not zeroed",
            chunk: Some(gap_not_zeroed),
            log: Some(extend_gap.clone()),
            tmp: None,
            expect: Some(gapped.clone()),
            report: RecoveryReport {
                extends_complete: 1,
                sums_rebuilt: 1,
                ..report
            },
        },
        CrashCase {
            name: "extend after a gap: complete",
            chunk: Some(chunk_file(&gapped)),
            log: Some(extend_gap),
            tmp: None,
            expect: Some(gapped),
            report: RecoveryReport {
                extends_complete: 1,
                ..report
            },
        },
        CrashCase {
            name: "any: record invalidated (zeroed)",
            chunk: Some(chunk_file(&appended)),
            log: Some(vec![0u8; RECORD_HEADER_LEN]),
            tmp: None,
            expect: Some(appended.clone()),
            report,
        },
        CrashCase {
            name: "a record naming another chunk",
            chunk: Some(old_file.clone()),
            log: Some(other_id),
            tmp: None,
            expect: Some(old.clone()),
            report: RecoveryReport {
                logs_discarded: 1,
                ..report
            },
        },
        CrashCase {
            name: "delete: log removed, chunk not yet",
            chunk: Some(old_file.clone()),
            log: None,
            tmp: None,
            expect: Some(old.clone()),
            report,
        },
        CrashCase {
            name: "orphan log (its chunk is gone)",
            chunk: None,
            log: Some(redo.clone()),
            tmp: None,
            expect: None,
            report: RecoveryReport {
                orphan_logs_removed: 1,
                ..report
            },
        },
    ];

    for case in cases {
        for sync in [SyncPolicy::Always, SyncPolicy::Never] {
            let dir = TempDir::new("crash");
            let paths = {
                let store = DirStore::open(&dir.0, config(sync)).unwrap();
                (store.chunk_path(id), store.log_path(id), store.tmp_path(id))
            };
            for (content, path) in [
                (&case.chunk, &paths.0),
                (&case.log, &paths.1),
                (&case.tmp, &paths.2),
            ] {
                if let Some(content) = content {
                    fs::write(path, content).unwrap();
                }
            }
            let store = DirStore::open(&dir.0, config(sync)).unwrap();
            let mut expect_report = case.report;
            expect_report.chunks = u64::from(case.expect.is_some());
            assert_eq!(*store.recovery(), expect_report, "{}", case.name);
            assert!(
                read_all(&store, id) == case.expect,
                "{}: wrong content after recovery",
                case.name
            );
            // The trailer is exactly what a clean write would have left.
            if let Some(expect) = &case.expect {
                assert!(
                    fs::read(&paths.0).unwrap() == chunk_file(expect),
                    "{}: wrong chunk file (trailer) after recovery",
                    case.name
                );
            }
            assert!(!paths.2.exists(), "{}: temp file left", case.name);
            if let Ok(log) = File::open(&paths.1) {
                assert!(case.expect.is_some(), "{}: orphan log left", case.name);
                assert_eq!(read_log(&log).unwrap(), LogState::Idle, "{}", case.name);
            }
            // The repaired chunk takes writes again, and a second open finds nothing.
            store.write(id, 10, b"after").unwrap();
            drop(store);
            let store = DirStore::open(&dir.0, config(sync)).unwrap();
            assert_eq!(store.recovery().chunks, 1, "{}", case.name);
            assert_eq!(
                *store.recovery(),
                RecoveryReport {
                    chunks: 1,
                    ..report
                }
            );
        }
    }
}

#[test]
fn a_valid_record_left_by_a_failed_write_is_repaired_before_the_next_write() {
    let dir = TempDir::new("leftover");
    let store = DirStore::open(&dir.0, config(SyncPolicy::Never)).unwrap();
    let id = ChunkId(77);
    store.write(id, 0, &[1u8; 1000]).unwrap();
    store.write(id, 0, &[2u8; 10]).unwrap(); // creates the log
                                             // As if an overwrite had failed after its record was written and could not be undone.
    fs::write(store.log_path(id), redo_log(id, 500, &[3u8; 100], 1000)).unwrap();
    store.write(id, 1000, &[4u8; 10]).unwrap();
    let mut expect = vec![1u8; 1010];
    expect[..10].fill(2);
    expect[500..600].fill(3);
    expect[1000..].fill(4);
    assert_eq!(read_all(&store, id).unwrap(), expect);
}

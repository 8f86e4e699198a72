//! [`DirStore`]: one file per chunk under a directory, crash-safe, every block checksummed.
//!
//! # Layout
//!
//! ```text
//! <dir>/LOCK                      held with flock(2) while a DirStore has the directory open
//! <dir>/FORMAT                    format marker: chunk files carry checksum trailers
//! <dir>/00 .. <dir>/ff            256 fan-out subdirectories, created by `open`
//! <dir>/<ff>/<32 hex digits>      a chunk: its content, then its checksum trailer (below)
//! <dir>/<ff>/<32 hex digits>.log  the chunk's redo log (at most one record; see below)
//! <dir>/<ff>/<32 hex digits>.tmp  a chunk being created (or migrated)
//! <dir>/quarantine/<id>.<n>.damaged  damaged chunk files moved aside by `scrub(true)`
//! ```
//!
//! The file name is the chunk id as 32 lowercase hex digits ([`ChunkId`]'s `Display`), and the
//! subdirectory is the XOR of the id's 16 bytes as 2 hex digits, so every id maps to a name made
//! of `[0-9a-f.]` inside the directory: no id can name a path outside it. Names are derived from
//! the id only. Anything else found in the directory (other names, uppercase hex, a chunk in
//! the wrong subdirectory, a symlink) is foreign: `open` logs and counts it and leaves it
//! alone. `quarantine/` is the store's own but never scanned: nothing in it is taken for a
//! chunk. Files are opened with `O_NOFOLLOW`, so a symlink planted under a chunk's name is
//! never followed (operations on that chunk fail with an I/O error instead).
//!
//! # Integrity: the checksum trailer
//!
//! A chunk file of `size` bytes of data is `size + 4 n + 32` bytes long:
//!
//! ```text
//! data (size bytes) | sum[0] .. sum[n-1] (u32 LE; n = ceil(size / 4096)) | footer (32 bytes)
//! footer: magic "uCHKSUM1" | version u32 | block size u32 (4096) | size u64 |
//!         sums_crc u32 (CRC32C of the sums' bytes) | footer_crc u32 (CRC32C of the footer's first 28 bytes)
//! ```
//!
//! `sum[k]` is the CRC32C of data block `k` (4 KiB; the last may be short). Keeping the sums in
//! the chunk's own file means one `fdatasync` covers data and sums, and every write path below
//! stays as it was, with the trailer written beside the data. A file whose footer is missing
//! or damaged, or whose length is not what the footer's `size` implies (cut short, grown), is
//! damaged as a whole.
//!
//! * **READ** reads the footer (checking its CRC and the file length) and the sums of the
//!   blocks it touches, reads whole blocks straight into the caller's buffer and checks each
//!   there (that CRC pass is the one a READ needed anyway for its answer's CRC, which is then
//!   combined from the sums with `crc32c_combine`, no second pass), and reads a block it
//!   needs only part of whole into a 4 KiB scratch block, checks it, and copies the part. It
//!   does not check `sums_crc` (that needs every sum); a damaged sum of a block it reads fails
//!   that block's check anyway.
//! * **STAT** reads the trailer alone, checks the footer and `sums_crc`, and combines the sums:
//!   no data is read, and the answer is what is on disk (no cache to go stale).
//! * **WRITE** computes the sums of the blocks it changes from the new data (the same pass
//!   that gives the data's CRC32C). A block it changes only in part is read whole, checked
//!   against its old sum, patched and summed; if the check fails the write answers `Corrupt`
//!   and changes nothing, so a write never vouches for damaged bytes. A write that replaces
//!   damaged blocks whole is allowed (that heals them). DELETE works on any chunk.
//!
//! A failed check answers [`StoreError::Corrupt`] (protocol status `Corrupt`: nothing of the
//! chunk is served), is logged (`tracing::error!`, naming the chunk, its file, the block and
//! the stored and found CRCs in hex) and counted ([`DirStore::corrupt_found`]).
//! [`DirStore::scrub`] checks every block of every chunk while the store serves, and can move
//! damaged chunks to `quarantine/` (the file server's `--scrub`).
//!
//! # Writes and crash safety
//!
//! The guarantee, for a process crash (SIGKILL) at any instant, and under
//! [`SyncPolicy::Always`] also for a power loss: **every acknowledged WRITE reads back intact;
//! an unacknowledged WRITE is either absent or intact, never torn**; an unacknowledged DELETE
//! leaves the chunk intact or absent. A plain `pwrite` cannot give this: a fatal signal can
//! cut a large write short between pages, and a power loss can keep any subset of its blocks.
//! So each write takes one of three paths, decided under the chunk's lock:
//!
//! * **Create** (the chunk file does not exist): the data and its trailer go to `<id>.tmp` (a
//!   gap before `offset` is a hole, which reads as zeros), which is `fdatasync`ed, renamed to
//!   `<id>`, and the subdirectory `fsync`ed. The rename is atomic: the chunk appears whole or
//!   not at all.
//! * **Extend** (`offset >= size`: an append, possibly after a gap): a 64-byte *extend record*
//!   `{id, offset, len, old_size, crc32c(data)}` is written to `<id>.log` and synced; then the
//!   old trailer's bytes inside a gap are zeroed (a gap reads as zeros), the data is written
//!   in place over the old trailer, the new trailer (the old sums of the blocks before
//!   `old_size`, new ones from there) after the new end, and the chunk file synced.
//!   Recovery can tell a complete extend (the new bytes are there and match the CRC) from a
//!   torn one, and truncates a torn one back to `old_size`, which is exactly the old content.
//! * **Overwrite** (`offset < size`): a *redo record*, the same header followed by the data, is
//!   written to `<id>.log` and synced, then the data is written in place, with the sums of the
//!   blocks it changed and the footer (or, if it grew the chunk, a whole new trailer after the
//!   new end), and the chunk synced. Recovery rewrites the range from the record, which
//!   finishes a torn write.
//!
//! After the in-place write the record is invalidated (its header zeroed, its data cut off)
//! without a sync. The log file of a chunk is created by its first extend or overwrite (with a
//! directory `fsync`) and then reused, so the common append path costs two `fdatasync`s and no
//! directory change. A record left valid is always the last write to that chunk (every write
//! to an existing chunk goes through the log, and DELETE removes the log before the chunk), so
//! replaying a record whose write had already completed changes nothing: recovery is
//! idempotent, and losing an invalidation to a power loss is harmless.
//!
//! Records are CRC-checked: a header with its own CRC32C, the data with the CRC in the
//! header. A record cut short or half-persisted fails the check and is discarded; that is
//! safe because the record is synced before the chunk is touched, so a bad record means the
//! chunk still holds its old content, trailer included. **Without a valid record the trailer
//! is trusted**: a chunk's file is only ever changed under a synced record (or created
//! whole), so a trailer that does not match its data is damage, not a crash.
//!
//! **With a valid record, recovery applies it and then makes the trailer right**: if the
//! trailer is whole and its sums of the blocks the write touched match the data (the write
//! had completed), nothing; else the touched blocks' sums are recomputed from the data (which
//! the record proves correct) and the footer rewritten. An overwrite inside the chunk leaves
//! the trailer in place, so the other blocks keep their sums. But a write that grew the chunk
//! (an extend, or an overwrite past the end) wrote over the old trailer, and when its new
//! trailer is not complete the sums of *every* block are rebuilt from the data as it is then
//! read (counted in [`RecoveryReport::sums_rebuilt`], logged): a block of that chunk that had
//! rotted unnoticed before the crash is vouched for from then on. The same holds for a torn
//! extend rolled back, unless its old trailer is still whole after `old_size` (then kept).
//! Blocks a write changed in part were checked against their old sums when it ran.
//!
//! **Recovery runs in [`DirStore::open`]**, which scans every subdirectory. It removes leftover
//! `.tmp` files and logs whose chunk does not exist, applies every valid record (syncing the
//! chunk under `Always`) and then invalidates it, and discards invalid ones; logs with nothing
//! in them are kept for the next write. It does not check the chunks' data (that is
//! [`DirStore::scrub`]'s job). The states a crash can leave, and what `open` makes of each
//! (the tests in this file build each one, and check the trailer after):
//!
//! | crash during / after                        | on disk                                   | `open` does                                  | result  |
//! |---------------------------------------------|-------------------------------------------|----------------------------------------------|---------|
//! | create: writing or syncing `.tmp`           | `.tmp` (any content), no chunk            | removes `.tmp`                               | absent  |
//! | create: after the rename                    | chunk complete, maybe no dir sync yet     | nothing                                      | new     |
//! | extend/overwrite: creating the log          | empty `.log`, chunk untouched             | nothing                                      | old     |
//! | extend/overwrite: writing the record        | record torn (CRC fails), chunk untouched  | invalidates the record                       | old     |
//! | extend: before the data                     | valid extend record, old trailer whole    | truncates to `old_size` + old trailer        | old     |
//! | extend: writing the data                    | valid extend record, chunk tail torn       | truncates to `old_size`, rebuilds the sums   | old     |
//! | extend: data written, not (all) the trailer | valid extend record, data complete         | zeroes the gap, rebuilds the sums            | new     |
//! | extend: after the trailer                   | valid extend record, chunk complete        | keeps the chunk                              | new     |
//! | overwrite: writing the data                 | valid redo record, range torn              | rewrites the range, recomputes its sums      | new     |
//! | overwrite: data written, sums not (all)     | valid redo record, old sums / footer       | recomputes the range's sums and the footer   | new     |
//! | overwrite past the end: torn                | valid redo record, old trailer overwritten | rewrites the range, rebuilds the sums        | new     |
//! | overwrite: after the trailer                | valid redo record, chunk complete          | rewrites it again (no change)                | new     |
//! | any: after invalidating the record          | zeroed record                              | nothing                                      | new     |
//! | delete: between removing `.log` and chunk   | chunk without `.log`                       | nothing                                      | intact  |
//! | (a record of a chunk that does not exist)   | orphan `.log`                              | removes it                                   | absent  |
//!
//! A write is acknowledged (returns `Ok`) only after the in-place data is synced (under
//! `Always`), so an acknowledged write is complete on disk whatever happens next. If the
//! in-place step fails with an error (a full disk, an I/O error), the write path runs the same
//! repair at once (truncating a failed extend back, or retrying the overwrite); a record that
//! still cannot be applied stays valid, and the next write to the chunk or the next `open`
//! repairs it first.
//!
//! # Existing stores (no checksums)
//!
//! The version before checksums wrote chunk files with no trailer and no `FORMAT` marker.
//! `open` on a directory without the marker (a new one, or an old store) first recovers it by
//! that version's rules (its log records have the same format; an extend was complete when
//! the file was exactly `offset + len` bytes), syncing each invalidated record, then migrates
//! every chunk file: the data and its trailer are copied to `<id>.tmp`, synced and renamed
//! over `<id>` (so each chunk is old or new, never half-done; it costs one copy of the data),
//! then the subdirectory is synced, and last the marker is written (`FORMAT.tmp`, synced,
//! renamed). A crash mid-migration leaves no marker, and the next `open` runs it again: the
//! `.tmp` is removed, and chunks that already carry a valid trailer whose sums match every
//! block are skipped (only a file crafted to end with such a trailer for its own prefix could
//! be mistaken for migrated). It is logged, and counted in
//! [`RecoveryReport::chunks_migrated`]. A marker naming another format is an error
//! ([`DirStoreError::UnknownFormat`]).
//!
//! # Durability: [`SyncPolicy`]
//!
//! * `Always` (the default): `fdatasync` of the record and of the chunk for extends and
//!   overwrites; `fdatasync` of the new file and `fsync` of its subdirectory for creates;
//!   `fsync` of the subdirectory after a delete. Two syncs per write, whatever the path (the
//!   trailer shares the chunk's sync).
//! * `Never`: no sync at all; the data sits in the OS page cache. A process crash loses nothing
//!   (the page cache survives it, and recovery still repairs torn writes), but a power loss or
//!   kernel crash can lose acknowledged writes and can leave chunks torn, since nothing orders
//!   the record before the data on disk. For benchmarks and scratch data.
//!
//! # Costs
//!
//! Every operation opens the chunk's file (there is no descriptor cache). The trailer takes
//! 4 bytes per 4 KiB (0.1%) plus 32 bytes per chunk.
//!
//! * READ: one `open` and `fstat`, a `pread` of the footer, one of the sums it needs, one of
//!   the whole blocks, and one per partly read edge block (at most two, 4 KiB each); one CRC
//!   pass over the bytes read (the check), plus up to 8 KiB for the edges.
//! * STAT: reads the whole trailer (for a 64 MiB chunk, 64 KiB) and combines the sums: O(size
//!   / 4 KiB) table lookups, no data read.
//! * WRITE: one CRC pass over the data (as before), plus reads of the whole trailer (to check
//!   it and compute the footer's `sums_crc`) and of up to two partly written blocks. An
//!   overwrite writes its data twice (record and chunk) plus the changed sums and the footer;
//!   an extend writes 64 extra bytes of record and the whole new trailer (which moves to the
//!   new end).
//! * Recovery: per valid record as before, plus a pass over the touched range; a pass over
//!   the whole chunk when its sums must be rebuilt (a crash tore a write that grew it).
//!   Migration: one copy of every chunk, once.
//!
//! # Concurrency
//!
//! Chunks hash to [`DirStoreConfig::lock_stripes`] reader-writer locks. READ and STAT share
//! their stripe; WRITE and DELETE hold it exclusively for the whole operation (syncs
//! included), so a reader never sees half a write, and two chunks wait for each other only when
//! they share a stripe (1 in 256 by default). A scrub holds each chunk's stripe while it checks
//! that chunk: shared, or exclusive when it quarantines. A `LOCK` file held with `flock` keeps
//! a second `DirStore` (in this process or another) out of the directory.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use super::block_sums::{self as sums, Footer, BLOCK, FOOTER_LEN};
use super::mem_store::write_end;
use super::store::{ChunkStat, ChunkStore, ReadInfo, StoreError};
use crate::copies::{self, Pass};
use crate::proto::{crc32c, crc32c_append, ChunkId, Limits};

/// When a write is durable before [`DirStore`] acknowledges it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Sync data (and directories, when files are created, renamed or removed) before
    /// returning: acknowledged writes survive a power loss. The default.
    #[default]
    Always,
    /// Never sync: acknowledged writes survive a process crash but not a power loss or kernel
    /// crash, which can also leave chunks torn. For benchmarks and scratch data.
    Never,
}

/// Settings of a [`DirStore`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DirStoreConfig {
    /// Durability of acknowledged writes. Default [`SyncPolicy::Always`].
    pub sync: SyncPolicy,
    /// Largest chunk: a write reaching past it fails with [`StoreError::ChunkTooLarge`].
    /// Default 64 MiB ([`Limits::DEFAULT_CHUNK_LEN_MAX`]).
    pub chunk_len_max: u64,
    /// Number of chunk locks; chunks that hash to the same one serialise their writes.
    /// Default 256. At least 1.
    pub lock_stripes: usize,
}

impl DirStoreConfig {
    /// The defaults: sync always, 64 MiB chunks, 256 lock stripes.
    pub const DEFAULT: DirStoreConfig = DirStoreConfig {
        sync: SyncPolicy::Always,
        chunk_len_max: Limits::DEFAULT_CHUNK_LEN_MAX,
        lock_stripes: 256,
    };
}

impl Default for DirStoreConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why [`DirStore::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DirStoreError {
    /// A configuration value that cannot work.
    #[error("invalid DirStoreConfig: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What it must be.
        reason: &'static str,
    },
    /// The store directory or one of its subdirectories could not be created or used.
    #[error("cannot create or use store directory {path}: {source} (check that the parent exists, is writable, and that {path} is a directory)")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another `DirStore`, in this process or another, has the directory open.
    #[error("store directory {path} is in use: another DirStore holds {path}/LOCK; close it (or stop the process using it) first")]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock store directory through {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The directory's `FORMAT` marker names a format this version does not know (a newer
    /// version's store?).
    #[error("store directory format marker {path} says {found:?}, a format this version does not know; open it with the version that wrote it")]
    UnknownFormat {
        /// The marker file.
        path: PathBuf,
        /// Its first line.
        found: String,
    },
    /// Recovery failed on a file: reading it, repairing the chunk, syncing or removing it.
    #[error("recovering {path} failed while {action}: {source}; the file is left as it was, and open can be retried once the cause is fixed")]
    Recovery {
        /// The file (or directory) being recovered.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What [`DirStore::open`] found and repaired.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Chunk files present after recovery.
    pub chunks: u64,
    /// Leftover `.tmp` files of creates that never finished, removed.
    pub temp_files_removed: u64,
    /// Redo records applied (overwrites finished, or rewritten unchanged).
    pub overwrites_replayed: u64,
    /// Extend records whose append had completed: chunk kept as it was.
    pub extends_complete: u64,
    /// Extend records whose append was torn: chunk truncated to its old size.
    pub extends_rolled_back: u64,
    /// Logs with no valid record (invalidated, torn, or not ours), removed.
    pub logs_discarded: u64,
    /// Logs of chunks that do not exist, removed.
    pub orphan_logs_removed: u64,
    /// Entries that are not the store's, left alone.
    pub foreign_entries: u64,
    /// Chunk files of a store written by an earlier version (no checksums), given their
    /// checksum trailer by this `open` (see the module docs, "Existing stores").
    pub chunks_migrated: u64,
    /// Chunks whose checksums recovery rebuilt from their data after a crash in the middle
    /// of an append (see the module docs: their older bytes are vouched for as read then).
    pub sums_rebuilt: u64,
}

impl std::fmt::Display for RecoveryReport {
    /// In words, naming only what happened: `2 chunks, nothing to repair`, or `5 chunks; 1
    /// overwrite replayed, 2 leftover temporary files removed`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} chunks", self.chunks)?;
        let done = [
            (self.temp_files_removed, "leftover temporary files removed"),
            (self.overwrites_replayed, "overwrites replayed"),
            (self.extends_complete, "appends found complete"),
            (self.extends_rolled_back, "torn appends rolled back"),
            (self.logs_discarded, "spent logs removed"),
            (self.orphan_logs_removed, "logs without a chunk removed"),
            (
                self.chunks_migrated,
                "chunks given checksums (older format)",
            ),
            (self.sums_rebuilt, "checksums rebuilt after a torn append"),
            (
                self.foreign_entries,
                "entries that are not the store's left alone",
            ),
        ];
        let mut sep = "; ";
        let mut any = false;
        for (n, what) in done {
            if n > 0 {
                write!(f, "{sep}{n} {what}")?;
                sep = ", ";
                any = true;
            }
        }
        if !any {
            write!(f, ", nothing to repair")?;
        }
        Ok(())
    }
}

/// A damaged chunk found by [`DirStore::scrub`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrubFinding {
    /// The chunk.
    pub id: ChunkId,
    /// What failed, and where.
    pub detail: String,
    /// Where the chunk file was moved, when the scrub quarantined it.
    pub quarantined: Option<PathBuf>,
}

/// What [`DirStore::scrub`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Chunks checked (every block and the trailer of each).
    pub chunks: u64,
    /// Data bytes of the chunks found intact.
    pub bytes: u64,
    /// Chunks found damaged, in the order checked.
    pub damaged: Vec<ScrubFinding>,
    /// Chunks that were deleted (or rewritten) between the listing and their check.
    pub vanished: u64,
}

/// A chunk store with one file per chunk under a directory; see the [module docs](self) for
/// the layout, the crash-safety design and the costs.
///
/// ```
/// use ustack::chunk::{ChunkStore, DirStore, DirStoreConfig, SyncPolicy};
/// use ustack::proto::ChunkId;
///
/// let dir = std::env::temp_dir().join(format!("ustack-doc-dirstore-{}", std::process::id()));
/// let config = DirStoreConfig { sync: SyncPolicy::Never, ..DirStoreConfig::default() };
/// let store = DirStore::open(&dir, config)?;
/// store.write(ChunkId(1), 0, b"hello")?;
/// assert_eq!(store.stat(ChunkId(1))?.size, 5);
/// drop(store);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    config: DirStoreConfig,
    stripes: Box<[Stripe]>,
    recovery: RecoveryReport,
    /// Damaged chunks detected by reads, STATs, writes and scrubs since `open`.
    corrupt_found: AtomicU64,
    /// Holds the flock on `LOCK` for the store's lifetime.
    _lock: File,
}

#[derive(Debug, Default)]
struct Stripe {
    lock: RwLock<()>,
}

/// How long `open` waits for a directory lock that is about to be released.
const LOCK_WAIT_MAX: Duration = Duration::from_millis(500);
const LOCK_RETRY: Duration = Duration::from_millis(10);
const LOCK_FILE: &str = "LOCK";
/// The format marker: its presence says every chunk file carries a checksum trailer.
const FORMAT_FILE: &str = "FORMAT";
const FORMAT_TMP: &str = "FORMAT.tmp";
const FORMAT_TEXT: &str = "ustack DirStore format 2: chunk files carry block CRC32C trailers\n";
/// Where [`DirStore::scrub`] moves damaged chunk files.
const QUARANTINE_DIR: &str = "quarantine";
const FANOUT: usize = 256;
const LOG_SUFFIX: &str = ".log";
const TMP_SUFFIX: &str = ".tmp";
/// Bytes read at a time when a chunk is checksummed.
const CRC_PIECE: usize = 1 << 20;

// ---- the redo log record ----------------------------------------------------------------------

const RECORD_MAGIC: [u8; 8] = *b"uCHKLOG1";
/// The record header: magic 8 | kind u32 | zero u32 | id u128 | offset u64 | len u64 |
/// old_size u64 | data_crc u32 | header_crc u32 (CRC32C of bytes 0..60), little-endian.
/// A redo record's data follows it.
const RECORD_HEADER_LEN: usize = 64;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum RecordKind {
    /// Data follows the header; replay rewrites `offset..offset+len`.
    Redo = 1,
    /// No data; replay keeps `offset..offset+len` if it matches `data_crc`, else truncates the
    /// chunk to `old_size`.
    Extend = 2,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Record {
    kind: RecordKind,
    id: ChunkId,
    offset: u64,
    len: u64,
    old_size: u64,
    data_crc: u32,
}

impl Record {
    fn emit(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0..8].copy_from_slice(&RECORD_MAGIC);
        h[8..12].copy_from_slice(&(self.kind as u32).to_le_bytes());
        h[16..32].copy_from_slice(&self.id.0.to_le_bytes());
        h[32..40].copy_from_slice(&self.offset.to_le_bytes());
        h[40..48].copy_from_slice(&self.len.to_le_bytes());
        h[48..56].copy_from_slice(&self.old_size.to_le_bytes());
        h[56..60].copy_from_slice(&self.data_crc.to_le_bytes());
        let crc = crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The record in `h`, if the header is whole and self-consistent.
    fn parse(h: &[u8; RECORD_HEADER_LEN]) -> Option<Record> {
        let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap());
        if h[0..8] != RECORD_MAGIC || u32_at(60) != crc32c(&h[..60]) || u32_at(12) != 0 {
            return None;
        }
        let kind = match u32_at(8) {
            1 => RecordKind::Redo,
            2 => RecordKind::Extend,
            _ => return None,
        };
        let record = Record {
            kind,
            id: ChunkId(u128::from_le_bytes(h[16..32].try_into().unwrap())),
            offset: u64_at(32),
            len: u64_at(40),
            old_size: u64_at(48),
            data_crc: u32_at(56),
        };
        record.offset.checked_add(record.len)?;
        if kind == RecordKind::Extend && record.old_size > record.offset {
            return None;
        }
        Some(record)
    }
}

/// What a record did to its chunk.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Repair {
    /// An empty or invalidated log: nothing to do.
    Idle,
    /// A log that holds no valid record (torn, corrupt, or naming another chunk): the chunk was
    /// not touched by its write.
    Discarded,
    /// Redo record written to the chunk.
    Replayed,
    /// Extend record found complete.
    ExtendComplete,
    /// Extend record found torn: chunk truncated to its old size.
    ExtendRolledBack,
}

// ---- names ------------------------------------------------------------------------------------

/// The fan-out subdirectory index of a chunk: the XOR of its 16 bytes.
fn fanout(id: ChunkId) -> usize {
    id.0.to_le_bytes().iter().fold(0u8, |a, b| a ^ b) as usize
}

fn subdir_name(index: usize) -> String {
    format!("{index:02x}")
}

/// What a directory entry's name says it is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum EntryKind {
    Chunk,
    Log,
    Temp,
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses `<32 lowercase hex>[.log|.tmp]`; anything else is foreign.
fn parse_name(name: &str) -> Option<(ChunkId, EntryKind)> {
    let (stem, kind) = if let Some(stem) = name.strip_suffix(LOG_SUFFIX) {
        (stem, EntryKind::Log)
    } else if let Some(stem) = name.strip_suffix(TMP_SUFFIX) {
        (stem, EntryKind::Temp)
    } else {
        (name, EntryKind::Chunk)
    };
    if stem.len() != 32 || !is_lower_hex(stem) {
        return None;
    }
    let id = u128::from_str_radix(stem, 16).ok()?;
    Some((ChunkId(id), kind))
}

impl DirStore {
    /// Opens (creating it if missing) the store in `dir`, locks it, and recovers from any
    /// crash: see the [module docs](self) for what is repaired. Takes time proportional to
    /// the number of files, plus the data of records that must be replayed.
    pub fn open(dir: impl AsRef<Path>, config: DirStoreConfig) -> Result<DirStore, DirStoreError> {
        if config.chunk_len_max == 0 {
            return Err(DirStoreError::InvalidConfig {
                field: "chunk_len_max",
                value: 0,
                reason: "must be at least 1 byte (default 64 MiB)",
            });
        }
        if config.lock_stripes == 0 {
            return Err(DirStoreError::InvalidConfig {
                field: "lock_stripes",
                value: 0,
                reason: "must be at least 1 (default 256)",
            });
        }
        let dir = dir.as_ref().to_path_buf();
        let dir_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DirStoreError::Directory { path, source }
        };
        let existed = dir.is_dir();
        fs::create_dir_all(&dir).map_err(dir_err(&dir))?;
        if !existed && config.sync == SyncPolicy::Always {
            // Make the new directory's own entry durable (its parent's; any higher levels
            // `create_dir_all` made are not synced).
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)
                    .and_then(|p| p.sync_all())
                    .map_err(dir_err(parent))?;
            }
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|source| DirStoreError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        // A lock can outlive its owner for a moment: a process being forked holds a copy of the
        // descriptor until it execs, and a store closing in another process needs a moment.
        // Retry briefly before calling the directory taken.
        let mut waited = Duration::ZERO;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if waited < LOCK_WAIT_MAX => {
                    std::thread::sleep(LOCK_RETRY);
                    waited += LOCK_RETRY;
                }
                Err(TryLockError::WouldBlock) => return Err(DirStoreError::Locked { path: dir }),
                Err(TryLockError::Error(source)) => {
                    return Err(DirStoreError::Lock {
                        path: lock_path,
                        source,
                    })
                }
            }
        }

        let stripes: Box<[Stripe]> = (0..config.lock_stripes)
            .map(|_| Stripe::default())
            .collect();
        let mut store = DirStore {
            dir,
            config,
            stripes,
            recovery: RecoveryReport::default(),
            corrupt_found: AtomicU64::new(0),
            _lock: lock,
        };

        let mut created = false;
        for index in 0..FANOUT {
            let sub = store.dir.join(subdir_name(index));
            match fs::create_dir(&sub) {
                Ok(()) => created = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let meta = fs::metadata(&sub).map_err(dir_err(&sub))?;
                    if !meta.is_dir() {
                        return Err(DirStoreError::Directory {
                            path: sub,
                            source: io::Error::new(
                                io::ErrorKind::AlreadyExists,
                                "exists and is not a directory",
                            ),
                        });
                    }
                }
                Err(e) => return Err(dir_err(&sub)(e)),
            }
        }
        if created {
            store.sync_dir(&store.dir).map_err(dir_err(&store.dir))?;
        }
        // Without the format marker the chunk files (if any) are an earlier version's, without
        // checksums: recover them with that version's rules, then migrate.
        let legacy = !store.read_format()?;
        store.recover(legacy)?;
        if legacy {
            store.migrate()?;
        }
        tracing::info!(dir = %store.dir.display(), recovery = %store.recovery, "DirStore open");
        Ok(store)
    }

    /// Whether the format marker is there (and names this format).
    fn read_format(&self) -> Result<bool, DirStoreError> {
        let path = self.dir.join(FORMAT_FILE);
        match fs::read_to_string(&path) {
            Ok(text) if text == FORMAT_TEXT => Ok(true),
            Ok(text) => Err(DirStoreError::UnknownFormat {
                path,
                found: text.chars().take(80).collect(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(DirStoreError::Recovery {
                path,
                action: "reading the format marker",
                source,
            }),
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &DirStoreConfig {
        &self.config
    }

    /// What `open` found and repaired.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The path of a chunk's file (which may not exist).
    pub fn chunk_path(&self, id: ChunkId) -> PathBuf {
        self.subdir(id).join(format!("{id}"))
    }

    fn subdir(&self, id: ChunkId) -> PathBuf {
        self.dir.join(subdir_name(fanout(id)))
    }

    fn log_path(&self, id: ChunkId) -> PathBuf {
        self.subdir(id).join(format!("{id}{LOG_SUFFIX}"))
    }

    fn tmp_path(&self, id: ChunkId) -> PathBuf {
        self.subdir(id).join(format!("{id}{TMP_SUFFIX}"))
    }

    fn stripe(&self, id: ChunkId) -> &Stripe {
        let v = id.0;
        let folded = (v as u64) ^ ((v >> 64) as u64);
        let h = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        &self.stripes[h as usize % self.stripes.len()]
    }

    fn always(&self) -> bool {
        self.config.sync == SyncPolicy::Always
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        if self.always() {
            file.sync_data()?;
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.always() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    // ---- recovery -----------------------------------------------------------------------------

    fn recover(&mut self, legacy: bool) -> Result<(), DirStoreError> {
        let mut report = RecoveryReport::default();
        let top = fs::read_dir(&self.dir).map_err(|source| DirStoreError::Recovery {
            path: self.dir.clone(),
            action: "listing the directory",
            source,
        })?;
        for entry in top {
            let entry = entry.map_err(|source| DirStoreError::Recovery {
                path: self.dir.clone(),
                action: "listing the directory",
                source,
            })?;
            let name = entry.file_name();
            let ours = name.to_str().is_some_and(|n| {
                [LOCK_FILE, FORMAT_FILE, FORMAT_TMP, QUARANTINE_DIR].contains(&n)
                    || (n.len() == 2 && is_lower_hex(n))
            });
            if !ours {
                report.foreign_entries += 1;
                tracing::warn!(path = %entry.path().display(), "DirStore: ignoring a foreign entry");
            }
        }
        for index in 0..FANOUT {
            let sub = self.dir.join(subdir_name(index));
            self.recover_subdir(index, &sub, legacy, &mut report)?;
        }
        if report != RecoveryReport::default() {
            tracing::info!(dir = %self.dir.display(), %report, "DirStore recovery");
        }
        self.recovery = report;
        Ok(())
    }

    fn recover_subdir(
        &self,
        index: usize,
        sub: &Path,
        legacy: bool,
        report: &mut RecoveryReport,
    ) -> Result<(), DirStoreError> {
        let listing_err = |source| DirStoreError::Recovery {
            path: sub.to_path_buf(),
            action: "listing the directory",
            source,
        };
        let mut chunks = Vec::new();
        let mut logs = Vec::new();
        let mut temps = Vec::new();
        for entry in fs::read_dir(sub).map_err(listing_err)? {
            let entry = entry.map_err(listing_err)?;
            let name = entry.file_name();
            let parsed = name.to_str().and_then(parse_name);
            let is_file = entry.file_type().map_err(listing_err)?.is_file();
            match parsed {
                Some((id, kind)) if is_file && fanout(id) == index => match kind {
                    EntryKind::Chunk => chunks.push(id),
                    EntryKind::Log => logs.push(id),
                    EntryKind::Temp => temps.push(id),
                },
                _ => {
                    report.foreign_entries += 1;
                    tracing::warn!(path = %entry.path().display(), "DirStore: ignoring a foreign entry");
                }
            }
        }
        let mut changed = false;
        for id in temps {
            let path = self.tmp_path(id);
            fs::remove_file(&path).map_err(|source| DirStoreError::Recovery {
                path,
                action: "removing an unfinished create",
                source,
            })?;
            report.temp_files_removed += 1;
            changed = true;
        }
        chunks.sort_unstable();
        for id in logs {
            let log_path = self.log_path(id);
            let rec_err = |action| {
                let path = log_path.clone();
                move |source| DirStoreError::Recovery {
                    path,
                    action,
                    source,
                }
            };
            if chunks.binary_search(&id).is_err() {
                fs::remove_file(&log_path).map_err(rec_err("removing an orphan log"))?;
                report.orphan_logs_removed += 1;
                changed = true;
                continue;
            }
            let chunk = open_rw(&self.chunk_path(id)).map_err(rec_err("opening the chunk"))?;
            let log = open_rw(&log_path).map_err(rec_err("opening the log"))?;
            let repair = if legacy {
                self.repair_legacy(id, &chunk, &log)
            } else {
                self.repair(id, &chunk, &log).map(|(repair, rebuilt)| {
                    report.sums_rebuilt += u64::from(rebuilt);
                    repair
                })
            };
            match repair.map_err(rec_err("applying the log record"))? {
                // The normal state after a clean shutdown: the log is kept for the next write.
                Repair::Idle => continue,
                Repair::Discarded => report.logs_discarded += 1,
                Repair::Replayed => report.overwrites_replayed += 1,
                Repair::ExtendComplete => report.extends_complete += 1,
                Repair::ExtendRolledBack => report.extends_rolled_back += 1,
            }
            // The chunk is repaired and synced: the record is no longer needed.
            invalidate(&log, true).map_err(rec_err("invalidating the log record"))?;
            if legacy {
                // The migration that follows changes the chunk file: an old-format record
                // must not come back after a power loss and be applied to it.
                self.sync_data(&log)
                    .map_err(rec_err("syncing the invalidated log"))?;
            }
        }
        if changed {
            self.sync_dir(sub)
                .map_err(|source| DirStoreError::Recovery {
                    path: sub.to_path_buf(),
                    action: "syncing the directory",
                    source,
                })?;
        }
        report.chunks += chunks.len() as u64;
        Ok(())
    }

    /// The previous (checksum-less) version's repair, for a store `open` is about to migrate:
    /// applies the record in `log`, if valid, to `chunk` (data only; no trailer) and syncs it.
    fn repair_legacy(&self, id: ChunkId, chunk: &File, log: &File) -> io::Result<Repair> {
        let record = match read_log(log)? {
            LogState::Idle => return Ok(Repair::Idle),
            LogState::Invalid => return Ok(Repair::Discarded),
            LogState::Record(record) => record,
        };
        if record.id != id {
            return Ok(Repair::Discarded);
        }
        let repair = match record.kind {
            RecordKind::Redo => match read_redo_data(log, &record)? {
                None => return Ok(Repair::Discarded),
                Some(data) => {
                    chunk.write_all_at(&data, record.offset)?;
                    Repair::Replayed
                }
            },
            RecordKind::Extend => {
                let size = chunk.metadata()?.len();
                let end = record.offset + record.len;
                if size == end && crc_of_range(chunk, record.offset, record.len)? == record.data_crc
                {
                    Repair::ExtendComplete
                } else {
                    chunk.set_len(record.old_size)?;
                    Repair::ExtendRolledBack
                }
            }
        };
        self.sync_data(chunk)?;
        tracing::debug!(chunk = %id, ?record, ?repair, "DirStore: applied an old-format log record");
        Ok(repair)
    }

    /// Applies the record in `log`, if there is a valid one, to `chunk`, brings the chunk's
    /// checksum trailer in line with its data, and syncs the chunk (per the policy). Does not
    /// invalidate the record: the caller does, once this returns. Also returns whether the
    /// block sums had to be rebuilt from the whole chunk's data (see the module docs).
    fn repair(&self, id: ChunkId, chunk: &File, log: &File) -> io::Result<(Repair, bool)> {
        let record = match read_log(log)? {
            LogState::Idle => return Ok((Repair::Idle, false)),
            LogState::Invalid => return Ok((Repair::Discarded, false)),
            LogState::Record(record) => record,
        };
        if record.id != id {
            return Ok((Repair::Discarded, false));
        }
        let end = record.offset + record.len;
        let old_size = record.old_size;
        let (repair, rebuilt) = match record.kind {
            RecordKind::Redo => {
                let Some(data) = read_redo_data(log, &record)? else {
                    return Ok((Repair::Discarded, false));
                };
                chunk.write_all_at(&data, record.offset)?;
                // An overwrite inside the chunk leaves the trailer where it was: the sums of
                // the blocks it did not touch are still right. One that grew the chunk wrote
                // over the old trailer.
                let rebuilt = self.fix_trailer(
                    id,
                    chunk,
                    old_size.max(end),
                    (record.offset, end),
                    end <= old_size,
                )?;
                (Repair::Replayed, rebuilt)
            }
            RecordKind::Extend => {
                let file_len = chunk.metadata()?.len();
                if file_len >= end
                    && crc_of_range(chunk, record.offset, record.len)? == record.data_crc
                {
                    // The gap before the new data reads as zeros: the old trailer's bytes in
                    // it may not have been zeroed yet.
                    let old_file_len = old_size + sums::trailer_len(old_size);
                    zero_range(chunk, old_size, record.offset.min(old_file_len))?;
                    let rebuilt = self.fix_trailer(id, chunk, end, (old_size, end), false)?;
                    (Repair::ExtendComplete, rebuilt)
                } else {
                    (
                        Repair::ExtendRolledBack,
                        self.roll_back(id, chunk, old_size)?,
                    )
                }
            }
        };
        self.sync_data(chunk)?;
        tracing::debug!(chunk = %id, ?record, ?repair, rebuilt, "DirStore: applied a log record");
        Ok((repair, rebuilt))
    }

    /// Cuts a chunk whose extend was torn back to `old_size` bytes of data, with the old
    /// trailer if it is still whole after them, else with sums rebuilt from the data (returns
    /// true then).
    fn roll_back(&self, id: ChunkId, chunk: &File, old_size: u64) -> io::Result<bool> {
        let old_file_len = old_size + sums::trailer_len(old_size);
        if chunk.metadata()?.len() >= old_file_len {
            match read_trailer(chunk, old_file_len) {
                Ok(_) => {
                    chunk.set_len(old_file_len)?;
                    return Ok(false);
                }
                Err(Fault::Io(_, e)) => return Err(e),
                Err(Fault::Damage(_)) => {}
            }
        }
        chunk.set_len(old_size)?;
        let all = file_block_sums(chunk, old_size, 0, sums::blocks(old_size))?;
        chunk.write_all_at(&sums::emit_trailer(old_size, &all), old_size)?;
        tracing::warn!(chunk = %id, size = old_size, "DirStore: a torn append had overwritten the chunk's checksums: rebuilt from its data");
        Ok(true)
    }

    /// Makes the trailer of a chunk of `size` bytes of data right after a write to
    /// `touched` (data bytes) was replayed or found complete: nothing if the trailer is whole
    /// and matches the touched blocks; else the touched blocks' sums recomputed from the data,
    /// keeping the others if `keep_untouched` (the trailer did not move); else every sum
    /// recomputed (returns true then).
    fn fix_trailer(
        &self,
        id: ChunkId,
        chunk: &File,
        size: u64,
        touched: (u64, u64),
        keep_untouched: bool,
    ) -> io::Result<bool> {
        let n = sums::blocks(size);
        let k0 = (touched.0 / BLOCK as u64).min(n);
        let k1 = touched.1.div_ceil(BLOCK as u64).min(n);
        let file_len = chunk.metadata()?.len();
        let fresh = file_block_sums(chunk, size, k0, k1)?;
        if file_len == size + sums::trailer_len(size) {
            match read_trailer(chunk, file_len) {
                Ok((_, stored)) if stored[k0 as usize..k1 as usize] == fresh[..] => {
                    return Ok(false);
                }
                Ok(_) | Err(Fault::Damage(_)) => {}
                Err(Fault::Io(_, e)) => return Err(e),
            }
        }
        let rebuilt = !(keep_untouched && file_len >= size + 4 * n);
        let all = if rebuilt {
            tracing::warn!(chunk = %id, size, "DirStore: a write torn by a crash had overwritten the chunk's checksums: rebuilt from its data");
            file_block_sums(chunk, size, 0, n)?
        } else {
            let mut raw = vec![0u8; 4 * n as usize];
            chunk.read_exact_at(&mut raw, size)?;
            let mut all = sums::parse_sums(&raw);
            all[k0 as usize..k1 as usize].copy_from_slice(&fresh);
            all
        };
        chunk.write_all_at(&sums::emit_trailer(size, &all), size)?;
        chunk.set_len(size + sums::trailer_len(size))?;
        Ok(rebuilt)
    }

    // ---- damage ------------------------------------------------------------------------------

    /// Damaged chunks detected since `open`: by READ, STAT and WRITE (each detection counts,
    /// so a chunk read three times counts three) and by [`DirStore::scrub`].
    pub fn corrupt_found(&self) -> u64 {
        self.corrupt_found.load(Ordering::Relaxed)
    }

    /// Counts and logs a damaged chunk; the error to answer.
    fn corrupt(&self, id: ChunkId, detail: String) -> StoreError {
        self.corrupt_found.fetch_add(1, Ordering::Relaxed);
        tracing::error!(chunk = %id, path = %self.chunk_path(id).display(), "DirStore: chunk damaged on disk, not served: {detail}");
        StoreError::Corrupt { id, detail }
    }

    fn fault(&self, id: ChunkId, fault: Fault) -> StoreError {
        match fault {
            Fault::Io(op, e) => io_error(op, id, e),
            Fault::Damage(detail) => self.corrupt(id, detail),
        }
    }

    /// Checks every block of a chunk and its trailer; returns its data size.
    fn check_chunk(chunk: &File, file_len: u64) -> Result<u64, Fault> {
        let (footer, stored) = read_trailer(chunk, file_len)?;
        let size = footer.size;
        let mut buf = vec![0u8; size.min(CRC_PIECE as u64) as usize];
        let mut at = 0u64;
        while at < size {
            let n = (size - at).min(buf.len() as u64) as usize;
            chunk
                .read_exact_at(&mut buf[..n], at)
                .map_err(Fault::io("read chunk"))?;
            for (i, block) in buf[..n].chunks(BLOCK).enumerate() {
                let k = at / BLOCK as u64 + i as u64;
                check_block(size, k, stored[k as usize], block)?;
            }
            at += n as u64;
        }
        Ok(size)
    }

    /// Checks every chunk: every block against its sum, and each trailer; see
    /// [`ScrubReport`]. Runs while the store serves: each chunk is checked under its lock,
    /// shared (writers to it wait), or exclusive with `quarantine`, which moves each damaged
    /// chunk file to `<dir>/quarantine/<id>.<n>.damaged` (its log is removed), so the chunk
    /// reads as absent and can be written again. Each damaged chunk is logged and counted in
    /// [`DirStore::corrupt_found`]. Errors only for I/O errors (the report so far is lost).
    pub fn scrub(&self, quarantine: bool) -> io::Result<ScrubReport> {
        let mut report = ScrubReport::default();
        for index in 0..FANOUT {
            let sub = self.dir.join(subdir_name(index));
            let mut ids = Vec::new();
            for entry in fs::read_dir(&sub)? {
                let entry = entry?;
                let parsed = entry.file_name().to_str().and_then(parse_name);
                if let Some((id, EntryKind::Chunk)) = parsed {
                    if fanout(id) == index && entry.file_type()?.is_file() {
                        ids.push(id);
                    }
                }
            }
            ids.sort_unstable();
            for id in ids {
                let lock = &self.stripe(id).lock;
                if quarantine {
                    let _guard = write_lock(lock);
                    self.scrub_one(id, true, &mut report)?;
                } else {
                    let _guard = read_lock(lock);
                    self.scrub_one(id, false, &mut report)?;
                }
            }
        }
        tracing::info!(dir = %self.dir.display(), chunks = report.chunks, bytes = report.bytes, damaged = report.damaged.len(), "DirStore scrub done");
        Ok(report)
    }

    fn scrub_one(&self, id: ChunkId, quarantine: bool, report: &mut ScrubReport) -> io::Result<()> {
        let (chunk, file_len) = match open_existing(&self.chunk_path(id), id) {
            Ok(opened) => opened,
            Err(StoreError::NotFound(_)) => {
                report.vanished += 1;
                return Ok(());
            }
            Err(StoreError::Io { source, .. }) => return Err(source),
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        report.chunks += 1;
        match Self::check_chunk(&chunk, file_len) {
            Ok(size) => report.bytes += size,
            Err(Fault::Io(_, e)) => return Err(e),
            Err(Fault::Damage(detail)) => {
                drop(chunk);
                let _ = self.corrupt(id, detail.clone());
                let quarantined = if quarantine {
                    let to = self.quarantine(id)?;
                    tracing::warn!(chunk = %id, to = %to.display(), "DirStore: damaged chunk quarantined");
                    Some(to)
                } else {
                    None
                };
                report.damaged.push(ScrubFinding {
                    id,
                    detail,
                    quarantined,
                });
            }
        }
        Ok(())
    }

    /// Moves a chunk's file into the quarantine directory (caller holds the chunk's lock
    /// exclusively); returns where it went.
    fn quarantine(&self, id: ChunkId) -> io::Result<PathBuf> {
        let qdir = self.dir.join(QUARANTINE_DIR);
        match fs::create_dir(&qdir) {
            Ok(()) => self.sync_dir(&self.dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let mut n = 0u32;
        let to = loop {
            let to = qdir.join(format!("{id}.{n}.damaged"));
            if fs::symlink_metadata(&to).is_err() {
                break to;
            }
            n += 1;
        };
        // As in a delete: the log first (a log without its chunk is removed by `open`).
        match fs::remove_file(self.log_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::rename(self.chunk_path(id), &to)?;
        self.sync_dir(&self.subdir(id))?;
        self.sync_dir(&qdir)?;
        Ok(to)
    }

    // ---- migration from the checksum-less format -----------------------------------------------

    /// Gives every chunk file without a valid trailer one (each through `<id>.tmp` and a
    /// rename, so a crash leaves it old or new, never half-done), then writes the format
    /// marker. Chunks that already carry a valid trailer whose sums match every block are left
    /// as they are: an earlier, interrupted run migrated them.
    fn migrate(&mut self) -> Result<(), DirStoreError> {
        let rec_err = |path: &Path, action: &'static str| {
            let path = path.to_path_buf();
            move |source| DirStoreError::Recovery {
                path,
                action,
                source,
            }
        };
        if self.recovery.chunks > 0 {
            tracing::warn!(dir = %self.dir.display(), chunks = self.recovery.chunks, "DirStore: no {FORMAT_FILE} marker: chunk files are an earlier version's, without checksums; migrating them (each file is copied once)");
        }
        let mut migrated = 0u64;
        for index in 0..FANOUT {
            let sub = self.dir.join(subdir_name(index));
            let mut ids = Vec::new();
            for entry in fs::read_dir(&sub).map_err(rec_err(&sub, "listing the directory"))? {
                let entry = entry.map_err(rec_err(&sub, "listing the directory"))?;
                let parsed = entry.file_name().to_str().and_then(parse_name);
                let is_file = entry
                    .file_type()
                    .map_err(rec_err(&sub, "listing the directory"))?
                    .is_file();
                if let Some((id, EntryKind::Chunk)) = parsed {
                    if fanout(id) == index && is_file {
                        ids.push(id);
                    }
                }
            }
            ids.sort_unstable();
            let mut changed = false;
            for id in ids {
                let path = self.chunk_path(id);
                let chunk = open_rw(&path).map_err(rec_err(&path, "opening a chunk to migrate"))?;
                let file_len = chunk
                    .metadata()
                    .map_err(rec_err(&path, "opening a chunk to migrate"))?
                    .len();
                match Self::check_chunk(&chunk, file_len) {
                    Ok(_) => continue,
                    Err(Fault::Io(_, e)) => return Err(rec_err(&path, "checking a chunk")(e)),
                    Err(Fault::Damage(_)) => {}
                }
                let tmp = self.tmp_path(id);
                self.write_migrated(&chunk, file_len, &tmp)
                    .and_then(|()| fs::rename(&tmp, &path))
                    .map_err(rec_err(&path, "migrating the chunk (adding its checksums)"))?;
                migrated += 1;
                changed = true;
            }
            if changed {
                self.sync_dir(&sub)
                    .map_err(rec_err(&sub, "syncing the directory"))?;
            }
        }
        let marker = self.dir.join(FORMAT_FILE);
        let tmp = self.dir.join(FORMAT_TMP);
        (|| {
            let file = File::create(&tmp)?;
            file.write_all_at(FORMAT_TEXT.as_bytes(), 0)?;
            self.sync_data(&file)?;
            fs::rename(&tmp, &marker)?;
            self.sync_dir(&self.dir)
        })()
        .map_err(rec_err(&marker, "writing the format marker"))?;
        if migrated > 0 {
            tracing::warn!(dir = %self.dir.display(), migrated, "DirStore: chunk files migrated to the checksummed format");
        }
        self.recovery.chunks_migrated = migrated;
        Ok(())
    }

    /// Writes `tmp` as `chunk`'s `len` bytes of data followed by their trailer, synced.
    fn write_migrated(&self, chunk: &File, len: u64, tmp: &Path) -> io::Result<()> {
        let out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(tmp)?;
        let mut buf = vec![0u8; len.min(CRC_PIECE as u64) as usize];
        let mut all = Vec::with_capacity(sums::blocks(len) as usize);
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            chunk.read_exact_at(&mut buf[..n], at)?;
            all.extend(buf[..n].chunks(BLOCK).map(crc32c));
            out.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        out.write_all_at(&sums::emit_trailer(len, &all), len)?;
        self.sync_data(&out)
    }

    // ---- writes -------------------------------------------------------------------------------

    /// The sums of blocks `k0..k1` of a chunk of `new_size` bytes after `data` is written at
    /// `offset` over `old` (the file, its data size and its sums; `None` for a new chunk: all
    /// zeros), and the CRC32C of `data`, in one pass over `data`. A block the write covers only
    /// in part is read from the file whole and checked against its old sum first: a write
    /// never vouches for damaged bytes.
    fn new_sums(
        old: Option<(&File, u64, &[u32])>,
        offset: u64,
        data: &[u8],
        new_size: u64,
        k0: u64,
        k1: u64,
    ) -> Result<(Vec<u32>, u32), Fault> {
        let end = offset + data.len() as u64;
        let old_size = old.map_or(0, |o| o.1);
        let mut out = Vec::with_capacity((k1 - k0) as usize);
        let mut data_crc = 0u32;
        let mut scratch = [0u8; BLOCK];
        for k in k0..k1 {
            let (bs, be) = sums::block_range(new_size, k);
            let blen = (be - bs) as usize;
            let (ds, de) = (bs.max(offset), be.min(end));
            let crc = if bs >= offset && be <= end {
                let c = crc32c(&data[(bs - offset) as usize..(be - offset) as usize]);
                data_crc = sums::combine(data_crc, c, be - bs);
                c
            } else if bs >= old_size && ds >= de {
                sums::zeros_crc(blen)
            } else {
                scratch[..blen].fill(0);
                if let Some((file, old_size, old_sums)) = old.filter(|_| bs < old_size) {
                    let (_, obe) = sums::block_range(old_size, k);
                    let old_block = &mut scratch[..(obe - bs) as usize];
                    file.read_exact_at(old_block, bs)
                        .map_err(Fault::io("read chunk"))?;
                    check_block(old_size, k, old_sums[k as usize], old_block).map_err(
                        |f| match f {
                            Fault::Damage(d) => {
                                Fault::Damage(format!("{d}; a write to part of it is refused"))
                            }
                            f => f,
                        },
                    )?;
                }
                if ds < de {
                    let part = &data[(ds - offset) as usize..(de - offset) as usize];
                    scratch[(ds - bs) as usize..(de - bs) as usize].copy_from_slice(part);
                    data_crc = sums::combine(data_crc, crc32c(part), de - ds);
                }
                crc32c(&scratch[..blen])
            };
            out.push(crc);
        }
        Ok((out, data_crc))
    }

    fn create(&self, id: ChunkId, offset: u64, data: &[u8], end: u64) -> io::Result<()> {
        let (all, _) = match Self::new_sums(None, offset, data, end, 0, sums::blocks(end)) {
            Ok(computed) => computed,
            Err(Fault::Io(_, e)) => return Err(e),
            Err(Fault::Damage(d)) => unreachable!("a new chunk has no old blocks: {d}"),
        };
        let tmp = self.tmp_path(id);
        let result = (|| {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            // A gap before `offset` is a hole: it reads as zeros.
            file.write_all_at(data, offset)?;
            file.write_all_at(&sums::emit_trailer(end, &all), end)?;
            self.sync_data(&file)?;
            fs::rename(&tmp, self.chunk_path(id))
        })();
        if let Err(e) = result {
            // Best effort: open removes it anyway.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.sync_dir(&self.subdir(id))
    }

    /// Opens the chunk's log, creating it (and syncing the directory) on first use.
    fn open_log(&self, id: ChunkId) -> io::Result<File> {
        let path = self.log_path(id);
        match open_rw(&path) {
            Ok(log) => Ok(log),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let log = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)?;
                self.sync_dir(&self.subdir(id))?;
                Ok(log)
            }
            Err(e) => Err(e),
        }
    }

    /// Extends or overwrites an existing chunk through its log. Returns the new size.
    fn update(
        &self,
        id: ChunkId,
        chunk: &File,
        offset: u64,
        data: &[u8],
        end: u64,
    ) -> Result<u64, StoreError> {
        let io_err = |op: &'static str| move |source| io_error(op, id, source);
        let log = self.open_log(id).map_err(io_err("open log"))?;
        // A valid record here means an earlier write failed half-way and could not be repaired
        // then: repair it before writing a new record over it.
        if read_record(&log).map_err(io_err("read log"))?.is_some() {
            let repair = self
                .repair(id, chunk, &log)
                .map_err(io_err("repair chunk"))?;
            tracing::warn!(chunk = %id, ?repair, "DirStore: repaired a chunk left by a failed write");
            invalidate(&log, true).map_err(io_err("invalidate log"))?;
        }
        let file_len = chunk.metadata().map_err(io_err("stat chunk"))?.len();
        let (footer, old_sums) = read_trailer(chunk, file_len).map_err(|f| self.fault(id, f))?;
        let size = footer.size;
        if data.is_empty() && offset <= size {
            return Ok(size);
        }
        let new_size = size.max(end);
        let bs = BLOCK as u64;
        let (k0, k1) = (offset.min(size) / bs, end.div_ceil(bs));
        let (new, data_crc) = Self::new_sums(
            Some((chunk, size, &old_sums)),
            offset,
            data,
            new_size,
            k0,
            k1,
        )
        .map_err(|f| self.fault(id, f))?;
        let record = Record {
            kind: if offset >= size {
                RecordKind::Extend
            } else {
                RecordKind::Redo
            },
            id,
            offset,
            len: data.len() as u64,
            old_size: size,
            data_crc,
        };
        log.write_all_at(&record.emit(), 0)
            .map_err(io_err("write log"))?;
        if record.kind == RecordKind::Redo {
            log.write_all_at(data, RECORD_HEADER_LEN as u64)
                .map_err(io_err("write log"))?;
        }
        self.sync_data(&log).map_err(io_err("sync log"))?;

        let applied = (|| {
            if offset > size {
                // The old trailer's bytes inside the gap must read as zeros (past the old end
                // of the file the gap is a hole).
                zero_range(chunk, size, offset.min(file_len))?;
            }
            chunk.write_all_at(data, offset)?;
            let mut all = old_sums;
            if new_size == size {
                // In place: the sums of the blocks written, and the footer (the sums' CRC).
                all[k0 as usize..k1 as usize].copy_from_slice(&new);
                let touched = sums::sums_bytes(&new);
                chunk.write_all_at(&touched, size + 4 * k0)?;
                let footer = Footer {
                    size,
                    sums_crc: crc32c(&sums::sums_bytes(&all)),
                };
                chunk.write_all_at(&footer.emit(), size + 4 * all.len() as u64)?;
            } else {
                // The chunk grew over its old trailer: a whole new one after the new end.
                all.truncate(k0 as usize);
                all.extend_from_slice(&new);
                chunk.write_all_at(&sums::emit_trailer(new_size, &all), new_size)?;
            }
            self.sync_data(chunk)
        })();
        if let Err(e) = applied {
            // Put the chunk back in a whole state now if we can (a failed extend is truncated
            // back; a failed overwrite is retried). If that fails too, the record stays valid
            // for the next write or open to repair.
            match self.repair(id, chunk, &log) {
                Ok(repair) => {
                    let _ = invalidate(&log, record.kind == RecordKind::Redo);
                    tracing::warn!(chunk = %id, error = %e, ?repair, "DirStore: write failed; chunk repaired");
                }
                Err(e2) => {
                    tracing::warn!(chunk = %id, error = %e, repair_error = %e2, "DirStore: write failed; repair deferred");
                }
            }
            return Err(io_error("write chunk", id, e));
        }
        // The write is durable: the record is only needed until here. Not synced (see the
        // module docs: a stale record replays to the same content).
        if let Err(e) = invalidate(&log, record.kind == RecordKind::Redo) {
            tracing::warn!(chunk = %id, error = %e, "DirStore: could not invalidate a log record (harmless: replaying it changes nothing)");
        }
        Ok(new_size)
    }

    // ---- reads --------------------------------------------------------------------------------

    /// Reads `buf.len()` bytes (fewer at the end) from `offset`, checking every block touched
    /// against its sum; returns the CRC32C of what was read, combined from the sums. Whole
    /// blocks are read straight into `buf` and checked there (the one pass over the bytes);
    /// a block read only in part is read whole into a scratch block, checked, and its part
    /// copied.
    fn read_checked(
        &self,
        id: ChunkId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(ReadInfo, u32), StoreError> {
        let _guard = read_lock(&self.stripe(id).lock);
        let (chunk, file_len) = open_existing(&self.chunk_path(id), id)?;
        let footer = read_footer(&chunk, file_len).map_err(|f| self.fault(id, f))?;
        let size = footer.size;
        if offset > size {
            return Err(StoreError::OutOfRange { id, offset, size });
        }
        let len = buf
            .len()
            .min((size - offset).min(usize::MAX as u64) as usize);
        let info = ReadInfo {
            len,
            chunk_size: size,
        };
        if len == 0 {
            return Ok((info, 0));
        }
        copies::count(Pass::Read, len);
        let end = offset + len as u64;
        let bs = BLOCK as u64;
        let (k0, k1) = (offset / bs, end.div_ceil(bs));
        let mut raw = vec![0u8; 4 * (k1 - k0) as usize];
        chunk
            .read_exact_at(&mut raw, size + 4 * k0)
            .map_err(|e| io_error("read chunk sums", id, e))?;
        let stored = |k: u64| {
            let at = 4 * (k - k0) as usize;
            u32::from_le_bytes(raw[at..at + 4].try_into().unwrap())
        };
        let whole = |k: u64| {
            let (s, e) = sums::block_range(size, k);
            s >= offset && e <= end
        };
        // Blocks w0..w1 lie wholly inside the read; k0 (if not) and k1 - 1 (if not, and not
        // k0) are edges.
        let w0 = if whole(k0) { k0 } else { k0 + 1 };
        let w1 = if whole(k1 - 1) { k1 } else { k1 - 1 }.max(w0);
        let mut crc = 0u32;
        let mut scratch = [0u8; BLOCK];
        let mut edge = |k: u64, buf: &mut [u8]| -> Result<(u32, u64), Fault> {
            let (s, e) = sums::block_range(size, k);
            let block = &mut scratch[..(e - s) as usize];
            chunk
                .read_exact_at(block, s)
                .map_err(Fault::io("read chunk"))?;
            check_block(size, k, stored(k), block)?;
            let (ps, pe) = (s.max(offset), e.min(end));
            let part = &block[(ps - s) as usize..(pe - s) as usize];
            buf[(ps - offset) as usize..(pe - offset) as usize].copy_from_slice(part);
            Ok((crc32c(part), pe - ps))
        };
        if w0 > k0 {
            let (c, n) = edge(k0, buf).map_err(|f| self.fault(id, f))?;
            crc = sums::combine(crc, c, n);
        }
        if w0 < w1 {
            let (ws, _) = sums::block_range(size, w0);
            let (_, we) = sums::block_range(size, w1 - 1);
            let middle = &mut buf[(ws - offset) as usize..(we - offset) as usize];
            chunk
                .read_exact_at(middle, ws)
                .map_err(|e| io_error("read chunk", id, e))?;
            for (i, block) in middle.chunks(BLOCK).enumerate() {
                let k = w0 + i as u64;
                check_block(size, k, stored(k), block).map_err(|f| self.fault(id, f))?;
                crc = sums::combine(crc, stored(k), block.len() as u64);
            }
        }
        if w1 < k1 {
            let (c, n) = edge(k1 - 1, buf).map_err(|f| self.fault(id, f))?;
            crc = sums::combine(crc, c, n);
        }
        Ok((info, crc))
    }
}

impl ChunkStore for DirStore {
    fn write(&self, id: ChunkId, offset: u64, data: &[u8]) -> Result<u64, StoreError> {
        let end = write_end(id, offset, data.len(), self.config.chunk_len_max)?;
        let _guard = write_lock(&self.stripe(id).lock);
        match open_rw(&self.chunk_path(id)) {
            Ok(chunk) => self.update(id, &chunk, offset, data, end),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.create(id, offset, data, end)
                    .map_err(|e| io_error("create chunk", id, e))?;
                Ok(end)
            }
            Err(e) => Err(io_error("open chunk", id, e)),
        }
    }

    fn read(&self, id: ChunkId, offset: u64, buf: &mut [u8]) -> Result<ReadInfo, StoreError> {
        self.read_checked(id, offset, buf).map(|(info, _)| info)
    }

    fn read_crc(
        &self,
        id: ChunkId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(ReadInfo, u32), StoreError> {
        self.read_checked(id, offset, buf)
    }

    fn delete(&self, id: ChunkId) -> Result<(), StoreError> {
        let _guard = write_lock(&self.stripe(id).lock);
        // The log goes first: a chunk without a log is whole, a log without a chunk is removed
        // by `open`.
        match fs::remove_file(self.log_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove log", id, e)),
        }
        match fs::remove_file(self.chunk_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound(id)),
            Err(e) => return Err(io_error("remove chunk", id, e)),
        }
        self.sync_dir(&self.subdir(id))
            .map_err(|e| io_error("sync directory", id, e))
    }

    /// Size and CRC from the trailer alone (the sums combined; no data read), after checking
    /// the trailer whole: a chunk cut short or with a damaged trailer is `Corrupt`.
    fn stat(&self, id: ChunkId) -> Result<ChunkStat, StoreError> {
        let _guard = read_lock(&self.stripe(id).lock);
        let (chunk, file_len) = open_existing(&self.chunk_path(id), id)?;
        let (footer, stored) = read_trailer(&chunk, file_len).map_err(|f| self.fault(id, f))?;
        Ok(ChunkStat {
            size: footer.size,
            crc: sums::crc_from_sums(footer.size, 0, &stored),
        })
    }

    /// Lists by (subdirectory, id): the subdirectories in order (`00` to `ff`, the XOR of an
    /// id's bytes), and the ids in each ascending. A page reads only the subdirectories it
    /// needs, from the cursor's on. Only regular files named exactly 32 lowercase hex digits in
    /// their own subdirectory are chunks; `.tmp`, `.log` and foreign entries are not listed. No
    /// chunk lock is taken: a chunk is created by a rename and removed by an unlink, so it is
    /// listed whole or not at all (a chunk removed while the page is read is left out).
    fn list(
        &self,
        after: Option<ChunkId>,
        max: usize,
    ) -> Result<Vec<crate::proto::ListEntry>, StoreError> {
        let mut out = Vec::with_capacity(max.min(1024));
        let first = after.map_or(0, fanout);
        for index in first..FANOUT {
            if out.len() >= max {
                break;
            }
            let sub = self.dir.join(subdir_name(index));
            let failed = |source| StoreError::List {
                what: sub.display().to_string(),
                source,
            };
            let mut found = Vec::new();
            for entry in fs::read_dir(&sub).map_err(failed)? {
                let entry = entry.map_err(failed)?;
                let Some((id, EntryKind::Chunk)) = entry.file_name().to_str().and_then(parse_name)
                else {
                    continue;
                };
                if fanout(id) == index && (index != first || after.is_none_or(|a| id > a)) {
                    found.push((id, entry));
                }
            }
            found.sort_unstable_by_key(|(id, _)| *id);
            for (id, entry) in found {
                if out.len() >= max {
                    break;
                }
                // The entry itself, never a symlink's target.
                match entry.metadata() {
                    Ok(meta) if meta.is_file() => out.push(crate::proto::ListEntry {
                        id,
                        size: listed_size(&meta),
                    }),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(failed(e)),
                }
            }
        }
        Ok(out)
    }
}

/// Opens an existing file of the store for reading and writing, never through a symlink.
fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Opens a chunk for reading (never through a symlink) and returns it with its size.
fn open_existing(path: &Path, id: ChunkId) -> Result<(File, u64), StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound(id),
            _ => io_error("open chunk", id, e),
        })?;
    let meta = file.metadata().map_err(|e| io_error("stat chunk", id, e))?;
    if !meta.is_file() {
        let e = io::Error::new(io::ErrorKind::InvalidData, "not a regular file");
        return Err(io_error("open chunk", id, e));
    }
    Ok((file, meta.len()))
}

/// What a log file holds.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum LogState {
    /// Nothing: empty, or an invalidated (zeroed) header and no data.
    Idle,
    /// Something that is not a valid record.
    Invalid,
    /// A record whose header is valid (a redo record's data is checked when it is applied).
    Record(Record),
}

fn read_log(log: &File) -> io::Result<LogState> {
    let len = log.metadata()?.len();
    let mut header = [0u8; RECORD_HEADER_LEN];
    let n = len.min(RECORD_HEADER_LEN as u64) as usize;
    log.read_exact_at(&mut header[..n], 0)?;
    if len <= RECORD_HEADER_LEN as u64 && header.iter().all(|&b| b == 0) {
        return Ok(LogState::Idle);
    }
    if n < RECORD_HEADER_LEN {
        return Ok(LogState::Invalid);
    }
    Ok(Record::parse(&header).map_or(LogState::Invalid, LogState::Record))
}

/// The record at the start of `log`, if it holds a valid header.
fn read_record(log: &File) -> io::Result<Option<Record>> {
    match read_log(log)? {
        LogState::Record(record) => Ok(Some(record)),
        LogState::Idle | LogState::Invalid => Ok(None),
    }
}

/// Zeroes the record header; drops a redo record's data so it does not hold disk space.
fn invalidate(log: &File, had_data: bool) -> io::Result<()> {
    log.write_all_at(&[0u8; RECORD_HEADER_LEN], 0)?;
    if had_data {
        log.set_len(RECORD_HEADER_LEN as u64)?;
    }
    Ok(())
}

/// CRC32C of `file[offset..offset+len]`; an error if the file is shorter.
fn crc_of_range(file: &File, offset: u64, len: u64) -> io::Result<u32> {
    let mut buf = vec![0u8; len.min(CRC_PIECE as u64) as usize];
    let mut crc = 0;
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset + done)?;
        crc = crc32c_append(crc, &buf[..n]);
        done += n as u64;
    }
    Ok(crc)
}

/// Why a chunk's bytes could not be checked: an I/O error, or damage (described).
#[derive(Debug)]
enum Fault {
    Io(&'static str, io::Error),
    Damage(String),
}

impl Fault {
    fn io(op: &'static str) -> impl FnOnce(io::Error) -> Fault {
        move |e| Fault::Io(op, e)
    }
}

/// The footer of a chunk file of `file_len` bytes, checked (magic, its CRC, and the data
/// length against the file's).
fn read_footer(chunk: &File, file_len: u64) -> Result<Footer, Fault> {
    if file_len < FOOTER_LEN as u64 {
        return Err(Fault::Damage(format!(
            "the file is {file_len} bytes, shorter than its {FOOTER_LEN}-byte checksum footer: cut short"
        )));
    }
    let mut f = [0u8; FOOTER_LEN];
    chunk
        .read_exact_at(&mut f, file_len - FOOTER_LEN as u64)
        .map_err(Fault::io("read chunk footer"))?;
    Footer::parse(&f, file_len).map_err(Fault::Damage)
}

/// The footer and every block sum of a chunk file of `file_len` bytes, checked whole (the
/// sums against the footer's CRC of them).
fn read_trailer(chunk: &File, file_len: u64) -> Result<(Footer, Vec<u32>), Fault> {
    let footer = read_footer(chunk, file_len)?;
    let mut raw = vec![0u8; 4 * sums::blocks(footer.size) as usize];
    chunk
        .read_exact_at(&mut raw, footer.size)
        .map_err(Fault::io("read chunk sums"))?;
    let found = crc32c(&raw);
    if found != footer.sums_crc {
        return Err(Fault::Damage(format!(
            "block checksums damaged: stored crc of the sums {:#010x}, found {found:#010x}",
            footer.sums_crc
        )));
    }
    Ok((footer, sums::parse_sums(&raw)))
}

/// Checks `block`, block `k` of a chunk of `size` bytes, against its stored sum.
fn check_block(size: u64, k: u64, stored: u32, block: &[u8]) -> Result<(), Fault> {
    let found = crc32c(block);
    if found == stored {
        return Ok(());
    }
    let (s, e) = sums::block_range(size, k);
    Err(Fault::Damage(format!(
        "block {k} (bytes {s}..{e}): stored crc {stored:#010x}, found {found:#010x}"
    )))
}

/// The sums of blocks `k0..k1` of the first `size` bytes of `file`, computed from its bytes.
fn file_block_sums(file: &File, size: u64, k0: u64, k1: u64) -> io::Result<Vec<u32>> {
    let mut out = Vec::with_capacity(k1.saturating_sub(k0) as usize);
    let (start, _) = sums::block_range(size, k0);
    let end = if k1 > k0 {
        sums::block_range(size, k1 - 1).1
    } else {
        start
    };
    let mut buf = vec![0u8; (end - start).min(CRC_PIECE as u64) as usize];
    let mut at = start;
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        out.extend(buf[..n].chunks(BLOCK).map(crc32c));
        at += n as u64;
    }
    Ok(out)
}

/// Writes zeros over `file[start..end]` (nothing if `end <= start`).
fn zero_range(file: &File, start: u64, end: u64) -> io::Result<()> {
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    let mut at = start;
    while at < end {
        let n = (end - at).min(BLOCK as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// A redo record's data, if it is all there and matches its CRC.
fn read_redo_data(log: &File, record: &Record) -> io::Result<Option<Vec<u8>>> {
    let log_len = log.metadata()?.len();
    // The log's length bounds the allocation below.
    if log_len < RECORD_HEADER_LEN as u64 + record.len {
        return Ok(None);
    }
    let mut data = vec![0u8; record.len as usize];
    log.read_exact_at(&mut data, RECORD_HEADER_LEN as u64)?;
    Ok((crc32c(&data) == record.data_crc).then_some(data))
}

/// Maps an OS error to a store error; a full disk (or quota) is [`StoreError::NoSpace`].
fn io_error(op: &'static str, id: ChunkId, source: io::Error) -> StoreError {
    match source.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            tracing::warn!(chunk = %id, op, "DirStore: no space left");
            StoreError::NoSpace(id)
        }
        _ => StoreError::Io { op, id, source },
    }
}

fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// The size LIST reports for a chunk file with metadata `meta`: the chunk's data bytes (the
/// file less its checksum trailer), or the file's size for a file no chunk can have (damaged:
/// READ and STAT answer Corrupt).
fn listed_size(meta: &fs::Metadata) -> u64 {
    sums::data_len(meta.len()).unwrap_or(meta.len())
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::chunk::store_contract::{contract_tests, Rng};

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("ustack-dirstore-{tag}-{}-{n}", std::process::id()));
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

    fn extend_log(id: ChunkId, offset: u64, data: &[u8], old_size: u64) -> Vec<u8> {
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

    fn with(base: &[u8], offset: usize, data: &[u8]) -> Vec<u8> {
        let mut v = base.to_vec();
        if v.len() < offset + data.len() {
            v.resize(offset + data.len(), 0);
        }
        v[offset..offset + data.len()].copy_from_slice(data);
        v
    }

    /// A chunk file as the store writes it: the data, then its checksum trailer.
    fn chunk_file(data: &[u8]) -> Vec<u8> {
        let all: Vec<u32> = data.chunks(BLOCK).map(crc32c).collect();
        let mut file = data.to_vec();
        file.extend_from_slice(&sums::emit_trailer(data.len() as u64, &all));
        file
    }

    #[test]
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

    // ---- full disk --------------------------------------------------------------------------

    const NOSPACE_CHILD_ENV: &str = "USTACK_DIRSTORE_NOSPACE_DIR";
    const NOSPACE_MARK: &str = "NOSPACE-CHECKS-PASSED";

    fn effective_uid_is_root() -> bool {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
            })
            .unwrap_or(false)
    }

    /// A full disk: runs itself again in a private mount namespace (`unshare -m`, so the
    /// mount disappears with the child whatever happens) on a 4 MiB tmpfs.
    #[test]
    fn a_full_disk_is_no_space_and_leaves_chunks_whole() {
        if let Some(dir) = std::env::var_os(NOSPACE_CHILD_ENV) {
            no_space_child(Path::new(&dir));
            return;
        }
        if !effective_uid_is_root() {
            eprintln!("SKIPPED: mounting a small tmpfs (to fill a disk) needs root");
            return;
        }
        let dir = TempDir::new("nospace");
        fs::create_dir_all(&dir.0).unwrap();
        let exe = std::env::current_exe().unwrap();
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private"])
            .arg(&exe)
            .args([
                "--exact",
                "chunk::dir_store::tests::a_full_disk_is_no_space_and_leaves_chunks_whole",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(NOSPACE_CHILD_ENV, &dir.0)
            .output()
            .expect("running unshare (util-linux)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains(NOSPACE_MARK),
            "child failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        // The mount went away with the child's namespace.
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 0);
    }

    fn no_space_child(dir: &Path) {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "ustack-test"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let root = dir.join("store");
        let cfg = config(SyncPolicy::Always);
        let store = DirStore::open(&root, cfg).unwrap();
        let (a, b, c) = (ChunkId(0xa), ChunkId(0xb), ChunkId(0xc));
        let a_data = vec![0xA1u8; 1 << 20];
        store.write(a, 0, &a_data).unwrap();
        store.write(a, 0, b"x").unwrap(); // creates a's log
        let mut a_data = a_data;
        a_data[0] = b'x';

        // A create that does not fit: NoSpace, nothing left behind.
        let err = store.write(b, 0, &vec![0xB2u8; 4 << 20]).unwrap_err();
        assert!(matches!(err, StoreError::NoSpace(id) if id == b), "{err:?}");
        assert_eq!(err.status(), crate::proto::Status::NoSpace);
        assert!(matches!(store.stat(b), Err(StoreError::NotFound(_))));
        assert!(!store.tmp_path(b).exists());

        // An extend that does not fit: the chunk is truncated back to what it was.
        let err = store.write(a, 1 << 20, &vec![0xA3u8; 4 << 20]).unwrap_err();
        assert!(matches!(err, StoreError::NoSpace(_)), "{err:?}");
        assert_eq!(read_all(&store, a).unwrap(), a_data);

        // Fill the disk, then overwrite: the redo record does not fit, the chunk is untouched.
        store.write(c, 0, &vec![0xC4u8; 2_700_000]).unwrap();
        let err = store.write(a, 0, &vec![0xA5u8; 1 << 20]).unwrap_err();
        assert!(matches!(err, StoreError::NoSpace(_)), "{err:?}");
        assert_eq!(read_all(&store, a).unwrap(), a_data);

        // Nothing for recovery to do, and space comes back with a delete.
        drop(store);
        let store = DirStore::open(&root, cfg).unwrap();
        let r = *store.recovery();
        assert_eq!(
            (r.chunks, r.overwrites_replayed, r.extends_rolled_back),
            (2, 0, 0),
            "{r:?}"
        );
        assert_eq!(read_all(&store, a).unwrap(), a_data);
        store.delete(c).unwrap();
        store.write(a, 0, &vec![0xA6u8; 1 << 20]).unwrap();
        assert_eq!(read_all(&store, a).unwrap(), vec![0xA6u8; 1 << 20]);
        println!("{NOSPACE_MARK}");
    }

    // ---- a real crash: SIGKILL in the middle of writes ------------------------------------------

    const CRASH_CHILD_ENV: &str = "USTACK_DIRSTORE_CRASH_DIR";
    const CRASH_CHUNKS: u64 = 12;
    const SEGMENT_HEADER_LEN: usize = 32;

    fn crash_chunk_id(k: u64) -> ChunkId {
        ChunkId(0xfeed_0000_0000_0000_0000_0000_0000_0000 | u128::from(k) << 64 | u128::from(k))
    }

    /// The payload of segment `idx` of generation `gen` of a chunk: bytes nobody else writes.
    fn segment(id: ChunkId, gen: u32, idx: u32, payload_len: usize) -> Vec<u8> {
        // Cheap to generate (the child spends its time in the store, not here), and different
        // at every position for every (chunk, gen, idx).
        let seed = (id.0 as u64) ^ u64::from(gen) << 32 ^ u64::from(idx) ^ 0x5E6;
        let mut payload = vec![0u8; payload_len.next_multiple_of(8)];
        for (i, word) in payload.chunks_exact_mut(8).enumerate() {
            let v = (seed ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            word.copy_from_slice(&(v ^ v >> 32).to_le_bytes());
        }
        payload.truncate(payload_len);
        let mut seg = Vec::with_capacity(SEGMENT_HEADER_LEN + payload_len);
        seg.extend_from_slice(b"SEG1");
        seg.extend_from_slice(&gen.to_le_bytes());
        seg.extend_from_slice(&idx.to_le_bytes());
        seg.extend_from_slice(&(payload_len as u32).to_le_bytes());
        seg.extend_from_slice(&(id.0 as u64).to_le_bytes());
        seg.extend_from_slice(&crc32c(&payload).to_le_bytes());
        let crc = crc32c(&seg);
        seg.extend_from_slice(&crc.to_le_bytes());
        seg.extend_from_slice(&payload);
        seg
    }

    /// A chunk's state if its content is intact: (generation, segments), or why it is not.
    fn parse_chunk(id: ChunkId, content: &[u8]) -> Result<(u32, u32), String> {
        let mut at = 0;
        let mut gen = None;
        let mut idx = 0u32;
        while at < content.len() {
            let rest = &content[at..];
            if rest.len() < SEGMENT_HEADER_LEN {
                return Err(format!("{} stray bytes at {at}", rest.len()));
            }
            let u32_at = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().unwrap());
            let (g, i, len) = (u32_at(4), u32_at(8), u32_at(12) as usize);
            if &rest[..4] != b"SEG1" || u32_at(28) != crc32c(&rest[..28]) {
                return Err(format!("no segment header at {at}"));
            }
            if *gen.get_or_insert(g) != g || i != idx {
                return Err(format!("segment {i} of gen {g} at {at}: a mix of writes"));
            }
            let expect = segment(id, g, i, len);
            if rest.len() < expect.len() || rest[..expect.len()] != expect[..] {
                return Err(format!("segment {i} of gen {g} at {at} is torn"));
            }
            at += expect.len();
            idx += 1;
        }
        gen.map(|g| (g, idx)).ok_or_else(|| "empty".to_string())
    }

    /// The child: loops writing, overwriting, appending and deleting chunks, printing a line
    /// after each acknowledged operation, until it is killed.
    fn crash_child(dir: &Path) {
        let sync = match std::env::var("USTACK_DIRSTORE_CRASH_SYNC").as_deref() {
            Ok("always") => SyncPolicy::Always,
            _ => SyncPolicy::Never,
        };
        let seed: u64 = std::env::var("USTACK_DIRSTORE_CRASH_SEED")
            .unwrap()
            .parse()
            .unwrap();
        let cfg = DirStoreConfig {
            sync,
            ..DirStoreConfig::default()
        };
        let store = DirStore::open(dir, cfg).unwrap();
        let mut rng = Rng::new(seed);
        // (gen, segments, size) of each chunk, from what recovery left.
        let mut state: Vec<Option<(u32, u32, usize)>> = (0..CRASH_CHUNKS)
            .map(|k| {
                let id = crash_chunk_id(k);
                read_all(&store, id).map(|content| {
                    let (gen, segs) = parse_chunk(id, &content).unwrap();
                    (gen, segs, content.len())
                })
            })
            .collect();
        let mut next_gen = state.iter().flatten().map(|s| s.0).max().unwrap_or(0) + 1;
        println!("ready");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let k = rng.range(0, CRASH_CHUNKS - 1);
            let id = crash_chunk_id(k);
            let seg_len = |rng: &mut Rng| rng.range(0, 2 << 20) as usize;
            match state[k as usize] {
                Some((_, _, size)) if size > 5 << 20 && rng.range(0, 1) == 0 => {
                    store.delete(id).unwrap();
                    state[k as usize] = None;
                    println!("acked {k} deleted end");
                    continue;
                }
                Some((gen, segs, size)) if size < 5 << 20 && rng.range(0, 1) == 0 => {
                    // Append one segment.
                    let seg = segment(id, gen, segs, seg_len(&mut rng));
                    store.write(id, size as u64, &seg).unwrap();
                    state[k as usize] = Some((gen, segs + 1, size + seg.len()));
                    println!("acked {k} {gen} {} end", segs + 1);
                    continue;
                }
                _ => {}
            }
            // Create, or rewrite the whole chunk (at least as long as it is) with a new generation.
            let old_size = state[k as usize].map_or(1, |s| s.2);
            let gen = next_gen;
            next_gen += 1;
            let mut image = Vec::new();
            let mut segs = 0;
            while image.len() < old_size {
                image.extend_from_slice(&segment(id, gen, segs, seg_len(&mut rng)));
                segs += 1;
            }
            store.write(id, 0, &image).unwrap();
            state[k as usize] = Some((gen, segs, image.len()));
            println!("acked {k} {gen} {segs} end");
        }
        std::process::exit(0);
    }

    /// Kills the child on every exit path of the parent.
    struct KillOnDrop(Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn sigkill_mid_write_keeps_acknowledged_chunks_and_tears_none() {
        if let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) {
            crash_child(Path::new(&dir));
            return;
        }
        const ROUNDS: u64 = 12;
        let dir = TempDir::new("sigkill");
        let exe = std::env::current_exe().unwrap();
        let mut rng = Rng::new(0x5EED_4000);
        // What each chunk must hold: (gen, segments), None when absent.
        let mut expected: Vec<Option<(u32, u32)>> = vec![None; CRASH_CHUNKS as usize];
        let mut recovered = RecoveryReport::default();
        let mut acks_total = 0;
        for round in 0..ROUNDS {
            let sync = if round % 2 == 0 { "never" } else { "always" };
            let mut child = KillOnDrop(
                Command::new(&exe)
                    .args([
                        "--exact",
                        "chunk::dir_store::tests::sigkill_mid_write_keeps_acknowledged_chunks_and_tears_none",
                        "--nocapture",
                        "--test-threads",
                        "1",
                    ])
                    .env(CRASH_CHILD_ENV, &dir.0)
                    .env("USTACK_DIRSTORE_CRASH_SYNC", sync)
                    .env("USTACK_DIRSTORE_CRASH_SEED", (1000 + round).to_string())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .unwrap(),
            );
            let stdout = child.0.stdout.take().unwrap();
            let (tx, lines) = std::sync::mpsc::channel();
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            // Let it run a random while after it has opened the store, then SIGKILL it.
            let mut acks = Vec::new();
            let started = Instant::now();
            loop {
                let line = lines
                    .recv_timeout(Duration::from_secs(20))
                    .expect("the child printed nothing for 20 s");
                if line.ends_with("ready") {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(20));
            }
            std::thread::sleep(Duration::from_millis(rng.range(100, 400)));
            child.0.kill().unwrap();
            let status = child.0.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(libc::SIGKILL),
                "the child ended by itself: {status}"
            );
            reader.join().unwrap();
            acks.extend(lines.try_iter().filter(|l| l.starts_with("acked ")));
            // Only whole lines count: a line cut by the kill lacks its "end".
            for ack in &acks {
                let words: Vec<&str> = ack.split(' ').collect();
                if words.last() != Some(&"end") {
                    continue;
                }
                let k: usize = words[1].parse().unwrap();
                expected[k] = match words[2] {
                    "deleted" => None,
                    gen => Some((gen.parse().unwrap(), words[3].parse().unwrap())),
                };
            }
            assert!(!acks.is_empty(), "round {round}: no write was acknowledged");
            acks_total += acks.len();

            let store = DirStore::open(&dir.0, DirStoreConfig::default()).unwrap();
            let r = *store.recovery();
            recovered.temp_files_removed += r.temp_files_removed;
            recovered.overwrites_replayed += r.overwrites_replayed;
            recovered.extends_complete += r.extends_complete;
            recovered.extends_rolled_back += r.extends_rolled_back;
            recovered.logs_discarded += r.logs_discarded;
            let mut differing = Vec::new();
            for k in 0..CRASH_CHUNKS {
                let id = crash_chunk_id(k);
                let actual = read_all(&store, id).map(|content| {
                    parse_chunk(id, &content).unwrap_or_else(|why| {
                        panic!("round {round} ({sync}): chunk {k} is torn: {why}; recovery {r:?}")
                    })
                });
                if actual != expected[k as usize] {
                    differing.push((k, expected[k as usize], actual));
                }
                expected[k as usize] = actual;
            }
            // Only the one operation in flight at the kill may differ from the last ack.
            assert!(
                differing.len() <= 1,
                "round {round} ({sync}): acknowledged state lost: {differing:?}"
            );
            eprintln!(
                "round {round} ({sync}): {} acks, recovery {r:?}, in-flight op visible: {differing:?}",
                acks.len()
            );
        }
        eprintln!("sigkill test: {acks_total} acknowledged ops in {ROUNDS} rounds; recovery totals {recovered:?}");
    }
}

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

mod integrity;
mod layout;
mod migrate;
mod read;
mod record;
mod recovery;
mod report;
mod scrub;
mod write;

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use super::block_sums as sums;
use super::mem_store::write_end;
use super::store::{ChunkStat, ChunkStore, ReadInfo, StoreError};
use crate::proto::{ChunkId, Limits};
pub use report::RecoveryReport;
pub use scrub::{ScrubFinding, ScrubReport};

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

        store.make_subdirs()?;
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
        self.stat_chunk(id)
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
        self.list_page(after, max)
    }
}

/// The error for a failed operation on the store's directory (or a subdirectory) `path`.
fn dir_err(path: &Path) -> impl FnOnce(io::Error) -> DirStoreError {
    let path = path.to_path_buf();
    move |source| DirStoreError::Directory { path, source }
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
mod tests;

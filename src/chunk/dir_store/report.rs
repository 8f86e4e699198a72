//! [`RecoveryReport`]: what [`DirStore::open`](super::DirStore::open)(super::DirStore::open) found and repaired.

/// What [`DirStore::open`](super::DirStore::open) found and repaired.
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

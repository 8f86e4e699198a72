//! The redo log record: its on-disk format, and reading, checking and invalidating a log.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::proto::{crc32c, ChunkId};

// ---- the redo log record ----------------------------------------------------------------------

const RECORD_MAGIC: [u8; 8] = *b"uCHKLOG1";
/// The record header: magic 8 | kind u32 | zero u32 | id u128 | offset u64 | len u64 |
/// old_size u64 | data_crc u32 | header_crc u32 (CRC32C of bytes 0..60), little-endian.
/// A redo record's data follows it.
pub(super) const RECORD_HEADER_LEN: usize = 64;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum RecordKind {
    /// Data follows the header; replay rewrites `offset..offset+len`.
    Redo = 1,
    /// No data; replay keeps `offset..offset+len` if it matches `data_crc`, else truncates the
    /// chunk to `old_size`.
    Extend = 2,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) kind: RecordKind,
    pub(super) id: ChunkId,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) old_size: u64,
    pub(super) data_crc: u32,
}

impl Record {
    pub(super) fn emit(&self) -> [u8; RECORD_HEADER_LEN] {
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

/// What a log file holds.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum LogState {
    /// Nothing: empty, or an invalidated (zeroed) header and no data.
    Idle,
    /// Something that is not a valid record.
    Invalid,
    /// A record whose header is valid (a redo record's data is checked when it is applied).
    Record(Record),
}

pub(super) fn read_log(log: &File) -> io::Result<LogState> {
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
pub(super) fn read_record(log: &File) -> io::Result<Option<Record>> {
    match read_log(log)? {
        LogState::Record(record) => Ok(Some(record)),
        LogState::Idle | LogState::Invalid => Ok(None),
    }
}

/// Zeroes the record header; drops a redo record's data so it does not hold disk space.
pub(super) fn invalidate(log: &File, had_data: bool) -> io::Result<()> {
    log.write_all_at(&[0u8; RECORD_HEADER_LEN], 0)?;
    if had_data {
        log.set_len(RECORD_HEADER_LEN as u64)?;
    }
    Ok(())
}

/// A redo record's data, if it is all there and matches its CRC.
pub(super) fn read_redo_data(log: &File, record: &Record) -> io::Result<Option<Vec<u8>>> {
    let log_len = log.metadata()?.len();
    // The log's length bounds the allocation below.
    if log_len < RECORD_HEADER_LEN as u64 + record.len {
        return Ok(None);
    }
    let mut data = vec![0u8; record.len as usize];
    log.read_exact_at(&mut data, RECORD_HEADER_LEN as u64)?;
    Ok((crc32c(&data) == record.data_crc).then_some(data))
}

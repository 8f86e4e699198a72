//! The storage trait embedders implement, and its error type.

use std::io;

use crate::proto::{ChunkId, ListEntry, Status};

/// A chunk's size and the CRC32C of its whole content.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ChunkStat {
    /// Size in bytes.
    pub size: u64,
    /// CRC32C of bytes `0..size`.
    pub crc: u32,
}

/// The result of a read.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReadInfo {
    /// Bytes placed at the start of the caller's buffer.
    pub len: usize,
    /// The chunk's size at the time of the read.
    pub chunk_size: u64,
}

/// Bytes of a chunk lent by the store instead of copied out ([`ChunkStore::read_shared`]): a
/// snapshot that later writes to the chunk do not change.
#[derive(Clone)]
pub struct SharedRead {
    /// The snapshot (the whole chunk, typically).
    pub bytes: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>,
    /// Where the bytes read start in `bytes`.
    pub start: usize,
    /// How many bytes were read (fewer than asked only at the end of the chunk).
    pub len: usize,
    /// CRC32C of the bytes read.
    pub crc: u32,
    /// The chunk's size at the time of the read.
    pub chunk_size: u64,
}

impl SharedRead {
    /// The bytes read.
    pub fn as_slice(&self) -> &[u8] {
        &(*self.bytes).as_ref()[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for SharedRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRead")
            .field("start", &self.start)
            .field("len", &self.len)
            .field("crc", &self.crc)
            .field("chunk_size", &self.chunk_size)
            .finish()
    }
}

/// Why a store operation failed. Each maps to a protocol [`Status`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such chunk.
    #[error("chunk {0} not found")]
    NotFound(ChunkId),
    /// A read starting past the end of the chunk.
    #[error("offset {offset} is past the end of chunk {id} ({size} bytes)")]
    OutOfRange {
        /// The chunk.
        id: ChunkId,
        /// Requested offset.
        offset: u64,
        /// The chunk's size.
        size: u64,
    },
    /// A write that would grow the chunk past the store's limit.
    #[error("writing {len} bytes at {offset} would grow chunk {id} past {limit} bytes")]
    ChunkTooLarge {
        /// The chunk.
        id: ChunkId,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// The store's chunk size limit.
        limit: u64,
    },
    /// The store is out of space (disk full, memory budget reached).
    #[error("no space left for chunk {0}")]
    NoSpace(ChunkId),
    /// The chunk's stored bytes failed the checksum stored with them (damaged on disk, or
    /// cut short): the store serves none of them.
    #[error("chunk {id} is damaged in the store: {detail}")]
    Corrupt {
        /// The chunk.
        id: ChunkId,
        /// What failed, and where (for the log and the operator).
        detail: String,
    },
    /// The store does not implement this operation (the default of [`ChunkStore::list`]).
    #[error("this store cannot {op}")]
    Unsupported {
        /// The operation ("list").
        op: &'static str,
    },
    /// Listing the chunks failed (an I/O error on a directory, not on one chunk).
    #[error("listing chunks: {what}: {source}")]
    List {
        /// What was being read (a path, for the log and the operator).
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An I/O error from the backing storage.
    #[error("{op} on chunk {id}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The chunk.
        id: ChunkId,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    /// The protocol status that reports this error to a client.
    pub fn status(&self) -> Status {
        match self {
            StoreError::NotFound(_) => Status::NotFound,
            StoreError::OutOfRange { .. } => Status::OutOfRange,
            StoreError::ChunkTooLarge { .. } => Status::ChunkTooLarge,
            StoreError::NoSpace(_) => Status::NoSpace,
            StoreError::Corrupt { .. } => Status::Corrupt,
            StoreError::Unsupported { .. } => Status::Unsupported,
            StoreError::List { .. } => Status::Io,
            StoreError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                Status::NoSpace
            }
            StoreError::Io { .. } => Status::Io,
        }
    }
}

/// Chunk storage, implemented by the embedding file server (or `MemStore`,
/// `DirStore`).
///
/// Methods take `&self`: a store is shared by the server's connections (and by several server
/// threads), so implementations synchronise internally. Chunks are independent: operations on
/// different chunks may run concurrently; the server does not order operations on one chunk
/// beyond what a single connection's request order gives.
///
/// Contract (docs/PROTOCOL.md section 4):
/// - `write` creates the chunk if needed; bytes between the old end and `offset` read as zeros.
///   It returns only when the data is as durable as the store promises (see `DirStore`'s sync
///   policy): the server acknowledges the WRITE after it returns.
/// - `read` fills up to `buf.len()` bytes from `offset`: fewer only at the end of the chunk,
///   zero when `offset == size`, `OutOfRange` when `offset > size`.
/// - `list` pages through the chunks in an order of the store's choosing (see
///   [`ChunkStore::list`]).
pub trait ChunkStore: Send + Sync {
    /// Writes `data` at `offset`; returns the chunk's size afterwards.
    fn write(&self, id: ChunkId, offset: u64, data: &[u8]) -> Result<u64, StoreError>;
    /// Reads from `offset` into `buf`.
    fn read(&self, id: ChunkId, offset: u64, buf: &mut [u8]) -> Result<ReadInfo, StoreError>;
    /// Removes the chunk.
    fn delete(&self, id: ChunkId) -> Result<(), StoreError>;
    /// The chunk's size and content CRC32C.
    fn stat(&self, id: ChunkId) -> Result<ChunkStat, StoreError>;

    /// Like [`ChunkStore::write`], given the CRC32C of `data` (the server checked it against
    /// the request), so a store that keeps CRCs needs no pass of its own. The default ignores
    /// it.
    fn write_crc(
        &self,
        id: ChunkId,
        offset: u64,
        data: &[u8],
        crc: u32,
    ) -> Result<u64, StoreError> {
        let _ = crc;
        self.write(id, offset, data)
    }

    /// A READ without a copy: up to `len` bytes from `offset` as a snapshot the store lends
    /// (the server sends straight from it into the socket). `None` when the store does not
    /// lend (the default): the server reads into a buffer of its own. Errors as for `read`.
    fn read_shared(
        &self,
        id: ChunkId,
        offset: u64,
        len: usize,
    ) -> Option<Result<SharedRead, StoreError>> {
        let _ = (id, offset, len);
        None
    }

    /// Whether a call may wait on something slower than memory (a disk, a network). The
    /// server runs the calls of such a store on storage workers, off the loop that polls the
    /// network; a store that answers from memory says `false` and is called inline. The
    /// default is `true`, the safe answer.
    fn may_block(&self) -> bool {
        true
    }

    /// Like [`ChunkStore::read`], also giving the CRC32C of the bytes read (what a READ answer
    /// carries). The default reads, then takes the CRC in a second pass; a store that keeps
    /// CRCs, or can take one while it copies, overrides it to save that pass.
    fn read_crc(
        &self,
        id: ChunkId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(ReadInfo, u32), StoreError> {
        let info = self.read(id, offset, buf)?;
        crate::copies::count(crate::copies::Pass::Read, info.len);
        Ok((info, crate::proto::crc32c(&buf[..info.len])))
    }

    /// Up to `max` chunks (id and size), in the store's *listing order*, that come strictly
    /// after `after` in that order; from the first chunk when `after` is `None`. Serves the
    /// protocol's LIST: a client pages through the store by passing the last id of one page as
    /// `after` of the next, until a page comes back with fewer than `max` entries.
    ///
    /// The listing order is the store's choice, with two rules that make the cursor work:
    /// - it is a **total order over every possible id** (stored or not) that does not depend on
    ///   what the store holds, so any id is a valid `after`, a deleted one included;
    /// - it does not change while the store runs (ascending id; or, as [`DirStore`] does, by
    ///   subdirectory, then id).
    ///
    /// So a listing from the start that follows the cursor returns every chunk that exists
    /// throughout it exactly once, in order; chunks created or deleted meanwhile may or may not
    /// appear. A size is the chunk's size when it was looked at. `max == 0` returns nothing.
    /// May block (it reads directories): the server calls it on a storage worker when
    /// [`ChunkStore::may_block`] says so, like every other call.
    ///
    /// The default returns [`StoreError::Unsupported`], which the server answers with
    /// [`Status::Unsupported`]: a client says "this server's store cannot list".
    ///
    /// [`DirStore`]: super::DirStore
    fn list(&self, after: Option<ChunkId>, max: usize) -> Result<Vec<ListEntry>, StoreError> {
        let _ = (after, max);
        Err(StoreError::Unsupported { op: "list" })
    }
}

impl<S: ChunkStore + ?Sized> ChunkStore for std::sync::Arc<S> {
    fn write(&self, id: ChunkId, offset: u64, data: &[u8]) -> Result<u64, StoreError> {
        (**self).write(id, offset, data)
    }
    fn read(&self, id: ChunkId, offset: u64, buf: &mut [u8]) -> Result<ReadInfo, StoreError> {
        (**self).read(id, offset, buf)
    }
    fn delete(&self, id: ChunkId) -> Result<(), StoreError> {
        (**self).delete(id)
    }
    fn stat(&self, id: ChunkId) -> Result<ChunkStat, StoreError> {
        (**self).stat(id)
    }
    fn may_block(&self) -> bool {
        (**self).may_block()
    }
    fn write_crc(
        &self,
        id: ChunkId,
        offset: u64,
        data: &[u8],
        crc: u32,
    ) -> Result<u64, StoreError> {
        (**self).write_crc(id, offset, data, crc)
    }
    fn read_shared(
        &self,
        id: ChunkId,
        offset: u64,
        len: usize,
    ) -> Option<Result<SharedRead, StoreError>> {
        (**self).read_shared(id, offset, len)
    }
    fn read_crc(
        &self,
        id: ChunkId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(ReadInfo, u32), StoreError> {
        (**self).read_crc(id, offset, buf)
    }
    fn list(&self, after: Option<ChunkId>, max: usize) -> Result<Vec<ListEntry>, StoreError> {
        (**self).list(after, max)
    }
}

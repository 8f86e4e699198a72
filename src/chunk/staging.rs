//! Staging buffers for request and response payloads: two size classes carved from hugepage
//! pools at start-up, so a payload never allocates and the total is bounded. When both classes
//! are empty the caller stops reading (back-pressure) until a buffer comes back.

use crate::mem::{BufPool, MemError, PageSize, PoolBuf};

/// Sizes of the staging pools.
#[derive(Clone, Debug)]
pub struct StagingConfig {
    /// Length of a small buffer (payloads up to this use one).
    pub small_len: usize,
    /// Small buffers.
    pub small_count: usize,
    /// Large buffers (each `payload_len_max` long).
    pub large_count: usize,
    /// Large buffers one server connection may hold at once (its queued READ answers and the
    /// WRITE it is receiving), so a peer that never reads cannot starve the others.
    pub large_per_connection_max: usize,
    /// Page size wanted for the pools.
    pub page_size: PageSize,
}

impl Default for StagingConfig {
    fn default() -> StagingConfig {
        StagingConfig {
            small_len: 64 << 10,
            small_count: 256,
            large_count: 16,
            large_per_connection_max: 4,
            page_size: PageSize::Huge2M,
        }
    }
}

impl StagingConfig {
    /// Bytes these pools reserve for payloads of up to `large_len`.
    pub fn memory_len(&self, large_len: usize) -> usize {
        self.small_len * self.small_count + large_len * self.large_count
    }
}

/// The two pools.
#[derive(Clone, Debug)]
pub struct Staging {
    small: Option<BufPool>,
    large: BufPool,
    small_len: usize,
    large_share: usize,
}

impl Staging {
    /// Maps the pools; `large_len` is the protocol's payload limit.
    pub fn new(cfg: &StagingConfig, large_len: usize) -> Result<Staging, MemError> {
        let small = if cfg.small_count > 0 && cfg.small_len < large_len {
            Some(BufPool::with_capacity(
                cfg.small_count,
                cfg.small_len,
                0,
                cfg.page_size,
            )?)
        } else {
            None
        };
        Ok(Staging {
            small,
            large: BufPool::with_capacity(cfg.large_count.max(1), large_len, 0, cfg.page_size)?,
            small_len: cfg.small_len,
            large_share: cfg.large_per_connection_max.max(1),
        })
    }

    /// A buffer holding `len` bytes (contents unspecified), or `None` when the class it needs is
    /// empty. Small payloads fall back to a large buffer.
    pub fn alloc(&self, len: usize) -> Option<PoolBuf> {
        let mut buf = match &self.small {
            Some(small) if len <= self.small_len => small.alloc().or_else(|| self.large.alloc()),
            _ => self.large.alloc(),
        }?;
        if !buf.set_len(len) {
            return None;
        }
        Some(buf)
    }

    /// Like [`Staging::alloc`], for a holder that already has `large_held` large buffers: a
    /// large buffer is only given while that is below `large_per_connection_max`.
    pub fn alloc_shared(&self, len: usize, large_held: usize) -> Option<PoolBuf> {
        let may_take_large = large_held < self.large_share;
        let mut buf = match &self.small {
            Some(small) if len <= self.small_len => match small.alloc() {
                Some(b) => Some(b),
                None if may_take_large => self.large.alloc(),
                None => None,
            },
            _ if may_take_large => self.large.alloc(),
            _ => None,
        }?;
        if !buf.set_len(len) {
            return None;
        }
        Some(buf)
    }

    /// Whether `buf` came from the large class.
    pub fn is_large(&self, buf: &PoolBuf) -> bool {
        self.small.is_none() || buf.capacity() > self.small_len
    }

    /// The counters of the small pool (`None` without one) and of the large pool.
    pub fn pool_stats(&self) -> (Option<crate::mem::PoolStats>, crate::mem::PoolStats) {
        (self.small.as_ref().map(BufPool::stats), self.large.stats())
    }

    /// Bytes the pools reserve (every buffer's stride).
    pub fn reserved_bytes(&self) -> usize {
        let pool = |p: &BufPool| p.capacity() * p.stride();
        self.small.as_ref().map_or(0, pool) + pool(&self.large)
    }

    /// Buffers free in (small, large).
    pub fn available(&self) -> (usize, usize) {
        (
            self.small.as_ref().map_or(0, BufPool::available),
            self.large.available(),
        )
    }
}

/// The staging buffer of a payload under way (a READ answer's at a client, a WRITE's at a
/// server), lent by `lend_payload` ([`ClientConn`](super::ClientConn),
/// [`ServerConn`](super::ServerConn)) to a receive path that puts stream bytes straight into
/// it: the next `len` bytes of the payload go at `buf[at..at + len]`.
pub struct LentPayload {
    /// The payload's buffer.
    pub buf: PoolBuf,
    /// Where the next payload byte goes.
    pub at: usize,
    /// Payload bytes still to come.
    pub len: usize,
    /// The CRC32C of the payload's bytes before `at`: continue it over the bytes placed
    /// (`crc32c_append`) and give the result back with them.
    pub crc: u32,
}

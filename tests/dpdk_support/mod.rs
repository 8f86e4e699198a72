//! Shared by the DPDK tests that need two processes (DPDK's EAL starts once per process; the
//! test binary runs itself as a child, `tests/common/child.rs`): the chunks of their round
//! trips.
#![allow(dead_code)]

use super::common::{Pattern, Rng};

/// Chunks of the round-trip tests.
pub const CHUNKS: u32 = 500;
/// The largest chunk.
pub const CHUNK_LEN_MAX: usize = 4 << 20;

/// Chunk `i` of a round trip: its id and length (log-uniform, 1 B ..= 4 MiB), the lengths
/// drawn in order from one seeded generator.
pub struct ChunkPlan {
    rng: Rng,
}

impl ChunkPlan {
    /// The plan for `seed`.
    pub fn new(seed: u64) -> ChunkPlan {
        ChunkPlan {
            rng: Rng::new(seed),
        }
    }

    /// The next length.
    pub fn next_len(&mut self) -> usize {
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let len = ((CHUNK_LEN_MAX as f64 + 1.0).ln() * u).exp() as usize;
        len.clamp(1, CHUNK_LEN_MAX)
    }
}

/// Fills `buf` with the content of chunk `i`.
pub fn chunk_content(i: u32, buf: &mut [u8]) {
    Pattern::new(0x5eed ^ u64::from(i)).fill(0, buf);
}

/// Where `got` first differs from `want`, if it does (lengths included).
pub fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    if got.len() != want.len() {
        return Some(got.len().min(want.len()));
    }
    got.iter().zip(want).position(|(a, b)| a != b)
}

//! Chunk serving: the [`ChunkStore`] trait embedders implement, stores, and the sans-IO server
//! and client state machines that speak the chunk protocol (`proto`) over any byte stream.
#![allow(missing_docs)]

mod store;

pub use store::{ChunkStat, ChunkStore, ReadInfo, StoreError};

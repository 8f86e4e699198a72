//! Chunk serving: the [`ChunkStore`] trait embedders implement, stores, and the sans-IO server
//! and client state machines that speak the chunk protocol (`proto`) over any byte stream.
//!
//! Two stores come with the crate: [`MemStore`] (in memory, with a byte budget) and
//! [`DirStore`] (one file per chunk under a directory, crash-safe, with a [`SyncPolicy`]).

pub mod dir_store;
pub mod mem_store;
mod store;
#[cfg(test)]
mod store_contract;

pub use dir_store::{DirStore, DirStoreConfig, DirStoreError, RecoveryReport, SyncPolicy};
pub use mem_store::MemStore;
pub use store::{ChunkStat, ChunkStore, ReadInfo, StoreError};

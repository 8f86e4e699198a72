//! Chunk serving: the [`ChunkStore`] trait embedders implement, two stores, and the chunk
//! protocol's server and client.
//!
//! The protocol logic is sans-IO ([`ServerConn`], [`ClientConn`]): bytes in, bytes out, no
//! sockets and no clock. [`ChunkServer`] and [`ChunkClient`] run it on a ustack
//! [`Stack`](crate::stack::Stack); the `net` module runs the same machines over kernel TCP.
//!
//! Two stores come with the crate: [`MemStore`] (in memory, with a byte budget) and
//! [`DirStore`] (one file per chunk under a directory, crash-safe, with a [`SyncPolicy`]).

mod block_sums;
mod client;
pub mod dir_store;
#[cfg(test)]
mod list_tests;
pub mod mem_store;
pub mod meter;
mod on_stack;
mod server;
mod staging;
mod store;
// The `ChunkStore` contract as tests (feature `testing`; users outside see it as
// `ustack::testing::store_contract`).
#[cfg(any(test, feature = "testing"))]
pub mod store_contract;
mod workers;

pub use client::{
    ChunkOp, ClientConfig, ClientConn, ClientError, ClientStats, Completion, SubmitError,
};
pub use dir_store::{
    DirStore, DirStoreConfig, DirStoreError, RecoveryReport, ScrubFinding, ScrubReport, SyncPolicy,
};
pub use mem_store::MemStore;
pub use on_stack::{ChunkClient, ChunkServer, ChunkSetupError};
pub(crate) use server::{conn_tag, refusal, take_results, REFUSED_LINGER, REFUSED_MAX};
pub use server::{ServeCtx, ServerConfig, ServerConn, ServerSnapshot, ServerStats};
pub use staging::{LentPayload, Staging, StagingConfig};
pub use store::{ChunkStat, ChunkStore, ReadInfo, SharedRead, StoreError};
pub use workers::{worker_of, Storage, StorageConfig, StorageMode, StoreWorkers, WorkerConfig};

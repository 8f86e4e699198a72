//! Chunk serving: the [`ChunkStore`] trait embedders implement, stores, and the chunk protocol's
//! server and client.
//!
//! The protocol logic is sans-IO ([`ServerConn`], [`ClientConn`]): bytes in, bytes out, no
//! sockets and no clock. [`ChunkServer`] and [`ChunkClient`] run it on a ustack
//! [`Stack`](crate::stack::Stack); the `net` module runs the same machines over kernel TCP.

mod client;
mod on_stack;
mod server;
mod staging;
mod store;

pub use client::{
    ChunkOp, ClientConfig, ClientConn, ClientError, ClientStats, Completion, SubmitError,
};
pub use on_stack::{ChunkClient, ChunkServer, ChunkSetupError};
pub use server::{ServerConfig, ServerConn, ServerStats};
pub use staging::{Staging, StagingConfig};
pub use store::{ChunkStat, ChunkStore, ReadInfo, StoreError};

//! Embedding ustack: a chunk server over memif that keeps chunks in a store of its own.
//!
//! ```text
//! cargo run --release --example embed -- /tmp/embed.sock
//! chunkctl --backend memif --memif-socket /tmp/embed.sock --ip 10.216.0.2/24 \
//!     --server 10.216.0.1:7000 verify --total 64MiB
//! ```
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use ustack::prelude::*;

/// Your storage goes here; this one keeps chunks in memory and counts what it is asked.
pub struct CountingStore {
    pub chunks: MemStore,
    pub calls: AtomicU64,
}

impl ChunkStore for CountingStore {
    fn write(&self, id: ChunkId, offset: u64, data: &[u8]) -> Result<u64, StoreError> {
        self.calls.fetch_add(1, Relaxed);
        self.chunks.write(id, offset, data)
    }
    fn read(&self, id: ChunkId, offset: u64, buf: &mut [u8]) -> Result<ReadInfo, StoreError> {
        self.calls.fetch_add(1, Relaxed);
        self.chunks.read(id, offset, buf)
    }
    fn delete(&self, id: ChunkId) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Relaxed);
        self.chunks.delete(id)
    }
    fn stat(&self, id: ChunkId) -> Result<ChunkStat, StoreError> {
        self.calls.fetch_add(1, Relaxed);
        self.chunks.stat(id)
    }
    /// Memory never waits: called on the serving loop, not on storage workers.
    fn may_block(&self) -> bool {
        false
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let socket = std::env::args()
        .nth(1)
        .unwrap_or("/tmp/ustack-embed.sock".into());
    let dev = AnyDevice::open_memif(&MemifConfig::new(socket, MemifRole::Server))?;
    let mut cfg = StackConfig::new("10.216.0.1".parse()?, 24);
    cfg.sockets_max = 80; // ServerConfig's 64 connections and a backlog of 16
    let mut stack = Stack::new(dev, cfg)?;
    let store = CountingStore {
        chunks: MemStore::new(1 << 30),
        calls: AtomicU64::new(0),
    };
    let server = ChunkServer::bind(&mut stack, 7000, store, ServerConfig::default())?;
    let mut service = StackService::new(stack, server);
    let serve = ServeLoop::new().stop_on_signals()?; // SIGINT/SIGTERM: graceful shutdown
    serve.run(&mut service, |_, _| {});
    let calls = service.server.store().calls.load(Relaxed);
    println!("embed: {calls} store calls");
    Ok(())
}

//! Chunk stores: MemStore and DirStore (both sync policies), 64 KiB appends, overwrites and
//! reads. DirStore runs in a directory under the system temp dir (so on that file system).
//!
//! Run: `cargo bench --bench store` (or `-- --quick` for a short run).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ustack::chunk::{ChunkStore, DirStore, DirStoreConfig, MemStore, SyncPolicy};
use ustack::proto::ChunkId;

const LEN: usize = 64 << 10;
/// Appends go to a chunk until it holds this much, then to a fresh one (the old is deleted).
const ROTATE_BYTES: u64 = 16 << 20;

fn bench_store(c: &mut Criterion, name: &str, store: &dyn ChunkStore, slow: bool) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(LEN as u64));
    if slow {
        g.sample_size(10).measurement_time(Duration::from_secs(3));
    }
    let data = vec![0x5Au8; LEN];
    let mut id = 1u128;
    let mut size = 0u64;
    g.bench_function("append_64KiB", |b| {
        b.iter(|| {
            if size >= ROTATE_BYTES {
                store.delete(ChunkId(id)).unwrap();
                id += 1;
                size = 0;
            }
            size = store.write(ChunkId(id), size, black_box(&data)).unwrap();
        })
    });
    let _ = store.delete(ChunkId(id));

    let fixed = ChunkId(0xF1);
    store.write(fixed, 0, &vec![1u8; 4 << 20]).unwrap();
    let mut at = 0u64;
    g.bench_function("overwrite_64KiB", |b| {
        b.iter(|| {
            at = (at + LEN as u64) % (4 << 20);
            store.write(fixed, at, black_box(&data)).unwrap()
        })
    });
    let mut buf = vec![0u8; LEN];
    g.bench_function("read_64KiB", |b| {
        b.iter(|| {
            at = (at + LEN as u64) % (4 << 20);
            store.read(fixed, at, black_box(&mut buf)).unwrap()
        })
    });
    g.throughput(Throughput::Bytes(4 << 20));
    g.bench_function("stat_4MiB", |b| b.iter(|| store.stat(fixed).unwrap()));
    g.finish();
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stores(c: &mut Criterion) {
    let mem = MemStore::new(1 << 30);
    bench_store(c, "mem_store", &mem, false);
    drop(mem);

    for (sync, name, slow) in [
        (SyncPolicy::Never, "dir_store_never", false),
        (SyncPolicy::Always, "dir_store_always", true),
    ] {
        let dir = TempDir(
            std::env::temp_dir().join(format!("ustack-bench-store-{}-{name}", std::process::id())),
        );
        let config = DirStoreConfig {
            sync,
            ..DirStoreConfig::default()
        };
        let store = DirStore::open(&dir.0, config).unwrap();
        bench_store(c, name, &store, slow);
    }
}

criterion_group!(benches, stores);
criterion_main!(benches);

//! Store calls on storage workers, over kernel TCP on 127.0.0.1 (`net::KernelServer`, the same
//! storage path the ustack server runs): a call that hangs is answered `Timeout` while other
//! chunks and connections are served; a call that panics is answered `Internal`; a full
//! storage queue pushes back without losing a request; a READ pipelined after a WRITE of the
//! same chunk sees it; LIST runs on a worker, and a store that cannot list answers Unsupported.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant as WallInstant};

use ustack::chunk::{
    worker_of, ChunkOp, ChunkStat, ChunkStore, ClientConfig, ClientError, Completion, MemStore,
    ReadInfo, ServerConfig, StagingConfig, StorageConfig, StorageMode, StoreError, WorkerConfig,
};
use ustack::net::{KernelClient, KernelServer};
use ustack::proto::{ChunkId, ListEntry, Reply, Status};
use ustack::{Instant, PageSize};

const WALL_LIMIT: Duration = Duration::from_secs(60);

/// A MemStore whose calls can be made to hang (until released), panic, or sleep.
struct Faulty {
    inner: MemStore,
    hang: Option<ChunkId>,
    panic_on: Option<ChunkId>,
    delay: Duration,
    released: Mutex<bool>,
    cv: Condvar,
    calls: AtomicUsize,
}

impl Faulty {
    fn new() -> Faulty {
        Faulty {
            inner: MemStore::new(1 << 30),
            hang: None,
            panic_on: None,
            delay: Duration::ZERO,
            released: Mutex::new(false),
            cv: Condvar::new(),
            calls: AtomicUsize::new(0),
        }
    }

    fn release(&self) {
        *self.released.lock().unwrap() = true;
        self.cv.notify_all();
    }

    fn before(&self, id: ChunkId) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.panic_on == Some(id) {
            panic!("test store: chunk {id:?} panics");
        }
        if self.hang == Some(id) {
            let mut r = self.released.lock().unwrap();
            while !*r {
                r = self.cv.wait(r).unwrap();
            }
        }
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
    }
}

impl ChunkStore for Faulty {
    fn write(&self, id: ChunkId, offset: u64, data: &[u8]) -> Result<u64, StoreError> {
        self.before(id);
        self.inner.write(id, offset, data)
    }
    fn read(&self, id: ChunkId, offset: u64, buf: &mut [u8]) -> Result<ReadInfo, StoreError> {
        self.before(id);
        self.inner.read(id, offset, buf)
    }
    fn delete(&self, id: ChunkId) -> Result<(), StoreError> {
        self.before(id);
        self.inner.delete(id)
    }
    fn stat(&self, id: ChunkId) -> Result<ChunkStat, StoreError> {
        self.before(id);
        self.inner.stat(id)
    }
}

fn staging() -> StagingConfig {
    StagingConfig {
        small_len: 64 << 10,
        small_count: 128,
        large_count: 8,
        large_per_connection_max: 8,
        // Base pages: tests must not take hugepages other tests on the machine rely on.
        page_size: PageSize::Base4K,
    }
}

fn server_config(threads: usize, queue_len: usize, timeout: Duration) -> ServerConfig {
    ServerConfig {
        connections_max: 4,
        staging: staging(),
        shutdown_grace: Duration::from_secs(2),
        storage: StorageConfig {
            mode: StorageMode::Workers,
            workers: WorkerConfig { threads, queue_len },
            timeout,
        },
        ..ServerConfig::default()
    }
}

fn client() -> ClientConfig {
    ClientConfig {
        staging: staging(),
        request_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

fn collect(client: &mut KernelClient, n: usize) -> HashMap<u64, Completion> {
    let start = WallInstant::now();
    let mut done = HashMap::new();
    while done.len() < n {
        assert!(
            start.elapsed() < WALL_LIMIT,
            "only {} of {n} answers",
            done.len()
        );
        client.poll(Instant::now(), Duration::from_millis(20));
        while let Some(c) = client.next_completion() {
            done.insert(c.request_id, c);
        }
    }
    done
}

/// A chunk id whose calls run on `worker` of `workers`.
fn chunk_on(worker: usize, workers: usize, from: u128) -> ChunkId {
    (from..)
        .map(ChunkId)
        .find(|&id| worker_of(id, workers) == worker)
        .unwrap()
}

fn status(c: &Completion) -> Option<Status> {
    match &c.result {
        Err(ClientError::Status(s)) => Some(*s),
        _ => None,
    }
}

#[test]
fn a_hung_store_call_times_out_while_other_chunks_and_connections_are_served() {
    let hung = chunk_on(0, 2, 1);
    let other = chunk_on(1, 2, 1000);
    let store = Arc::new(Faulty {
        hang: Some(hung),
        ..Faulty::new()
    });
    let server = KernelServer::spawn(
        "127.0.0.1:0".parse().unwrap(),
        Arc::clone(&store),
        server_config(2, 8, Duration::from_millis(500)),
    )
    .unwrap();
    let mut a = KernelClient::connect(server.local_addr(), &client()).unwrap();
    let mut b = KernelClient::connect(server.local_addr(), &client()).unwrap();
    let started = WallInstant::now();
    let stuck = a
        .submit(
            ChunkOp::Write {
                id: hung,
                offset: 0,
                data: b"never lands in time",
            },
            Instant::now(),
        )
        .unwrap();
    // Another chunk, on the same connection and on another one, is served meanwhile.
    for client in [&mut a, &mut b] {
        let c = client
            .call(ChunkOp::Write {
                id: other,
                offset: 0,
                data: b"served",
            })
            .unwrap();
        assert_eq!(c.result, Ok(Reply::Write { chunk_size: 6 }));
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    let got = collect(&mut a, 1);
    assert_eq!(status(&got[&stuck]), Some(Status::Timeout));
    assert!(started.elapsed() >= Duration::from_millis(500));
    store.release();
    // The connection goes on after the timeout; the late result is dropped.
    let c = a.call(ChunkOp::Stat { id: hung }).unwrap();
    assert!(c.result.is_ok(), "{:?}", c.result);
    let st = server.stop();
    assert_eq!(st.storage_timeouts, 1);
    assert_eq!(st.storage_late, 1);
    assert_eq!(st.connections_closed_for_errors, 0);
}

#[test]
fn a_panicking_store_call_answers_internal_and_the_worker_goes_on() {
    let bad = ChunkId(66);
    let store = Arc::new(Faulty {
        panic_on: Some(bad),
        ..Faulty::new()
    });
    let server = KernelServer::spawn(
        "127.0.0.1:0".parse().unwrap(),
        Arc::clone(&store),
        server_config(1, 8, Duration::from_secs(10)),
    )
    .unwrap();
    let mut c = KernelClient::connect(server.local_addr(), &client()).unwrap();
    let r = c
        .call(ChunkOp::Write {
            id: bad,
            offset: 0,
            data: b"boom",
        })
        .unwrap();
    assert_eq!(status(&r), Some(Status::Internal));
    for i in 0..3u128 {
        let r = c
            .call(ChunkOp::Write {
                id: ChunkId(100 + i),
                offset: 0,
                data: b"fine",
            })
            .unwrap();
        assert_eq!(r.result, Ok(Reply::Write { chunk_size: 4 }));
    }
    server.stop();
}

#[test]
fn a_full_storage_queue_pushes_back_and_loses_nothing() {
    // One worker with room for one job, 2 ms a call: 64 pipelined WRITEs then 64 READs must
    // wait for the queue, and every one is answered right.
    let store = Arc::new(Faulty {
        delay: Duration::from_millis(2),
        ..Faulty::new()
    });
    let server = KernelServer::spawn(
        "127.0.0.1:0".parse().unwrap(),
        Arc::clone(&store),
        server_config(1, 1, Duration::from_secs(20)),
    )
    .unwrap();
    let mut c = KernelClient::connect(server.local_addr(), &client()).unwrap();
    let data = |i: u128| -> Vec<u8> { (0..20_000).map(|j| (i as usize * 31 + j) as u8).collect() };
    let mut ids = HashMap::new();
    for i in 0..64u128 {
        let d = data(i);
        let op = ChunkOp::Write {
            id: ChunkId(500 + i),
            offset: 0,
            data: &d,
        };
        ids.insert(c.submit(op, Instant::now()).unwrap(), i);
    }
    for (_, done) in collect(&mut c, 64) {
        assert_eq!(done.result, Ok(Reply::Write { chunk_size: 20_000 }));
    }
    let mut ids = HashMap::new();
    for i in 0..64u128 {
        let op = ChunkOp::Read {
            id: ChunkId(500 + i),
            offset: 0,
            len: 20_000,
        };
        ids.insert(c.submit(op, Instant::now()).unwrap(), i);
    }
    for (rid, done) in collect(&mut c, 64) {
        assert!(done.result.is_ok(), "{:?}", done.result);
        assert!(done.data() == data(ids[&rid]).as_slice());
    }
    let st = server.stop();
    assert!(st.storage_waits > 0, "the queue never filled: {st:?}");
    assert_eq!(st.writes, 64);
    assert_eq!(st.reads, 64);
    assert_eq!(st.errors, 0);
}

#[test]
fn a_read_pipelined_after_a_write_of_the_same_chunk_sees_it() {
    let store = Arc::new(Faulty {
        delay: Duration::from_millis(1),
        ..Faulty::new()
    });
    let server = KernelServer::spawn(
        "127.0.0.1:0".parse().unwrap(),
        Arc::clone(&store),
        server_config(4, 8, Duration::from_secs(20)),
    )
    .unwrap();
    let mut c = KernelClient::connect(server.local_addr(), &client()).unwrap();
    let id = ChunkId(9);
    let mut reads = Vec::new();
    for round in 0..16u8 {
        let data = vec![round; 4096];
        c.submit(
            ChunkOp::Write {
                id,
                offset: 0,
                data: &data,
            },
            Instant::now(),
        )
        .unwrap();
        let r = c
            .submit(
                ChunkOp::Read {
                    id,
                    offset: 0,
                    len: 4096,
                },
                Instant::now(),
            )
            .unwrap();
        reads.push((r, round));
    }
    let done = collect(&mut c, 32);
    for (r, round) in reads {
        assert!(done[&r].result.is_ok(), "{:?}", done[&r].result);
        assert!(
            done[&r].data().iter().all(|&b| b == round),
            "read {round} saw another write"
        );
    }
    server.stop();
}

/// A store that may block, whose LIST records the thread it runs on and waits until released.
struct SlowList {
    inner: MemStore,
    thread: Mutex<Option<String>>,
    released: Mutex<bool>,
    cv: Condvar,
}

impl ChunkStore for SlowList {
    fn write(&self, id: ChunkId, offset: u64, data: &[u8]) -> Result<u64, StoreError> {
        self.inner.write(id, offset, data)
    }
    fn read(&self, id: ChunkId, offset: u64, buf: &mut [u8]) -> Result<ReadInfo, StoreError> {
        self.inner.read(id, offset, buf)
    }
    fn delete(&self, id: ChunkId) -> Result<(), StoreError> {
        self.inner.delete(id)
    }
    fn stat(&self, id: ChunkId) -> Result<ChunkStat, StoreError> {
        self.inner.stat(id)
    }
    fn list(&self, after: Option<ChunkId>, max: usize) -> Result<Vec<ListEntry>, StoreError> {
        *self.thread.lock().unwrap() = std::thread::current().name().map(String::from);
        let mut released = self.released.lock().unwrap();
        while !*released {
            released = self.cv.wait(released).unwrap();
        }
        self.inner.list(after, max)
    }
}

/// LIST of a store that may block runs on a storage worker: while it waits, the serving loop
/// answers a PING and a STAT on the same connection; released, it answers the listing.
#[test]
fn a_list_runs_on_a_storage_worker_not_on_the_serving_loop() {
    let store = Arc::new(SlowList {
        inner: MemStore::new(1 << 20),
        thread: Mutex::new(None),
        released: Mutex::new(false),
        cv: Condvar::new(),
    });
    store.inner.write(ChunkId(9), 0, b"nine").unwrap();
    let cfg = ServerConfig {
        storage: StorageConfig {
            mode: StorageMode::Auto,
            ..StorageConfig::default()
        },
        ..server_config(2, 8, Duration::from_secs(10))
    };
    let server =
        KernelServer::spawn("127.0.0.1:0".parse().unwrap(), Arc::clone(&store), cfg).unwrap();
    let mut c = KernelClient::connect(server.local_addr(), &client()).unwrap();
    let list = c
        .submit(
            ChunkOp::List {
                after: None,
                max: 10,
            },
            Instant::now(),
        )
        .unwrap();
    assert_eq!(c.call(ChunkOp::Ping).unwrap().result, Ok(Reply::Ping));
    // The STAT's chunk maps to the other worker than the LIST's (cursor 0).
    let other = chunk_on(1 - worker_of(ChunkId(0), 2), 2, 1);
    store.inner.write(other, 0, b"x").unwrap();
    assert!(c.call(ChunkOp::Stat { id: other }).unwrap().result.is_ok());
    *store.released.lock().unwrap() = true;
    store.cv.notify_all();
    let got = collect(&mut c, 1);
    let done = &got[&list];
    assert!(
        matches!(done.result, Ok(Reply::List { more: false, .. })),
        "{:?}",
        done.result
    );
    // Both chunks, in the store's order.
    let want = store.inner.list(None, 10).unwrap();
    let mut ids: Vec<ChunkId> = want.iter().map(|e| e.id).collect();
    let mut expect = vec![ChunkId(9), other];
    ids.sort();
    expect.sort();
    assert_eq!(ids, expect);
    assert_eq!(done.list_entries().collect::<Vec<_>>(), want);
    let thread = store.thread.lock().unwrap().clone().unwrap_or_default();
    assert!(
        thread.starts_with("ustack-store-"),
        "LIST ran on {thread:?}"
    );
    assert_eq!(server.stop().lists, 1);
}

/// A store without LIST (the trait's default) is answered Unsupported; the connection goes on.
#[test]
fn a_store_that_cannot_list_answers_unsupported() {
    let store = Arc::new(Faulty::new());
    let server = KernelServer::spawn(
        "127.0.0.1:0".parse().unwrap(),
        Arc::clone(&store),
        server_config(1, 8, Duration::from_secs(10)),
    )
    .unwrap();
    let mut c = KernelClient::connect(server.local_addr(), &client()).unwrap();
    let r = c
        .call(ChunkOp::List {
            after: Some(ChunkId(1)),
            max: 5,
        })
        .unwrap();
    assert_eq!(status(&r), Some(Status::Unsupported));
    assert_eq!(r.list_entries().count(), 0);
    assert_eq!(c.call(ChunkOp::Ping).unwrap().result, Ok(Reply::Ping));
    let st = server.stop();
    assert_eq!(st.errors, 1);
    assert_eq!(st.lists, 0);
}

//! Storage off the serving loop: [`StoreWorkers`] run [`ChunkStore`] calls on threads of their
//! own, fed through bounded queues, so a store that waits on a disk never stops the loop that
//! polls the network.
//!
//! - **Order.** Each chunk id maps to one worker (a hash), and a worker runs its queue in order:
//!   operations on one chunk run in the order they were submitted. A READ submitted after a
//!   WRITE of the same chunk (on any connection, once the WRITE was submitted) sees it.
//! - **Bounds.** Each worker's queue holds `queue_len` jobs, and at most
//!   [`StoreWorkers::capacity`] jobs are outstanding (queued, running, or finished and not yet
//!   collected). A full queue refuses the job ([`StoreWorkers::submit`] gives it back): the
//!   caller keeps the request and stops reading its connection, so the TCP window closes.
//! - **Failures.** A store call that panics answers [`Status::Internal`] and the worker goes on.
//!   A call that hangs keeps its worker (and the chunks that map to it) waiting; the serving
//!   loop answers such requests with [`Status::Timeout`] after `ServerConfig::storage_timeout`
//!   and serves every other connection meanwhile. A late result is dropped.
//!
//! Workers park when idle and are woken by [`StoreWorkers::submit`]; dropping the
//! `StoreWorkers` stops and joins them (after the call each one runs, if any, returns).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use crate::mem::PoolBuf;
use crate::proto::{crc32c, ChunkId, Status, LIST_ENTRY_LEN};

use super::store::{ChunkStat, ChunkStore, ReadInfo, SharedRead};

/// How long an idle worker parks before it looks at its queue again (a wake-up is never lost,
/// this only bounds how late a stop request is noticed).
const PARK_MAX: Duration = Duration::from_millis(50);

/// What a job asks of the store. Payload buffers travel with the job and come back in its
/// [`Done`].
pub(crate) enum Work {
    /// Write `buf` (all of it; `None` for an empty write) at `offset`; `crc` is its CRC32C.
    Write {
        chunk: ChunkId,
        offset: u64,
        buf: Option<PoolBuf>,
        crc: u32,
    },
    /// Read into `buf` (its length is the request's) from `offset`, and take the CRC32C of
    /// what was read.
    Read {
        chunk: ChunkId,
        offset: u64,
        buf: Option<PoolBuf>,
    },
    /// Remove the chunk.
    Delete { chunk: ChunkId },
    /// Size and CRC.
    Stat { chunk: ChunkId },
    /// Up to `max` chunks after `after`, packed into `buf` (`max` entries long; `None` when
    /// `max` is 0), and whether more remain.
    List {
        after: Option<ChunkId>,
        max: usize,
        buf: Option<PoolBuf>,
    },
}

impl Work {
    /// The chunk whose worker runs this job (LIST touches no one chunk: its cursor's).
    fn chunk(&self) -> ChunkId {
        match self {
            Work::Write { chunk, .. }
            | Work::Read { chunk, .. }
            | Work::Delete { chunk }
            | Work::Stat { chunk } => *chunk,
            Work::List { after, .. } => after.unwrap_or_default(),
        }
    }
}

/// A store call to run, and who asked.
pub(crate) struct Job {
    /// The caller's name for the asker (a connection slot and its generation).
    pub tag: u64,
    /// The asker's sequence number for this job.
    pub seq: u64,
    pub work: Work,
}

/// What a store call gave.
pub(crate) enum Outcome {
    /// The chunk's size after the write, and the bytes written.
    Written {
        size: u64,
        len: usize,
    },
    /// The bytes read (in the buffer, `info.len` of them) and their CRC32C.
    Read {
        buf: Option<PoolBuf>,
        info: ReadInfo,
        crc: u32,
    },
    /// Bytes the store lent (no copy) and their CRC32C.
    Lent(SharedRead),
    Deleted,
    Stat(ChunkStat),
    /// `entries` LIST entries packed in `buf`, their CRC32C, and whether more chunks follow.
    Listed {
        buf: Option<PoolBuf>,
        entries: usize,
        crc: u32,
        more: bool,
    },
}

/// A finished job.
pub(crate) struct Done {
    pub tag: u64,
    pub seq: u64,
    pub result: Result<Outcome, Status>,
    /// How long the store call took (not counting its time in the queue).
    pub took: Duration,
}

/// Storage worker settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Worker threads.
    pub threads: usize,
    /// Jobs each worker's queue holds.
    pub queue_len: usize,
}

impl Default for WorkerConfig {
    fn default() -> WorkerConfig {
        WorkerConfig {
            threads: 2,
            queue_len: 32,
        }
    }
}

struct Shared<S> {
    store: S,
    queues: Vec<ArrayQueue<Job>>,
    done: ArrayQueue<Done>,
    stop: AtomicBool,
    /// Jobs running now (for reports).
    running: AtomicUsize,
    /// An eventfd signalled after each result, for a loop that sleeps in the kernel.
    wake: OnceLock<OwnedFd>,
}

/// Threads that run store calls, fed through bounded queues. Each chunk id maps to one worker
/// ([`worker_of`]), which runs its queue in order, so a chunk's calls run in submission order;
/// at most [`StoreWorkers::capacity`] jobs are outstanding. A call that panics is answered
/// [`Status::Internal`]; one that hangs is answered [`Status::Timeout`] by the serving loop
/// after [`StorageConfig::timeout`].
pub struct StoreWorkers<S: ChunkStore + 'static> {
    shared: Arc<Shared<S>>,
    threads: Vec<(JoinHandle<()>, Thread)>,
    /// Jobs submitted and not yet collected.
    outstanding: usize,
    capacity: usize,
}

impl<S: ChunkStore + 'static> StoreWorkers<S> {
    /// Starts `cfg.threads` workers over `store`.
    pub fn start(store: S, cfg: &WorkerConfig) -> std::io::Result<StoreWorkers<S>> {
        let threads = cfg.threads.max(1);
        let queue_len = cfg.queue_len.max(1);
        // Every outstanding job's result fits in `done`, so a worker never waits to hand one in.
        let capacity = threads * queue_len;
        let shared = Arc::new(Shared {
            store,
            queues: (0..threads).map(|_| ArrayQueue::new(queue_len)).collect(),
            done: ArrayQueue::new(capacity),
            stop: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            wake: OnceLock::new(),
        });
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let sh = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("ustack-store-{i}"))
                .spawn(move || worker(&sh, i));
            match spawned {
                Ok(h) => {
                    let t = h.thread().clone();
                    handles.push((h, t));
                }
                Err(e) => {
                    shared.stop.store(true, Ordering::Release);
                    for (h, t) in handles {
                        t.unpark();
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(StoreWorkers {
            shared,
            threads: handles,
            outstanding: 0,
            capacity,
        })
    }

    /// The store the workers call.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// Jobs that may be outstanding at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Jobs submitted whose results were not collected yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// An eventfd the workers signal after each result (made on the first call): a serving
    /// loop that sleeps in `poll`/`epoll` waits on it too, and drains it when it wakes.
    pub fn wake_fd(&self) -> std::io::Result<BorrowedFd<'_>> {
        if self.shared.wake.get().is_none() {
            let fd = crate::sys::unix_ipc::eventfd()?;
            let _ = self.shared.wake.set(fd);
        }
        Ok(self.shared.wake.get().expect("set above").as_fd())
    }

    /// Queues `job` on its chunk's worker, or gives it back when that queue is full.
    pub(crate) fn submit(&mut self, job: Job) -> Result<(), Job> {
        if self.outstanding >= self.capacity {
            return Err(job);
        }
        let i = worker_of(job.work.chunk(), self.threads.len());
        self.shared.queues[i].push(job)?;
        self.outstanding += 1;
        self.threads[i].1.unpark();
        Ok(())
    }

    /// The next finished job, if any.
    pub(crate) fn collect(&mut self) -> Option<Done> {
        let d = self.shared.done.pop()?;
        self.outstanding -= 1;
        Some(d)
    }
}

impl<S: ChunkStore + 'static> Drop for StoreWorkers<S> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for (h, t) in self.threads.drain(..) {
            t.unpark();
            let _ = h.join();
        }
    }
}

impl<S: ChunkStore + 'static> std::fmt::Debug for StoreWorkers<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWorkers")
            .field("threads", &self.threads.len())
            .field("capacity", &self.capacity)
            .field("outstanding", &self.outstanding)
            .field("running", &self.shared.running.load(Ordering::Relaxed))
            .finish()
    }
}

/// The worker (of `workers`) a chunk's jobs go to: a fixed hash of the id, so a chunk's calls
/// run in submission order.
pub fn worker_of(id: ChunkId, workers: usize) -> usize {
    let v = id.0;
    let folded = (v as u64) ^ ((v >> 64) as u64);
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % workers.max(1)
}

fn worker<S: ChunkStore>(sh: &Shared<S>, i: usize) {
    let q = &sh.queues[i];
    loop {
        let Some(job) = q.pop() else {
            if sh.stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::park_timeout(PARK_MAX);
            continue;
        };
        sh.running.fetch_add(1, Ordering::Relaxed);
        let began = std::time::Instant::now();
        let result = match catch_unwind(AssertUnwindSafe(|| run(&sh.store, job.work))) {
            Ok(r) => r,
            Err(_) => {
                tracing::error!(worker = i, "a chunk store call panicked; answered Internal");
                Err(Status::Internal)
            }
        };
        sh.running.fetch_sub(1, Ordering::Relaxed);
        let done = Done {
            tag: job.tag,
            seq: job.seq,
            result,
            took: began.elapsed(),
        };
        // `done` has room for every outstanding job (see `start`).
        if sh.done.push(done).is_err() {
            tracing::error!(worker = i, "storage completion queue full; result dropped");
        }
        if let Some(fd) = sh.wake.get() {
            let _ = crate::sys::unix_ipc::eventfd_signal(fd.as_fd());
        }
    }
}

/// Runs one store call (on a worker, or inline on the serving loop for stores that never wait).
pub(crate) fn run<S: ChunkStore + ?Sized>(store: &S, work: Work) -> Result<Outcome, Status> {
    match work {
        Work::Write {
            chunk,
            offset,
            buf,
            crc,
        } => {
            let data = buf.as_ref().map_or(&[][..], PoolBuf::as_slice);
            store
                .write_crc(chunk, offset, data, crc)
                .map(|size| Outcome::Written {
                    size,
                    len: data.len(),
                })
                .map_err(|e| e.status())
            // `buf` returns to its pool here.
        }
        Work::Read {
            chunk,
            offset,
            mut buf,
        } => {
            let mut empty = [0u8; 0];
            let target = match buf.as_mut() {
                Some(b) => b.as_mut_slice(),
                None => &mut empty[..],
            };
            match store.read_crc(chunk, offset, target) {
                Ok((info, crc)) => {
                    if let Some(b) = buf.as_mut() {
                        let _ = b.set_len(info.len);
                    }
                    Ok(Outcome::Read {
                        buf: buf.filter(|b| !b.is_empty()),
                        info,
                        crc,
                    })
                }
                Err(e) => Err(e.status()),
            }
        }
        Work::Delete { chunk } => store
            .delete(chunk)
            .map(|()| Outcome::Deleted)
            .map_err(|e| e.status()),
        Work::Stat { chunk } => store.stat(chunk).map(Outcome::Stat).map_err(|e| e.status()),
        Work::List { after, max, buf } => list(store, after, max, buf),
    }
}

/// LIST: asks the store for one entry more than the page holds, to tell whether more remain,
/// and packs the page into `buf`. A store that gives more than asked is cut to the page.
fn list<S: ChunkStore + ?Sized>(
    store: &S,
    after: Option<ChunkId>,
    max: usize,
    mut buf: Option<PoolBuf>,
) -> Result<Outcome, Status> {
    let found = store
        .list(after, max.saturating_add(1))
        .map_err(|e| e.status())?;
    // The page is what `buf` holds (it is sized for `max` entries).
    let room = buf.as_ref().map_or(0, |b| b.len() / LIST_ENTRY_LEN);
    let entries = found.len().min(max).min(room);
    let more = found.len() > entries;
    let mut crc = 0;
    if let Some(b) = buf.as_mut() {
        let bytes = entries * LIST_ENTRY_LEN;
        let _ = b.set_len(bytes);
        let out = b.as_mut_slice();
        for (slot, e) in out.chunks_exact_mut(LIST_ENTRY_LEN).zip(&found) {
            slot.copy_from_slice(&e.to_bytes());
        }
        crc = crc32c(&out[..bytes]);
    }
    Ok(Outcome::Listed {
        buf: buf.filter(|b| !b.is_empty()),
        entries,
        crc,
        more,
    })
}

/// How a server runs its store's calls.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum StorageMode {
    /// Workers for a store that may block ([`ChunkStore::may_block`]), inline otherwise.
    #[default]
    Auto,
    /// On the serving loop, one call at a time (the simple synchronous path).
    Inline,
    /// On [`StoreWorkers`].
    Workers,
}

impl StorageMode {
    /// Whether calls of a store that says `may_block` (see [`ChunkStore::may_block`]) run on
    /// workers in this mode.
    pub fn on_workers(self, may_block: bool) -> bool {
        match self {
            StorageMode::Auto => may_block,
            StorageMode::Inline => false,
            StorageMode::Workers => true,
        }
    }
}

/// Where and how store calls run.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Inline or on workers.
    pub mode: StorageMode,
    /// The workers, when there are workers.
    pub workers: WorkerConfig,
    /// A request whose store call takes longer is answered [`Status::Timeout`] (the call goes
    /// on; its late result is dropped). Shorter than the clients' request timeout, so they get
    /// an answer rather than a silence.
    pub timeout: Duration,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            mode: StorageMode::Auto,
            workers: WorkerConfig::default(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What became of a submitted job.
pub(crate) enum Submitted {
    /// Run at once (inline): here is its result.
    Done(Done),
    /// Queued on a worker; its [`Done`] comes from [`Storage::collect`].
    Queued,
    /// The worker's queue is full: try again later.
    Full(Job),
}

enum Runner<S: ChunkStore + 'static> {
    Inline(S),
    Workers(StoreWorkers<S>),
}

/// A server's store and the way its calls run (inline or on [`StoreWorkers`]).
pub struct Storage<S: ChunkStore + 'static> {
    runner: Runner<S>,
    timeout: Duration,
}

impl<S: ChunkStore + 'static> Storage<S> {
    /// Sets up `store` as `cfg` says (starting workers if it calls for them).
    pub fn new(store: S, cfg: &StorageConfig) -> std::io::Result<Storage<S>> {
        let runner = if cfg.mode.on_workers(store.may_block()) {
            Runner::Workers(StoreWorkers::start(store, &cfg.workers)?)
        } else {
            Runner::Inline(store)
        };
        Ok(Storage {
            runner,
            timeout: cfg.timeout,
        })
    }

    /// The store.
    pub fn store(&self) -> &S {
        match &self.runner {
            Runner::Inline(s) => s,
            Runner::Workers(w) => w.store(),
        }
    }

    /// Whether calls run on workers.
    pub fn uses_workers(&self) -> bool {
        matches!(self.runner, Runner::Workers(_))
    }

    /// Jobs on workers whose results were not collected yet.
    pub fn outstanding(&self) -> usize {
        match &self.runner {
            Runner::Inline(_) => 0,
            Runner::Workers(w) => w.outstanding(),
        }
    }

    /// The eventfd the workers signal after each result (see [`StoreWorkers::wake_fd`]);
    /// `None` when calls run inline.
    pub fn wake_fd(&self) -> Option<std::io::Result<BorrowedFd<'_>>> {
        match &self.runner {
            Runner::Inline(_) => None,
            Runner::Workers(w) => Some(w.wake_fd()),
        }
    }

    /// The storage timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn submit(&mut self, job: Job) -> Submitted {
        match &mut self.runner {
            Runner::Inline(store) => {
                let began = std::time::Instant::now();
                let result = run(store, job.work);
                Submitted::Done(Done {
                    tag: job.tag,
                    seq: job.seq,
                    result,
                    took: began.elapsed(),
                })
            }
            Runner::Workers(w) => match w.submit(job) {
                Ok(()) => Submitted::Queued,
                Err(job) => Submitted::Full(job),
            },
        }
    }

    pub(crate) fn collect(&mut self) -> Option<Done> {
        match &mut self.runner {
            Runner::Inline(_) => None,
            Runner::Workers(w) => w.collect(),
        }
    }
}

impl<S: ChunkStore + 'static> std::fmt::Debug for Storage<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.runner {
            Runner::Inline(_) => f.write_str("Storage(inline)"),
            Runner::Workers(w) => w.fmt(f),
        }
    }
}

//! Buffer pool hot path: allocation and release of 2 KiB packet buffers, against the heap.
//!
//! Run: `cargo bench --bench pool -- --warm-up-time 1 --measurement-time 3`.
//!
//! - `alloc_drop/*`: one buffer taken and returned.
//! - `burst32/*`: 32 buffers taken, then all 32 returned (an rx/tx burst).
//! - `cross_thread/*`: taken on the bench thread, handed over a bounded queue, returned on a
//!   second thread (a receive path whose buffers are freed by a worker). The time is per buffer,
//!   and it includes the hand-over; on a 2-core machine it is noisy.
//!
//! The heap baselines use the same 2 KiB size: `Box<[u8; 2048]>` zero-filled (what safe code that
//! wants initialised bytes does; pool buffers are always initialised) and `Vec::with_capacity`
//! (the allocation alone, no fill).
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use crossbeam_queue::ArrayQueue;
use ustack::mem::{BufPool, PageSize};

const BUF_LEN: usize = 2048;
const HEADROOM: usize = 128;
const BURST: usize = 32;

fn pool(count: usize) -> BufPool {
    // Base pages: the page size does not matter for alloc/free, and this keeps the bench free of
    // the hugepage fallback warning.
    BufPool::with_capacity(count, BUF_LEN, HEADROOM, PageSize::Base4K).expect("pool")
}

fn alloc_drop(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_drop");
    let p = pool(64);
    g.bench_function("pool", |b| {
        b.iter(|| {
            let buf = p.alloc().expect("pool has free buffers");
            black_box(&buf);
        })
    });
    g.bench_function("box_zeroed_2048", |b| {
        b.iter(|| {
            let buf = Box::new([0u8; BUF_LEN]);
            black_box(&buf);
        })
    });
    g.bench_function("vec_with_capacity_2048", |b| {
        b.iter(|| {
            let buf: Vec<u8> = Vec::with_capacity(BUF_LEN);
            black_box(&buf);
        })
    });
    g.finish();
}

fn burst32(c: &mut Criterion) {
    let mut g = c.benchmark_group("burst32");
    let p = pool(64);
    g.bench_function("pool", |b| {
        b.iter(|| {
            let bufs: [_; BURST] = std::array::from_fn(|_| p.alloc());
            black_box(&bufs);
        })
    });
    g.bench_function("box_zeroed_2048", |b| {
        b.iter(|| {
            let bufs: [_; BURST] = std::array::from_fn(|_| Box::new([0u8; BUF_LEN]));
            black_box(&bufs);
        })
    });
    g.bench_function("vec_with_capacity_2048", |b| {
        b.iter(|| {
            let bufs: [Vec<u8>; BURST] = std::array::from_fn(|_| Vec::with_capacity(BUF_LEN));
            black_box(&bufs);
        })
    });
    g.finish();
}

/// A second thread that drops whatever arrives on `queue` until told to stop.
struct Dropper<T: Send + 'static> {
    queue: Arc<ArrayQueue<T>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl<T: Send + 'static> Dropper<T> {
    fn start(capacity: usize) -> Self {
        let queue = Arc::new(ArrayQueue::new(capacity));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (queue, stop) = (Arc::clone(&queue), Arc::clone(&stop));
            thread::spawn(move || {
                let mut idle = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    match queue.pop() {
                        Some(item) => {
                            drop(item);
                            idle = 0;
                        }
                        None => {
                            // Two shared cores: spin briefly, then give the core away.
                            idle += 1;
                            if idle > 64 {
                                thread::yield_now();
                            } else {
                                std::hint::spin_loop();
                            }
                        }
                    }
                }
                while queue.pop().is_some() {}
            })
        };
        Dropper {
            queue,
            stop,
            thread: Some(thread),
        }
    }

    /// Hands `item` to the dropping thread, waiting while its queue is full.
    fn send(&self, mut item: T) {
        while let Err(back) = self.queue.push(item) {
            item = back;
            thread::yield_now();
        }
    }

    /// Waits until the dropping thread has taken everything sent so far.
    fn drain(&self) {
        while !self.queue.is_empty() {
            thread::yield_now();
        }
    }
}

impl<T: Send + 'static> Drop for Dropper<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn cross_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_thread");
    {
        let p = pool(1024);
        let dropper = Dropper::start(256);
        g.bench_function("pool", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let buf = loop {
                        match p.alloc() {
                            Some(buf) => break buf,
                            None => thread::yield_now(),
                        }
                    };
                    dropper.send(buf);
                }
                dropper.drain();
                start.elapsed()
            })
        });
    }
    {
        let dropper = Dropper::start(256);
        g.bench_function("box_zeroed_2048", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    dropper.send(Box::new([0u8; BUF_LEN]));
                }
                dropper.drain();
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = alloc_drop, burst32, cross_thread
}
criterion_main!(benches);

//! `bench`: latency and throughput of reads or writes at a depth.

use std::time::Duration;

use super::driver::{Driver, Preset, Req};
use super::verify::verify_read;
use super::BenchOp;
use crate::common::{fill_pattern, ClientSet, Rng, Size};
use ustack::chunk::ClientError;
use ustack::proto::Status;
use ustack::Instant;

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A plan that issues `op` once for each of chunks `0..chunks`, in order.
pub(super) fn sweep(
    chunks: u64,
    op: u8,
    blank: Req,
    chunk_id: impl Fn(u64) -> u128,
) -> impl FnMut() -> Option<Req> {
    let mut k = 0;
    move || {
        (k < chunks).then(|| {
            k += 1;
            Req {
                chunk: chunk_id(k - 1),
                op,
                ..blank
            }
        })
    }
}

pub(super) fn bench(
    c: &mut dyn ClientSet,
    op: BenchOp,
    size: u64,
    depth: usize,
    duration_s: u64,
    chunks: u64,
    idle: usize,
) -> Result<(), String> {
    let what = c.describe();
    let conns = c.len();
    let mut d = Driver::new(c, depth, size as usize);
    let blank = Req {
        chunk: 0,
        offset: 0,
        len: size,
        op: 0,
        start: Instant::ZERO,
    };
    // Random high 64 bits: benches run at once against one server use chunks of their own.
    let base = ustack::host::random::chunk_id()
        .map_err(|e| format!("no random chunk id from the kernel: {e}"))?
        .get()
        & !u128::from(u64::MAX);
    let chunk_id = |k: u64| base | u128::from(k);
    // The chunks' contents, computed once (up to 1 GiB): the client then spends its time on I/O,
    // not on generating and checking patterns.
    if chunks.saturating_mul(size) <= 1 << 30 {
        let mut data = vec![0; (chunks * size) as usize];
        for (k, c) in data.chunks_mut(size.max(1) as usize).enumerate() {
            fill_pattern(chunk_id(k as u64), 0, c);
        }
        d.preset = Some(Preset { base, size, data });
    }
    // Fill the chunks the requests will read.
    d.run(
        None,
        sweep(chunks, b'w', blank, chunk_id),
        |req, comp, _, _| {
            comp.result
                .map(|_| ())
                .map_err(|e| format!("prefill of {:032x}: {e}", req.chunk))
        },
    )?;
    let mut rng = Rng(7);
    let opc = match op {
        BenchOp::Read => b'r',
        BenchOp::Write => b'w',
    };
    // Warm-up, then the measured run.
    let mut lat: Vec<u32> = Vec::with_capacity(8 << 20);
    let (mut ops, mut verified, mut errors) = (0u64, 0u64, 0u64);
    // Every payload byte this process moved (prefill and warm-up included), for CPU per GB.
    let mut moved = chunks * size;
    let mut outcome = Ok(());
    for (secs, measure) in [(1, false), (duration_s.max(1), true)] {
        let start = Instant::now();
        d.run(
            Some(start + Duration::from_secs(secs)),
            || {
                Some(Req {
                    chunk: chunk_id(rng.below(chunks)),
                    op: opc,
                    ..blank
                })
            },
            |req, comp, ck, now| {
                if comp.result.is_ok() {
                    moved += size;
                }
                if !measure {
                    return Ok(());
                }
                let ok = match op {
                    BenchOp::Read => verify_read(req, comp, ck).is_ok(),
                    BenchOp::Write => comp.result.is_ok(),
                };
                if ok {
                    ops += 1;
                    if op == BenchOp::Read {
                        verified += 1;
                    }
                    if lat.len() < lat.capacity() {
                        lat.push(u32::try_from((now - req.start).as_nanos()).unwrap_or(u32::MAX));
                    }
                } else {
                    errors += 1;
                }
                Ok(())
            },
        )?;
        if measure {
            let elapsed = Instant::now() - start;
            lat.sort_unstable();
            let us = |p| f64::from(percentile(&lat, p)) / 1000.0;
            let ops_s = ops as f64 / elapsed.as_secs_f64();
            println!("  backend      {what}");
            println!(
                "  workload     {:?} {} x {conns} connection(s) x depth {depth}, {:.1} s",
                op,
                Size(size),
                elapsed.as_secs_f64()
            );
            println!(
                "  throughput   {ops_s:.0} ops/s, {:.1} MB/s",
                ops_s * size as f64 / 1e6
            );
            println!(
                "  latency      p50 {:.1} us, p99 {:.1} us, p999 {:.1} us",
                us(0.5),
                us(0.99),
                us(0.999)
            );
            println!("  verified     {verified} reads checked byte for byte; {errors} errors");
            println!(
                "RESULT op={op:?} size={size} connections={conns} depth={depth} idle={idle} ops_s={ops_s:.0} mb_s={:.1} p50_us={:.1} p99_us={:.1} p999_us={:.1} verified={verified} errors={errors} total_bytes={moved} cpu_s={:.3}",
                ops_s * size as f64 / 1e6,
                us(0.5),
                us(0.99),
                us(0.999),
                ustack::host::process::cpu_time().as_secs_f64()
            );
            if errors > 0 {
                outcome = Err(format!("{errors} requests failed"));
            }
        }
    }
    // Leave nothing behind: DELETE every chunk the run wrote.
    d.run(
        None,
        sweep(chunks, b'd', blank, chunk_id),
        |req, comp, _, _| match &comp.result {
            Ok(_) | Err(ClientError::Status(Status::NotFound)) => Ok(()),
            Err(e) => Err(format!("deleting bench chunk {:032x}: {e}", req.chunk)),
        },
    )?;
    outcome
}

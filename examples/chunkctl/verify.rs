//! `verify`: a verified round trip of many chunks.

use std::time::Duration;

use super::driver::{Driver, Preset, Req};
use crate::common::{check_pattern, fill_pattern, ClientSet, Rng, Size};
use ustack::chunk::Completion;
use ustack::proto::{crc32c, Reply};
use ustack::Instant;

/// What a completion's data is checked against: the preset contents, or the pattern regenerated
/// into `scratch`.
pub(super) struct Checker<'a> {
    pub(super) preset: Option<&'a Preset>,
    pub(super) scratch: &'a mut [u8],
}

impl Checker<'_> {
    fn matches(&mut self, req: &Req, data: &[u8]) -> bool {
        match self
            .preset
            .and_then(|p| p.get(req.chunk, req.offset, req.len))
        {
            Some(expected) => expected == data,
            None => check_pattern(req.chunk, req.offset, data, self.scratch),
        }
    }
}

pub(super) fn verify_read(
    req: &Req,
    comp: &Completion,
    ck: &mut Checker<'_>,
) -> Result<(), String> {
    match comp.result {
        Ok(Reply::Read {
            len, chunk_size, ..
        }) => {
            if u64::from(len) != req.len || chunk_size < req.offset + req.len {
                return Err(format!(
                    "chunk {:032x}: read {len} of {} bytes (chunk {chunk_size})",
                    req.chunk, req.len
                ));
            }
            if !ck.matches(req, comp.data()) {
                return Err(format!(
                    "chunk {:032x}: data read back differs from what was written",
                    req.chunk
                ));
            }
            Ok(())
        }
        ref r => Err(format!("chunk {:032x}: read failed: {r:?}", req.chunk)),
    }
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

pub(super) fn verify(
    c: &mut dyn ClientSet,
    total: u64,
    depth: usize,
    seed: u64,
    keep: bool,
    payload_max: u64,
) -> Result<(), String> {
    let what = c.describe();
    let mut rng = Rng(seed);
    let mut chunks = Vec::new();
    let mut sum = 0;
    while sum < total {
        let size = rng.log_uniform(payload_max).min(total - sum).max(1);
        let id = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
        chunks.push((id, size));
        sum += size;
    }
    let mut d = Driver::new(c, depth, payload_max as usize);
    let blank = Req {
        chunk: 0,
        offset: 0,
        len: 0,
        op: 0,
        start: Instant::ZERO,
    };

    let started = Instant::now();
    let t = started;
    let mut it = chunks.iter();
    d.run(
        None,
        || {
            it.next().map(|&(chunk, len)| Req {
                chunk,
                len,
                op: b'w',
                ..blank
            })
        },
        |req, comp, _, _| match comp.result {
            Ok(Reply::Write { chunk_size }) if chunk_size == req.len => Ok(()),
            ref r => Err(format!(
                "chunk {:032x}: write of {} bytes: {r:?}",
                req.chunk, req.len
            )),
        },
    )?;
    let write_time = Instant::now() - t;

    let t = Instant::now();
    let mut verified = 0u64;
    let mut it = chunks.iter();
    d.run(
        None,
        || {
            it.next().map(|&(chunk, len)| Req {
                chunk,
                len,
                op: b'r',
                ..blank
            })
        },
        |req, comp, ck, _| {
            verify_read(req, comp, ck)?;
            verified += req.len;
            Ok(())
        },
    )?;
    let read_time = Instant::now() - t;

    let mut stat_ok = 0u64;
    let mut it = chunks.iter();
    let mut content = vec![0u8; payload_max as usize];
    d.run(
        None,
        || {
            it.next().map(|&(chunk, len)| Req {
                chunk,
                len,
                op: b's',
                ..blank
            })
        },
        |req, comp, _, _| {
            let data = &mut content[..req.len as usize];
            fill_pattern(req.chunk, 0, data);
            match comp.result {
                Ok(Reply::Stat {
                    chunk_size,
                    chunk_crc,
                }) if chunk_size == req.len && chunk_crc == crc32c(data) => {
                    stat_ok += 1;
                    Ok(())
                }
                ref r => Err(format!(
                    "chunk {:032x}: STAT {r:?}, expected size {} and crc {:08x}",
                    req.chunk,
                    req.len,
                    crc32c(data)
                )),
            }
        },
    )?;
    if !keep {
        let mut it = chunks.iter();
        d.run(
            None,
            || {
                it.next().map(|&(chunk, len)| Req {
                    chunk,
                    len,
                    op: b'd',
                    ..blank
                })
            },
            |req, comp, _, _| match comp.result {
                Ok(Reply::Delete) => Ok(()),
                ref r => Err(format!("chunk {:032x}: DELETE {r:?}", req.chunk)),
            },
        )?;
    }
    println!();
    println!("  backend        {what}");
    println!(
        "  chunks         {} (1 B .. {}, log-uniform), {:.1} MiB",
        chunks.len(),
        Size(payload_max),
        total as f64 / 1048576.0
    );
    println!(
        "  write          {:>8.1} MB/s  ({:.2} s)",
        mbps(total, write_time),
        write_time.as_secs_f64()
    );
    println!(
        "  read           {:>8.1} MB/s  ({:.2} s)",
        mbps(total, read_time),
        read_time.as_secs_f64()
    );
    println!("  verified       {verified} of {total} bytes read back identical; {stat_ok} of {} STAT checksums right", chunks.len());
    println!("  result         OK");
    // For scripts (scripts/compare.sh): the whole round trip, writes to deletes.
    println!(
        "RESULT cmd=verify total_bytes={total} chunks={} verified={verified} write_s={:.3} read_s={:.3} elapsed_s={:.3}",
        chunks.len(),
        write_time.as_secs_f64(),
        read_time.as_secs_f64(),
        (Instant::now() - started).as_secs_f64()
    );
    Ok(())
}

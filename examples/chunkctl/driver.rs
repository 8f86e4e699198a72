//! The workload driver: requests in flight over a client set, and preset chunk contents.

use std::collections::{HashMap, VecDeque};

use super::clients::broken_why;
use super::verify::Checker;
use crate::common::{fill_pattern, ClientSet};
use ustack::chunk::{ChunkOp, Completion, SubmitError};
use ustack::proto::ChunkId;
use ustack::Instant;

/// What a workload keeps per request in flight.
#[derive(Copy, Clone)]
pub(super) struct Req {
    pub(super) chunk: u128,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) op: u8,
    pub(super) start: Instant,
}

/// Drives a workload: `plan(now)` yields the next request (or None when there is nothing more to
/// submit), `check` judges each completion.
pub(super) struct Driver<'a> {
    c: &'a mut dyn ClientSet,
    depth: usize,
    in_flight: Vec<usize>,
    reqs: HashMap<(usize, u64), Req>,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    /// Whole contents of the benchmark's chunks, computed once, so that writing and checking a
    /// payload costs a copy or a compare rather than regenerating the pattern every request.
    pub(super) preset: Option<Preset>,
}

/// The contents of chunks `base | 0 .. base | n-1`, each `size` bytes, back to back.
pub(super) struct Preset {
    pub(super) base: u128,
    pub(super) size: u64,
    pub(super) data: Vec<u8>,
}

impl Preset {
    /// Bytes `offset .. offset+len` of `chunk`, when they are in the preset.
    pub(super) fn get(&self, chunk: u128, offset: u64, len: u64) -> Option<&[u8]> {
        let k = chunk.checked_sub(self.base)?;
        let start = u64::try_from(k).ok()?.checked_mul(self.size)?;
        if offset.checked_add(len)? > self.size {
            return None;
        }
        let from = usize::try_from(start + offset).ok()?;
        self.data.get(from..from + len as usize)
    }
}

impl<'a> Driver<'a> {
    pub(super) fn new(c: &'a mut dyn ClientSet, depth: usize, payload_max: usize) -> Driver<'a> {
        let n = c.len();
        Driver {
            c,
            depth: depth.max(1),
            in_flight: vec![0; n],
            reqs: HashMap::with_capacity(n * depth.max(1) * 2),
            buf: vec![0; payload_max],
            scratch: vec![0; 64 << 10],
            preset: None,
        }
    }

    /// Submits `req` on connection `i`; WRITE data is the chunk's pattern.
    pub(super) fn submit(&mut self, i: usize, req: Req) -> Result<bool, String> {
        let id = ChunkId(req.chunk);
        let op = match req.op {
            b'w' => {
                let data = match self
                    .preset
                    .as_ref()
                    .and_then(|p| p.get(req.chunk, req.offset, req.len))
                {
                    Some(d) => d,
                    None => {
                        let b = &mut self.buf[..req.len as usize];
                        fill_pattern(req.chunk, req.offset, b);
                        b
                    }
                };
                ChunkOp::Write {
                    id,
                    offset: req.offset,
                    data,
                }
            }
            b'r' => ChunkOp::Read {
                id,
                offset: req.offset,
                len: req.len as u32,
            },
            b's' => ChunkOp::Stat { id },
            _ => ChunkOp::Delete { id },
        };
        match self.c.submit(i, op, req.start) {
            Ok(rid) => {
                self.reqs.insert((i, rid), req);
                self.in_flight[i] += 1;
                Ok(true)
            }
            Err(SubmitError::NoBuffer) | Err(SubmitError::TooManyInFlight { .. }) => Ok(false),
            Err(e) => Err(format!("submit: {e}")),
        }
    }

    /// Runs until `plan` is exhausted and all requests completed, or `until` passes.
    ///
    /// Each turn looks only at the connections where something happened and fills only those
    /// below `depth` (oldest first, one request each in turn), so a turn with nothing to do
    /// costs the same with 1 or 1,024 connections.
    pub(super) fn run(
        &mut self,
        until: Option<Instant>,
        mut plan: impl FnMut() -> Option<Req>,
        mut check: impl FnMut(&Req, &Completion, &mut Checker<'_>, Instant) -> Result<(), String>,
    ) -> Result<(), String> {
        let n = self.c.len();
        let mut pending: Option<Req> = None;
        let mut exhausted = false;
        let mut outstanding: usize = self.in_flight.iter().sum();
        // Connections below depth, in the order they got there.
        let mut hungry: VecDeque<usize> = VecDeque::with_capacity(n);
        let queued_at_start = self.in_flight.iter().map(|&f| f < self.depth);
        let mut queued: Vec<bool> = queued_at_start.collect();
        hungry.extend((0..n).filter(|&i| queued[i]));
        let mut ready = Vec::with_capacity(n);
        loop {
            let now = Instant::now();
            let stop = until.is_some_and(|u| now >= u);
            let mut busy = self.c.poll(now);
            self.c.take_ready(&mut ready);
            for &i in &ready {
                while let Some(comp) = self.c.next_completion(i) {
                    busy = true;
                    self.in_flight[i] -= 1;
                    outstanding -= 1;
                    let req = self
                        .reqs
                        .remove(&(i, comp.request_id))
                        .ok_or("completion for an unknown request")?;
                    let mut checker = Checker {
                        preset: self.preset.as_ref(),
                        scratch: &mut self.scratch,
                    };
                    check(&req, &comp, &mut checker, now)?;
                }
                if self.c.is_broken(i) {
                    return Err(format!(
                        "connection {i} failed: {}",
                        broken_why(&*self.c, i)
                    ));
                }
                if !queued[i] && self.in_flight[i] < self.depth {
                    queued[i] = true;
                    hungry.push_back(i);
                }
            }
            if (exhausted || stop) && outstanding == 0 {
                return Ok(());
            }
            while !stop && !exhausted {
                let Some(&i) = hungry.front() else { break };
                if self.in_flight[i] >= self.depth {
                    hungry.pop_front();
                    queued[i] = false;
                    continue;
                }
                let req = match pending.take() {
                    Some(r) => r,
                    None => match plan() {
                        Some(mut r) => {
                            r.start = now;
                            r
                        }
                        None => {
                            exhausted = true;
                            break;
                        }
                    },
                };
                if !self.submit(i, req)? {
                    // Out of staging buffers or of room on this connection: again next turn,
                    // the others first.
                    pending = Some(req);
                    hungry.pop_front();
                    hungry.push_back(i);
                    break;
                }
                outstanding += 1;
                busy = true;
                hungry.pop_front();
                if self.in_flight[i] < self.depth {
                    hungry.push_back(i);
                } else {
                    queued[i] = false;
                }
            }
            if !busy {
                self.c.idle(now);
            }
        }
    }
}

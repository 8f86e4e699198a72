//! The chunk server and client running on a ustack [`Stack`]: they move bytes between TCP
//! connections and the sans-IO state machines, straight from and into the sockets' buffers.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use crate::dev::PacketDevice;
use crate::mem::{MemError, PoolBuf};
use crate::proto::{crc32c_append, LimitsError, Status};
use crate::stack::{ConnError, ConnId, ConnState, ListenerId, RxSink, Stack, StackError, TxSource};
use crate::time::Instant;

use super::client::{
    ChunkOp, ClientConfig, ClientConn, ClientError, ClientStats, Completion, SubmitError,
};
use super::server::{
    conn_tag, refusal, take_results, ServeCtx, ServerConfig, ServerConn, ServerSnapshot,
    ServerStats, REFUSED_LINGER, REFUSED_MAX,
};
use super::staging::{LentPayload, Staging};
use super::store::{ChunkStore, SharedRead};
use super::workers::Storage;

/// Errors setting up a server or client.
#[derive(Debug, thiserror::Error)]
pub enum ChunkSetupError {
    /// The protocol limits are inconsistent.
    #[error("bad protocol limits: {0}")]
    Limits(#[from] LimitsError),
    /// Staging memory could not be reserved.
    #[error("cannot reserve staging buffers: {0}")]
    Memory(#[from] MemError),
    /// The stack refused (port in use, no sockets, unreachable address...).
    #[error(transparent)]
    Stack(#[from] StackError),
    /// A configuration value that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The storage worker threads could not be started.
    #[error("cannot start the storage workers: {0}")]
    Workers(#[source] std::io::Error),
}

struct Slot {
    conn: Option<ConnId>,
    core: ServerConn,
    eof: bool,
    /// Bumped at each accept: store results for an earlier connection in this slot are
    /// recognised and dropped.
    generation: u32,
    /// The sink lent to the socket for a WRITE's payload, or kept for the next one.
    sink: SinkHolder,
    /// The store's bytes of the READ answer being sent, lent to the socket.
    lent_src: Option<Arc<dyn TxSource>>,
}

/// A READ answer's payload takes this long at least before it is sent from the store's bytes
/// rather than copied into the socket: shorter ones cost less to copy than to lend.
const LEND_MIN: usize = 16 << 10;

/// A READ answer's payload as lent by the store, sent as it is (smoltcp patch 15).
struct LentRead(SharedRead);

impl TxSource for LentRead {
    fn bytes(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// A chunk server on a [`Stack`]: accepts connections on one port (up to
/// `connections_max`), serves pipelined requests from the store.
pub struct ChunkServer<S: ChunkStore + 'static> {
    storage: Storage<S>,
    staging: Staging,
    listener: Option<ListenerId>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    stats: ServerStats,
    shutting_down: bool,
    /// The stack's shard epochs when the connections were last served: a connection whose
    /// shard was not polled since has nothing new.
    seen_epochs: Vec<u64>,
    /// Open connections (slot indices) by stack shard.
    by_shard: Vec<Vec<u32>>,
    /// Connections with work of their own (answers to send, a request waiting for a buffer,
    /// end of input to finish), served on every poll whatever their shard did.
    busy: Vec<u32>,
    in_busy: Vec<bool>,
    /// Poll count when each slot was last served (so no slot is served twice in one poll).
    served_at: Vec<u64>,
    polls: u64,
    /// [`Stack::epoch`] at the last poll: unchanged, no shard needs looking at.
    seen_epoch: u64,
    /// Refused connections, told why and closed for sending, kept until their peer closes
    /// or their deadline (at most `refused_max`: each holds a socket the listener could use).
    refused: Vec<(ConnId, Instant)>,
    refused_max: usize,
    shutdown_grace: Duration,
}

impl<S: ChunkStore + 'static> ChunkServer<S> {
    /// Listens on `port` of `stack`. The stack needs `connections_max + backlog` sockets.
    pub fn bind<D: PacketDevice>(
        stack: &mut Stack<D>,
        port: u16,
        store: S,
        cfg: ServerConfig,
    ) -> Result<ChunkServer<S>, ChunkSetupError> {
        cfg.limits.validate()?;
        if cfg.connections_max == 0 || cfg.backlog == 0 {
            return Err(ChunkSetupError::Config(
                "connections_max and backlog must be at least 1".into(),
            ));
        }
        let sockets = stack.config().sockets_max;
        if cfg.connections_max + cfg.backlog > sockets {
            return Err(ChunkSetupError::Config(format!(
                "connections_max {} + backlog {} exceed the stack's {} sockets: raise StackConfig::sockets_max",
                cfg.connections_max, cfg.backlog, sockets
            )));
        }
        let staging = Staging::new(&cfg.staging, cfg.limits.payload_len_max as usize)?;
        let storage = Storage::new(store, &cfg.storage).map_err(ChunkSetupError::Workers)?;
        let listener = stack.listen(port, cfg.backlog)?;
        Ok(ChunkServer {
            storage,
            staging,
            listener: Some(listener),
            slots: (0..cfg.connections_max)
                .map(|_| Slot {
                    conn: None,
                    core: ServerConn::new(cfg.limits),
                    eof: false,
                    generation: 0,
                    sink: SinkHolder::default(),
                    lent_src: None,
                })
                .collect(),
            free: (0..cfg.connections_max).rev().collect(),
            stats: ServerStats::default(),
            shutting_down: false,
            seen_epochs: vec![u64::MAX; stack.shard_count()],
            by_shard: (0..stack.shard_count())
                .map(|_| Vec::with_capacity(cfg.connections_max.div_ceil(stack.shard_count()) + 1))
                .collect(),
            busy: Vec::with_capacity(cfg.connections_max),
            in_busy: vec![false; cfg.connections_max],
            served_at: vec![0; cfg.connections_max],
            polls: 0,
            seen_epoch: u64::MAX,
            refused: Vec::with_capacity(REFUSED_MAX),
            refused_max: (cfg.backlog / 2).min(REFUSED_MAX),
            shutdown_grace: cfg.shutdown_grace,
        })
    }

    /// Tells connection `c` why it is not served (an answer with request id 0) and closes it
    /// for sending; it is kept until its peer closes (so the answer is not lost to a reset) or
    /// for `REFUSED_LINGER`. A reset at once when `refused_max` wait already: under a flood of
    /// connections, refusals must not hold the sockets the listener needs.
    fn refuse<D: PacketDevice>(&mut self, stack: &mut Stack<D>, c: ConnId) {
        self.stats.connections_refused += 1;
        let (_, refusal) = refusal(self.shutting_down);
        if self.refused.len() < self.refused_max
            && stack.send(c, &refusal) == Ok(refusal.len())
            && stack.close(c).is_ok()
        {
            self.refused.push((c, stack.now() + REFUSED_LINGER));
        } else {
            let _ = stack.abort(c);
            let _ = stack.release(c);
        }
    }

    /// Reads and drops what refused connections send; lets go of those whose peer closed,
    /// and resets those past their deadline.
    fn drain_refused<D: PacketDevice>(&mut self, stack: &mut Stack<D>) {
        let now = stack.now();
        self.refused.retain(|&(c, deadline)| {
            // Until the peer's end of stream (or a reset): then it has read the answer.
            let done = loop {
                match stack.recv_with(c, |d| (d.len(), d.len())) {
                    Ok(0) => break false,
                    Ok(_) => {}
                    Err(_) => break true,
                }
            };
            if done || now >= deadline {
                if !done {
                    let _ = stack.abort(c);
                }
                let _ = stack.release(c);
                return false;
            }
            true
        });
    }

    /// Accepts connections and serves them; returns whether anything happened. Call after
    /// `stack.poll(now)` in the same loop.
    pub fn poll<D: PacketDevice>(&mut self, stack: &mut Stack<D>) -> bool {
        let mut busy = false;
        if !self.refused.is_empty() {
            self.drain_refused(stack);
        }
        if let Some(l) = self.listener {
            while let Ok(Some(c)) = stack.accept(l) {
                busy = true;
                match self.free.pop() {
                    Some(i) if !self.shutting_down => {
                        let slot = &mut self.slots[i];
                        slot.generation = slot.generation.wrapping_add(1);
                        slot.core.reset(conn_tag(i, slot.generation));
                        slot.conn = Some(c);
                        slot.eof = false;
                        self.by_shard[c.shard()].push(i as u32);
                        // Its first bytes may already be in the socket.
                        if !self.in_busy[i] {
                            self.in_busy[i] = true;
                            self.busy.push(i as u32);
                        }
                        self.stats.connections_accepted += 1;
                    }
                    other => {
                        if let Some(i) = other {
                            self.free.push(i);
                        }
                        self.refuse(stack, c);
                    }
                }
            }
        }
        self.polls += 1;
        busy |= self.take_store_results(stack.now());
        // Connections of shards the stack polled since last time: data, room or a state change
        // may be there. The others have nothing new unless they have work of their own.
        if stack.epoch() != self.seen_epoch {
            self.seen_epoch = stack.epoch();
            for sh in 0..self.by_shard.len() {
                let epoch = stack.shard_epoch(sh);
                if self.seen_epochs[sh] == epoch {
                    continue;
                }
                self.seen_epochs[sh] = epoch;
                let mut k = 0;
                while k < self.by_shard[sh].len() {
                    let i = self.by_shard[sh][k] as usize;
                    busy |= self.serve_once(stack, i);
                    // A closed connection left the list (swap_remove): look at the same place
                    // again.
                    if self.by_shard[sh].get(k) == Some(&(i as u32)) {
                        k += 1;
                    }
                }
            }
        }
        let mut k = 0;
        while k < self.busy.len() {
            let i = self.busy[k] as usize;
            busy |= self.serve_once(stack, i);
            k += 1;
        }
        let (slots, in_busy) = (&self.slots, &mut self.in_busy);
        self.busy.retain(|&i| {
            let keep = needs_attention(&slots[i as usize]);
            in_busy[i as usize] = keep;
            keep
        });
        busy
    }

    /// Serves slot `i` unless it was served in this poll already; notes it as busy if it still
    /// has work of its own.
    fn serve_once<D: PacketDevice>(&mut self, stack: &mut Stack<D>, i: usize) -> bool {
        if self.served_at[i] == self.polls {
            return false;
        }
        self.served_at[i] = self.polls;
        let busy = self.serve(stack, i);
        if !self.in_busy[i] && needs_attention(&self.slots[i]) {
            self.in_busy[i] = true;
            self.busy.push(i as u32);
        }
        busy
    }

    fn serve<D: PacketDevice>(&mut self, stack: &mut Stack<D>, i: usize) -> bool {
        let slot = &mut self.slots[i];
        let Some(c) = slot.conn else { return false };
        let mut busy = false;
        let mut gone = false;
        let mut ctx = ServeCtx {
            storage: &mut self.storage,
            staging: &self.staging,
            stats: &mut self.stats,
            now: stack.now(),
        };
        // What the socket put straight into a WRITE's buffer comes first (it precedes anything
        // in the receive buffer).
        if let Some((lent, placed, crc)) = slot.sink.take(stack, c) {
            slot.core.payload_placed(lent, placed, crc, &mut ctx);
            busy |= placed > 0;
        }
        // A request waiting for a staging buffer or storage queue room retries (also after the
        // peer's end of stream).
        if slot.core.is_waiting() {
            slot.core.handle_input(&[], &mut ctx);
        }
        // Requests in, straight from the socket's receive buffer.
        while !slot.eof {
            let core = &mut slot.core;
            match stack.recv_with(c, |data| {
                let n = core.handle_input(data, &mut ctx);
                (n, (n, data.len()))
            }) {
                Ok((0, 0)) => {
                    // Read dry in the middle of a large WRITE: the rest of its payload goes
                    // straight into its buffer.
                    if slot.core.payload_remaining() >= SINK_MIN {
                        if let Some(lent) = slot.core.lend_payload() {
                            slot.sink.lend(stack, c, lent);
                        }
                    }
                    break;
                }
                Ok((0, _)) => break,
                Ok(_) => busy = true,
                Err(ConnError::Eof) => {
                    slot.eof = true;
                    slot.core.handle_eof(ctx.stats);
                    busy = true;
                }
                Err(_) => {
                    gone = true;
                    break;
                }
            }
        }
        // Responses out, straight into the socket's send buffer; a large payload the store
        // lent goes out from the store's own bytes, not copied into the buffer.
        while !gone {
            if let Some((sr, done)) = slot.core.lent_payload() {
                if sr.len >= LEND_MIN {
                    if done == 0 || slot.lent_src.is_none() {
                        slot.lent_src = Some(Arc::new(LentRead(sr.clone())));
                    }
                    let left = sr.len - done;
                    let src = slot.lent_src.as_ref().expect("just set");
                    match stack.send_lent(c, src, done, left) {
                        Ok(0) => break,
                        Ok(n) => {
                            if n == left {
                                slot.lent_src = None;
                            }
                            slot.core.advance_output_lent(n);
                            busy = true;
                            continue;
                        }
                        Err(_) => {
                            gone = true;
                            break;
                        }
                    }
                }
            }
            let Some(piece) = slot.core.next_output() else {
                break;
            };
            match stack.send(c, piece) {
                Ok(0) => break,
                Ok(n) => {
                    slot.core.advance_output(n);
                    busy = true;
                }
                Err(_) => gone = true,
            }
        }
        if gone {
            let _ = stack.abort(c);
        } else if slot.core.should_close() {
            let _ = stack.release(c);
        } else {
            return busy;
        }
        slot.conn = None;
        slot.lent_src = None;
        let list = &mut self.by_shard[c.shard()];
        if let Some(pos) = list.iter().position(|&x| x as usize == i) {
            list.swap_remove(pos);
        }
        self.free.push(i);
        self.stats.connections_closed += 1;
        true
    }

    /// Stops accepting and taking new requests; queued responses still go out. Poll until
    /// [`ChunkServer::is_idle`] (or a grace period passes), then drop the server.
    pub fn begin_shutdown<D: PacketDevice>(&mut self, stack: &mut Stack<D>) {
        self.shutting_down = true;
        if let Some(l) = self.listener.take() {
            let _ = stack.unlisten(l);
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            slot.core.drain();
            // Each must be served (once its answers are out it closes) whatever its shard does.
            if slot.conn.is_some() && !self.in_busy[i] {
                self.in_busy[i] = true;
                self.busy.push(i as u32);
            }
        }
    }

    /// No connection is open.
    pub fn is_idle(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    /// How long a shutdown may take to send the answers already due
    /// ([`ServerConfig::shutdown_grace`]); the loop that polls the server keeps the time (the
    /// server has no clock of its own): [`crate::serve::ServeLoop`] does.
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }

    /// Connections open.
    pub fn connections(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Counters and what the server holds now, for operators (O(connections)).
    pub fn snapshot(&self) -> ServerSnapshot {
        ServerSnapshot::of(
            self.stats,
            self.slots
                .iter()
                .filter(|s| s.conn.is_some())
                .map(|s| &s.core),
            self.slots.len(),
            self.storage.outstanding(),
            &self.staging,
        )
    }

    /// The store.
    pub fn store(&self) -> &S {
        self.storage.store()
    }

    /// Store calls running on the storage workers (0 when calls run inline): while there are
    /// some, a serving loop should not sleep long (their results come without a packet).
    pub fn storage_outstanding(&self) -> usize {
        self.storage.outstanding()
    }

    /// Hands finished store calls to their connections and times out the ones that run too
    /// long; true if anything became ready.
    fn take_store_results(&mut self, now: Instant) -> bool {
        if !self.storage.uses_workers() {
            return false;
        }
        let (slots, in_busy, busy) = (&mut self.slots, &mut self.in_busy, &mut self.busy);
        let mut any = take_results(
            &mut self.storage,
            &mut self.stats,
            |i, done, stats| match slots.get_mut(i) {
                Some(slot) if slot.conn.is_some() && slot.core.tag() == done.tag => {
                    slot.core.complete(done, now, stats);
                    if !in_busy[i] {
                        in_busy[i] = true;
                        busy.push(i as u32);
                    }
                    true
                }
                _ => false,
            },
        );
        let timeout = self.storage.timeout();
        for &i in &self.busy {
            let slot = &mut self.slots[i as usize];
            if slot.core.storage_waiting() > 0 {
                let before = self.stats.storage_timeouts;
                slot.core.expire(now, timeout, &mut self.stats);
                any |= self.stats.storage_timeouts != before;
            }
        }
        any
    }
}

/// Whether a connection has work of its own, whatever its shard did: answers to send, a request
/// waiting for a staging buffer, or the end of its input to finish.
fn needs_attention(slot: &Slot) -> bool {
    slot.conn.is_some() && (slot.core.queued() > 0 || slot.core.is_waiting() || slot.eof)
}

/// A chunk client on a [`Stack`]: one connection, many requests in flight.
pub struct ChunkClient {
    conn: ConnId,
    core: ClientConn,
    connected: bool,
    connect_deadline: Instant,
    closed: bool,
    /// The shard epoch when the socket was last read empty: until the stack polls that shard
    /// again, nothing new can have arrived.
    read_epoch: u64,
    /// The sink lent to the socket for a READ answer's payload, or kept for the next one.
    sink: SinkHolder,
    /// The WRITE payload being sent, lent to the socket.
    lent_src: Option<Arc<dyn TxSource>>,
}

/// A WRITE's payload in its staging buffer, sent as it is (smoltcp patch 15); the buffer goes
/// back to its pool when the socket has no more use for it.
struct LentBuf(PoolBuf);

impl TxSource for LentBuf {
    fn bytes(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// A payload (a READ answer's at the client, a WRITE's at the server) takes this long at
/// least before it goes through a sink: shorter ones fit in a segment or two, where lending
/// costs more than the copy it saves.
const SINK_MIN: usize = 16 << 10;

/// Where smoltcp puts a payload straight from received segments (patch 14): frame -> the
/// payload's staging buffer with the CRC32C in the same pass, instead of frame -> socket ring
/// -> buffer.
struct PayloadSink {
    lent: Option<LentPayload>,
    placed: usize,
    crc: u32,
}

/// A connection's payload sink: lent to its socket, or kept for the next payload (one
/// allocation per connection, not per payload).
#[derive(Default)]
struct SinkHolder {
    spare: Option<Box<PayloadSink>>,
    lent: bool,
}

impl SinkHolder {
    /// Lends `lent` to the socket of `conn`.
    fn lend<D: PacketDevice>(&mut self, stack: &mut Stack<D>, conn: ConnId, lent: LentPayload) {
        let mut sink = self.spare.take().unwrap_or_else(|| {
            Box::new(PayloadSink {
                lent: None,
                placed: 0,
                crc: 0,
            })
        });
        sink.placed = 0;
        sink.crc = lent.crc;
        sink.lent = Some(lent);
        // An error means the connection is gone (the sink goes with it); the next read says so.
        self.lent = stack.set_rx_sink(conn, sink).is_ok();
    }

    /// Takes the sink back from the socket of `conn`: the buffer, the bytes placed and their
    /// CRC32C. `None` if none was lent, or the connection dropped it (reset).
    fn take<D: PacketDevice>(
        &mut self,
        stack: &mut Stack<D>,
        conn: ConnId,
    ) -> Option<(LentPayload, usize, u32)> {
        if !std::mem::take(&mut self.lent) {
            return None;
        }
        let sink: Box<dyn std::any::Any> = stack.take_rx_sink(conn).ok()??;
        let mut sink = sink.downcast::<PayloadSink>().ok()?;
        let got = sink.lent.take().map(|l| (l, sink.placed, sink.crc));
        self.spare = Some(sink);
        got
    }
}

impl RxSink for PayloadSink {
    fn room(&self) -> usize {
        self.lent.as_ref().map_or(0, |l| l.len - self.placed)
    }

    fn put(&mut self, data: &[u8]) {
        let Some(l) = self.lent.as_mut() else { return };
        let at = l.at + self.placed;
        l.buf.as_mut_slice()[at..at + data.len()].copy_from_slice(data);
        self.crc = crc32c_append(self.crc, data);
        self.placed += data.len();
    }
}

impl ChunkClient {
    /// Starts connecting to `server`; requests may be submitted at once (they go out when the
    /// connection is up).
    pub fn connect<D: PacketDevice>(
        stack: &mut Stack<D>,
        server: SocketAddrV4,
        cfg: &ClientConfig,
        now: Instant,
    ) -> Result<ChunkClient, ChunkSetupError> {
        cfg.limits.validate()?;
        let staging = Staging::new(&cfg.staging, cfg.limits.payload_len_max as usize)?;
        ChunkClient::connect_with_staging(stack, server, cfg, staging, now)
    }

    /// Like [`ChunkClient::connect`], drawing payload buffers from `staging` (shared by many
    /// clients; its large buffers must hold `cfg.limits.payload_len_max` bytes).
    pub fn connect_with_staging<D: PacketDevice>(
        stack: &mut Stack<D>,
        server: SocketAddrV4,
        cfg: &ClientConfig,
        staging: Staging,
        now: Instant,
    ) -> Result<ChunkClient, ChunkSetupError> {
        cfg.limits.validate()?;
        let core = ClientConn::with_staging(cfg, staging);
        let conn = stack.connect(server)?;
        Ok(ChunkClient {
            conn,
            core,
            connected: false,
            connect_deadline: now + cfg.connect_timeout,
            closed: false,
            read_epoch: u64::MAX,
            sink: SinkHolder::default(),
            lent_src: None,
        })
    }

    /// Queues a request; returns its id.
    pub fn submit(&mut self, op: ChunkOp<'_>, now: Instant) -> Result<u64, SubmitError> {
        self.core.submit(op, now)
    }

    /// Moves bytes both ways and expires requests; returns whether anything happened. Call
    /// after `stack.poll(now)` in the same loop.
    pub fn poll<D: PacketDevice>(&mut self, stack: &mut Stack<D>, now: Instant) -> bool {
        if self.closed || self.core.is_broken() {
            return false;
        }
        let mut busy = false;
        if !self.connected {
            match stack.state(self.conn) {
                Ok(ConnState::Established) => {
                    self.connected = true;
                    busy = true;
                }
                Ok(ConnState::Connecting) if now < self.connect_deadline => return false,
                _ => {
                    self.core.fail_all(ClientError::ConnectionLost);
                    let _ = stack.abort(self.conn);
                    return true;
                }
            }
        }
        let epoch = stack.shard_epoch(self.conn.shard());
        if epoch != self.read_epoch {
            if let Some((lent, placed, crc)) = self.sink.take(stack, self.conn) {
                self.core.payload_placed(lent, placed, crc);
                busy |= placed > 0;
            }
            loop {
                let core = &mut self.core;
                match stack.recv_with(self.conn, |data| {
                    let n = core.handle_input(data);
                    (n, (n, data.len()))
                }) {
                    // Drained: skip reading until the shard moves. Bytes left behind (waiting
                    // for a staging buffer) are retried on every poll.
                    Ok((0, 0)) => {
                        self.read_epoch = epoch;
                        self.lend_sink(stack);
                        break;
                    }
                    Ok((0, _)) => break,
                    Ok(_) => busy = true,
                    Err(_) => {
                        self.core.fail_all(ClientError::ConnectionLost);
                        return true;
                    }
                }
            }
        }
        loop {
            // A large WRITE's payload goes out from its staging buffer, not copied into the
            // socket.
            if let Some((buf, done, len)) = self.core.lend_output(LEND_MIN) {
                if let Some(buf) = buf {
                    self.lent_src = Some(Arc::new(LentBuf(buf)));
                }
                let Some(src) = self.lent_src.as_ref() else {
                    // Not reached: the buffer was lent when its first byte was.
                    self.core.fail_all(ClientError::ConnectionLost);
                    return true;
                };
                match stack.send_lent(self.conn, src, done, len - done) {
                    Ok(0) => break,
                    Ok(n) => {
                        if done + n == len {
                            self.lent_src = None;
                        }
                        self.core.advance_output_lent(n);
                        busy = true;
                        continue;
                    }
                    Err(_) => {
                        self.core.fail_all(ClientError::ConnectionLost);
                        return true;
                    }
                }
            }
            let Some(piece) = self.core.next_output() else {
                break;
            };
            match stack.send(self.conn, piece) {
                Ok(0) => break,
                Ok(n) => {
                    self.core.advance_output(n);
                    busy = true;
                }
                Err(_) => {
                    self.core.fail_all(ClientError::ConnectionLost);
                    return true;
                }
            }
        }
        let before = self.core.completions_ready();
        self.core.handle_timeouts(now);
        busy || self.core.completions_ready() != before
    }

    /// The next finished request.
    pub fn next_completion(&mut self) -> Option<Completion> {
        self.core.next_completion()
    }

    /// With the socket read dry in the middle of a large READ answer, lends its buffer to the
    /// socket, so the rest of the payload skips the socket's ring.
    fn lend_sink<D: PacketDevice>(&mut self, stack: &mut Stack<D>) {
        if self.core.payload_remaining() >= SINK_MIN {
            if let Some(lent) = self.core.lend_payload() {
                self.sink.lend(stack, self.conn, lent);
            }
        }
    }

    /// Whether the connection is established (and not broken).
    pub fn is_connected(&self) -> bool {
        self.connected && !self.core.is_broken()
    }

    /// Whether the connection failed: every request fails, a new client must connect.
    pub fn is_broken(&self) -> bool {
        self.core.is_broken()
    }

    /// The status the server gave for the whole connection when it refused or closed it
    /// (e.g. [`Status::TooManyConnections`]), if it gave one.
    pub fn refusal(&self) -> Option<Status> {
        self.core.refusal()
    }

    /// Requests outstanding.
    pub fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    /// The earliest request deadline, for virtual-time drivers.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.core.next_deadline()
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.core.stats()
    }

    /// Closes the connection gracefully and releases it; outstanding requests fail.
    pub fn close<D: PacketDevice>(&mut self, stack: &mut Stack<D>) {
        if !self.closed {
            self.closed = true;
            self.core.fail_all(ClientError::ConnectionLost);
            let _ = stack.release(self.conn);
        }
    }
}

//! The chunk protocol over kernel TCP on 127.0.0.1: `net::KernelClient` against
//! `net::KernelServer` (and against raw sockets that misbehave on either side).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use ustack::chunk::{
    ChunkOp, ChunkStore, ClientConfig, ClientError, Completion, MemStore, ServerConfig,
    StagingConfig, StorageConfig, StorageMode, SubmitError,
};
use ustack::net::{KernelClient, KernelServer, NetError};
use ustack::proto::{
    crc32c, ChunkId, Limits, ListEntry, Reply, Request, RequestHeader, ResponseHeader, Status,
    LIST_ENTRY_LEN, LIST_PAGE_MAX,
};
use ustack::{Instant, PageSize};

// ---------------------------------------------------------------------------------------------

const WALL_LIMIT: Duration = Duration::from_secs(60);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn staging(small_count: usize, large_count: usize) -> StagingConfig {
    StagingConfig {
        small_len: 64 << 10,
        small_count,
        large_count,
        large_per_connection_max: large_count,
        // Base pages: tests must not take hugepages other tests on the machine rely on.
        page_size: PageSize::Base4K,
    }
}

fn server_config(connections_max: usize) -> ServerConfig {
    ServerConfig {
        connections_max,
        staging: staging(128, 8),
        shutdown_grace: Duration::from_secs(2),
        ..ServerConfig::default()
    }
}

/// READs through staging buffers: store calls on workers (a MemStore called inline lends its
/// bytes to the answer and takes no staging buffer).
fn through_staging() -> StorageConfig {
    StorageConfig {
        mode: StorageMode::Workers,
        ..StorageConfig::default()
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        staging: staging(80, 8),
        request_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

/// xorshift64*: reproducible test data and choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for piece in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            piece.copy_from_slice(&v[..piece.len()]);
        }
    }
}

fn ok(c: &Completion) -> Reply {
    match c.result {
        Ok(r) => r,
        Err(e) => panic!("request {} ({:?}) failed: {e}", c.request_id, c.op),
    }
}

fn call(client: &mut KernelClient, op: ChunkOp<'_>) -> Completion {
    client.call(op).expect("submit")
}

/// Polls until `n` completions were taken; returns them by request id.
fn collect(client: &mut KernelClient, n: usize) -> HashMap<u64, Completion> {
    let start = WallInstant::now();
    let mut done = HashMap::new();
    while done.len() < n {
        assert!(
            start.elapsed() < WALL_LIMIT,
            "only {} of {n} completions",
            done.len()
        );
        client.poll(Instant::now(), Duration::from_millis(50));
        while let Some(c) = client.next_completion() {
            assert!(
                done.insert(c.request_id, c).is_none(),
                "request completed twice"
            );
        }
    }
    done
}

/// Reads one whole response frame from a raw socket (`None` at end of stream).
fn read_response(s: &mut TcpStream) -> Option<(ResponseHeader, Vec<u8>)> {
    let mut h = [0u8; ResponseHeader::HEADER_LEN];
    let mut got = 0;
    while got < h.len() {
        match s.read(&mut h[got..]).expect("read response") {
            0 if got == 0 => return None,
            0 => panic!("response cut short after {got} bytes"),
            n => got += n,
        }
    }
    let header = ResponseHeader::parse(&h, &Limits::default()).expect("valid response header");
    let mut payload = vec![0u8; header.payload_len() as usize];
    s.read_exact(&mut payload).expect("response payload");
    Some((header, payload))
}

fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Asserts the server answered one closing error with `status` (and `request_id`), then closed.
fn expect_closing_error(s: &mut TcpStream, status: Status, request_id: u64) {
    let (h, payload) = read_response(s).expect("an error response before the close");
    assert_eq!(h.reply.status(), status, "{h:?}");
    assert!(h.closing, "CLOSING flag missing: {h:?}");
    assert_eq!(h.request_id, request_id);
    assert!(payload.is_empty());
    assert!(
        read_response(s).is_none(),
        "the server kept the connection open"
    );
}

fn ping_ok(client: &mut KernelClient) {
    let c = call(client, ChunkOp::Ping);
    assert_eq!(ok(&c), Reply::Ping);
}

#[test]
fn random_chunks_round_trip_against_a_model() {
    let store = Arc::new(MemStore::new(1 << 30));
    let server = KernelServer::spawn(any_port(), Arc::clone(&store), server_config(4)).unwrap();
    let mut client = KernelClient::connect(server.local_addr(), &client_config()).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut model: HashMap<u128, Vec<u8>> = HashMap::new();
    let sizes = [1usize, 4 << 10, 1 << 20, 4 << 20];
    let mut data = vec![0u8; 4 << 20];
    let mut bytes_written = 0u64;
    let mut writes = 0u64;

    for round in 0..40 {
        // Write a random size at a random offset (sometimes leaving a hole, sometimes inside).
        let id = 1 + u128::from(rng.below(5));
        let len = sizes[round % sizes.len()];
        let offset = match rng.below(3) {
            0 => 0,
            1 => rng.below(6 << 20),
            _ => rng.below(6 << 20) & !4095,
        };
        rng.fill(&mut data[..len]);
        let c = call(
            &mut client,
            ChunkOp::Write {
                id: ChunkId(id),
                offset,
                data: &data[..len],
            },
        );
        let chunk = model.entry(id).or_default();
        let end = offset as usize + len;
        if chunk.len() < end {
            chunk.resize(end, 0);
        }
        chunk[offset as usize..end].copy_from_slice(&data[..len]);
        assert_eq!(
            ok(&c),
            Reply::Write {
                chunk_size: chunk.len() as u64
            }
        );
        writes += 1;
        bytes_written += len as u64;

        // Read back at a random offset, a random size (short at the end of the chunk).
        let size = chunk.len();
        let at = rng.below(size as u64 + 1) as usize;
        let want_len = sizes[rng.below(4) as usize];
        let c = call(
            &mut client,
            ChunkOp::Read {
                id: ChunkId(id),
                offset: at as u64,
                len: want_len as u32,
            },
        );
        let expect = &chunk[at..(at + want_len).min(size)];
        match ok(&c) {
            Reply::Read {
                len,
                crc,
                chunk_size,
            } => {
                assert_eq!(len as usize, expect.len());
                assert_eq!(crc, crc32c(expect));
                assert_eq!(chunk_size, size as u64);
            }
            r => panic!("READ answered {r:?}"),
        }
        assert!(c.data() == expect, "READ data differs at offset {at}");

        let c = call(&mut client, ChunkOp::Stat { id: ChunkId(id) });
        assert_eq!(
            ok(&c),
            Reply::Stat {
                chunk_size: size as u64,
                chunk_crc: crc32c(chunk)
            }
        );
    }

    // Every byte of every chunk, read back pipelined in 1 MiB pieces.
    let large_buffers = client_config().staging.large_count;
    for (&id, chunk) in &model {
        let offsets: Vec<usize> = (0..chunk.len()).step_by(1 << 20).collect();
        for batch in offsets.chunks(large_buffers) {
            let mut pending = HashMap::new();
            for &at in batch {
                let rid = client
                    .submit(
                        ChunkOp::Read {
                            id: ChunkId(id),
                            offset: at as u64,
                            len: 1 << 20,
                        },
                        Instant::now(),
                    )
                    .unwrap();
                pending.insert(rid, at);
            }
            let done = collect(&mut client, pending.len());
            for (rid, c) in done {
                let at = pending[&rid];
                ok(&c);
                let end = (at + (1 << 20)).min(chunk.len());
                assert!(
                    c.data() == &chunk[at..end],
                    "chunk {id} differs in {at}..{end}"
                );
            }
        }
        // At the end: 0 bytes; past the end: OutOfRange.
        let c = call(
            &mut client,
            ChunkOp::Read {
                id: ChunkId(id),
                offset: chunk.len() as u64,
                len: 10,
            },
        );
        assert!(matches!(ok(&c), Reply::Read { len: 0, .. }));
        let c = call(
            &mut client,
            ChunkOp::Read {
                id: ChunkId(id),
                offset: chunk.len() as u64 + 1,
                len: 10,
            },
        );
        assert_eq!(c.result, Err(ClientError::Status(Status::OutOfRange)));
    }

    // DELETE, then the chunk is gone for every op.
    for &id in model.keys() {
        let id = ChunkId(id);
        assert_eq!(
            ok(&call(&mut client, ChunkOp::Delete { id })),
            Reply::Delete
        );
        let not_found = Err(ClientError::Status(Status::NotFound));
        assert_eq!(call(&mut client, ChunkOp::Stat { id }).result, not_found);
        let read = ChunkOp::Read {
            id,
            offset: 0,
            len: 1,
        };
        assert_eq!(call(&mut client, read).result, not_found);
        assert_eq!(call(&mut client, ChunkOp::Delete { id }).result, not_found);
    }
    assert_eq!(store.chunk_count(), 0);

    client.close();
    let stats = server.stop();
    assert_eq!(stats.writes, writes);
    assert_eq!(stats.bytes_written, bytes_written);
    assert_eq!(stats.deletes, model.len() as u64);
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.connections_closed, 1);
    assert_eq!(stats.connections_closed_for_errors, 0);
    assert_eq!(client.stats().bad_checksums, 0);
}

#[test]
fn sixty_four_requests_in_flight_on_one_connection() {
    let store = Arc::new(MemStore::new(1 << 30));
    let server = KernelServer::spawn(any_port(), Arc::clone(&store), server_config(2)).unwrap();
    let mut client = KernelClient::connect(server.local_addr(), &client_config()).unwrap();
    let max = Limits::default().in_flight_max as usize;
    assert_eq!(max, 64);
    let pattern = |i: usize| -> Vec<u8> { (0..4096).map(|j| (i * 7 + j * 13) as u8).collect() };

    let mut ids = HashMap::new();
    for i in 0..max {
        let data = pattern(i);
        let op = ChunkOp::Write {
            id: ChunkId(1000 + i as u128),
            offset: 0,
            data: &data,
        };
        ids.insert(client.submit(op, Instant::now()).unwrap(), i);
    }
    assert_eq!(client.in_flight(), max);
    assert_eq!(
        client.submit(ChunkOp::Ping, Instant::now()),
        Err(SubmitError::TooManyInFlight { max })
    );
    for (_, c) in collect(&mut client, max) {
        assert_eq!(ok(&c), Reply::Write { chunk_size: 4096 });
    }

    // 64 READs at once, answered in any order, each checked by its id.
    let mut ids = HashMap::new();
    for i in 0..max {
        let op = ChunkOp::Read {
            id: ChunkId(1000 + i as u128),
            offset: 0,
            len: 4096,
        };
        ids.insert(client.submit(op, Instant::now()).unwrap(), i);
    }
    assert_eq!(client.in_flight(), max);
    for (rid, c) in collect(&mut client, max) {
        ok(&c);
        assert!(c.data() == pattern(ids[&rid]).as_slice());
    }

    // A mix of every op, 64 deep, several times over.
    for round in 0..4u128 {
        let mut expect = HashMap::new();
        for i in 0..max as u128 {
            let id = ChunkId(1000 + i);
            let op = match (i + round) % 4 {
                0 => ChunkOp::Ping,
                1 => ChunkOp::Stat { id },
                2 => ChunkOp::Read {
                    id,
                    offset: 4000,
                    len: 200,
                },
                _ => ChunkOp::Read {
                    id,
                    offset: 0,
                    len: 1,
                },
            };
            expect.insert(
                client.submit(op, Instant::now()).unwrap(),
                (i, (i + round) % 4),
            );
        }
        for (rid, c) in collect(&mut client, max) {
            let (i, kind) = expect[&rid];
            let p = pattern(i as usize);
            match (kind, ok(&c)) {
                (0, Reply::Ping) => {}
                (
                    1,
                    Reply::Stat {
                        chunk_size,
                        chunk_crc,
                    },
                ) => {
                    assert_eq!((chunk_size, chunk_crc), (4096, crc32c(&p)));
                }
                (2, Reply::Read { len: 96, .. }) => assert!(c.data() == &p[4000..]),
                (3, Reply::Read { len: 1, .. }) => assert_eq!(c.data(), &p[..1]),
                (k, r) => panic!("kind {k} answered {r:?}"),
            }
        }
    }
    client.close();
    let stats = server.stop();
    assert_eq!(stats.writes, 64);
    assert_eq!(stats.errors, 0);
}

#[test]
fn connection_limit_refuses_the_fifth_and_keeps_serving_four() {
    let store = Arc::new(MemStore::new(1 << 30));
    let server = KernelServer::spawn(any_port(), Arc::clone(&store), server_config(4)).unwrap();
    let cfg = client_config();
    let mut clients: Vec<KernelClient> = (0..4)
        .map(|_| KernelClient::connect(server.local_addr(), &cfg).unwrap())
        .collect();
    for c in &mut clients {
        ping_ok(c);
    }
    // The kernel completes the handshake for the fifth (it is in the backlog), then the server
    // accepts it, finds no free slot, says so (request id 0, TooManyConnections) and closes.
    let mut fifth = KernelClient::connect(server.local_addr(), &cfg).expect("the fifth connects");
    let c = call(&mut fifth, ChunkOp::Ping);
    assert_eq!(
        c.result,
        Err(ClientError::Status(Status::TooManyConnections))
    );
    assert!(fifth.is_broken());
    assert_eq!(fifth.refusal(), Some(Status::TooManyConnections));
    assert_eq!(
        fifth.submit(ChunkOp::Ping, Instant::now()),
        Err(SubmitError::Closed)
    );
    // The first four are still served.
    for (i, c) in clients.iter_mut().enumerate() {
        let data = [i as u8; 100];
        let id = ChunkId(i as u128);
        let w = call(
            c,
            ChunkOp::Write {
                id,
                offset: 0,
                data: &data,
            },
        );
        assert_eq!(ok(&w), Reply::Write { chunk_size: 100 });
        let r = call(
            c,
            ChunkOp::Read {
                id,
                offset: 0,
                len: 100,
            },
        );
        ok(&r);
        assert_eq!(r.data(), &data);
    }
    // Once one of them leaves, a newcomer gets its slot.
    clients.pop().unwrap().close();
    let start = WallInstant::now();
    let mut newcomer = loop {
        if let Ok(mut c) = KernelClient::connect(server.local_addr(), &cfg) {
            if call(&mut c, ChunkOp::Ping).result.is_ok() {
                break c;
            }
        }
        assert!(
            start.elapsed() < WALL_LIMIT,
            "the freed slot was never reused"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    ping_ok(&mut newcomer);
    for c in &mut clients {
        ping_ok(c);
    }
    drop(clients);
    drop(newcomer);
    let stats = server.stop();
    assert!(stats.connections_refused >= 1, "{stats:?}");
    // The four, then the newcomer; any newcomer attempt that came before the slot was free
    // was refused.
    assert_eq!(stats.connections_accepted, 5, "{stats:?}");
    assert_eq!(stats.connections_closed, stats.connections_accepted);
}

#[test]
fn garbage_is_answered_and_closed_while_others_are_served() {
    let store = Arc::new(MemStore::new(1 << 30));
    let server = KernelServer::spawn(any_port(), Arc::clone(&store), server_config(8)).unwrap();
    let addr = server.local_addr();
    let mut good = KernelClient::connect(addr, &client_config()).unwrap();
    ping_ok(&mut good);

    // Not this protocol at all: refused after two bytes, request id 0, CLOSING.
    let mut s = raw_connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .unwrap();
    expect_closing_error(&mut s, Status::Malformed, 0);
    ping_ok(&mut good);

    // The right magic, a version from the future.
    let mut s = raw_connect(addr);
    let mut h = RequestHeader::new(3, Request::Ping).to_bytes();
    h[2] = 9;
    s.write_all(&h).unwrap();
    expect_closing_error(&mut s, Status::UnsupportedVersion, 0);

    // Random bytes after a good request: the good one is answered first.
    let mut s = raw_connect(addr);
    let mut junk = vec![0u8; 4096];
    Rng(7).fill(&mut junk);
    junk[0] = 0; // Not "uQ".
    s.write_all(&RequestHeader::new(11, Request::Ping).to_bytes())
        .unwrap();
    s.write_all(&junk).unwrap();
    let (h, _) = read_response(&mut s).unwrap();
    assert_eq!((h.request_id, h.reply), (11, Reply::Ping));
    expect_closing_error(&mut s, Status::Malformed, 0);

    ping_ok(&mut good);
    good.close();
    let stats = server.stop();
    assert_eq!(stats.connections_closed_for_errors, 3, "{stats:?}");
    assert_eq!(stats.rejected_frames, 3, "{stats:?}");
}

#[test]
fn lying_lengths_and_bad_header_crcs_get_errors() {
    let store = Arc::new(MemStore::new(1 << 30));
    let server = KernelServer::spawn(any_port(), Arc::clone(&store), server_config(8)).unwrap();
    let addr = server.local_addr();
    let mut good = KernelClient::connect(addr, &client_config()).unwrap();
    ping_ok(&mut good);

    // A header CRC that does not match: nothing in it is believed, not even the id.
    let mut s = raw_connect(addr);
    let mut h = RequestHeader::new(21, Request::Ping).to_bytes();
    h[8] ^= 0x40;
    s.write_all(&h).unwrap();
    expect_closing_error(&mut s, Status::BadHeaderChecksum, 0);
    ping_ok(&mut good);

    // A payload length over the limit (with a valid CRC): believed, refused, closed.
    let mut s = raw_connect(addr);
    let len = Limits::default().payload_len_max + 1;
    let h = RequestHeader::new(
        22,
        Request::Write {
            chunk_id: ChunkId(5),
            offset: 0,
            len,
            crc: 0,
        },
    );
    s.write_all(&h.to_bytes()).unwrap();
    expect_closing_error(&mut s, Status::TooLarge, 22);

    // A WRITE whose `length` field disagrees with `payload_len`: survivable. The payload is
    // skipped, the request answered Malformed, and the next request on the same connection
    // served.
    let mut s = raw_connect(addr);
    let data = [0xabu8; 300];
    let mut h = RequestHeader::new(
        23,
        Request::Write {
            chunk_id: ChunkId(6),
            offset: 0,
            len: data.len() as u32,
            crc: crc32c(&data),
        },
    )
    .to_bytes();
    h[40..44].copy_from_slice(&299u32.to_le_bytes());
    let crc = crc32c(&h[..52]);
    h[52..56].copy_from_slice(&crc.to_le_bytes());
    s.write_all(&h).unwrap();
    s.write_all(&data).unwrap();
    s.write_all(&RequestHeader::new(24, Request::Ping).to_bytes())
        .unwrap();
    let (r, _) = read_response(&mut s).unwrap();
    assert_eq!(r.request_id, 23);
    assert_eq!(r.reply.status(), Status::Malformed);
    assert!(!r.closing);
    let (r, _) = read_response(&mut s).unwrap();
    assert_eq!((r.request_id, r.reply), (24, Reply::Ping));
    // A payload that lies about its CRC: BadChecksum, nothing stored, connection kept.
    let h = RequestHeader::new(
        25,
        Request::Write {
            chunk_id: ChunkId(6),
            offset: 0,
            len: data.len() as u32,
            crc: crc32c(&data) ^ 1,
        },
    );
    s.write_all(&h.to_bytes()).unwrap();
    s.write_all(&data).unwrap();
    let (r, _) = read_response(&mut s).unwrap();
    assert_eq!(r.request_id, 25);
    assert_eq!(r.reply.status(), Status::BadChecksum);
    assert!(store.stat(ChunkId(6)).is_err(), "nothing stored");
    drop(s);

    // A payload length that promises more than is sent before the end of the stream: the
    // server closes without an answer (the frame was cut short) and counts it.
    let mut s = raw_connect(addr);
    let h = RequestHeader::new(
        26,
        Request::Write {
            chunk_id: ChunkId(7),
            offset: 0,
            len: 1000,
            crc: 0,
        },
    );
    s.write_all(&h.to_bytes()).unwrap();
    s.write_all(&[1u8; 10]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(read_response(&mut s).is_none());
    assert!(store.stat(ChunkId(7)).is_err(), "nothing stored");

    ping_ok(&mut good);
    good.close();
    let stats = server.stop();
    assert_eq!(stats.connections_closed_for_errors, 3, "{stats:?}");
    assert_eq!(stats.bad_checksums, 1, "{stats:?}");
    assert_eq!(stats.writes, 0, "{stats:?}");
}

/// A fake server that answers the first `answered` PINGs, then dies: with a reset (`reset`), or
/// with an orderly close after reading everything the client sent (`expect_bytes`).
fn dying_server(
    answered: usize,
    reset: bool,
    expect_bytes: usize,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind(any_port()).unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut taken = 0;
        let mut answers = Vec::new();
        for _ in 0..answered {
            let mut h = [0u8; RequestHeader::HEADER_LEN];
            s.read_exact(&mut h).unwrap();
            taken += h.len();
            let req = RequestHeader::parse(&h, &Limits::default()).unwrap();
            assert_eq!(req.request, Request::Ping);
            answers.extend_from_slice(&ResponseHeader::ping(req.request_id).to_bytes());
        }
        // One send, so no answer is still queued (and thrown away by the reset) below.
        s.write_all(&answers).unwrap();
        if reset {
            // Mid-request: part of the next frame is read, then the connection is reset.
            let mut some = [0u8; 100];
            s.read_exact(&mut some).unwrap();
            use std::os::fd::AsFd;
            ustack::host::socket::set_linger_zero(s.as_fd()).unwrap();
        } else {
            let mut rest = vec![0u8; expect_bytes - taken];
            s.read_exact(&mut rest).unwrap();
        }
        drop(s);
    });
    (addr, t)
}

fn server_death_fails_every_outstanding_request(reset: bool) {
    let write = vec![0x5au8; 1 << 20];
    let answered = 3;
    let expect_bytes = answered * 56 + (56 + write.len()) + 10 * 56 + 56;
    let (addr, fake) = dying_server(answered, reset, expect_bytes);
    let mut client = KernelClient::connect(addr, &client_config()).unwrap();
    let mut submitted = HashSet::new();
    let now = Instant::now();
    for _ in 0..answered {
        submitted.insert(client.submit(ChunkOp::Ping, now).unwrap());
    }
    let w = ChunkOp::Write {
        id: ChunkId(1),
        offset: 0,
        data: &write,
    };
    submitted.insert(client.submit(w, now).unwrap());
    for i in 0..10 {
        let r = ChunkOp::Read {
            id: ChunkId(1),
            offset: i * 4096,
            len: 4096,
        };
        submitted.insert(client.submit(r, now).unwrap());
    }
    submitted.insert(
        client
            .submit(ChunkOp::Stat { id: ChunkId(1) }, now)
            .unwrap(),
    );
    let n = submitted.len();
    let done = collect(&mut client, n);
    fake.join().unwrap();
    let ids: HashSet<u64> = done.keys().copied().collect();
    assert_eq!(ids, submitted, "every request completes exactly once");
    let oks = done.values().filter(|c| c.result.is_ok()).count();
    assert_eq!(oks, answered);
    for c in done.values().filter(|c| c.result.is_err()) {
        assert_eq!(c.result, Err(ClientError::ConnectionLost), "{c:?}");
    }
    assert!(client.is_broken());
    assert_eq!(client.in_flight(), 0);
    assert_eq!(client.stats().failed, (n - answered) as u64);
    assert_eq!(
        client.submit(ChunkOp::Ping, Instant::now()),
        Err(SubmitError::Closed)
    );
}

#[test]
fn server_reset_mid_request_fails_every_outstanding_request() {
    server_death_fails_every_outstanding_request(true);
}

#[test]
fn server_close_mid_request_fails_every_outstanding_request() {
    server_death_fails_every_outstanding_request(false);
}

#[test]
fn one_large_staging_buffer_back_pressures_without_loss() {
    let store = Arc::new(MemStore::new(1 << 30));
    let cfg = ServerConfig {
        staging: staging(1, 1),
        storage: through_staging(),
        ..server_config(2)
    };
    let server = KernelServer::spawn(any_port(), Arc::clone(&store), cfg).unwrap();
    let mut client = KernelClient::connect(server.local_addr(), &client_config()).unwrap();
    let mut rng = Rng(99);
    let mut chunks = Vec::new();
    let mut ids = HashMap::new();
    for i in 0..6u128 {
        let mut data = vec![0u8; 1 << 20];
        rng.fill(&mut data);
        let op = ChunkOp::Write {
            id: ChunkId(i),
            offset: 0,
            data: &data,
        };
        ids.insert(client.submit(op, Instant::now()).unwrap(), i);
        chunks.push(data);
    }
    for (_, c) in collect(&mut client, 6) {
        assert_eq!(
            ok(&c),
            Reply::Write {
                chunk_size: 1 << 20
            }
        );
    }
    let mut ids = HashMap::new();
    for i in 0..6u128 {
        let op = ChunkOp::Read {
            id: ChunkId(i),
            offset: 0,
            len: 1 << 20,
        };
        ids.insert(client.submit(op, Instant::now()).unwrap(), i as usize);
    }
    for (rid, c) in collect(&mut client, 6) {
        ok(&c);
        assert!(c.data() == chunks[ids[&rid]].as_slice());
    }
    client.close();
    let stats = server.stop();
    assert!(
        stats.staging_waits > 0,
        "no back-pressure happened: {stats:?}"
    );
    assert_eq!((stats.writes, stats.reads), (6, 6));
}

#[test]
fn a_peer_that_never_reads_does_not_stall_others() {
    let store = Arc::new(MemStore::new(1 << 30));
    let server = KernelServer::spawn(any_port(), Arc::clone(&store), server_config(4)).unwrap();
    let addr = server.local_addr();
    let mut good = KernelClient::connect(addr, &client_config()).unwrap();
    let big = vec![0x77u8; 1 << 20];
    let w = ChunkOp::Write {
        id: ChunkId(1),
        offset: 0,
        data: &big,
    };
    ok(&call(&mut good, w));

    // 64 READs of 1 MiB pipelined, answers never read (for now): 64 MiB the server cannot send.
    let mut slow = raw_connect(addr);
    for i in 0..64u64 {
        let h = RequestHeader::new(
            i + 1,
            Request::Read {
                chunk_id: ChunkId(1),
                offset: 0,
                len: 1 << 20,
            },
        );
        slow.write_all(&h.to_bytes()).unwrap();
    }
    // Meanwhile the good client's small requests go through.
    for i in 0..200u64 {
        let c = call(
            &mut good,
            ChunkOp::Read {
                id: ChunkId(1),
                offset: i * 100,
                len: 100,
            },
        );
        ok(&c);
        assert_eq!(c.data(), &big[..100]);
    }
    // The slow peer finally reads: every answer arrives, whole and in CRC.
    let mut seen = HashSet::new();
    for _ in 0..64 {
        let (h, payload) = read_response(&mut slow).unwrap();
        assert_eq!(h.reply.status(), Status::Ok, "{h:?}");
        assert_eq!(payload.len(), 1 << 20);
        assert_eq!(h.reply.payload_crc(), crc32c(&payload));
        assert!(seen.insert(h.request_id));
    }
    drop(slow);
    good.close();
    let stats = server.stop();
    assert_eq!(stats.reads, 64 + 200);
}

#[test]
fn shutdown_closes_connections_and_clients_notice() {
    let store = Arc::new(MemStore::new(1 << 30));
    let cfg = ServerConfig {
        shutdown_grace: Duration::from_millis(500),
        ..server_config(4)
    };
    let server = KernelServer::spawn(any_port(), Arc::clone(&store), cfg).unwrap();
    let addr = server.local_addr();
    let mut client = KernelClient::connect(addr, &client_config()).unwrap();
    ping_ok(&mut client);
    let start = WallInstant::now();
    let stats = server.stop();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        start.elapsed()
    );
    assert_eq!(stats.connections_closed, 1);
    let c = call(&mut client, ChunkOp::Ping);
    assert_eq!(c.result, Err(ClientError::ConnectionLost));
    // Nobody listens any more.
    match KernelClient::connect(addr, &client_config()) {
        Err(NetError::Connect {
            addr: a, source, ..
        }) => {
            assert_eq!(a, addr);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("connected to a stopped server: {other:?}"),
    }
}

#[test]
fn bind_and_connect_errors_say_what_to_check() {
    let store = Arc::new(MemStore::new(1 << 30));
    let server = KernelServer::spawn(any_port(), Arc::clone(&store), server_config(1)).unwrap();
    let addr = server.local_addr();
    let err = match KernelServer::bind(addr, Arc::clone(&store), server_config(1)) {
        Err(e) => e,
        Ok(_) => panic!("bound a port that is in use"),
    };
    let msg = err.to_string();
    assert!(
        matches!(err, NetError::Bind { addr: a, .. } if a == addr),
        "{err:?}"
    );
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("port"),
        "{msg}"
    );
    drop(server);

    let free = TcpListener::bind(any_port()).unwrap().local_addr().unwrap();
    let err = KernelClient::connect(free, &client_config()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&free.to_string()) && msg.contains("nothing listens"),
        "{msg}"
    );

    let bad = ServerConfig {
        connections_max: 0,
        ..server_config(1)
    };
    assert!(matches!(
        KernelServer::bind(any_port(), Arc::clone(&store), bad),
        Err(NetError::Config {
            field: "connections_max",
            ..
        })
    ));
}

#[test]
fn a_peer_that_resets_while_waiting_for_a_buffer_frees_its_slot() {
    let store = Arc::new(MemStore::new(1 << 30));
    let cfg = ServerConfig {
        storage: through_staging(),
        staging: staging(1, 1),
        ..server_config(2)
    };
    let server = KernelServer::spawn(any_port(), Arc::clone(&store), cfg).unwrap();
    let addr = server.local_addr();
    let big = vec![0x42u8; 4 << 20];
    {
        let mut c = KernelClient::connect(addr, &client_config()).unwrap();
        let w = ChunkOp::Write {
            id: ChunkId(1),
            offset: 0,
            data: &big,
        };
        ok(&call(&mut c, w));
    }
    let read = |id: u64| {
        RequestHeader::new(
            id,
            Request::Read {
                chunk_id: ChunkId(1),
                offset: 0,
                len: 4 << 20,
            },
        )
        .to_bytes()
    };
    // A asks for 32 MiB and reads nothing: the server's only large buffer stays with A's
    // unsent answers.
    let mut a = raw_connect(addr);
    for i in 0..8 {
        a.write_all(&read(i + 1)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    // B's first READ waits for that buffer, its second waits behind it unread (so only ppoll's
    // hang-up report can tell the server that B is gone); then B resets the connection.
    let b = raw_connect(addr);
    (&b).write_all(&read(1)).unwrap();
    (&b).write_all(&read(2)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    {
        use std::os::fd::AsFd;
        ustack::host::socket::set_linger_zero(b.as_fd()).unwrap();
    }
    drop(b);
    // B's slot must be free again (both slots were taken), though B's request never ran.
    let start = WallInstant::now();
    let mut c = loop {
        if let Ok(mut c) = KernelClient::connect(addr, &client_config()) {
            if call(&mut c, ChunkOp::Ping).result.is_ok() {
                break c;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the reset connection still holds its slot"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    ping_ok(&mut c);
    // A reads at last and gets all of it.
    for _ in 0..8 {
        let (h, payload) = read_response(&mut a).unwrap();
        assert_eq!(h.reply.status(), Status::Ok);
        assert!(payload == big);
    }
    drop(a);
    c.close();
    let stats = server.stop();
    assert!(stats.staging_waits > 0, "{stats:?}");
}

#[test]
fn requests_time_out_and_late_answers_are_dropped() {
    let listener = TcpListener::bind(any_port()).unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut next = || {
            let mut h = [0u8; RequestHeader::HEADER_LEN];
            s.read_exact(&mut h).unwrap();
            RequestHeader::parse(&h, &Limits::default())
                .unwrap()
                .request_id
        };
        // The first PING is answered only once the second arrives, which the client sends
        // after the first timed out: late by construction, whatever the machine's speed.
        let first = next();
        let second = next();
        let mut out = ResponseHeader::ping(first).to_bytes().to_vec();
        out.extend_from_slice(&ResponseHeader::ping(second).to_bytes());
        s.write_all(&out).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let cfg = ClientConfig {
        request_timeout: Duration::from_millis(300),
        ..client_config()
    };
    let mut client = KernelClient::connect(addr, &cfg).unwrap();
    let start = WallInstant::now();
    let c = call(&mut client, ChunkOp::Ping);
    let waited = start.elapsed();
    assert_eq!(c.result, Err(ClientError::Timeout));
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(2),
        "timed out after {waited:?}"
    );
    // The first answer comes late (and is counted, not delivered); the second is on time.
    ping_ok(&mut client);
    let stats = client.stats();
    assert_eq!(
        (stats.timeouts, stats.unexpected_answers),
        (1, 1),
        "{stats:?}"
    );
    client.close();
    fake.join().unwrap();
}

#[test]
fn a_read_waiting_for_a_buffer_is_answered_after_the_peer_half_closes() {
    let store = Arc::new(MemStore::new(1 << 30));
    let cfg = ServerConfig {
        staging: staging(1, 1),
        ..server_config(4)
    };
    let server = KernelServer::spawn(any_port(), Arc::clone(&store), cfg).unwrap();
    let addr = server.local_addr();
    let big = vec![0x24u8; 4 << 20];
    {
        let mut c = KernelClient::connect(addr, &client_config()).unwrap();
        let w = ChunkOp::Write {
            id: ChunkId(1),
            offset: 0,
            data: &big,
        };
        ok(&call(&mut c, w));
    }
    let read = |id: u64| {
        RequestHeader::new(
            id,
            Request::Read {
                chunk_id: ChunkId(1),
                offset: 0,
                len: 4 << 20,
            },
        )
        .to_bytes()
    };
    // A holds the only large buffer (its answers wait unsent).
    let mut a = raw_connect(addr);
    for i in 0..8 {
        a.write_all(&read(i + 1)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    // B's READ waits for the buffer, and B says it sends nothing more.
    let mut b = raw_connect(addr);
    b.write_all(&read(77)).unwrap();
    b.shutdown(Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Both read now, each on its own thread: the one buffer may go to either next, and its
    // answer must be taken for the other to get it back.
    let b_reader = std::thread::spawn(move || {
        let first = read_response(&mut b);
        let then = read_response(&mut b);
        (first, then)
    });
    for _ in 0..8 {
        let (h, payload) = read_response(&mut a).unwrap();
        assert_eq!(h.reply.status(), Status::Ok);
        assert!(payload == big);
    }
    let (first, then) = b_reader.join().unwrap();
    let (h, payload) = first.expect("B's READ was dropped at its end of stream");
    assert_eq!((h.request_id, h.reply.status()), (77, Status::Ok));
    assert!(payload == big);
    assert!(then.is_none(), "the server kept B's connection open");
    drop(a);
    let stats = server.stop();
    assert_eq!(stats.reads, 9, "{stats:?}");
}

#[test]
fn many_clients_can_be_waited_on_with_one_poll() {
    use std::os::fd::{AsFd, AsRawFd};
    let store = Arc::new(MemStore::new(1 << 30));
    let server = KernelServer::spawn(any_port(), Arc::clone(&store), server_config(4)).unwrap();
    let mut clients: Vec<KernelClient> = (0..3)
        .map(|_| KernelClient::connect(server.local_addr(), &client_config()).unwrap())
        .collect();
    // The descriptor is the connection's own socket.
    for c in &clients {
        let peer = peer_of(c.as_fd().as_raw_fd());
        assert_eq!(peer, server.local_addr());
    }
    // Only client 1 asks: it has bytes to send until polled, and only its socket turns
    // readable.
    assert!(clients.iter().all(|c| !c.has_unsent()));
    clients[1].submit(ChunkOp::Ping, Instant::now()).unwrap();
    assert!(clients[1].has_unsent() && !clients[0].has_unsent());
    clients[1].poll(Instant::now(), Duration::ZERO);
    assert!(!clients[1].has_unsent());
    let mut fds: Vec<libc::pollfd> = clients
        .iter()
        .map(|c| libc::pollfd {
            fd: c.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: a valid array of pollfd structures of the length given.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 5_000) };
    assert_eq!(n, 1, "{fds:?}");
    assert!(fds[1].revents & libc::POLLIN != 0 && fds[0].revents == 0 && fds[2].revents == 0);
    let done = collect(&mut clients[1], 1);
    assert!(matches!(ok(done.values().next().unwrap()), Reply::Ping));
}

/// The peer address of a connected TCP socket.
fn peer_of(fd: std::os::fd::RawFd) -> SocketAddr {
    // SAFETY: `fd` stays open (borrowed from a live client) while it is duplicated, and the
    // duplicate is owned by the TcpStream that closes it.
    let dup = unsafe { libc::dup(fd) };
    assert!(dup >= 0);
    // SAFETY: `dup` is the new descriptor just made, owned by nothing else.
    let s = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(dup) };
    s.peer_addr().unwrap()
}

/// LIST over kernel TCP, with the store called inline and on storage workers: a raw request for
/// u32::MAX entries gets one bounded page (2048 entries, MORE); the client pages through 5000
/// chunks, each listed once with its size, the last page without MORE; an empty store lists
/// nothing; every LIST is counted.
#[test]
fn list_pages_through_the_store_and_a_huge_page_is_capped() {
    for storage in [StorageConfig::default(), through_staging()] {
        let store = Arc::new(MemStore::new(1 << 30));
        let empty = KernelServer::spawn(
            any_port(),
            Arc::new(MemStore::new(1 << 20)),
            ServerConfig {
                storage: storage.clone(),
                ..server_config(2)
            },
        )
        .unwrap();
        let mut client = KernelClient::connect(empty.local_addr(), &client_config()).unwrap();
        let c = call(
            &mut client,
            ChunkOp::List {
                after: None,
                max: 100,
            },
        );
        assert_eq!(
            ok(&c),
            Reply::List {
                len: 0,
                crc: 0,
                more: false
            }
        );
        drop(client);
        assert_eq!(empty.stop().lists, 1);

        let mut rng = Rng(0x5151_7777);
        let mut model: HashMap<ChunkId, u64> = HashMap::new();
        for _ in 0..5000 {
            let id = ChunkId(u128::from(rng.next()) << 64 | u128::from(rng.next()));
            let size = rng.below(64);
            store.write(id, 0, &vec![3u8; size as usize]).unwrap();
            model.insert(id, size);
        }
        let server = KernelServer::spawn(
            any_port(),
            Arc::clone(&store),
            ServerConfig {
                storage,
                ..server_config(2)
            },
        )
        .unwrap();

        // A raw request for u32::MAX entries: the server caps the page.
        let mut raw = raw_connect(server.local_addr());
        let req = RequestHeader::new(
            77,
            Request::List {
                after: None,
                max: u32::MAX,
            },
        );
        raw.write_all(&req.to_bytes()).unwrap();
        let (h, payload) = read_response(&mut raw).expect("a LIST answer");
        assert_eq!(h.request_id, 77);
        let Reply::List { len, crc, more } = h.reply else {
            panic!("{h:?}");
        };
        assert_eq!(len as usize, LIST_PAGE_MAX as usize * LIST_ENTRY_LEN);
        assert!(more);
        assert_eq!(crc32c(&payload), crc);
        drop(raw);

        // The client pages through everything, asking for as much as it likes.
        let mut client = KernelClient::connect(server.local_addr(), &client_config()).unwrap();
        let mut after = None;
        let mut listed: Vec<ListEntry> = Vec::new();
        let mut pages = 0;
        loop {
            let c = call(
                &mut client,
                ChunkOp::List {
                    after,
                    max: u32::MAX,
                },
            );
            let Reply::List { len, more, .. } = ok(&c) else {
                panic!("{:?}", c.result);
            };
            pages += 1;
            let page: Vec<ListEntry> = c.list_entries().collect();
            assert_eq!(page.len() * LIST_ENTRY_LEN, len as usize);
            assert!(page.len() <= LIST_PAGE_MAX as usize);
            listed.extend(&page);
            if !more {
                break;
            }
            after = Some(page.last().expect("MORE with entries").id);
        }
        assert_eq!(pages, 3);
        assert_eq!(listed.len(), model.len());
        let ids: HashSet<ChunkId> = listed.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), listed.len(), "a chunk listed twice");
        for e in &listed {
            assert_eq!(model.get(&e.id), Some(&e.size));
        }
        drop(client);
        let stats = server.stop();
        assert_eq!(stats.lists, 1 + pages);
        assert_eq!(stats.errors, 0);
    }
}

//! The chunk protocol end to end between two ustack stacks on the simulated link, in virtual
//! time: random chunks of 1 B, 4 KiB, 1 MiB and 4 MiB written and read back at random offsets
//! (clean link and with faults), every byte checked against a model; 64 requests in flight on one
//! connection, answered out of order.

mod common;

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use common::{Pattern, Rng, SimNet, Step, IP_B};
use ustack::chunk::{
    ChunkClient, ChunkOp, ChunkServer, ClientConfig, ClientError, Completion, MemStore,
    ServerConfig, StorageConfig, StorageMode,
};
use ustack::dev::sim::{Faults, SimConfig, SimPort};
use ustack::proto::{crc32c, ChunkId, Op, Reply, Status};

const PORT: u16 = 7000;

struct Rig {
    net: SimNet<SimPort>,
    server: ChunkServer<Arc<MemStore>>,
    client: ChunkClient,
}

fn rig_on(seed: u64, faults: Faults, mode: StorageMode) -> Rig {
    // With 5% loss smoltcp recovers on 1 s timeouts: a 4 MiB transfer can take minutes of
    // virtual time.
    let client_cfg = ClientConfig {
        request_timeout: Duration::from_secs(3600),
        ..ClientConfig::default()
    };
    rig_with(seed, faults, client_cfg, mode)
}

fn rig_with(seed: u64, faults: Faults, client_cfg: ClientConfig, mode: StorageMode) -> Rig {
    let sim = SimConfig {
        jitter: Duration::from_micros(5),
        ..SimConfig::default().with_seed(seed).with_faults(faults)
    };
    let mut net = SimNet::new(sim, seed);
    let cfg = ServerConfig {
        connections_max: 4,
        backlog: 2,
        storage: StorageConfig {
            mode,
            // Virtual time stands still while a worker runs (the driver polls "busy").
            ..StorageConfig::default()
        },
        ..ServerConfig::default()
    };
    let server =
        ChunkServer::bind(&mut net.b, PORT, Arc::new(MemStore::new(1 << 30)), cfg).expect("bind");
    let client = ChunkClient::connect(
        &mut net.a,
        SocketAddrV4::new(IP_B, PORT),
        &client_cfg,
        net.now,
    )
    .expect("connect");
    Rig {
        net,
        server,
        client,
    }
}

impl Rig {
    /// Drives until `n` completions arrived; returns them in arrival order.
    fn collect(&mut self, n: usize) -> Vec<Completion> {
        let Rig {
            net,
            server,
            client,
        } = self;
        let mut got = Vec::with_capacity(n);
        net.drive(Duration::from_secs(6 * 3600), |a, b, now| {
            // Store calls on workers finish in real time: poll again at the same virtual
            // instant until they have.
            let busy = server.poll(b) | client.poll(a, now) | (server.storage_outstanding() > 0);
            while let Some(c) = client.next_completion() {
                got.push(c);
            }
            Ok(if got.len() >= n {
                Step::Done(())
            } else if busy {
                Step::Busy
            } else {
                Step::Idle
            })
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}; {} of {n} completions; client {:?}",
                got.len(),
                client.stats()
            )
        });
        got
    }

    fn submit(&mut self, op: ChunkOp<'_>) -> u64 {
        self.client.submit(op, self.net.now).expect("submit")
    }

    fn one(&mut self, op: ChunkOp<'_>) -> Completion {
        let id = self.submit(op);
        let c = self.collect(1).pop().unwrap();
        assert_eq!(c.request_id, id);
        c
    }
}

/// What the chunks should hold.
#[derive(Default)]
struct Model {
    chunks: HashMap<u128, Vec<u8>>,
}

impl Model {
    fn write(&mut self, id: u128, offset: u64, data: &[u8]) -> u64 {
        let c = self.chunks.entry(id).or_default();
        let end = offset as usize + data.len();
        if c.len() < end {
            c.resize(end, 0);
        }
        c[offset as usize..end].copy_from_slice(data);
        c.len() as u64
    }
}

fn check_read(model: &Model, id: u128, offset: u64, len: u32, c: &Completion) {
    let chunk = &model.chunks[&id];
    let want_len = (chunk.len() as u64 - offset).min(u64::from(len)) as usize;
    match c.result {
        Ok(Reply::Read {
            len: got,
            chunk_size,
            ..
        }) => {
            assert_eq!(got as usize, want_len, "read length of {id:x} at {offset}");
            assert_eq!(chunk_size, chunk.len() as u64);
            let want = &chunk[offset as usize..offset as usize + want_len];
            if c.data() != want {
                let i = (0..want_len).find(|&i| c.data()[i] != want[i]).unwrap();
                panic!("chunk {id:x}: byte {} of a read at {offset} differs", i);
            }
        }
        ref other => panic!("read of {id:x} at {offset}: {other:?}"),
    }
}

fn round_trips(seed: u64, faults: Faults) {
    round_trips_on(seed, faults, StorageMode::Auto)
}

fn round_trips_on(seed: u64, faults: Faults, mode: StorageMode) {
    let mut rig = rig_on(seed, faults, mode);
    let mut rng = Rng::new(seed);
    let mut model = Model::default();
    let pat = Pattern::new(seed);
    let mut ids = Vec::new();
    let mut stream = 0u64;
    for size in [1usize, 4096, 1 << 20, 4 << 20] {
        for _ in 0..2 {
            let id = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
            let offset = rng.below(3 << 20);
            let mut data = vec![0u8; size];
            pat.fill(stream, &mut data);
            stream += size as u64;
            let c = rig.one(ChunkOp::Write {
                id: ChunkId(id),
                offset,
                data: &data,
            });
            let size_after = model.write(id, offset, &data);
            assert_eq!(
                c.result,
                Ok(Reply::Write {
                    chunk_size: size_after
                }),
                "write {size} B at {offset}"
            );
            ids.push((id, offset, size));
        }
    }
    // Read every written range back, plus a random range of each chunk, pipelined four at a
    // time (each may need a 4 MiB staging buffer; the client has 8).
    let mut wanted = Vec::new();
    for &(id, offset, size) in &ids {
        let chunk_len = model.chunks[&id].len() as u64;
        wanted.push((id, offset, size as u32));
        wanted.push((
            id,
            rng.below(chunk_len + 1),
            (rng.below(4 << 20) + 1) as u32,
        ));
    }
    for batch in wanted.chunks(4) {
        let mut reads = Vec::new();
        for &(id, off, len) in batch {
            let rid = rig.submit(ChunkOp::Read {
                id: ChunkId(id),
                offset: off,
                len,
            });
            reads.push((rid, id, off, len));
        }
        for c in rig.collect(reads.len()) {
            let &(_, id, off, len) = reads
                .iter()
                .find(|r| r.0 == c.request_id)
                .expect("known id");
            check_read(&model, id, off, len, &c);
        }
    }
    // STAT checks the whole content; DELETE then READ says NotFound.
    for &(id, _, _) in &ids {
        let c = rig.one(ChunkOp::Stat { id: ChunkId(id) });
        let chunk = &model.chunks[&id];
        assert_eq!(
            c.result,
            Ok(Reply::Stat {
                chunk_size: chunk.len() as u64,
                chunk_crc: crc32c(chunk)
            })
        );
    }
    // LIST, 3 entries a page, names every chunk once with its size.
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let c = rig.one(ChunkOp::List { after, max: 3 });
        let Ok(Reply::List { more, .. }) = c.result else {
            panic!("LIST: {:?}", c.result);
        };
        let page: Vec<_> = c.list_entries().collect();
        assert!(page.len() <= 3);
        listed.extend(page.iter().map(|e| (e.id.0, e.size)));
        if !more {
            break;
        }
        after = Some(page.last().expect("MORE with entries").id);
    }
    listed.sort_unstable();
    let mut want: Vec<(u128, u64)> = model
        .chunks
        .iter()
        .map(|(id, c)| (*id, c.len() as u64))
        .collect();
    want.sort_unstable();
    assert_eq!(listed, want);
    let (gone, _, _) = ids[0];
    assert_eq!(
        rig.one(ChunkOp::Delete { id: ChunkId(gone) }).result,
        Ok(Reply::Delete)
    );
    let c = rig.one(ChunkOp::Read {
        id: ChunkId(gone),
        offset: 0,
        len: 1,
    });
    assert_eq!(c.result, Err(ClientError::Status(Status::NotFound)));
    let st = rig.server.stats();
    println!(
        "seed {seed}: server {st:?}\nlink {:?}",
        rig.net.link.stats().total()
    );
    assert_eq!(st.connections_closed_for_errors, 0);
}

#[test]
fn round_trips_clean() {
    for seed in 1..=4 {
        round_trips(seed, Faults::none());
    }
}

/// The same, with every store call on the storage workers (MemStore alone would run inline).
#[test]
fn round_trips_on_storage_workers() {
    for seed in 1..=2 {
        round_trips_on(seed, Faults::none(), StorageMode::Workers);
    }
    round_trips_on(3, Faults::standard(), StorageMode::Workers);
}

#[test]
fn round_trips_with_faults() {
    for seed in 1..=4 {
        round_trips(seed, Faults::standard());
    }
}

#[test]
fn sixty_four_in_flight_complete_out_of_order() {
    // 16 READs of 1 MiB in flight need 16 large staging buffers on the client.
    let mut client_cfg = ClientConfig::default();
    client_cfg.staging.large_count = 16;
    let mut rig = rig_with(42, Faults::none(), client_cfg, StorageMode::Auto);
    let mut rng = Rng::new(42);
    let pat = Pattern::new(42);
    let mut model = Model::default();
    // Seed four chunks of 1 MiB to read from.
    let seeded: Vec<u128> = (0..4u128).map(|i| 0xfeed_0000 + i).collect();
    for (i, &id) in seeded.iter().enumerate() {
        let mut data = vec![0u8; 1 << 20];
        pat.fill((i as u64) << 20, &mut data);
        model.write(id, 0, &data);
        assert!(rig
            .one(ChunkOp::Write {
                id: ChunkId(id),
                offset: 0,
                data: &data
            })
            .result
            .is_ok());
    }
    // 64 requests at once: big READs, small WRITEs, STATs, PINGs, interleaved.
    let mut expect: Vec<(u64, Op)> = Vec::new();
    let mut write_data: HashMap<u64, (u128, Vec<u8>)> = HashMap::new();
    for i in 0..64u64 {
        let (op, rid) = match i % 4 {
            0 => {
                let id = seeded[(i / 4 % 4) as usize];
                (
                    Op::Read,
                    rig.submit(ChunkOp::Read {
                        id: ChunkId(id),
                        offset: 0,
                        len: 1 << 20,
                    }),
                )
            }
            1 => {
                let id = 0xabc0_0000 + u128::from(i);
                let mut data = vec![0u8; 1 + rng.below(8192) as usize];
                pat.fill(i << 30, &mut data);
                let rid = rig.submit(ChunkOp::Write {
                    id: ChunkId(id),
                    offset: 0,
                    data: &data,
                });
                write_data.insert(rid, (id, data));
                (Op::Write, rid)
            }
            2 => (
                Op::Stat,
                rig.submit(ChunkOp::Stat {
                    id: ChunkId(seeded[0]),
                }),
            ),
            _ => (Op::Ping, rig.submit(ChunkOp::Ping)),
        };
        expect.push((rid, op));
    }
    assert_eq!(rig.client.in_flight(), 64);
    let done = rig.collect(64);
    let order: Vec<u64> = done.iter().map(|c| c.request_id).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        expect.iter().map(|e| e.0).collect::<Vec<_>>(),
        "each request completed once"
    );
    let overtaken = order.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(
        overtaken > 0,
        "answers came back in submission order: {order:?}"
    );
    for c in &done {
        let op = expect.iter().find(|e| e.0 == c.request_id).unwrap().1;
        assert_eq!(c.op, op);
        match op {
            Op::Read => assert_eq!(c.data().len(), 1 << 20),
            Op::Write => {
                let (id, data) = &write_data[&c.request_id];
                assert_eq!(
                    c.result,
                    Ok(Reply::Write {
                        chunk_size: data.len() as u64
                    }),
                    "{id:x}"
                );
            }
            Op::Stat => assert!(matches!(
                c.result,
                Ok(Reply::Stat {
                    chunk_size: 1048576,
                    ..
                })
            )),
            _ => assert_eq!(c.result, Ok(Reply::Ping)),
        }
    }
    // The READs hold the seeded chunks' bytes.
    for c in done.iter().filter(|c| c.op == Op::Read) {
        assert!(
            model.chunks.values().any(|v| v.as_slice() == c.data()),
            "READ data matches a seeded chunk"
        );
    }
    // The small WRITEs landed.
    for (rid, (id, data)) in &write_data {
        let c = rig.one(ChunkOp::Read {
            id: ChunkId(*id),
            offset: 0,
            len: 8192,
        });
        assert_eq!(c.data(), &data[..], "write {rid}");
    }
    println!("completion order: {order:?} ({overtaken} overtakes)");
}

/// A server at its `connections_max` (4) says why it does not serve a fifth connection: one
/// answer with request id 0 and status TooManyConnections, then a close, so the client fails
/// its requests with that status instead of a bare reset. The four are still served.
#[test]
fn a_connection_over_the_limit_is_told_why() {
    let Rig {
        mut net,
        mut server,
        client,
    } = rig_on(7, Faults::none(), StorageMode::Auto);
    let cfg = ClientConfig::default();
    let addr = SocketAddrV4::new(IP_B, PORT);
    let mut clients = vec![client];
    for _ in 0..4 {
        clients.push(ChunkClient::connect(&mut net.a, addr, &cfg, net.now).unwrap());
    }
    let mut results: Vec<Option<Result<Reply, ClientError>>> = vec![None; clients.len()];
    net.drive(Duration::from_secs(30), |a, b, now| {
        let mut busy = server.poll(b);
        for (c, r) in clients.iter_mut().zip(results.iter_mut()) {
            busy |= c.poll(a, now);
            if c.is_connected() && c.in_flight() == 0 && r.is_none() {
                c.submit(ChunkOp::Ping, now).expect("submit");
            }
            if let Some(done) = c.next_completion() {
                *r = Some(done.result);
            }
        }
        Ok(if results.iter().all(Option::is_some) {
            Step::Done(())
        } else if busy {
            Step::Busy
        } else {
            Step::Idle
        })
    })
    .unwrap_or_else(|e| panic!("{e}: {results:?}"));
    let ok = results.iter().filter(|r| matches!(r, Some(Ok(_)))).count();
    assert_eq!(ok, 4, "{results:?}");
    let (refused, r) = clients
        .iter()
        .zip(&results)
        .find(|(_, r)| !matches!(r, Some(Ok(_))))
        .unwrap();
    assert_eq!(
        r,
        &Some(Err(ClientError::Status(Status::TooManyConnections)))
    );
    assert_eq!(refused.refusal(), Some(Status::TooManyConnections));
    assert!(refused.is_broken());
    assert_eq!(server.stats().connections_refused, 1);
}

//! The copy budget (docs/DATAPATH.md), held to account: payload bytes each layer copies, per
//! side, for 1 MiB READs and WRITEs between two ustack stacks on the simulated link (server
//! with a MemStore, inline), counted by `ustack::copies` (the `copy-count` feature, on in the
//! tests). A new pass over the payload anywhere on the path shows here as a count above its
//! budget. The device copies of each backend are counted in its own tests (memif, AF_XDP).
//! A store that does not lend its bytes (DirStore) adds one store -> staging copy (with the CRC
//! in the same pass) to the server's READ.

mod common;

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use common::{Pattern, SimNet, IP_B};
use ustack::chunk::{ChunkClient, ChunkOp, ChunkServer, ClientConfig, MemStore, ServerConfig};
use ustack::copies::{self, Counts, Pass};
use ustack::dev::sim::SimConfig;
use ustack::proto::{ChunkId, Reply};

const PORT: u16 = 7000;
const LEN: usize = 1 << 20;
const ROUNDS: usize = 8;

/// Counts per side, taken around each side's own polls (both run on this thread).
#[derive(Default)]
struct Sides {
    client: Counts,
    server: Counts,
}

fn add(into: &mut Counts, f: impl FnOnce() -> bool) -> bool {
    let before = copies::snapshot();
    let busy = f();
    let d = copies::snapshot().since(&before);
    *into = Counts::sum(into, &d);
    busy
}

/// Runs `ROUNDS` 1 MiB WRITEs (or READs of what was written) one at a time; returns the counts
/// of the measured op only.
fn measure(read: bool) -> Sides {
    let mut net = SimNet::new(SimConfig::default().with_seed(7), 7);
    let store = Arc::new(MemStore::new(1 << 30));
    let cfg = ServerConfig {
        connections_max: 4,
        backlog: 2,
        ..ServerConfig::default()
    };
    let mut server = ChunkServer::bind(&mut net.b, PORT, Arc::clone(&store), cfg).unwrap();
    let mut client = ChunkClient::connect(
        &mut net.a,
        SocketAddrV4::new(IP_B, PORT),
        &ClientConfig::default(),
        net.now,
    )
    .unwrap();
    let pat = Pattern::new(3);
    let mut data = vec![0u8; LEN];
    let mut sides = Sides::default();
    for phase in [false, true] {
        let measured = phase == read;
        if !measured && !read {
            continue;
        }
        for i in 0..ROUNDS {
            pat.fill(i as u64 * LEN as u64, &mut data);
            let op = if phase {
                ChunkOp::Read {
                    id: ChunkId(i as u128),
                    offset: 0,
                    len: LEN as u32,
                }
            } else {
                ChunkOp::Write {
                    id: ChunkId(i as u128),
                    offset: 0,
                    data: &data,
                }
            };
            let mut scratch = Sides::default();
            let s = if measured { &mut sides } else { &mut scratch };
            add(&mut s.client, || {
                client.submit(op, net.now).unwrap();
                true
            });
            let done = loop {
                let now = net.now;
                let mut busy = add(&mut s.client, || {
                    net.a.poll(now) | client.poll(&mut net.a, now)
                });
                busy |= add(&mut s.server, || net.b.poll(now) | server.poll(&mut net.b));
                if let Some(c) = add_completion(&mut s.client, &mut client) {
                    break c;
                }
                if !busy {
                    let next = net
                        .link
                        .next_event(now, [net.a.poll_at(now), net.b.poll_at(now)]);
                    net.now = next.unwrap_or(now + Duration::from_millis(1));
                }
                assert!(net.now.as_micros() < 600_000_000, "no answer");
            };
            match done.result {
                Ok(Reply::Read { .. }) => assert!(done.data() == data.as_slice()),
                Ok(Reply::Write { chunk_size }) => assert_eq!(chunk_size, LEN as u64),
                other => panic!("{other:?}"),
            }
        }
    }
    sides
}

fn add_completion(
    into: &mut Counts,
    client: &mut ChunkClient,
) -> Option<ustack::chunk::Completion> {
    let before = copies::snapshot();
    let c = client.next_completion();
    *into = Counts::sum(into, &copies::snapshot().since(&before));
    c
}

/// Bytes per payload byte for `pass`.
fn per_byte(c: &Counts, pass: Pass) -> f64 {
    c.get(pass) as f64 / (LEN * ROUNDS) as f64
}

fn check(label: &str, c: &Counts, budget: &[(Pass, f64)]) {
    println!("{label}: {c} (payload {} bytes)", LEN * ROUNDS);
    for &(pass, max) in budget {
        let got = per_byte(c, pass);
        assert!(
            got <= max,
            "{label}: {} pass {got:.3} bytes per payload byte, budget {max}",
            pass.name()
        );
    }
}

#[test]
fn read_copies_each_byte_within_budget() {
    if !copies::ENABLED {
        common::skip("built without the copy-count feature (cargo test --features copy-count)");
        return;
    }
    let s = measure(true);
    // Server: the MemStore lends its bytes (no staging copy) with the CRC it kept from the
    // WRITE, and the socket lends them in turn (smoltcp patch 15): segments are built from
    // the store's snapshot, store -> frame, with nothing in the socket's ring.
    check(
        "READ server",
        &s.server,
        &[
            (Pass::Store, 0.0),
            (Pass::Socket, 0.0),
            (Pass::Frame, 1.05),
            (Pass::Read, 0.0),
        ],
    );
    // Client: frame -> the answer's buffer (CRC fused), through the sink the client lends the
    // socket once it has the answer's header (smoltcp patch 14). Only what came in the ring
    // before the sink was lent (the rest of the header's segment, what a poll took in before
    // the client read) goes frame -> ring -> buffer: a few percent.
    check(
        "READ client",
        &s.client,
        &[
            (Pass::Store, 0.0),
            (Pass::Socket, 0.1),
            (Pass::Frame, 1.05),
            (Pass::Read, 0.0),
        ],
    );
    // And the counts are real: each side did copy the payload.
    assert!(per_byte(&s.server, Pass::Frame) >= 0.99);
    assert!(per_byte(&s.client, Pass::Frame) >= 0.99);
}

#[test]
fn write_copies_each_byte_within_budget() {
    if !copies::ENABLED {
        common::skip("built without the copy-count feature (cargo test --features copy-count)");
        return;
    }
    let s = measure(false);
    // Client: caller -> staging (CRC fused), then the socket sends from the staging buffer,
    // which it holds until the bytes are acknowledged (smoltcp patch 15): staging -> frame.
    check(
        "WRITE client",
        &s.client,
        &[
            (Pass::Store, 1.0),
            (Pass::Socket, 0.0),
            (Pass::Frame, 1.05),
            (Pass::Read, 0.0),
        ],
    );
    // Server: frame -> staging (CRC fused) through the sink it lends the socket once it has
    // the WRITE's header (smoltcp patch 14; a few percent still come through the ring, as
    // for the client's READ), staging -> store.
    check(
        "WRITE server",
        &s.server,
        &[
            (Pass::Store, 1.0),
            (Pass::Socket, 0.1),
            (Pass::Frame, 1.05),
            (Pass::Read, 0.0),
        ],
    );
    assert!(per_byte(&s.server, Pass::Store) >= 0.99);
    assert!(per_byte(&s.client, Pass::Frame) >= 0.99);
}

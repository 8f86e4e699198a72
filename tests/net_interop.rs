//! The chunk protocol across the two transports, over a TAP interface whose kernel side sits in
//! a network namespace the test creates: `net::KernelClient` (kernel TCP) against a ustack
//! `ChunkServer`, and a ustack `ChunkClient` against `net::KernelServer`. Needs root (netns,
//! /dev/net/tun); under `scripts/test.sh` as root a skip is a failure.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use ustack::chunk::{
    ChunkClient, ChunkOp, ChunkServer, ClientConfig, ClientError, Completion, MemStore,
    ServerConfig, StagingConfig,
};
use ustack::dev::tap::{TapConfig, TapDevice};
use ustack::host::netns::NetNs;
use ustack::net::{KernelClient, KernelServer};
use ustack::proto::{crc32c, ChunkId, Reply, Status};
use ustack::stack::{Stack, StackConfig};
use ustack::{Instant, PageSize};

// ---------------------------------------------------------------------------------------------

const KERNEL_IP: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 1);
const USTACK_IP: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 2);
const PORT: u16 = 7100;
const WALL_LIMIT: Duration = Duration::from_secs(120);
const SIZES: [usize; 4] = [1, 4 << 10, 1 << 20, 4 << 20];

fn staging() -> StagingConfig {
    StagingConfig {
        small_len: 64 << 10,
        small_count: 80,
        large_count: 4,
        large_per_connection_max: 4,
        page_size: PageSize::Base4K,
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        staging: staging(),
        request_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

fn server_config() -> ServerConfig {
    ServerConfig {
        connections_max: 2,
        backlog: 2,
        staging: staging(),
        ..ServerConfig::default()
    }
}

/// A namespace holding the kernel side of a TAP whose descriptor ustack runs on.
fn topology() -> Option<(NetNs, Stack<TapDevice>)> {
    let (ns, tap) = common::tap_in_netns("usnet", KERNEL_IP, &TapConfig::default())?;
    let mut cfg = StackConfig::new(USTACK_IP, 24);
    cfg.sockets_max = 8;
    cfg.page_size = PageSize::Base4K;
    let stack = Stack::new(tap, cfg).expect("stack on tap");
    Some((ns, stack))
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8 ^ seed as u8)
        .collect()
}

/// What both tests do from the client side, whatever the transport: every size written at an
/// odd offset and read back, STAT's CRC, 64 requests in flight, DELETE then NotFound. `call`
/// runs one request to completion, `batch` runs many at once.
fn exercise(
    call: &mut dyn FnMut(ChunkOp<'_>) -> Completion,
    batch: &mut dyn FnMut(&[ChunkOp<'_>]) -> Vec<Completion>,
) -> Result<(), String> {
    let id = ChunkId(0xfeed);
    let mut model = Vec::new();
    for (i, &len) in SIZES.iter().enumerate() {
        let offset = (i * 12_345) as u64;
        let data = pattern(len, i);
        let c = call(ChunkOp::Write {
            id,
            offset,
            data: &data,
        });
        let end = offset as usize + len;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[offset as usize..end].copy_from_slice(&data);
        if c.result
            != Ok(Reply::Write {
                chunk_size: model.len() as u64,
            })
        {
            return Err(format!("WRITE {len} B at {offset}: {:?}", c.result));
        }
        let c = call(ChunkOp::Read {
            id,
            offset,
            len: len as u32,
        });
        if c.result.is_err() || c.data() != data.as_slice() {
            return Err(format!("READ {len} B at {offset}: {:?}", c.result));
        }
    }
    let c = call(ChunkOp::Stat { id });
    let want = Reply::Stat {
        chunk_size: model.len() as u64,
        chunk_crc: crc32c(&model),
    };
    if c.result != Ok(want) {
        return Err(format!("STAT: {:?}, want {want:?}", c.result));
    }
    let ops: Vec<ChunkOp<'_>> = (0..64u64)
        .map(|i| ChunkOp::Read {
            id,
            offset: i * 1000,
            len: 1000,
        })
        .collect();
    let mut done = batch(&ops);
    if done.len() != 64 {
        return Err(format!("{} of 64 pipelined READs completed", done.len()));
    }
    // Completions come back in any order; they were submitted in id order.
    done.sort_by_key(|c| c.request_id);
    for (i, c) in done.iter().enumerate() {
        let at = i * 1000;
        if c.result.is_err() || c.data() != &model[at..at + 1000] {
            return Err(format!("pipelined READ at {at}: {:?}", c.result));
        }
    }
    if call(ChunkOp::Delete { id }).result != Ok(Reply::Delete) {
        return Err("DELETE failed".into());
    }
    let c = call(ChunkOp::Stat { id });
    if c.result != Err(ClientError::Status(Status::NotFound)) {
        return Err(format!("STAT after DELETE: {:?}", c.result));
    }
    Ok(())
}

#[test]
fn kernel_client_against_a_ustack_chunk_server() {
    let Some((ns, mut stack)) = topology() else {
        return;
    };
    let store = Arc::new(MemStore::new(1 << 30));
    let mut server =
        ChunkServer::bind(&mut stack, PORT, Arc::clone(&store), server_config()).expect("bind");
    let client = ns
        .spawn(|| -> Result<(), String> {
            let addr = SocketAddr::from(SocketAddrV4::new(USTACK_IP, PORT));
            let mut client =
                KernelClient::connect(addr, &client_config()).map_err(|e| e.to_string())?;
            let client = std::cell::RefCell::new(&mut client);
            let mut call = |op: ChunkOp<'_>| client.borrow_mut().call(op).expect("submit");
            let mut batch = |ops: &[ChunkOp<'_>]| {
                let mut c = client.borrow_mut();
                for op in ops {
                    c.submit(*op, Instant::now()).expect("submit");
                }
                let mut done = Vec::new();
                let start = WallInstant::now();
                while done.len() < ops.len() && start.elapsed() < WALL_LIMIT {
                    c.poll(Instant::now(), Duration::from_millis(50));
                    done.extend(std::iter::from_fn(|| c.next_completion()));
                }
                done
            };
            exercise(&mut call, &mut batch)?;
            client.borrow_mut().close();
            Ok(())
        })
        .expect("spawn kernel client");
    let start = WallInstant::now();
    while !client.is_finished() {
        assert!(start.elapsed() < WALL_LIMIT, "not done in {WALL_LIMIT:?}");
        let now = Instant::now();
        let busy = stack.poll(now) | server.poll(&mut stack);
        if !busy {
            stack.wait(now, Duration::from_millis(1));
        }
    }
    client
        .join()
        .expect("client thread")
        .expect("kernel client");
    let stats = server.stats();
    assert_eq!(stats.connections_accepted, 1, "{stats:?}");
    assert_eq!(stats.writes, SIZES.len() as u64, "{stats:?}");
    assert_eq!(stats.connections_closed_for_errors, 0, "{stats:?}");
    println!("ustack server: {stats:?}\nstack {:?}", stack.stats());
}

#[test]
fn ustack_client_against_a_kernel_server() {
    let Some((ns, mut stack)) = topology() else {
        return;
    };
    let store = Arc::new(MemStore::new(1 << 30));
    let bind_store = Arc::clone(&store);
    let server = ns
        .run(move || {
            KernelServer::bind(
                SocketAddrV4::new(KERNEL_IP, PORT).into(),
                bind_store,
                server_config(),
            )
        })
        .expect("enter netns")
        .expect("kernel server bind");
    // The listener belongs to the namespace for its whole life, whichever thread polls it.
    let server = server.start().expect("server thread");
    let mut client = ChunkClient::connect(
        &mut stack,
        SocketAddrV4::new(KERNEL_IP, PORT),
        &client_config(),
        Instant::now(),
    )
    .expect("connect");
    let client = std::cell::RefCell::new((&mut stack, &mut client));
    let drive = |want: &[u64]| -> Vec<Completion> {
        let mut guard = client.borrow_mut();
        let (stack, client) = &mut *guard;
        let mut done = Vec::new();
        let start = WallInstant::now();
        while done.len() < want.len() {
            assert!(start.elapsed() < WALL_LIMIT, "not done in {WALL_LIMIT:?}");
            let now = Instant::now();
            let busy = stack.poll(now) | client.poll(stack, now);
            done.extend(std::iter::from_fn(|| client.next_completion()));
            if !busy {
                stack.wait(now, Duration::from_millis(1));
            }
        }
        done
    };
    let submit = |op: ChunkOp<'_>| -> u64 {
        let mut guard = client.borrow_mut();
        guard.1.submit(op, Instant::now()).expect("submit")
    };
    let mut call = |op: ChunkOp<'_>| {
        let id = submit(op);
        drive(&[id]).pop().unwrap()
    };
    let mut batch = |ops: &[ChunkOp<'_>]| {
        let ids: Vec<u64> = ops.iter().map(|op| submit(*op)).collect();
        drive(&ids)
    };
    exercise(&mut call, &mut batch).expect("ustack client");
    {
        let mut guard = client.borrow_mut();
        let (stack, client) = &mut *guard;
        client.close(stack);
        let start = WallInstant::now();
        while start.elapsed() < Duration::from_millis(200) {
            let now = Instant::now();
            if !stack.poll(now) {
                stack.wait(now, Duration::from_millis(1));
            }
        }
    }
    let stats = server.stop();
    assert_eq!(stats.connections_accepted, 1, "{stats:?}");
    assert_eq!(stats.writes, SIZES.len() as u64, "{stats:?}");
    assert_eq!(stats.connections_closed_for_errors, 0, "{stats:?}");
    println!("kernel server: {stats:?}\nstack {:?}", stack.stats());
    drop(ns);
}

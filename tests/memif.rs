//! The memif backend between processes, with no privileges:
//!
//! - ustack memif client <-> ustack memif server in two processes (the server child runs as uid
//!   65534 when the test runs as root), a chunk server and a chunk client on top: 500 random
//!   chunks (log-uniform 1 B .. 4 MiB) written and read back, every byte checked;
//! - either process killed with SIGKILL mid-transfer: the survivor notices, frees the rings,
//!   reconnects to a restarted peer; failed requests report errors;
//! - either side may start first; a second client is turned away; secrets and interface ids
//!   must match.
//!
//! Child processes are this test binary running the ignored `memif_child` in a role
//! (`tests/common/child.rs`; the roles are `memif_support::run_child`'s).
//!
//! The other memif tests: `memif_hostile` (peers that lie in their descriptors and ring
//! indexes), `memif_frames` (queue pairs, chained 64 KiB frames, checksums, frames built in
//! place), `memif_interop` (DPDK's net_memif as the peer). Frame rates and READ latency between
//! two processes next to kernel TCP: `cargo bench --bench memif_processes`.

mod common;
mod memif_support;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant as WallInstant};

use common::child::{self, ChildCommand};
use common::Watched;
use memif_support::{
    euid, exchange, frame_with, memif_cfg, pump_until_up, spawn_role, ClientRig, ServerRig,
    TestDir, NOBODY,
};
use ustack::chunk::{ChunkOp, ClientError};
use ustack::dev::memif::{MemifDevice, MemifRole, MemifState};
use ustack::proto::ChunkId;
use ustack::{Batch, Instant, PacketDevice};

/// Child entry point: the roles of `memif_support::run_child`.
#[test]
#[ignore = "child process of the memif tests, run by them"]
fn memif_child() {
    if let Some(role) = child::role() {
        memif_support::run_child(&role);
    }
}

/// Starts this binary as a child in `role` on `socket`, as uid 65534 if `as_nobody`.
fn spawn_child(role: &str, socket: &Path, as_nobody: bool) -> Watched {
    let mut cmd = ChildCommand::new("memif_child", role);
    if as_nobody {
        cmd = cmd.run_as(NOBODY);
    }
    spawn_role(cmd, socket)
}

// ---------------------------------------------------------------------------------------------
// 1. Two processes, 500 chunks

#[test]
fn chunks_round_trip_between_two_processes_without_privileges() {
    let dir = TestDir::new("chunks");
    let socket = dir.socket();
    let as_nobody = euid() == 0;
    let mut server = spawn_child("chunk-server", &socket, as_nobody);
    let ready = server
        .wait_for_line(child::READY, Duration::from_secs(30))
        .unwrap();
    if as_nobody {
        assert!(ready.ends_with(&format!("uid={NOBODY}")), "{ready}");
    } else {
        println!("not root: both processes run as uid {}", euid());
    }
    // The socket file belongs to the unprivileged server.
    let owner = std::fs::metadata(&socket).expect("socket file").uid();
    assert_eq!(owner, if as_nobody { NOBODY } else { euid() });

    let mut rig = ClientRig::new(&socket, Duration::from_secs(60));
    println!(
        "client's shared frame pool: {} buffers on {} pages",
        rig.dev().pool().capacity(),
        rig.dev().pool().page_size()
    );
    rig.wait_link(None, Duration::from_secs(20)).unwrap();
    rig.connect(None).unwrap();
    let start = WallInstant::now();
    let bytes = rig
        .round_trip(None, 500, 4 << 20, 0x5eed_0001, 8, |_| {})
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let stats = rig.dev().memif_stats();
    println!(
        "500 chunks written then read back ({bytes} payload bytes moved) in {secs:.2} s: \
         {:.2} Gbit/s of payload; client device {stats:?}",
        bytes as f64 * 8.0 / secs / 1e9
    );
    assert_eq!(stats.rejected_desc, 0);
    assert_eq!(stats.disconnects, 0);
    assert!(rig.dev().lent_buffers() > 0, "receive buffers are posted");

    let status = server
        .finish(Duration::from_secs(20), || {
            rig.step(None);
        })
        .expect("the child did not exit");
    assert!(status.success(), "server child failed: {status}");
}

// ---------------------------------------------------------------------------------------------
// 2. Kill either process mid-transfer

#[test]
fn killing_the_server_mid_transfer_fails_requests_and_the_client_reconnects() {
    let dir = TestDir::new("killsrv");
    let socket = dir.socket();
    let mut server = spawn_child("chunk-server", &socket, false);
    server
        .wait_for_line(child::READY, Duration::from_secs(30))
        .unwrap();
    let mut rig = ClientRig::new(&socket, Duration::from_secs(3));
    rig.wait_link(None, Duration::from_secs(20)).unwrap();
    rig.connect(None).unwrap();

    // Keep 8 writes of 1 MiB in flight; kill the server after a few complete.
    let data = vec![0xA5u8; 1 << 20];
    let (mut submitted, mut ok, mut failed) = (0u64, 0u64, 0u64);
    let mut errors: HashMap<String, u64> = HashMap::new();
    let mut killed = false;
    let start = WallInstant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(60), "stuck");
        let client = rig.client.as_mut().unwrap();
        while !killed && client.in_flight() < 8 {
            let op = ChunkOp::Write {
                id: ChunkId(submitted as u128),
                offset: 0,
                data: &data,
            };
            match client.submit(op, Instant::now()) {
                Ok(_) => submitted += 1,
                Err(_) => break,
            }
        }
        rig.step(None);
        let client = rig.client.as_mut().unwrap();
        while let Some(c) = client.next_completion() {
            match c.result {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(
                        matches!(e, ClientError::Timeout | ClientError::ConnectionLost),
                        "unexpected error {e:?}"
                    );
                    *errors.entry(format!("{e:?}")).or_default() += 1;
                    failed += 1;
                }
            }
        }
        if !killed && ok >= 5 {
            println!("killing server pid {} after {ok} writes", server.pid());
            server.kill();
            killed = true;
        }
        if killed && ok + failed == submitted && !rig.dev().link_up() {
            break;
        }
    }
    println!("submitted {submitted}, ok {ok}, failed {failed} {errors:?}");
    assert!(failed > 0, "requests in flight at the kill must fail");
    assert_eq!(
        ok + failed,
        submitted,
        "every request completed, nothing lost"
    );
    let stats = rig.dev().memif_stats();
    assert_eq!(stats.disconnects, 1, "{stats:?}");
    assert_eq!(rig.dev().state(), MemifState::Idle);
    assert_eq!(rig.dev().mapped_regions(), 0, "rings unmapped");
    assert_eq!(rig.dev().lent_buffers(), 0, "every buffer back in the pool");

    // Frames sent while the link is down are dropped and counted (TCP retransmissions here).
    let dropped = stats.link.tx_dropped;
    let c = rig.client.as_mut().unwrap();
    let _ = c.submit(ChunkOp::Ping, Instant::now());
    let start = WallInstant::now();
    while rig.dev().memif_stats().link.tx_dropped == dropped {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nothing sent while down"
        );
        rig.step(None);
    }

    // A restarted server: the client's device reconnects, and a new connection works.
    let mut server = spawn_child("chunk-server", &socket, false);
    server
        .wait_for_line_pumping(child::READY, Duration::from_secs(30), || {
            rig.step(None);
        })
        .unwrap();
    rig.wait_link(None, Duration::from_secs(20)).unwrap();
    assert_eq!(rig.dev().memif_stats().reconnects, 1);
    rig.connect(None).unwrap();
    rig.round_trip(None, 20, 1 << 20, 77, 8, |_| {}).unwrap();
    let status = server
        .finish(Duration::from_secs(20), || {
            rig.step(None);
        })
        .expect("the child did not exit");
    assert!(status.success());
}

#[test]
fn killing_the_client_mid_transfer_frees_the_rings_and_a_new_client_is_served() {
    let dir = TestDir::new("killcli");
    let socket = dir.socket();
    let mut rig = ServerRig::new(&socket);
    let mut client = spawn_child("chunk-client-forever", &socket, false);
    client
        .wait_for_line_pumping("child: progress 10", Duration::from_secs(60), || {
            rig.step();
        })
        .unwrap();
    assert_eq!(rig.dev().state(), MemifState::Up);
    assert_eq!(rig.dev().mapped_regions(), 2);
    println!("killing client pid {} mid-transfer", client.pid());
    client.kill();
    let start = WallInstant::now();
    while rig.dev().state() != MemifState::Idle {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "hang-up not noticed"
        );
        rig.step();
    }
    let stats = rig.dev().memif_stats();
    assert_eq!(stats.disconnects, 1, "{stats:?}");
    assert_eq!(
        rig.dev().mapped_regions(),
        0,
        "the dead client's regions are unmapped"
    );
    assert!(!rig.dev().link_up());

    // A new client process is served in full.
    let mut client = spawn_child("chunk-client", &socket, false);
    client
        .wait_for_line_pumping("child: done", Duration::from_secs(120), || {
            rig.step();
        })
        .unwrap();
    let status = client
        .finish(Duration::from_secs(20), || {
            rig.step();
        })
        .expect("the child did not exit");
    assert!(status.success(), "client child failed: {status}");
    let stats = rig.dev().memif_stats();
    assert_eq!((stats.connects, stats.reconnects), (2, 1), "{stats:?}");
    assert_eq!(stats.rejected_desc, 0);
}

// ---------------------------------------------------------------------------------------------
// 3. Either side first

/// A second client while one is connected is turned away, and says why in words (it used to
/// wait silently).
#[test]
fn a_second_client_learns_the_server_is_taken() {
    let dir = TestDir::new("second");
    let socket = dir.socket();
    let mut server = MemifDevice::open(&memif_cfg(&socket, MemifRole::Server)).unwrap();
    let mut first = MemifDevice::open(&memif_cfg(&socket, MemifRole::Client)).unwrap();
    pump_until_up(&mut first, &mut server);
    let mut second = MemifDevice::open(&memif_cfg(&socket, MemifRole::Client)).unwrap();
    let mut batch = Batch::with_capacity(64);
    let start = WallInstant::now();
    let why = loop {
        assert!(start.elapsed() < Duration::from_secs(10), "no reason given");
        for d in [&mut server, &mut first, &mut second] {
            d.rx_burst(Instant::now(), &mut batch);
            batch.clear();
        }
        if let Some(w) = second.link_problem() {
            break w;
        }
    };
    assert!(why.contains("serving another client"), "{why}");
    assert!(!second.link_up() && first.link_up());
    assert!(server.memif_stats().connections_refused >= 1);
}

#[test]
fn either_side_can_start_first() {
    let dir = TestDir::new("order");
    let socket = dir.socket();

    // Client first: it retries with backoff, drops (and counts) what it is given to send.
    let mut client = MemifDevice::open(&memif_cfg(&socket, MemifRole::Client)).unwrap();
    let mut batch = Batch::with_capacity(64);
    let start = WallInstant::now();
    while start.elapsed() < Duration::from_millis(300) {
        client.rx_burst(Instant::now(), &mut batch);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!client.link_up());
    // Why, in words, without debug logging.
    let why = client.link_problem().expect("a reason");
    assert!(why.contains("no such socket"), "{why}");
    let attempts = client.memif_stats().connect_attempts;
    assert!(
        (3..=40).contains(&attempts),
        "backoff: {attempts} attempts in 300 ms"
    );
    let mut out = Batch::with_capacity(4);
    out.push(frame_with(&mut client, 1, 100)).ok().unwrap();
    assert_eq!(client.tx_burst(Instant::now(), &mut out), 1);
    assert_eq!(client.memif_stats().link.tx_dropped, 1);
    // The device's wait also sleeps when there is nothing to connect to.
    client.wait(Duration::from_millis(20));

    let mut server = MemifDevice::open(&memif_cfg(&socket, MemifRole::Server)).unwrap();
    pump_until_up(&mut client, &mut server);
    exchange(&mut client, &mut server, 100);
    assert_eq!(client.peer_names().unwrap().0, "ustack");
    drop(client);
    drop(server);
    assert!(!socket.exists(), "the server removed its socket file");

    // Server first.
    let mut server = MemifDevice::open(&memif_cfg(&socket, MemifRole::Server)).unwrap();
    let mut batch = Batch::with_capacity(64);
    for _ in 0..50 {
        server.rx_burst(Instant::now(), &mut batch);
    }
    assert!(!server.link_up());
    let mut client = MemifDevice::open(&memif_cfg(&socket, MemifRole::Client)).unwrap();
    pump_until_up(&mut server, &mut client);
    exchange(&mut server, &mut client, 100);

    // A stale socket file from a dead server is replaced; a live server's is not.
    let e = MemifDevice::open(&memif_cfg(&socket, MemifRole::Server)).unwrap_err();
    assert!(
        e.to_string().contains("another process is listening"),
        "{e}"
    );
    drop(server);
    drop(client);
    let stale = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(stale);
    assert!(socket.exists());
    let server = MemifDevice::open(&memif_cfg(&socket, MemifRole::Server)).unwrap();
    drop(server);
    // A file that is not a socket is never removed.
    std::fs::write(&socket, b"precious").unwrap();
    let e = MemifDevice::open(&memif_cfg(&socket, MemifRole::Server)).unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&socket).unwrap(), b"precious");
}

#[test]
fn secrets_and_interface_ids_must_match() {
    let dir = TestDir::new("secret");
    let socket = dir.socket();
    let mut scfg = memif_cfg(&socket, MemifRole::Server);
    scfg.secret = Some("open sesame".into());
    scfg.interface_id = 5;
    let mut server = MemifDevice::open(&scfg).unwrap();
    let mut batch = Batch::with_capacity(64);
    for (id, secret, ok) in [
        (5, None, false),
        (5, Some("wrong"), false),
        (6, Some("open sesame"), false),
        (5, Some("open sesame"), true),
    ] {
        let mut ccfg = memif_cfg(&socket, MemifRole::Client);
        ccfg.interface_id = id;
        ccfg.secret = secret.map(String::from);
        let mut client = MemifDevice::open(&ccfg).unwrap();
        let start = WallInstant::now();
        while start.elapsed() < Duration::from_millis(300) && !client.link_up() {
            client.rx_burst(Instant::now(), &mut batch);
            server.rx_burst(Instant::now(), &mut batch);
        }
        assert_eq!(client.link_up(), ok, "id {id} secret {secret:?}");
        if !ok {
            assert!(client.memif_stats().handshake_failures > 0);
            println!("refused: {:?}", client.last_error());
        }
    }
}

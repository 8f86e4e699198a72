//! memif between two ustack devices in one process, beyond the basics (`memif`): several queue
//! pairs, frames of up to 64 KiB as descriptor chains, checksums left out only for a peer that
//! does not verify them, and a server that builds frames in the buffers its client posted (the
//! copy budget of such a link).

mod common;
mod memif_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use memif_support::{memif_cfg, pump_until_up, ClientRig, ServerRig, TestDir};
use ustack::dev::memif::{MemifDevice, MemifRole};
use ustack::{Batch, Frame, Instant, PacketDevice, PoolBuf};

#[test]
fn several_queue_pairs_carry_flows_in_order() {
    let dir = TestDir::new("queues");
    let socket = dir.socket();
    let mut scfg = memif_cfg(&socket, MemifRole::Server);
    scfg.queues = 2;
    let mut ccfg = memif_cfg(&socket, MemifRole::Client);
    ccfg.queues = 4;
    let mut server = MemifDevice::open(&scfg).unwrap();
    let mut client = MemifDevice::open(&ccfg).unwrap();
    pump_until_up(&mut client, &mut server);
    assert_eq!(client.queues(), Some((2, 2)), "the server's limit wins");
    assert_eq!(server.queues(), Some((2, 2)));
    // IPv4/TCP-shaped frames of 8 flows (source ports), 50 frames each, sequence-numbered.
    let flows = 8u16;
    let per_flow = 50u32;
    for (tx_is_client, tag) in [(true, 0u8), (false, 1u8)] {
        let (tx, rx) = if tx_is_client {
            (&mut client, &mut server)
        } else {
            (&mut server, &mut client)
        };
        let mut out: Batch<PoolBuf> = Batch::with_capacity(1024);
        for seq in 0..per_flow {
            for flow in 0..flows {
                let mut f = tx.tx_alloc().unwrap();
                assert!(f.set_len(80));
                let d = f.data_mut();
                d.fill(tag);
                d[12..14].copy_from_slice(&[0x08, 0x00]);
                d[14] = 0x45;
                d[23] = 6;
                d[26..30].copy_from_slice(&[10, 0, 0, 1]);
                d[30..34].copy_from_slice(&[10, 0, 0, 2]);
                d[34..36].copy_from_slice(&(1000 + flow).to_be_bytes());
                d[36..38].copy_from_slice(&80u16.to_be_bytes());
                d[40..44].copy_from_slice(&seq.to_be_bytes());
                out.push(f).ok().unwrap();
            }
        }
        let total = (flows as u32 * per_flow) as usize;
        let mut next_seq = vec![0u32; flows as usize];
        let mut got = 0;
        let mut rxb: Batch<PoolBuf> = Batch::with_capacity(256);
        let start = WallInstant::now();
        while got < total {
            assert!(start.elapsed() < Duration::from_secs(5), "{got} of {total}");
            tx.tx_burst(Instant::now(), &mut out);
            rx.rx_burst(Instant::now(), &mut rxb);
            while let Some(f) = rxb.pop() {
                let d = f.as_slice();
                assert_eq!(d[0], tag);
                let flow = (u16::from_be_bytes([d[34], d[35]]) - 1000) as usize;
                let seq = u32::from_be_bytes([d[40], d[41], d[42], d[43]]);
                assert_eq!(seq, next_seq[flow], "flow {flow} out of order");
                next_seq[flow] += 1;
                got += 1;
            }
        }
    }
}

/// A server and a client with a 65000-byte MTU, the client's buffers smaller than a frame:
/// frames of up to 65014 bytes cross as chains of 2048- or 9216-byte descriptors both ways,
/// and tens of MiB of chunks come back intact.
#[test]
fn chained_64k_frames_carry_chunks_between_ustack_peers() {
    for piece in [2048, 9216] {
        let dir = TestDir::new("chains");
        let socket = dir.socket();
        let mut scfg = memif_cfg(&socket, MemifRole::Server);
        scfg.mtu = 65000;
        let mut srv = ServerRig::with(scfg);
        let mut ccfg = memif_cfg(&socket, MemifRole::Client);
        ccfg.mtu = 65000;
        ccfg.buffer_size = piece;
        ccfg.pool_frames = Some(1024);
        let mut cli = ClientRig::with(ccfg, Duration::from_secs(60));
        cli.wait_link(Some(&mut srv), Duration::from_secs(20))
            .unwrap();
        cli.connect(Some(&mut srv)).unwrap();
        let bytes = cli
            .round_trip(Some(&mut srv), 96, 4 << 20, 7 + piece as u64, 8, |_| {})
            .unwrap();
        let (s, c) = (srv.dev().memif_stats(), cli.dev().memif_stats());
        println!("buffers of {piece}: {bytes} bytes verified\n  server {s:?}\n  client {c:?}");
        assert!(bytes >= 20 << 20, "tens of MiB: {bytes}");
        for st in [s, c] {
            assert_eq!(st.rejected_desc, 0);
            assert_eq!(st.link.rx_errors, 0);
            assert_eq!(st.link.tx_errors, 0);
        }
        // Full-sized segments went as chains each way (a 65014-byte frame takes 32 or 8).
        assert!(
            c.tx_chains > 100 && s.rx_chains == c.tx_chains,
            "C2S chains"
        );
        assert!(
            s.tx_chains > 100 && c.rx_chains == s.tx_chains,
            "S2C chains"
        );
        // The client's posted buffers are one 64 KiB pool buffer apart: never a run of
        // adjacent ones, so the server copied every frame.
        assert_eq!(s.tx_in_place, 0);
        assert_eq!(s.tx_copied_bytes, s.link.tx_bytes);
    }
}

/// Checksums are left out only for a peer that announced it does not verify them. Two ustack
/// peers with defaults leave them out both ways. A client that verifies what it receives
/// (`trust_rx_checksums` off) does not announce it, so the server sends it complete
/// checksums: had it left them out, the client's stack would drop every frame as a bad
/// checksum and the round trip would fail. (The DPDK interop tests cover a foreign peer.)
#[test]
fn checksums_are_left_out_only_for_a_peer_that_does_not_verify_them() {
    for client_verifies in [false, true] {
        let dir = TestDir::new("csum");
        let socket = dir.socket();
        let mut srv = ServerRig::new(&socket);
        let mut ccfg = memif_cfg(&socket, MemifRole::Client);
        ccfg.trust_rx_checksums = !client_verifies;
        let mut cli = ClientRig::with(ccfg, Duration::from_secs(30));
        cli.wait_link(Some(&mut srv), Duration::from_secs(20))
            .unwrap();
        assert_eq!(
            srv.dev().tx_checksums_elided(),
            !client_verifies,
            "server to client"
        );
        // The server does not verify, and said so: the client leaves them out either way.
        assert!(cli.dev().tx_checksums_elided(), "client to server");
        cli.connect(Some(&mut srv)).unwrap();
        let bytes = cli
            .round_trip(Some(&mut srv), 64, 256 << 10, 11, 4, |_| {})
            .unwrap();
        let cs = cli.stack.stats();
        println!("client verifies: {client_verifies}: {bytes} bytes verified; client {cs:?}");
        assert_eq!(cs.rx_bad_checksum, 0);
        assert!(cs.rx_frames > 100, "{cs:?}");
    }
}

/// The copy budget of a memif link between ustack peers, with a 65000-byte MTU (`--mtu 65000` in the examples) in
/// whole 64 KiB buffers: on the server, `Pass::Device` counts exactly the bytes it received
/// (copied out of the client's buffers) and the bytes of the rare frame that could not be
/// built in place; every frame built in place costs no device pass. The client counts none.
#[test]
fn a_server_builds_frames_in_place_and_copies_nothing_to_send() {
    let dir = TestDir::new("copies");
    let socket = dir.socket();
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (socket, stop) = (socket.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut cfg = memif_cfg(&socket, MemifRole::Server);
            cfg.mtu = 65000;
            let mut srv = ServerRig::with(cfg);
            let before = ustack::copies::snapshot();
            while !stop.load(Ordering::Acquire) {
                srv.step();
            }
            (
                ustack::copies::snapshot().since(&before),
                srv.dev().memif_stats(),
            )
        })
    };
    let mut ccfg = memif_cfg(&socket, MemifRole::Client);
    ccfg.mtu = 65000;
    ccfg.buffer_size = 65024;
    ccfg.pool_frames = Some(1024);
    let mut cli = ClientRig::with(ccfg, Duration::from_secs(60));
    cli.wait_link(None, Duration::from_secs(20)).unwrap();
    cli.connect(None).unwrap();
    let before = ustack::copies::snapshot();
    let bytes = cli.round_trip(None, 96, 4 << 20, 11, 8, |_| {}).unwrap();
    let client = ustack::copies::snapshot().since(&before);
    let c = cli.dev().memif_stats();
    drop(cli);
    stop.store(true, Ordering::Release);
    let (server, s) = server.join().unwrap();
    println!("{bytes} bytes verified\n  server copies {server}\n  {s:?}\n  client copies {client}\n  {c:?}");
    assert!(bytes >= 20 << 20);
    assert!(
        s.link.tx_bytes >= bytes / 2,
        "the read phase's data went S2C"
    );
    assert!(
        s.tx_in_place > 0 && s.tx_in_place * 100 >= s.link.tx_packets * 99,
        "{s:?}"
    );
    assert_eq!(
        s.tx_chains + c.tx_chains,
        0,
        "whole frames in whole buffers"
    );
    if ustack::copies::ENABLED {
        use ustack::copies::Pass;
        assert_eq!(
            server.get(Pass::Device),
            s.link.rx_bytes + s.tx_copied_bytes,
            "server: receiving copies, sending in place does not"
        );
        assert_eq!(
            client.get(Pass::Device),
            0,
            "client: its own buffers both ways"
        );
        assert!(server.get(Pass::Frame) >= bytes / 2);
    }
}

//! memif peers that lie, against ustack's memif devices: a client and a server written here
//! against the wire format (`memif_support::raw`) that write corrupt descriptors and ring
//! indexes, hold the handshake up, or barge in while another client is served. Each lie is
//! rejected and counted, never followed, and a well-behaved peer is served afterwards.

mod common;
mod memif_support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant as WallInstant};

use memif_support::raw::{
    arp_request, desc, is_arp_reply, recv_msg, send_msg, until_s2c_tail, RawClient,
};
use memif_support::{memif_cfg, ClientRig, ServerRig, TestDir, SERVER_IP};
use ustack::dev::memif::proto::{self, Hello, Msg, Name};
use ustack::dev::memif::ring::{Desc, RingView, DESC_FLAG_NEXT};
use ustack::dev::memif::{MemifDevice, MemifRole, MemifState};
use ustack::host::unix_ipc::{SeqPacket, SeqPacketListener, UnixAddr};
use ustack::mem::shm::SharedRegion;
use ustack::{Batch, Instant, PacketDevice, PoolBuf};

// ---------------------------------------------------------------------------------------------
// A hostile client

/// A raw client connected with the whole handshake, polling `srv`; its data region is 64 KiB.
fn connect_hostile(socket: &Path, srv: &mut ServerRig) -> RawClient {
    let h = RawClient::connect_with(socket, "hostile", 64 << 10, || {
        srv.step();
    });
    assert_eq!(h.hello.max_log2_ring_size, proto::LOG2_RING_SIZE_MAX);
    h
}

/// Corrupt descriptors both ways, among good ones: the bad ones are rejected and counted, every
/// slot is handed back, and the good ARP request is answered in the next good buffer. Returns
/// how many C2S slots were used.
fn corrupt_descriptors_are_rejected(srv: &mut ServerRig, h: &RawClient) -> u16 {
    let (c2s, s2c) = (h.c2s(), h.s2c());
    // S2C: one posted buffer outside the data region, then good ones.
    s2c.set_desc(0, &desc(1, (64 << 10) - 100, 2048, 0));
    for s in 1..8u16 {
        s2c.set_desc(s, &desc(1, 32768 + u32::from(s) * 2048, 2048, 0));
    }
    s2c.set_head(8, Ordering::Release);

    // C2S: offset past the region, a length larger than any frame, a region that does not
    // exist, a chain whose second part is outside the region; then a good ARP request.
    let arp = arp_request(SERVER_IP);
    assert!(h.data.write(4096, &arp));
    let bad = [
        desc(1, (64 << 10) - 10, 200, 0),
        desc(1, 0, 100_000, 0),
        desc(9, 0, 60, 0),
        desc(1, 0, 20, DESC_FLAG_NEXT),
        desc(1, 1 << 20, 40, 0),
        desc(1, 4096, arp.len() as u32, 0),
    ];
    for (s, d) in bad.iter().enumerate() {
        c2s.set_desc(s as u16, d);
    }
    c2s.set_head(bad.len() as u16, Ordering::Release);
    let start = WallInstant::now();
    while s2c.tail(Ordering::Acquire) == 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "no ARP reply");
        srv.step();
    }
    let stats = srv.dev().memif_stats();
    println!("server after corrupt descriptors: {stats:?}");
    assert_eq!(
        stats.rejected_desc,
        4 + 1,
        "four bad C2S frames, one bad S2C buffer"
    );
    assert_eq!(stats.link.rx_packets, 1, "the good ARP request");
    assert_eq!(
        c2s.tail(Ordering::Acquire),
        bad.len() as u16,
        "every slot handed back"
    );
    // The bad S2C buffer came back empty; the ARP reply is in the next one.
    assert_eq!(s2c.desc(0).length, 0);
    let reply = s2c.desc(1);
    assert_eq!(reply.region, 1);
    let mut got = vec![0u8; reply.length as usize];
    assert!(h.data.read(reply.offset as usize, &mut got));
    assert_eq!(&got[12..14], &[0x08, 0x06], "an ARP frame");
    assert_eq!(&got[20..22], &[0, 2], "an ARP reply");
    assert_eq!(
        &got[28..32],
        &SERVER_IP.octets(),
        "from the server's address"
    );
    bad.len() as u16
}

/// A C2S head beyond the ring (`used` slots are in it): the server drops the connection, says
/// why, and unmaps the client's regions.
fn a_head_beyond_the_ring_disconnects(srv: &mut ServerRig, h: RawClient, used: u16) {
    h.c2s().set_head(used + 100, Ordering::Release);
    let (m, _) = recv_msg(&h.sock, || {
        srv.step();
    })
    .expect("a DISCONNECT");
    let Msg::Disconnect(d) = m else {
        panic!("expected DISCONNECT, got {m:?}")
    };
    println!("server said: {:?}", d.reason_lossy());
    assert!(
        recv_msg(&h.sock, || {
            srv.step();
        })
        .is_none(),
        "socket closed"
    );
    let stats = srv.dev().memif_stats();
    assert_eq!(stats.bad_ring_index, 1);
    assert_eq!(stats.disconnects, 1);
    assert_eq!(srv.dev().mapped_regions(), 0);
}

/// A client that never finishes its handshake holds the server up only until the handshake
/// timeout; one that connects while another is served is turned away. Then a good client is
/// served in full.
fn silent_and_intruding_clients_then_a_good_one(srv: &mut ServerRig, socket: &Path) {
    let silent = SeqPacket::connect(&UnixAddr::Path(socket.to_path_buf())).expect("connect");
    for _ in 0..100 {
        srv.step();
    }
    assert_eq!(srv.dev().state(), MemifState::Handshake);
    let mut good = ClientRig::new(socket, Duration::from_secs(30));
    good.wait_link(Some(&mut *srv), Duration::from_secs(20))
        .unwrap();
    assert!(srv.dev().memif_stats().handshake_failures >= 1);
    drop(silent);
    let intruder = SeqPacket::connect(&UnixAddr::Path(socket.to_path_buf())).expect("connect");
    let (m, _) = recv_msg(&intruder, || {
        good.step(Some(&mut *srv));
    })
    .expect("a message");
    assert!(
        matches!(m, Msg::Disconnect(ref d) if d.reason_lossy() == "Already connected"),
        "{m:?}"
    );
    good.connect(Some(&mut *srv)).unwrap();
    let bytes = good
        .round_trip(Some(&mut *srv), 30, 1 << 20, 99, 8, |_| {})
        .unwrap();
    let stats = srv.dev().memif_stats();
    println!("good client moved {bytes} bytes; server {stats:?}");
    assert_eq!(stats.rejected_desc, 5, "nothing new rejected");
    assert_eq!(stats.reconnects, 1);
    // The intruder, and the good client's attempts while the silent one held the server.
    assert!(stats.connections_refused >= 1);
}

#[test]
fn a_hostile_client_is_rejected_and_counted_and_a_good_one_is_served() {
    let dir = TestDir::new("hostile");
    let socket = dir.socket();
    let mut srv = ServerRig::new(&socket);
    // A raw client: the handshake by hand.
    let hostile = connect_hostile(&socket, &mut srv);
    assert_eq!(srv.dev().state(), MemifState::Up);
    let used = corrupt_descriptors_are_rejected(&mut srv, &hostile);
    a_head_beyond_the_ring_disconnects(&mut srv, hostile, used);
    silent_and_intruding_clients_then_a_good_one(&mut srv, &socket);
}

// ---------------------------------------------------------------------------------------------
// A hostile server

#[test]
fn a_hostile_server_cannot_make_the_client_misbehave() {
    let dir = TestDir::new("hostsrv");
    let socket = dir.socket();
    let listener = SeqPacketListener::bind(&UnixAddr::Path(socket.clone()), 4).unwrap();
    let mut dev = MemifDevice::open(&memif_cfg(&socket, MemifRole::Client)).unwrap();
    fn pump(dev: &mut MemifDevice) {
        let mut batch: Batch<PoolBuf> = Batch::with_capacity(64);
        dev.rx_burst(Instant::now(), &mut batch);
        assert!(batch.is_empty(), "no frames expected here");
    }
    let sock = loop {
        pump(&mut dev);
        if let Some(s) = listener.accept().unwrap() {
            break s;
        }
    };
    send_msg(
        &sock,
        Msg::Hello(Hello {
            name: Name::new("hostile-server"),
            min_version: proto::VERSION,
            max_version: proto::VERSION,
            max_region: 255,
            max_s2c_ring: 0,
            max_c2s_ring: 0,
            max_log2_ring_size: 4,
        }),
        None,
    );
    let mut regions = Vec::new();
    let mut ring_offsets = Vec::new();
    loop {
        let (m, fd) = recv_msg(&sock, || pump(&mut dev)).expect("a message");
        match m {
            Msg::Init(i) => assert_eq!(i.id, 0),
            Msg::AddRegion(r) => {
                regions.push(SharedRegion::map_fd(fd.expect("region fd"), r.size as usize).unwrap())
            }
            Msg::AddRing(r) => {
                assert!(fd.is_some(), "every ring comes with an eventfd");
                assert_eq!(r.log2_ring_size, 4, "the client took our smaller limit");
                ring_offsets.push((r.is_c2s(), r.offset as usize));
            }
            Msg::Connect(_) => break,
            other => panic!("unexpected {other:?}"),
        }
        send_msg(&sock, Msg::Ack, None);
    }
    send_msg(&sock, Msg::Connected(Name::new("evil")), None);
    while !dev.link_up() {
        pump(&mut dev);
    }
    assert_eq!(regions.len(), 2);
    assert_eq!(dev.queues(), Some((1, 1)));
    let (_, s2c_off) = *ring_offsets.iter().find(|(c2s, _)| !c2s).unwrap();
    let s2c = RingView::new(&regions[0], s2c_off, 4).unwrap();
    assert_eq!(
        s2c.head(Ordering::Acquire),
        16,
        "the client posted every slot"
    );
    assert_eq!(dev.lent_buffers(), 16);

    // Frames in the posted buffers, with lies: another buffer's offset, a length larger than
    // the buffer, the ring region instead of the buffer region; then a good frame.
    let posted: Vec<Desc> = (0..4).map(|s| s2c.desc(s)).collect();
    let frame: Vec<u8> = (0..60u8).collect();
    for d in &posted {
        assert!(regions[1].write(d.offset as usize, &frame));
    }
    s2c.set_desc(
        0,
        &Desc {
            offset: posted[0].offset + 2048,
            length: 60,
            ..posted[0]
        },
    );
    s2c.set_desc(
        1,
        &Desc {
            length: 5000,
            ..posted[1]
        },
    );
    s2c.set_desc(
        2,
        &Desc {
            region: 0,
            length: 60,
            ..posted[2]
        },
    );
    s2c.set_desc(
        3,
        &Desc {
            length: 60,
            ..posted[3]
        },
    );
    s2c.set_tail(4, Ordering::Release);
    let mut got: Batch<PoolBuf> = Batch::with_capacity(64);
    dev.rx_burst(Instant::now(), &mut got);
    assert_eq!(got.len(), 1);
    assert_eq!(got.front().unwrap().as_slice(), &frame[..]);
    assert_eq!(dev.memif_stats().rejected_desc, 3);
    assert_eq!(dev.lent_buffers(), 16, "slots refilled");

    // A tail beyond what was posted: the client disconnects and takes its buffers back.
    s2c.set_tail(4 + 40, Ordering::Release);
    dev.rx_burst(Instant::now(), &mut got);
    let stats = dev.memif_stats();
    assert_eq!(stats.bad_ring_index, 1);
    assert!(!dev.link_up());
    assert_eq!(dev.lent_buffers(), 0);
    assert_eq!(dev.pool().stats().in_use, 1, "only the frame we hold");
    let (m, _) = recv_msg(&sock, || {}).expect("a DISCONNECT");
    assert!(matches!(m, Msg::Disconnect(_)), "{m:?}");
    drop(got);
    assert_eq!(dev.pool().stats().in_use, 0);
    // And it tries again.
    let start = WallInstant::now();
    while listener.accept().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no reconnection attempt"
        );
        pump(&mut dev);
    }
}

// ---------------------------------------------------------------------------------------------
// A hostile client of a server that builds frames in place

/// Buffers a client posts for the server to build frames in: the server uses them only when
/// they are inside the client's regions, clear of its rings and of each other, and long
/// enough; the rest come back empty and are counted; short ones get frames copied in, never
/// written past their length.
#[test]
fn a_hostile_client_cannot_get_frames_built_in_bad_buffers() {
    let dir = TestDir::new("inplace");
    let socket = dir.socket();
    let mut srv = ServerRig::new(&socket);
    let raw = RawClient::connect(&socket, || {
        srv.step();
    });
    assert_eq!(srv.dev().state(), MemifState::Up);
    let s2c = raw.s2c();
    // Slot 0: the client's ring memory; 1: empty; 2: outside region 1; 3: 1000 bytes (shorter
    // than a 1514-byte frame, with nothing adjacent); 4: a good 2048-byte buffer at 64 KiB.
    let posted = [
        desc(0, 0, 2048, 0),
        desc(1, 0x20000, 0, 0),
        desc(1, (256 << 10) - 100, 2048, 0),
        desc(1, 0x30000, 1000, 0),
        desc(1, 0x10000, 2048, 0),
    ];
    for (s, d) in posted.iter().enumerate() {
        s2c.set_desc(s as u16, d);
    }
    // A canary right after the short buffer: never written.
    assert!(raw.data.write(0x30000 + 1000, &[0xEE; 64]));
    s2c.set_head(posted.len() as u16, Ordering::Release);
    raw.send(0, &[arp_request(SERVER_IP)]);
    until_s2c_tail(&mut srv, &raw, 4);
    let stats = srv.dev().memif_stats();
    assert_eq!(
        stats.rejected_desc, 3,
        "ring memory, empty, outside: {stats:?}"
    );
    for s in 0..3 {
        assert_eq!(s2c.desc(s).length, 0, "slot {s} handed back empty");
    }
    assert!(
        is_arp_reply(&raw, s2c.desc(3)),
        "the reply, copied into the short buffer"
    );
    assert_eq!(stats.tx_in_place, 0);
    assert_eq!(stats.tx_copied_bytes, u64::from(s2c.desc(3).length));
    let mut canary = [0u8; 64];
    assert!(raw.data.read(0x30000 + 1000, &mut canary));
    assert_eq!(canary, [0xEE; 64]);

    // Two requests at once: two replies are built before either is sent. Slot 5 overlaps the
    // good buffer of slot 4 lent for the first reply, so the second goes to slot 6.
    s2c.set_desc(5, &desc(1, 0x10000 + 1024, 2048, 0));
    s2c.set_desc(6, &desc(1, 0x18000, 2048, 0));
    s2c.set_head(7, Ordering::Release);
    raw.send(1, &[arp_request(SERVER_IP), arp_request(SERVER_IP)]);
    until_s2c_tail(&mut srv, &raw, 7);
    let stats = srv.dev().memif_stats();
    assert!(is_arp_reply(&raw, s2c.desc(4)));
    assert_eq!(
        s2c.desc(5).length,
        0,
        "the overlapping buffer came back empty"
    );
    assert!(is_arp_reply(&raw, s2c.desc(6)));
    assert_eq!(stats.rejected_desc, 4, "{stats:?}");
    assert_eq!(stats.tx_in_place, 2, "built in place: {stats:?}");
    assert_eq!(stats.link.rx_packets, 3);

    // C2S: a chain whose tail never comes, filling the ring: rejected, every slot handed back.
    let c2s = raw.c2s();
    for s in 3..3 + 16u16 {
        c2s.set_desc(s, &desc(1, 4096, 20, DESC_FLAG_NEXT));
    }
    c2s.set_head(3 + 16, Ordering::Release);
    let start = WallInstant::now();
    while c2s.tail(Ordering::Acquire) != 3 + 16 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "chain not handed back"
        );
        srv.step();
    }
    assert_eq!(srv.dev().memif_stats().rejected_desc, 5);
    assert_eq!(srv.dev().state(), MemifState::Up);
    drop(raw);
}

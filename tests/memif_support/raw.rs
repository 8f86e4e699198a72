//! A memif peer written here against the wire format, not ustack's own device: control messages
//! sent and received by hand, and a client ([`RawClient`]) whose rings and buffers the test
//! writes directly, to feed a server whatever descriptors it wants.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant as WallInstant};

use super::{ServerRig, SERVER_IP};
use ustack::dev::memif::proto::{self, AddRegion, AddRing, Hello, Init, Msg, Name};
use ustack::dev::memif::ring::{ring_len, Desc, RingView};
use ustack::host::unix_ipc::{self as sys, SeqPacket, UnixAddr};
use ustack::mem::shm::SharedRegion;
use ustack::PageSize;

/// Receives one control message, polling `pump` while none is there.
pub fn recv_msg(
    sock: &SeqPacket,
    mut pump: impl FnMut(),
) -> Option<(Msg, Option<std::os::fd::OwnedFd>)> {
    let start = WallInstant::now();
    let mut buf = [0u8; proto::MSG_LEN];
    loop {
        match sock.recv(&mut buf) {
            Ok(r) if r.len == 0 => return None,
            Ok(r) => return Some((Msg::parse(&buf[..r.len]).expect("a memif message"), r.fd)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("recv: {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no control message"
        );
        pump();
    }
}

pub fn send_msg(sock: &SeqPacket, m: Msg, fd: Option<std::os::fd::BorrowedFd<'_>>) {
    sock.send(&m.to_bytes(), fd).expect("send");
}

/// An ARP request for `target` from a made-up host.
pub fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&[10, 77, 0, 9]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// A raw memif client (handshake by hand) with a 16-slot ring pair in region 0 and a data
/// region 1 (256 KiB from [`RawClient::connect`]), for feeding a server whatever descriptors
/// and control messages a test wants.
pub struct RawClient {
    /// The control connection (dropping it ends the link).
    pub sock: SeqPacket,
    /// The server's HELLO.
    pub hello: Hello,
    pub rings: SharedRegion,
    pub data: SharedRegion,
    _efd: OwnedFd,
}

pub const RAW_LOG2: u8 = 4;

impl RawClient {
    pub fn connect(socket: &Path, pump: impl FnMut()) -> RawClient {
        RawClient::connect_with(socket, "raw", 256 << 10, pump)
    }

    /// [`RawClient::connect`] as `name` (the INIT name, `NAME0` the interface's), with a data
    /// region of `data_len` bytes.
    pub fn connect_with(
        socket: &Path,
        name: &str,
        data_len: usize,
        mut pump: impl FnMut(),
    ) -> RawClient {
        let sock = SeqPacket::connect(&UnixAddr::Path(socket.to_path_buf())).expect("connect");
        let (hello, _) = recv_msg(&sock, &mut pump).unwrap();
        let Msg::Hello(hello) = hello else {
            panic!("expected HELLO, got {hello:?}")
        };
        send_msg(
            &sock,
            Msg::Init(Init {
                version: proto::VERSION,
                id: 0,
                mode: proto::MODE_ETHERNET,
                secret: [0; 24],
                name: Name::new(name),
            }),
            None,
        );
        assert_eq!(recv_msg(&sock, &mut pump).unwrap().0, Msg::Ack);
        let rings = SharedRegion::create(
            2 * ring_len(RAW_LOG2),
            PageSize::Base4K,
            &format!("{name}-rings"),
        )
        .unwrap();
        let data =
            SharedRegion::create(data_len, PageSize::Base4K, &format!("{name}-data")).unwrap();
        RingView::new(&rings, 0, RAW_LOG2).unwrap().init(0);
        RingView::new(&rings, ring_len(RAW_LOG2), RAW_LOG2)
            .unwrap()
            .init(0);
        for (i, r) in [&rings, &data].into_iter().enumerate() {
            send_msg(
                &sock,
                Msg::AddRegion(AddRegion {
                    index: i as u16,
                    size: r.len() as u64,
                }),
                r.fd(),
            );
            assert_eq!(recv_msg(&sock, &mut pump).unwrap().0, Msg::Ack);
        }
        let efd = sys::eventfd().unwrap();
        for (flags, offset) in [
            (proto::ADD_RING_FLAG_C2S, 0),
            (0, ring_len(RAW_LOG2) as u32),
        ] {
            send_msg(
                &sock,
                Msg::AddRing(AddRing {
                    flags,
                    index: 0,
                    region: 0,
                    offset,
                    log2_ring_size: RAW_LOG2,
                    private_hdr_size: 0,
                }),
                Some(efd.as_fd()),
            );
            assert_eq!(recv_msg(&sock, &mut pump).unwrap().0, Msg::Ack);
        }
        send_msg(&sock, Msg::Connect(Name::new(&format!("{name}0"))), None);
        assert!(matches!(
            recv_msg(&sock, &mut pump).unwrap().0,
            Msg::Connected(_)
        ));
        RawClient {
            sock,
            hello,
            rings,
            data,
            _efd: efd,
        }
    }

    pub fn c2s(&self) -> RingView<'_> {
        RingView::new(&self.rings, 0, RAW_LOG2).unwrap()
    }

    pub fn s2c(&self) -> RingView<'_> {
        RingView::new(&self.rings, ring_len(RAW_LOG2), RAW_LOG2).unwrap()
    }

    /// Sends `frames` (each written at 4096 * (i + 1) of the data region) in C2S slots from
    /// `slot` on, published together.
    pub fn send(&self, slot: u16, frames: &[Vec<u8>]) {
        let c2s = self.c2s();
        for (i, f) in frames.iter().enumerate() {
            let off = 4096 * (i + 1);
            assert!(self.data.write(off, f));
            c2s.set_desc(slot + i as u16, &desc(1, off as u32, f.len() as u32, 0));
        }
        c2s.set_head(slot + frames.len() as u16, Ordering::Release);
    }
}

pub fn desc(region: u16, offset: u32, length: u32, flags: u16) -> Desc {
    Desc {
        flags,
        region,
        length,
        offset,
        metadata: 0,
    }
}

/// Polls the server until the S2C tail reaches `tail`.
pub fn until_s2c_tail(srv: &mut ServerRig, raw: &RawClient, tail: u16) {
    let start = WallInstant::now();
    while raw.s2c().tail(Ordering::Acquire) != tail {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "S2C tail {} not {tail}: {:?}",
            raw.s2c().tail(Ordering::Acquire),
            srv.dev().memif_stats()
        );
        srv.step();
    }
}

pub fn is_arp_reply(raw: &RawClient, d: Desc) -> bool {
    let mut got = vec![0u8; d.length as usize];
    d.region == 1
        && d.length >= 42
        && raw.data.read(d.offset as usize, &mut got)
        && got[12..14] == [0x08, 0x06]
        && got[20..22] == [0, 2]
        && got[28..32] == SERVER_IP.octets()
}

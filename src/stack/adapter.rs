//! The one place where a [`PacketDevice`] meets smoltcp's `phy::Device`.
//!
//! Received frames are checked before smoltcp sees them (length, addressing, IPv4 header, TCP
//! checksum), so every malformed frame is dropped *and counted* here; smoltcp is then told not
//! to verify those checksums again. Each good frame is classified ([`Route`]) so the stack can
//! steer a TCP flow to the socket shard that owns it. Transmitted frames are written by smoltcp
//! straight into a device buffer (no copy) and queued in a bounded batch flushed in bursts.
//! A packet capture, while one runs (`Stack::start_capture`), sees each frame here: received
//! ones before the checks, sent ones as the device takes them (`capture::tx_burst`).

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, TcpPacket};

use crate::dev::{Batch, Frame, PacketDevice, ETH_HEADER_LEN};
use crate::time::Instant;

use super::capture::{self, Tap};
use super::stats::StackStats;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ARP_IPV4_LEN: usize = 28;
/// Bytes of an Ethernet ARP frame for IPv4 (the header and the ARP message).
pub(crate) const ARP_FRAME_LEN: usize = ETH_HEADER_LEN + ARP_IPV4_LEN;
const BROADCAST: [u8; 6] = [0xff; 6];

/// Why a received frame was dropped before reaching smoltcp.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum RxDrop {
    Runt,
    Oversize,
    NotOurs,
    Unsupported,
    BadIpv4,
    Fragment,
    BadChecksum,
    BacklogFull,
    ShardFull,
    /// A segment of a flow no socket of this per-core shard serves (see `stack::cores`).
    Misdirected,
}

/// A TCP flow as seen from this stack.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub(crate) remote_ip: u32,
    pub(crate) remote_port: u16,
    pub(crate) local_port: u16,
}

/// What a valid frame carries, for steering it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// A TCP segment of `flow`; `syn` for a connection request (SYN without ACK).
    Tcp { flow: FlowKey, syn: bool },
    /// ARP: may teach the interface a neighbor every shard waits for.
    Arp,
    /// Anything else smoltcp handles without sockets (ICMP, UDP).
    Other,
}

/// The device side shared by every socket shard: the device, the transmit batch, counters.
pub(crate) struct Io<D: PacketDevice> {
    pub(crate) dev: D,
    rx: Batch<D::Frame>,
    tx: Batch<D::Frame>,
    now: Instant,
    mtu: usize,
    burst_max: usize,
    mac: [u8; 6],
    verify_ipv4: bool,
    verify_l4: bool,
    smol_caps: DeviceCapabilities,
    /// Stand-in buffer for a frame smoltcp writes when the device has no buffer free; the frame
    /// is then dropped and counted (a TX token cannot fail).
    scratch: Box<[u8]>,
    pub(crate) stats: StackStats,
    /// The running packet capture, if any (`Stack::start_capture`).
    pub(crate) capture: Option<Box<Tap>>,
    /// ARP frames another per-core shard received, for smoltcp to learn from before the
    /// device's frames (see `stack::cores`; bounded by its inbox).
    pub(crate) injected: Vec<[u8; ARP_FRAME_LEN]>,
}

impl<D: PacketDevice> Io<D> {
    pub(crate) fn new(dev: D, mtu: usize, mac: [u8; 6], ring_frames: usize) -> Io<D> {
        let caps = dev.caps();
        let mut checksum = ChecksumCapabilities::default();
        // We verify received IPv4 and TCP checksums ourselves (to count failures), so smoltcp
        // only computes them on transmit, unless the device does that too.
        checksum.ipv4 = if caps.checksum.tx_ipv4 {
            Checksum::None
        } else {
            Checksum::Tx
        };
        checksum.tcp = if caps.checksum.tx_l4 {
            Checksum::None
        } else {
            Checksum::Tx
        };
        let mut smol_caps = DeviceCapabilities::default();
        smol_caps.medium = Medium::Ethernet;
        smol_caps.max_transmission_unit = mtu + ETH_HEADER_LEN;
        // No cap: a burst limit here would also cap the TCP window smoltcp advertises.
        smol_caps.max_burst_size = None;
        smol_caps.checksum = checksum;
        let ring_frames = ring_frames.max(caps.burst_max).max(1);
        Io {
            rx: Batch::with_capacity(caps.burst_max.max(1)),
            tx: Batch::with_capacity(ring_frames),
            now: Instant::ZERO,
            mtu,
            burst_max: caps.burst_max.max(1),
            mac,
            verify_ipv4: !caps.checksum.rx_ipv4,
            verify_l4: !caps.checksum.rx_l4,
            smol_caps,
            scratch: vec![0; mtu + ETH_HEADER_LEN].into_boxed_slice(),
            stats: StackStats::default(),
            capture: None,
            injected: Vec::new(),
            dev,
        }
    }

    pub(crate) fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// Frames waiting to go out (the device would not take them yet).
    pub(crate) fn tx_pending(&self) -> usize {
        self.tx.len()
    }

    /// Frames taken from the device and not yet handed to the stack (over the poll's budget).
    pub(crate) fn rx_pending(&self) -> usize {
        self.rx.len()
    }

    /// Offers queued frames to the device. Returns how many it took.
    pub(crate) fn flush(&mut self) -> usize {
        let mut sent = 0;
        while !self.tx.is_empty() {
            let n = capture::tx_burst(&mut self.dev, &mut self.tx, self.now, &mut self.capture);
            sent += n;
            if n == 0 {
                break;
            }
        }
        self.stats.tx_frames += sent as u64;
        sent
    }

    /// Receives up to `budget` frames, drops and counts the bad ones, and hands each good one
    /// with its [`Route`] to `steer`, which queues it for a shard (or gives it back with the
    /// reason to drop it). Returns how many frames were received.
    pub(crate) fn receive(
        &mut self,
        budget: usize,
        mut steer: impl FnMut(Route, D::Frame) -> Result<(), RxDrop>,
    ) -> usize {
        let mut taken = 0;
        while taken < budget {
            if self.rx.is_empty() && self.dev.rx_burst(self.now, &mut self.rx) == 0 {
                break;
            }
            let Some(frame) = self.rx.pop() else { break };
            taken += 1;
            if let Some(tap) = &mut self.capture {
                // Before the checks: malformed frames are captured too.
                tap.received(self.now, frame.data());
            }
            let route = check_frame(
                frame.data(),
                self.mtu,
                &self.mac,
                self.verify_ipv4,
                self.verify_l4,
            );
            match route.and_then(|r| steer(r, frame)) {
                Ok(()) => self.stats.rx_frames += 1,
                Err(why) => self.count_drop(why),
            }
        }
        taken
    }

    pub(crate) fn count_drop(&mut self, why: RxDrop) {
        let s = &mut self.stats;
        match why {
            RxDrop::Runt => s.rx_runt += 1,
            RxDrop::Oversize => s.rx_oversize += 1,
            RxDrop::NotOurs => s.rx_not_ours += 1,
            RxDrop::Unsupported => s.rx_unsupported += 1,
            RxDrop::BadIpv4 => s.rx_bad_ipv4 += 1,
            RxDrop::Fragment => s.rx_fragment += 1,
            RxDrop::BadChecksum => s.rx_bad_checksum += 1,
            RxDrop::BacklogFull => s.rx_syn_backlog_full += 1,
            RxDrop::ShardFull => s.rx_queue_full += 1,
            RxDrop::Misdirected => s.rx_misdirected += 1,
        }
    }

    /// smoltcp's view of the device for one shard: frames from that shard's queue, transmission
    /// through the shared batch.
    pub(crate) fn view<'a>(&'a mut self, rx: &'a mut Batch<D::Frame>) -> ShardView<'a, D> {
        ShardView { io: self, rx }
    }
}

/// Validates one Ethernet frame for the stack: every accessor smoltcp uses later is then in
/// bounds, and every checksum we are responsible for is right. On success, says where it goes.
pub(crate) fn check_frame(
    f: &[u8],
    mtu: usize,
    mac: &[u8; 6],
    verify_ipv4: bool,
    verify_l4: bool,
) -> Result<Route, RxDrop> {
    if f.len() < ETH_HEADER_LEN {
        return Err(RxDrop::Runt);
    }
    if f.len() > mtu + ETH_HEADER_LEN {
        return Err(RxDrop::Oversize);
    }
    let dst = &f[0..6];
    if dst != mac && dst != BROADCAST {
        return Err(RxDrop::NotOurs);
    }
    let payload = &f[ETH_HEADER_LEN..];
    match u16::from_be_bytes([f[12], f[13]]) {
        ETHERTYPE_ARP if payload.len() >= ARP_IPV4_LEN => Ok(Route::Arp),
        ETHERTYPE_ARP => Err(RxDrop::Runt),
        ETHERTYPE_IPV4 => check_ipv4(payload, verify_ipv4, verify_l4),
        _ => Err(RxDrop::Unsupported),
    }
}

fn check_ipv4(p: &[u8], verify_ipv4: bool, verify_l4: bool) -> Result<Route, RxDrop> {
    let ip = Ipv4Packet::new_checked(p).map_err(|_| RxDrop::BadIpv4)?;
    if ip.version() != 4 {
        return Err(RxDrop::BadIpv4);
    }
    if verify_ipv4 && !ip.verify_checksum() {
        return Err(RxDrop::BadChecksum);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(RxDrop::Fragment);
    }
    if ip.next_header() == IpProtocol::Tcp {
        let (src, dst) = (
            IpAddress::Ipv4(ip.src_addr()),
            IpAddress::Ipv4(ip.dst_addr()),
        );
        let tcp = TcpPacket::new_checked(ip.payload()).map_err(|_| RxDrop::BadIpv4)?;
        if verify_l4 && !tcp.verify_checksum(&src, &dst) {
            return Err(RxDrop::BadChecksum);
        }
        let flow = FlowKey {
            remote_ip: u32::from(ip.src_addr()),
            remote_port: tcp.src_port(),
            local_port: tcp.dst_port(),
        };
        return Ok(Route::Tcp {
            flow,
            syn: tcp.syn() && !tcp.ack(),
        });
    }
    // UDP and ICMP checksums are left to smoltcp, which verifies them itself.
    Ok(Route::Other)
}

pub(crate) enum RxToken<F: Frame> {
    /// A frame of the device.
    Frame(F),
    /// An ARP frame another per-core shard received.
    Injected([u8; ARP_FRAME_LEN]),
}

impl<F: Frame> phy::RxToken for RxToken<F> {
    fn consume<R, G>(self, f: G) -> R
    where
        G: FnOnce(&[u8]) -> R,
    {
        let frame = match self {
            RxToken::Frame(frame) => frame,
            RxToken::Injected(bytes) => return f(&bytes),
        };
        let data = frame.data();
        // Whole frames, headers included: smoltcp copies a segment's payload into the socket's
        // ring from here.
        crate::copies::count(crate::copies::Pass::Frame, data.len());
        f(data)
    }
}

pub(crate) struct TxToken<'a, D: PacketDevice> {
    dev: &'a mut D,
    tx: &'a mut Batch<D::Frame>,
    scratch: &'a mut [u8],
    stats: &'a mut StackStats,
    capture: &'a mut Option<Box<Tap>>,
    now: Instant,
}

impl<D: PacketDevice> phy::TxToken for TxToken<'_, D> {
    fn consume<R, G>(self, len: usize, f: G) -> R
    where
        G: FnOnce(&mut [u8]) -> R,
    {
        let Some(mut frame) = self.dev.tx_alloc() else {
            self.stats.tx_nobuf += 1;
            let n = len.min(self.scratch.len());
            return f(&mut self.scratch[..n]);
        };
        if !frame.set_len(len) {
            // smoltcp never builds a frame longer than the MTU we gave it.
            self.stats.tx_nobuf += 1;
            let n = len.min(self.scratch.len());
            return f(&mut self.scratch[..n]);
        }
        crate::copies::count(crate::copies::Pass::Frame, len);
        let r = f(frame.data_mut());
        if let Err(frame) = self.tx.push(frame) {
            // Full: hand a burst to the device, then queue.
            let sent = capture::tx_burst(self.dev, self.tx, self.now, self.capture);
            self.stats.tx_frames += sent as u64;
            if self.tx.push(frame).is_err() {
                self.stats.tx_queue_full += 1;
            }
        }
        r
    }
}

/// One shard's view of the device, as smoltcp's `phy::Device`.
pub(crate) struct ShardView<'a, D: PacketDevice> {
    io: &'a mut Io<D>,
    rx: &'a mut Batch<D::Frame>,
}

impl<D: PacketDevice> ShardView<'_, D> {
    fn tx_token(&mut self) -> TxToken<'_, D> {
        TxToken {
            dev: &mut self.io.dev,
            tx: &mut self.io.tx,
            scratch: &mut self.io.scratch,
            stats: &mut self.io.stats,
            capture: &mut self.io.capture,
            now: self.io.now,
        }
    }
}

impl<D: PacketDevice> phy::Device for ShardView<'_, D> {
    type RxToken<'a>
        = RxToken<D::Frame>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, D>
    where
        Self: 'a;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if let Some(bytes) = self.io.injected.pop() {
            return Some((RxToken::Injected(bytes), self.tx_token()));
        }
        let frame = self.rx.pop()?;
        Some((RxToken::Frame(frame), self.tx_token()))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        if self.io.tx.len() >= self.io.burst_max {
            self.io.flush();
        }
        if self.io.tx.is_full() {
            self.io.stats.tx_queue_full += 1;
            return None;
        }
        Some(self.tx_token())
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.io.smol_caps.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&MAC);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4_tcp() -> Vec<u8> {
        crate::dev::test_ipv4_tcp(b"hi")
    }

    fn check(f: &[u8]) -> Result<(), RxDrop> {
        check_frame(f, 1500, &MAC, true, true).map(|_| ())
    }

    #[test]
    fn tcp_frames_name_their_flow() {
        let r = check_frame(&eth(ETHERTYPE_IPV4, &ipv4_tcp()), 1500, &MAC, true, true).unwrap();
        let flow = FlowKey {
            remote_ip: u32::from(std::net::Ipv4Addr::new(10, 0, 0, 2)),
            remote_port: 1,
            local_port: 2,
        };
        assert_eq!(r, Route::Tcp { flow, syn: true });
        assert_eq!(
            check_frame(&eth(ETHERTYPE_ARP, &[0; 28]), 1500, &MAC, true, true),
            Ok(Route::Arp)
        );
    }

    #[test]
    fn good_frames_pass() {
        assert_eq!(check(&eth(ETHERTYPE_IPV4, &ipv4_tcp())), Ok(()));
        assert_eq!(check(&eth(ETHERTYPE_ARP, &[0; 28])), Ok(()));
        let mut bcast = eth(ETHERTYPE_ARP, &[0; 28]);
        bcast[..6].copy_from_slice(&BROADCAST);
        assert_eq!(check(&bcast), Ok(()));
    }

    #[test]
    fn every_kind_of_bad_frame_is_classified() {
        assert_eq!(check(&[0; 13]), Err(RxDrop::Runt));
        assert_eq!(check(&eth(ETHERTYPE_ARP, &[0; 27])), Err(RxDrop::Runt));
        assert_eq!(
            check(&eth(ETHERTYPE_IPV4, &[0; 1501])),
            Err(RxDrop::Oversize)
        );
        let mut other = eth(ETHERTYPE_IPV4, &ipv4_tcp());
        other[0] = 4;
        assert_eq!(check(&other), Err(RxDrop::NotOurs));
        assert_eq!(check(&eth(0x86dd, &[0; 40])), Err(RxDrop::Unsupported));
        assert_eq!(
            check(&eth(ETHERTYPE_IPV4, &[0x45; 10])),
            Err(RxDrop::BadIpv4)
        );

        let good = ipv4_tcp();
        let mut lying_len = good.clone();
        lying_len[2..4].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(
            check(&eth(ETHERTYPE_IPV4, &lying_len)),
            Err(RxDrop::BadIpv4)
        );

        let mut bad_ip_sum = good.clone();
        bad_ip_sum[8] ^= 1; // TTL
        assert_eq!(
            check(&eth(ETHERTYPE_IPV4, &bad_ip_sum)),
            Err(RxDrop::BadChecksum)
        );

        let mut bad_tcp_sum = good.clone();
        let last = bad_tcp_sum.len() - 1;
        bad_tcp_sum[last] ^= 0x80; // payload byte
        assert_eq!(
            check(&eth(ETHERTYPE_IPV4, &bad_tcp_sum)),
            Err(RxDrop::BadChecksum)
        );
        // With checksum offload the same frame is accepted.
        assert_eq!(
            check_frame(&eth(ETHERTYPE_IPV4, &bad_tcp_sum), 1500, &MAC, true, false),
            Ok(Route::Tcp {
                flow: FlowKey {
                    remote_ip: u32::from(std::net::Ipv4Addr::new(10, 0, 0, 2)),
                    remote_port: 1,
                    local_port: 2,
                },
                syn: true
            }),
            "a SYN to port 2 with a bad checksum passes when the device verified it"
        );

        let mut frag = good.clone();
        frag[6] = 0x20; // more fragments
        let mut pkt = Ipv4Packet::new_unchecked(&mut frag[..]);
        pkt.fill_checksum();
        assert_eq!(check(&eth(ETHERTYPE_IPV4, &frag)), Err(RxDrop::Fragment));

        let mut short_tcp = good.clone();
        short_tcp.truncate(20 + 10);
        short_tcp[2..4].copy_from_slice(&30u16.to_be_bytes());
        let mut pkt = Ipv4Packet::new_unchecked(&mut short_tcp[..]);
        pkt.fill_checksum();
        assert_eq!(
            check(&eth(ETHERTYPE_IPV4, &short_tcp)),
            Err(RxDrop::BadIpv4)
        );
    }

    proptest::proptest! {
        /// Any bytes, and any corruption of a valid frame, are classified without panicking.
        #[test]
        fn arbitrary_frames_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1600),
            flips in proptest::collection::vec((0usize..80, 0u8..8), 0..4),
            verify in proptest::prelude::any::<bool>(),
        ) {
            let _ = check_frame(&bytes, 1500, &MAC, verify, verify);
            let mut good = eth(ETHERTYPE_IPV4, &ipv4_tcp());
            for (i, bit) in flips {
                let i = i % good.len();
                good[i] ^= 1 << bit;
            }
            let _ = check_frame(&good, 1500, &MAC, verify, verify);
            good.truncate(bytes.len() % (good.len() + 1));
            let _ = check_frame(&good, 1500, &MAC, verify, verify);
        }
    }
}

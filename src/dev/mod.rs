//! Packet devices: the [`PacketDevice`] trait and its backends.
//!
//! A device moves whole Ethernet frames (no FCS) in bursts. Frames live in memory the device owns
//! — a [`PoolBuf`], a DPDK mbuf, an AF_XDP UMEM frame, a memif slot — and
//! are handed to the caller as a [`Frame`] that returns the memory when dropped, so nothing is
//! copied between the device and the stack.
//!
//! Backends never know about smoltcp; the stack adapts any `PacketDevice` to it in one place.

use std::collections::VecDeque;
use std::time::Duration;

use crate::mem::PoolBuf;
use crate::time::Instant;

pub mod af_xdp;
pub mod auto;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod faults;
pub mod memif;
pub mod pcap;
pub mod rss;
pub mod sim;
pub mod tap;

/// Length of an Ethernet header without VLAN tag.
pub const ETH_HEADER_LEN: usize = 14;

/// A frame buffer owned by a device. Dropping it gives the memory back to the device or pool.
pub trait Frame {
    /// The frame bytes, starting with the Ethernet header.
    fn data(&self) -> &[u8];
    /// The frame bytes, writable.
    fn data_mut(&mut self) -> &mut [u8];
    /// The longest frame this buffer can hold.
    fn capacity(&self) -> usize;
    /// Sets the frame length; returns `false` and changes nothing if it exceeds `capacity()`.
    #[must_use]
    fn set_len(&mut self, len: usize) -> bool;
}

impl Frame for PoolBuf {
    #[inline]
    fn data(&self) -> &[u8] {
        self.as_slice()
    }
    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
    #[inline]
    fn capacity(&self) -> usize {
        PoolBuf::capacity(self)
    }
    #[inline]
    fn set_len(&mut self, len: usize) -> bool {
        PoolBuf::set_len(self, len)
    }
}

/// Which checksums the device (or the link) takes care of, so the stack can skip them.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ChecksumCaps {
    /// Received IPv4 header checksums were verified by the device, or the link cannot corrupt.
    pub rx_ipv4: bool,
    /// Received TCP/UDP checksums were verified by the device, or the link cannot corrupt.
    pub rx_l4: bool,
    /// The device computes IPv4 header checksums on transmit.
    pub tx_ipv4: bool,
    /// The device computes TCP/UDP checksums on transmit.
    pub tx_l4: bool,
}

/// Fills in the IPv4 header checksum and, for an unfragmented TCP segment, the TCP checksum of
/// an Ethernet frame, as a NIC with transmit checksum offload does: for a device that claims
/// [`ChecksumCaps::tx_ipv4`] and [`ChecksumCaps::tx_l4`] but has no hardware to do it. Any
/// other frame (ARP, truncated, not IPv4) is left as it is; filling twice gives the same bytes.
pub(crate) fn fill_checksums(frame: &mut [u8]) {
    use smoltcp::wire::{IpProtocol, Ipv4Packet, TcpPacket};
    if frame.len() < ETH_HEADER_LEN || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let Ok(mut ip) = Ipv4Packet::new_checked(&mut frame[ETH_HEADER_LEN..]) else {
        return;
    };
    ip.fill_checksum();
    if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
        return;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) {
        tcp.fill_checksum(&src.into(), &dst.into());
    }
}

/// What a device can do.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DeviceCaps {
    /// IP MTU in bytes: the longest IP packet; a frame is at most `mtu + 14` bytes.
    pub mtu: usize,
    /// The most frames one `rx_burst` or `tx_burst` call moves.
    pub burst_max: usize,
    /// Checksum offloads.
    pub checksum: ChecksumCaps,
}

impl DeviceCaps {
    /// The longest Ethernet frame (header included, FCS excluded).
    pub fn frame_len_max(&self) -> usize {
        self.mtu + ETH_HEADER_LEN
    }
}

/// Link counters. Devices count what they see; malformed-frame counters of the stack are kept
/// separately by the stack.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames received and handed to the caller.
    pub rx_packets: u64,
    /// Bytes in those frames.
    pub rx_bytes: u64,
    /// Frames the device dropped on receive (no buffer, queue full, link down).
    pub rx_dropped: u64,
    /// Frames received broken (too long, truncated, device errors).
    pub rx_errors: u64,
    /// Frames accepted for transmission.
    pub tx_packets: u64,
    /// Bytes in those frames.
    pub tx_bytes: u64,
    /// Frames dropped on transmit (queue full, link down).
    pub tx_dropped: u64,
    /// Frames that failed on transmit (device errors, too long).
    pub tx_errors: u64,
}

impl LinkStats {
    /// Adds `other`'s counters to these (per-core shards summed).
    pub fn add(&mut self, other: &LinkStats) {
        add_counters!(LinkStats, self, other; rx_packets, rx_bytes, rx_dropped, rx_errors, tx_packets, tx_bytes, tx_dropped, tx_errors);
    }
}

/// A device that sends and receives Ethernet frames in bursts.
///
/// Every method is non-blocking except [`PacketDevice::wait`]. `now` is the caller's clock (real
/// or virtual); devices that do not care ignore it.
pub trait PacketDevice {
    /// The device's frame buffer type.
    type Frame: Frame;

    /// What the device can do.
    fn caps(&self) -> DeviceCaps;

    /// Appends up to `batch.free()` (and at most `caps().burst_max`) received frames to `batch`;
    /// returns how many were appended.
    fn rx_burst(&mut self, now: Instant, batch: &mut Batch<Self::Frame>) -> usize;

    /// A buffer for one outgoing frame, able to hold `caps().frame_len_max()` bytes, or `None`
    /// when the device has none free (back-pressure).
    fn tx_alloc(&mut self) -> Option<Self::Frame>;

    /// Sends frames from the front of `batch`, removing the ones the device accepted; returns how
    /// many. Frames left in `batch` were not sent and may be offered again.
    fn tx_burst(&mut self, now: Instant, batch: &mut Batch<Self::Frame>) -> usize;

    /// Counters.
    fn stats(&self) -> LinkStats;

    /// The device's own MAC address, if it has one the stack must use: a NIC or veth behind
    /// AF_XDP or DPDK drops frames for other addresses, and peers remember it across restarts.
    /// `None` (the default) for links without one (memif, TAP's far side, the simulated link):
    /// the stack then makes one up ([`StackConfig::mac`](crate::stack::StackConfig::mac)).
    fn mac_addr(&self) -> Option<[u8; 6]> {
        None
    }

    /// Whether the link is up (a down link drops what is sent).
    fn link_up(&self) -> bool {
        true
    }

    /// Why the link is down or last went down, in words for an operator, if the device knows
    /// (a memif socket that does not exist, a handshake the peer refused). `None` by default.
    fn link_problem(&self) -> Option<String> {
        None
    }

    /// Blocks until a frame may be ready to receive or `timeout` passes, for idle poll loops.
    /// The default returns at once (pure polling).
    fn wait(&mut self, timeout: Duration) {
        let _ = timeout;
    }
}

/// A bounded FIFO of frames: it never grows past the capacity it was made with, so pushing into
/// it never allocates.
pub struct Batch<F> {
    items: VecDeque<F>,
    cap: usize,
}

impl<F> Batch<F> {
    /// An empty batch for up to `cap` frames (allocates once, here).
    pub fn with_capacity(cap: usize) -> Batch<F> {
        Batch {
            items: VecDeque::with_capacity(cap),
            cap,
        }
    }

    /// Appends a frame, or gives it back when the batch is full.
    #[inline]
    pub fn push(&mut self, frame: F) -> Result<(), F> {
        if self.items.len() >= self.cap {
            return Err(frame);
        }
        self.items.push_back(frame);
        Ok(())
    }

    /// Puts a frame back at the front (for a frame taken off and not consumed). Gives it back
    /// when the batch is full.
    #[inline]
    pub fn push_front(&mut self, frame: F) -> Result<(), F> {
        if self.items.len() >= self.cap {
            return Err(frame);
        }
        self.items.push_front(frame);
        Ok(())
    }

    /// Takes the oldest frame.
    #[inline]
    pub fn pop(&mut self) -> Option<F> {
        self.items.pop_front()
    }

    /// The oldest frame.
    #[inline]
    pub fn front(&self) -> Option<&F> {
        self.items.front()
    }

    /// Frames held.
    #[inline]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when no frames are held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// True when no more frames fit.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.cap
    }

    /// Room left.
    #[inline]
    pub fn free(&self) -> usize {
        self.cap - self.items.len()
    }

    /// The most frames the batch holds.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Iterates the frames, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &F> {
        self.items.iter()
    }

    /// Drops every frame (returning them to their pools).
    pub fn clear(&mut self) {
        self.items.clear();
    }
}

/// An IPv4 packet (10.0.0.2:1 -> 10.0.0.1:2) with a TCP SYN carrying `payload`, checksums
/// complete as smoltcp computes them: a fixture for the tests of frame handling.
#[cfg(test)]
pub(crate) fn test_ipv4_tcp(payload: &[u8]) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        IpAddress, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr,
        TcpSeqNumber,
    };
    let (src, dst) = (Ipv4Address::new(10, 0, 0, 2), Ipv4Address::new(10, 0, 0, 1));
    let tcp = TcpRepr {
        src_port: 1,
        dst_port: 2,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1),
        ack_number: None,
        window_len: 100,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let caps = ChecksumCapabilities::default();
    let mut buf = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
    let mut pkt = Ipv4Packet::new_unchecked(&mut buf[..]);
    ip.emit(&mut pkt, &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(pkt.payload_mut()),
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        &caps,
    );
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_bounded() {
        let mut b = Batch::with_capacity(2);
        assert!(b.push(1).is_ok());
        assert!(b.push_front(0).is_ok());
        assert_eq!(b.push(2), Err(2));
        assert!(b.is_full());
        assert_eq!(b.pop(), Some(0));
        assert_eq!(b.free(), 1);
        assert_eq!(b.iter().copied().collect::<Vec<_>>(), vec![1]);
    }

    /// An Ethernet frame with an IPv4 TCP segment carrying `payload`, with complete checksums
    /// as smoltcp computes them.
    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HEADER_LEN];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&test_ipv4_tcp(payload));
        f
    }

    #[test]
    fn fill_checksums_matches_the_stack() {
        for len in [0usize, 1, 2, 3, 1460, 8947, 65000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
            let want = tcp_frame(&payload);
            let mut got = want.clone();
            // What a stack that left the checksums to the device sends: both fields zero.
            got[ETH_HEADER_LEN + 10..ETH_HEADER_LEN + 12].fill(0);
            got[ETH_HEADER_LEN + 20 + 16..ETH_HEADER_LEN + 20 + 18].fill(0);
            assert_ne!(got, want);
            fill_checksums(&mut got);
            assert_eq!(got, want, "payload of {len} bytes");
            fill_checksums(&mut got);
            assert_eq!(got, want, "filled twice, payload of {len} bytes");
        }
        // Not IPv4, or cut short: left alone.
        let mut arp = tcp_frame(b"x");
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let before = arp.clone();
        fill_checksums(&mut arp);
        assert_eq!(arp, before);
        let mut short = tcp_frame(b"hello")[..ETH_HEADER_LEN + 10].to_vec();
        let before = short.clone();
        fill_checksums(&mut short);
        assert_eq!(short, before);
    }
}

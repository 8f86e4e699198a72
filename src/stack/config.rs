//! Stack configuration.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::dev::rss::RssSteer;
use crate::mem::PageSize;

/// An Ethernet MAC address.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered unicast address derived from `seed` (02:xx:xx:xx:xx:xx).
    pub fn local_from_seed(seed: u64) -> MacAddr {
        let b = seed.to_le_bytes();
        MacAddr([0x02, b[0], b[1], b[2], b[3], b[4] ^ b[5]])
    }

    /// The locally administered address ustack derives from an IPv4 address
    /// (02:75:a:b:c:d): stable across restarts, so a peer's ARP cache stays right when a
    /// process on a link without its own MAC (memif, TAP, sim) comes back.
    pub fn local_from_ipv4(ip: std::net::Ipv4Addr) -> MacAddr {
        let o = ip.octets();
        MacAddr([0x02, 0x75, o[0], o[1], o[2], o[3]])
    }

    /// True for a unicast address (multicast bit clear) that is not all zeros.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<MacAddr, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts
                .next()
                .ok_or_else(|| format!("MAC address {s:?} has fewer than 6 parts"))?;
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| format!("bad MAC address byte {part:?} in {s:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("MAC address {s:?} has more than 6 parts"));
        }
        Ok(MacAddr(out))
    }
}

/// TCP congestion control.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Congestion {
    /// None: send up to the peer's window (best on a dedicated, loss-free link).
    None,
    /// Reno (measured to cost nothing noticeable here): the window halves at every loss.
    Reno,
    /// Reno's growth; at a loss the window shrinks in proportion to the share of data the
    /// connection loses (a moving average; DCTCP's rule with losses for ECN marks): a queue
    /// that overflows halves it, a link that drops a steady small share of segments barely
    /// does (the default; see docs/DECISIONS.md).
    #[default]
    LossProportional,
    /// CUBIC (RFC 9438), as Linux uses by default.
    Cubic,
}

/// Per-connection TCP settings, applied to every socket the stack arms or connects.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Receive buffer per connection, bytes (at least 4x the MSS; 256 KiB - 1 MiB measured best).
    pub rx_buf_len: usize,
    /// Transmit buffer per connection, bytes.
    pub tx_buf_len: usize,
    /// Nagle's algorithm. Off by default: request/response traffic must not wait.
    pub nagle: bool,
    /// Delayed ACK: an ACK goes for every second full segment, or this long after the last
    /// segment received, whichever comes first (500 us by default; `None`: every segment is
    /// acknowledged at once). A reply carries the ACK of its request, so request/response
    /// exchanges do not wait; bulk transfers send half the pure ACKs.
    pub ack_delay: Option<Duration>,
    /// SACK compression (on by default): a burst of segments received out of order is
    /// acknowledged with three duplicate ACKs and then one ACK per twentieth of the round trip
    /// (or per 44 segments) carrying all the SACK blocks, as Linux does, rather than an ACK
    /// per segment.
    pub sack_compression: bool,
    /// Congestion control.
    pub congestion: Congestion,
    /// Keep-alive interval; `None` disables keep-alives.
    pub keep_alive: Option<Duration>,
    /// Abort a connection whose peer does not acknowledge anything for this long.
    pub timeout: Option<Duration>,
    /// The least retransmission timeout. RFC 6298's 1 s floor (smoltcp's default) was set
    /// for the Internet of 2000; between machines of one data center or processes of one
    /// host the round trip is 10-200 us, and a lost segment that nothing else repairs would
    /// stall the connection for a second. 10 ms (default) stays well above a busy machine's
    /// scheduling delays, so the timer rarely fires for a segment that was not lost (see
    /// docs/DECISIONS.md). Tail losses are mostly repaired sooner, by a probe after two
    /// round trips (RFC 8985).
    pub rto_min: Duration,
    /// SYN|ACK retransmissions before a half-open connection (SYN received, never
    /// completed) gives its socket back to the listener: with the RTO starting at 1 s and
    /// doubling, 2 (default) frees it 7 s after the SYN. A peer that cannot be reached (no
    /// ARP answer) frees it at once, and a new SYN finding the backlog full evicts the oldest
    /// half-open connection, so this bounds the rest.
    pub synack_retries: u8,
    /// Reset connections on which the application moved no data for this long, accepted or
    /// waiting to be accepted (`None`: never). Peers that complete handshakes and then say
    /// nothing would otherwise hold every socket for ever.
    pub idle_timeout: Option<Duration>,
    /// How long a closed connection may linger (FIN-WAIT etc.) before its socket is reset and
    /// reused.
    pub close_timeout: Duration,
}

impl Default for TcpConfig {
    fn default() -> TcpConfig {
        TcpConfig {
            rx_buf_len: 256 << 10,
            tx_buf_len: 256 << 10,
            nagle: false,
            ack_delay: Some(Duration::from_micros(500)),
            sack_compression: true,
            congestion: Congestion::default(),
            keep_alive: None,
            timeout: None,
            rto_min: Duration::from_millis(10),
            synack_retries: 2,
            idle_timeout: None,
            close_timeout: Duration::from_secs(10),
        }
    }
}

/// Configuration of a [`Stack`](super::Stack).
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// Our MAC address (unicast). `None` (default): the device's own
    /// ([`PacketDevice::mac_addr`](crate::dev::PacketDevice::mac_addr): a NIC or veth behind
    /// AF_XDP or DPDK), or, for devices without one, a locally administered address derived
    /// from `ipv4` ([`MacAddr::local_from_ipv4`]). [`Stack::mac`](crate::stack::Stack::mac)
    /// says which was taken.
    pub mac: Option<MacAddr>,
    /// Our IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Prefix length of the local subnet.
    pub prefix_len: u8,
    /// Default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// IP MTU; `None` takes the device's. Larger than the device's is an error.
    pub mtu: Option<usize>,
    /// TCP sockets, listening and connected together. Each owns `tcp.rx_buf_len +
    /// tcp.tx_buf_len` bytes of socket memory, reserved at start-up.
    pub sockets_max: usize,
    /// Listeners (ports being listened on).
    pub listeners_max: usize,
    /// Sockets per shard: smoltcp scans a socket set linearly on every poll and segment, so
    /// sockets are split into sets of this size, each polled only when it has work. An active
    /// connection pays for every socket of its shard, idle ones included: with 32 active and
    /// 1,024 idle connections over memif, 4 kept 88-91% of the requests served with none idle,
    /// 16 kept 65%, and 2 gained little more while scanning twice the shards.
    pub shard_sockets: usize,
    /// TCP settings.
    pub tcp: TcpConfig,
    /// Page size wanted for socket memory (falls back to base pages with a warning).
    pub page_size: PageSize,
    /// Frames held between the device and smoltcp in each direction.
    pub ring_frames: usize,
    /// Frames taken from the device in one [`Stack::poll`](crate::stack::Stack::poll) (capped
    /// by `ring_frames`). Replies to a burst's first requests leave on the next poll while the
    /// peer still sends the rest, so the two sides work at once instead of taking turns with
    /// whole bursts: with 32 connections x 4 requests over memif, 32 served 1.6x the requests
    /// of 256 (see docs/DECISIONS.md). Too small costs a poll per few frames.
    pub rx_budget: usize,
    /// Seed for smoltcp (initial sequence numbers) and ephemeral port choice. Fixed seeds make
    /// simulated runs reproducible.
    pub random_seed: u64,
    /// `None` (default): ephemeral ports are taken in turn. `Some`: this stack is the shard
    /// that owns receive queue `queue` of a device whose RSS is `rss`, and connections it opens
    /// take source ports whose replies hash to that queue (see [`crate::dev::rss`]), about one
    /// port in as many as the device has queues. `rss` must be the device's actual key and
    /// indirection table, and some entry of the table must name `queue`.
    pub rss_steer: Option<RssSteer>,
}

impl StackConfig {
    /// A configuration with defaults for everything but the address.
    pub fn new(ipv4: Ipv4Addr, prefix_len: u8) -> StackConfig {
        let seed = default_seed(ipv4);
        StackConfig {
            mac: None,
            ipv4,
            prefix_len,
            gateway: None,
            mtu: None,
            sockets_max: 64,
            listeners_max: 8,
            shard_sockets: 4,
            tcp: TcpConfig::default(),
            page_size: PageSize::Huge2M,
            ring_frames: 256,
            rx_budget: 32,
            random_seed: seed,
            rss_steer: None,
        }
    }

    /// Bytes of socket memory this configuration reserves (whole shards of `shard_sockets`).
    pub fn socket_memory_len(&self) -> usize {
        let shards = self.sockets_max.div_ceil(self.shard_sockets.max(1));
        (shards * self.shard_sockets)
            .saturating_mul(self.tcp.rx_buf_len.saturating_add(self.tcp.tx_buf_len))
    }
}

/// A seed that differs between processes and addresses (not cryptographic).
fn default_seed(ipv4: Ipv4Addr) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(u32::from(ipv4));
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_and_print() {
        let m: MacAddr = "02:00:0a:ff:01:9c".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:0a:ff:01:9c");
        assert!(m.is_unicast());
        assert!("02:00".parse::<MacAddr>().is_err());
        assert!("02:00:0a:ff:01:9c:00".parse::<MacAddr>().is_err());
        assert!("zz:00:0a:ff:01:9c".parse::<MacAddr>().is_err());
        assert!(!MacAddr([1, 0, 0, 0, 0, 0]).is_unicast());
        assert!(MacAddr::local_from_seed(7).is_unicast());
    }
}

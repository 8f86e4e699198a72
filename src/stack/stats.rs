//! The stack's counters: [`StackStats`] (frames, drops, connection bookkeeping) and
//! [`TcpStats`] (TCP events summed over the connections).

/// Counters of the stack (frames the adapter accepted or dropped, and TCP bookkeeping).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Frames handed to smoltcp.
    pub rx_frames: u64,
    /// Frames shorter than the headers they claim.
    pub rx_runt: u64,
    /// Frames longer than the MTU.
    pub rx_oversize: u64,
    /// Frames addressed to another MAC.
    pub rx_not_ours: u64,
    /// Frames of an unsupported ethertype (IPv6, VLAN, ...).
    pub rx_unsupported: u64,
    /// IPv4 packets with inconsistent headers or lengths.
    pub rx_bad_ipv4: u64,
    /// IPv4 fragments (not supported: TCP segments fit the MTU).
    pub rx_fragment: u64,
    /// Frames with a wrong IPv4 or TCP checksum.
    pub rx_bad_checksum: u64,
    /// Connection requests (SYN) dropped because every socket armed for the port was taken;
    /// the client retries, as with a full kernel backlog.
    pub rx_syn_backlog_full: u64,
    /// Frames dropped because their shard's receive queue was full.
    pub rx_queue_full: u64,
    /// TCP segments of a flow this per-core shard does not serve (not a SYN), dropped: the
    /// flow may be another shard's (see [`CoreShards`](super::CoreShards)). Always 0 for a
    /// stack that is not in a set of per-core shards.
    pub rx_misdirected: u64,
    /// ARP copies this per-core shard could not post to another shard (its inbox was full).
    pub arp_fanout_dropped: u64,
    /// Socket shards polled (each `poll` polls only the shards with work).
    pub shard_polls: u64,
    /// Frames handed to the device.
    pub tx_frames: u64,
    /// Frames smoltcp built while the device had no buffer: dropped (TCP retransmits).
    pub tx_nobuf: u64,
    /// Times the transmit queue was full and smoltcp was told to wait.
    pub tx_queue_full: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections opened with [`Stack::connect`](super::Stack::connect).
    pub connected: u64,
    /// Times a listener could not re-arm because every socket was in use.
    pub sockets_exhausted: u64,
    /// Sockets reset because they lingered past `close_timeout` after being released.
    pub close_timeouts: u64,
    /// Half-open connections evicted because a new SYN found the backlog full: the oldest go
    /// first, and only once older than four smoothed handshake times (1 ms to 1 s; 10 ms
    /// before any was timed), or 1 s for an address that completed a handshake in the last
    /// 10 s, so a burst of a real client's connections does not evict itself.
    pub half_open_evicted: u64,
    /// Half-open connections dropped because their peer's address never answered ARP.
    pub half_open_unreachable: u64,
    /// Connections reset after `TcpConfig::idle_timeout` without data moving.
    pub idle_reaped: u64,
}

/// TCP events summed over the connections of a stack ([`Stack::tcp_stats`](super::Stack::tcp_stats)): why data was
/// sent again, what loss recovery did, and what was refused.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Data segments sent for the first time.
    pub segments_sent: u64,
    /// Segments resent because the retransmission timer expired.
    pub retransmits_rto: u64,
    /// Segments resent after three duplicate ACKs or a partial ACK (peers without SACK).
    pub retransmits_fast: u64,
    /// Segments resent because SACK showed them lost (RACK, RFC 8985).
    pub retransmits_sack: u64,
    /// Tail loss probes sent (RFC 8985): a round trip's silence at the end of a flight.
    pub tail_loss_probes: u64,
    /// Retransmissions the peer reported it already had (D-SACK): spurious.
    pub spurious_retransmits: u64,
    /// Retransmission timeouts.
    pub rto_expirations: u64,
    /// Loss recovery episodes entered without a timeout.
    pub fast_recoveries: u64,
    /// Loss episodes undone: the peer reported every retransmission in them spurious.
    pub recoveries_undone: u64,
    /// SACK blocks ignored as invalid (reversed, outside the data in flight).
    pub sack_blocks_ignored: u64,
    /// Segments answered with a challenge ACK or dropped under RFC 5961 (a RST or SYN not at
    /// the expected sequence number, an ACK of data never sent).
    pub challenge_acks: u64,
    /// Duplicate segments received (reported to the peer as D-SACK).
    pub duplicates_received: u64,
    /// Handshakes given up after `TcpConfig::synack_retries` SYN|ACKs (half-open connections
    /// nobody completed), and connects whose SYN went unanswered.
    pub handshake_timeouts: u64,
    /// Bytes of our data the peers acknowledged.
    pub bytes_acked: u64,
    /// In-order payload bytes received from the peers.
    pub bytes_received: u64,
}

impl TcpStats {
    /// All retransmissions of data, whatever the cause.
    pub fn retransmits(&self) -> u64 {
        self.retransmits_rto + self.retransmits_fast + self.retransmits_sack
    }

    pub(super) fn add_counters(&mut self, c: &smoltcp::socket::tcp::Counters) {
        self.segments_sent += c.segments_sent;
        self.retransmits_rto += c.retransmits_rto;
        self.retransmits_fast += c.retransmits_fast;
        self.retransmits_sack += c.retransmits_sack;
        self.tail_loss_probes += c.tail_loss_probes;
        self.spurious_retransmits += c.spurious_retransmits;
        self.rto_expirations += c.rto_expirations;
        self.fast_recoveries += c.fast_recoveries;
        self.recoveries_undone += c.recoveries_undone;
        self.sack_blocks_ignored += c.sack_blocks_ignored;
        self.challenge_acks += c.challenge_acks;
        self.duplicates_received += c.duplicates_received;
        self.handshake_timeouts += c.handshake_timeouts;
        self.bytes_acked += c.bytes_acked;
        self.bytes_received += c.bytes_received;
    }
}

impl std::fmt::Display for TcpStats {
    /// In words: `381681 segments sent, 0 retransmitted (timer 0, duplicate ACKs 0, SACK 0; 7
    /// tail loss probes, 0 spurious), 0 timeouts, 0 fast recoveries, 2 duplicates received,
    /// 0 challenge ACKs, 0 handshakes timed out; 21.6 MB acknowledged, 1578.1 MB received`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} segments sent, {} retransmitted (timer {}, duplicate ACKs {}, SACK {}; {} tail \
             loss probes, {} spurious), {} timeouts, {} fast recoveries, {} duplicates received, \
             {} challenge ACKs, {} handshakes timed out; {:.1} MB acknowledged, {:.1} MB received",
            self.segments_sent,
            self.retransmits(),
            self.retransmits_rto,
            self.retransmits_fast,
            self.retransmits_sack,
            self.tail_loss_probes,
            self.spurious_retransmits,
            self.rto_expirations,
            self.fast_recoveries,
            self.duplicates_received,
            self.challenge_acks,
            self.handshake_timeouts,
            self.bytes_acked as f64 / 1e6,
            self.bytes_received as f64 / 1e6
        )
    }
}

impl StackStats {
    /// Adds `other`'s counters to these (per-core shards summed).
    pub fn add(&mut self, other: &StackStats) {
        add_counters!(StackStats, self, other; rx_frames, rx_runt, rx_oversize, rx_not_ours, rx_unsupported, rx_bad_ipv4, rx_fragment, rx_bad_checksum, rx_syn_backlog_full, rx_queue_full, rx_misdirected, arp_fanout_dropped, shard_polls, tx_frames, tx_nobuf, tx_queue_full, accepted, connected, sockets_exhausted, close_timeouts, half_open_evicted, half_open_unreachable, idle_reaped);
    }

    /// All frames dropped as malformed or not for us.
    pub fn rx_dropped(&self) -> u64 {
        self.rx_runt
            + self.rx_oversize
            + self.rx_not_ours
            + self.rx_unsupported
            + self.rx_bad_ipv4
            + self.rx_fragment
            + self.rx_bad_checksum
            + self.rx_syn_backlog_full
            + self.rx_queue_full
            + self.rx_misdirected
    }
}

impl TcpStats {
    /// Adds `other`'s counters to these (per-core shards summed).
    pub fn add(&mut self, other: &TcpStats) {
        add_counters!(TcpStats, self, other; segments_sent, retransmits_rto, retransmits_fast, retransmits_sack, tail_loss_probes, spurious_retransmits, rto_expirations, fast_recoveries, recoveries_undone, sack_blocks_ignored, challenge_acks, duplicates_received, handshake_timeouts, bytes_acked, bytes_received);
    }
}

//! The stack's sockets as `ss -ti` shows a kernel's: [`Stack::connections`] lists each one
//! (peer, detailed TCP state, queues, bytes, RTT, congestion window, retransmissions), and
//! [`Stack::connection_states`] only counts them by state, for metrics.
//!
//! Both walk every socket slot of every shard (O(sockets)) and allocate nothing but the
//! growth of the caller's `Vec`: they are meant for an operator's request or a periodic
//! metrics snapshot, not for every poll.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

use crate::dev::PacketDevice;
use crate::time::Instant;

use super::sockets::v4_endpoint;
use super::Stack;

/// The detailed TCP state of a socket that is not closed (RFC 9293's state machine; the
/// coarse [`super::ConnState`] folds these together).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    /// Waiting for a SYN (one of a listener's armed sockets).
    Listen,
    /// Our SYN sent, waiting for the SYN|ACK.
    SynSent,
    /// The peer's SYN answered, waiting for its ACK.
    SynReceived,
    /// Both directions open.
    Established,
    /// We closed; our FIN not yet acknowledged.
    FinWait1,
    /// We closed and our FIN was acknowledged; waiting for the peer's FIN.
    FinWait2,
    /// The peer closed; we may still send.
    CloseWait,
    /// Both closed at once; waiting for the ACK of our FIN.
    Closing,
    /// The peer closed, then we did; waiting for the ACK of our FIN.
    LastAck,
    /// Both closed; lingering for stray segments.
    TimeWait,
}

impl TcpState {
    /// How many states there are (`TcpState as usize` is below it).
    pub const COUNT: usize = 10;

    /// Every state, in `TcpState as usize` order.
    pub const ALL: [TcpState; TcpState::COUNT] = [
        TcpState::Listen,
        TcpState::SynSent,
        TcpState::SynReceived,
        TcpState::Established,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::CloseWait,
        TcpState::Closing,
        TcpState::LastAck,
        TcpState::TimeWait,
    ];

    /// The state as `ss` spells it: `LISTEN`, `SYN-SENT`, `SYN-RECV`, `ESTAB`, `FIN-WAIT-1`,
    /// `FIN-WAIT-2`, `CLOSE-WAIT`, `CLOSING`, `LAST-ACK`, `TIME-WAIT`.
    pub fn name(&self) -> &'static str {
        match self {
            TcpState::Listen => "LISTEN",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynReceived => "SYN-RECV",
            TcpState::Established => "ESTAB",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::Closing => "CLOSING",
            TcpState::LastAck => "LAST-ACK",
            TcpState::TimeWait => "TIME-WAIT",
        }
    }

    /// smoltcp's state, `None` for CLOSED.
    fn from_smoltcp(s: tcp::State) -> Option<TcpState> {
        use tcp::State::*;
        Some(match s {
            Closed => return None,
            Listen => TcpState::Listen,
            SynSent => TcpState::SynSent,
            SynReceived => TcpState::SynReceived,
            Established => TcpState::Established,
            FinWait1 => TcpState::FinWait1,
            FinWait2 => TcpState::FinWait2,
            CloseWait => TcpState::CloseWait,
            Closing => TcpState::Closing,
            LastAck => TcpState::LastAck,
            TimeWait => TcpState::TimeWait,
        })
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// One socket of the stack as `ss -ti` would show it: a connection, or one of a listener's
/// armed sockets (a listener with a backlog of N shows N `LISTEN` entries per shard).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Our address and port (`0.0.0.0:port` for a listening socket, which takes any of the
    /// stack's addresses, as `ss` shows it).
    pub local: SocketAddrV4,
    /// The peer's address and port; `None` for a listening socket.
    pub remote: Option<SocketAddrV4>,
    /// The detailed TCP state.
    pub state: TcpState,
    /// Bytes received and not yet read by the application (`ss`'s Recv-Q).
    pub recv_queue: usize,
    /// Bytes queued for sending and not yet acknowledged, sent or not (`ss`'s Send-Q).
    pub send_queue: usize,
    /// Size of the receive buffer.
    pub recv_buf_len: usize,
    /// Size of the send buffer.
    pub send_buf_len: usize,
    /// In-order payload bytes received from the peer (buffered or given to a receive sink).
    pub bytes_received: u64,
    /// Bytes of our data the peer acknowledged.
    pub bytes_acked: u64,
    /// Data segments sent for the first time.
    pub segments_sent: u64,
    /// Segments sent again, whatever the cause: the retransmission timer, duplicate or partial
    /// ACKs, SACK/RACK, and tail loss probes (each resends the last segment).
    pub retransmits: u64,
    /// Retransmission timeouts.
    pub rto_expirations: u64,
    /// Smoothed round-trip time; `None` before the first measurement.
    pub srtt: Option<Duration>,
    /// Round-trip time variance (RFC 6298's RTTVAR); `None` before the first measurement.
    pub rttvar: Option<Duration>,
    /// The current retransmission timeout (backed off after timeouts).
    pub rto: Duration,
    /// Congestion window in bytes (`usize::MAX` without congestion control).
    pub cwnd: usize,
    /// Bytes deemed in the network, as the congestion window counts them (sent and not
    /// acknowledged, less what the peer selectively acknowledged or is deemed lost).
    pub in_flight: usize,
    /// The largest segment payload: the least of our MSS (MTU - 40) and the peer's (TCP
    /// options aside). 0 for a listening socket; before the peer's SYN is seen it assumes
    /// smoltcp's default peer MSS of 536.
    pub mss: usize,
    /// How long ago the application last moved data on the connection (or it was opened,
    /// accepted, or its listener armed it): the clock of `TcpConfig::idle_timeout`.
    pub idle: Duration,
}

impl ConnInfo {
    /// The column header matching [`ConnInfo`]'s `Display` (the first five columns; the
    /// `key:value` details follow unaligned, as in `ss -ti`).
    pub const HEADER: &'static str =
        "State      Recv-Q Send-Q Local-Address:Port    Peer-Address:Port     Details";

    fn of(
        sock: &tcp::Socket<'_>,
        active_at: Instant,
        now: Instant,
        local_mss: usize,
    ) -> Option<Self> {
        let state = TcpState::from_smoltcp(sock.state())?;
        let local = match sock.local_endpoint().and_then(v4_endpoint) {
            Some(a) => a,
            None => {
                let l = sock.listen_endpoint();
                let ip = match l.addr {
                    Some(IpAddress::Ipv4(a)) => a,
                    None => Ipv4Addr::UNSPECIFIED,
                };
                SocketAddrV4::new(ip, l.port)
            }
        };
        let remote = sock.remote_endpoint().and_then(v4_endpoint);
        let c = sock.counters();
        let mss = if state == TcpState::Listen {
            0
        } else {
            local_mss.min(sock.remote_mss())
        };
        Some(ConnInfo {
            local,
            remote,
            state,
            recv_queue: sock.recv_queue(),
            send_queue: sock.send_queue(),
            recv_buf_len: sock.recv_capacity(),
            send_buf_len: sock.send_capacity(),
            bytes_received: c.bytes_received,
            bytes_acked: c.bytes_acked,
            segments_sent: c.segments_sent,
            retransmits: c.retransmits() + c.tail_loss_probes,
            rto_expirations: c.rto_expirations,
            srtt: sock.smoothed_rtt().map(Duration::from),
            rttvar: sock.rtt_variance().map(Duration::from),
            rto: sock.rto().into(),
            cwnd: sock.congestion_window(),
            in_flight: sock.bytes_in_flight(),
            mss,
            idle: now.saturating_duration_since(active_at),
        })
    }
}

/// A duration in milliseconds as `ss` prints them: up to three decimals, trailing zeros
/// dropped (`0.052`, `10`, `1.5`).
struct Ms(Duration);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        let (whole, mut frac, mut digits) = (us / 1000, (us % 1000) as u32, 3);
        write!(f, "{whole}")?;
        if frac == 0 {
            return Ok(());
        }
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        write!(f, ".{frac:0digits$}")
    }
}

/// One line, `ss -ti`'s columns and then its details in `key:value` form, durations in
/// milliseconds:
///
/// ```text
/// ESTAB           0      0 10.1.0.2:7000         10.1.0.1:40112        rtt:0.052/0.011 ms rto:10 ms cwnd:14600 inflight:0 mss:1460 bytes_acked:1234 bytes_received:5678 segs_out:12 retrans:0 timeouts:0 rcv_buf:65536 snd_buf:65536 idle:3 ms
/// ```
///
/// The peer of a listening socket is `*:*`; `rtt:` is left out before the first measurement,
/// `cwnd:` without congestion control. `segs_out` counts data segments sent for the first
/// time, `retrans` every segment sent again, `timeouts` retransmission timeouts.
impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let remote = match self.remote {
            Some(r) => r.to_string(),
            None => "*:*".to_string(),
        };
        write!(
            f,
            "{:<10} {:>6} {:>6} {:<21} {:<21}",
            self.state,
            self.recv_queue,
            self.send_queue,
            self.local.to_string(),
            remote
        )?;
        if let (Some(srtt), Some(var)) = (self.srtt, self.rttvar) {
            write!(f, " rtt:{}/{} ms", Ms(srtt), Ms(var))?;
        }
        write!(f, " rto:{} ms", Ms(self.rto))?;
        if self.cwnd != usize::MAX {
            write!(f, " cwnd:{}", self.cwnd)?;
        }
        write!(
            f,
            " inflight:{} mss:{} bytes_acked:{} bytes_received:{} segs_out:{} retrans:{} \
             timeouts:{} rcv_buf:{} snd_buf:{} idle:{} ms",
            self.in_flight,
            self.mss,
            self.bytes_acked,
            self.bytes_received,
            self.segments_sent,
            self.retransmits,
            self.rto_expirations,
            self.recv_buf_len,
            self.send_buf_len,
            Ms(self.idle)
        )
    }
}

/// How many of the stack's sockets are in each TCP state ([`Stack::connection_states`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnStateCounts {
    by_state: [usize; TcpState::COUNT],
    closed: usize,
}

impl ConnStateCounts {
    /// Adds `other`'s counts to these (per-core shards summed).
    pub fn add_counts(&mut self, other: &ConnStateCounts) {
        for (a, b) in self.by_state.iter_mut().zip(&other.by_state) {
            *a += b;
        }
        self.closed += other.closed;
    }

    /// Sockets in state `s`.
    pub fn get(&self, s: TcpState) -> usize {
        self.by_state[s as usize]
    }

    /// Sockets free or closed (not listed by [`Stack::connections`]).
    pub fn closed(&self) -> usize {
        self.closed
    }

    /// Sockets in any state but closed: as many as [`Stack::connections`] lists.
    pub fn open(&self) -> usize {
        self.by_state.iter().sum()
    }

    /// Every state with its count, in `TcpState as usize` order (zeros included).
    pub fn iter(&self) -> impl Iterator<Item = (TcpState, usize)> {
        let counts = *self;
        TcpState::ALL.into_iter().map(move |s| (s, counts.get(s)))
    }

    fn add(&mut self, sock: Option<&tcp::Socket<'_>>) {
        match sock.and_then(|s| TcpState::from_smoltcp(s.state())) {
            Some(s) => self.by_state[s as usize] += 1,
            None => self.closed += 1,
        }
    }
}

impl<D: PacketDevice> Stack<D> {
    /// Fills `out` (cleared first) with every socket that is not closed: listening sockets and
    /// connections (the application's, those waiting to be accepted, and released ones still
    /// closing), shard by shard in slot order. `now` dates [`ConnInfo::idle`]. Allocates
    /// nothing but `out`'s growth.
    pub fn connections(&mut self, now: Instant, out: &mut Vec<ConnInfo>) {
        out.clear();
        let local_mss = self.local_mss();
        for shard in &self.shards {
            shard.table.for_each_slot(|sock, active_at| {
                if let Some(info) = sock.and_then(|s| ConnInfo::of(s, active_at, now, local_mss)) {
                    out.push(info);
                }
            });
        }
    }

    /// The sockets counted by TCP state, without building the list (for metrics such as
    /// "connections by state"): `get(s)` agrees with the entries of [`Stack::connections`] in
    /// state `s`, and `closed()` counts the free and closed sockets.
    pub fn connection_states(&mut self) -> ConnStateCounts {
        let mut counts = ConnStateCounts::default();
        for shard in &self.shards {
            shard.table.for_each_slot(|sock, _| counts.add(sock));
        }
        counts
    }

    /// Our MSS: the IP MTU less 40 bytes of IPv4 and TCP headers.
    fn local_mss(&self) -> usize {
        self.cfg.mtu.unwrap_or_else(|| self.io.dev.caps().mtu) - 40
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::sim::{Faults, SimConfig};
    use crate::stack::sim_pair::{self, SimPair};
    use crate::stack::{ConnError, ConnId};

    const A: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
    const PORT: u16 = 7000;
    const BACKLOG: usize = 2;
    const SOCKETS: usize = 8;

    /// Two stacks on the simulated link (`sim_pair`), with what these tests add.
    type Net = SimPair;

    impl SimPair {
        fn seeded(seed: u64) -> Net {
            SimPair::new(
                SimConfig::default().with_seed(seed),
                sim_pair::config(A, seed, SOCKETS),
                sim_pair::config(B, seed + 1, SOCKETS),
            )
        }

        /// Sends `to_b` bytes from A to B and `to_a` from B to A, reads them all, and runs
        /// until both sides have every byte acknowledged.
        fn exchange(&mut self, s: ConnId, c: ConnId, to_b: usize, to_a: usize) {
            let data = vec![0x5a; to_b.max(to_a)];
            let mut buf = vec![0; 16 << 10];
            let (mut sent_a, mut sent_b, mut got_a, mut got_b) = (0, 0, 0, 0);
            self.run_until(Duration::from_secs(60), |a, b| {
                sent_a += a.send(c, &data[sent_a..to_b]).unwrap();
                sent_b += b.send(s, &data[sent_b..to_a]).unwrap();
                got_a += a.recv(c, &mut buf).unwrap();
                got_b += b.recv(s, &mut buf).unwrap();
                got_a == to_a
                    && got_b == to_b
                    && a.send_queue(c).unwrap() == 0
                    && b.send_queue(s).unwrap() == 0
            });
        }
    }

    fn established(list: &[ConnInfo]) -> Vec<&ConnInfo> {
        list.iter()
            .filter(|i| i.state == TcpState::Established)
            .collect()
    }

    /// `connection_states` agrees with the list, and every socket is counted once.
    fn check_counts<D: PacketDevice>(stack: &mut Stack<D>, list: &[ConnInfo]) {
        let counts = stack.connection_states();
        for (state, n) in counts.iter() {
            let listed = list.iter().filter(|i| i.state == state).count();
            assert_eq!(n, listed, "{state} counted {n}, listed {listed}");
        }
        assert_eq!(counts.open(), list.len());
        assert_eq!(counts.open() + counts.closed(), SOCKETS);
    }

    #[test]
    fn connections_show_both_ends_as_ss_does() {
        const TO_B: usize = 300_000;
        const TO_A: usize = 70_001;
        let mut net = Net::seeded(11);
        let (c, s) = net.connect(PORT, BACKLOG);
        net.exchange(s, c, TO_B, TO_A);
        let mut list = Vec::new();

        // The client: one connection, naming the server.
        net.a.connections(net.now, &mut list);
        assert_eq!(list.len(), 1, "{list:#?}");
        let ca = list[0].clone();
        assert_eq!(ca.state, TcpState::Established);
        assert_eq!(*ca.local.ip(), A);
        assert_eq!(ca.remote, Some(SocketAddrV4::new(B, PORT)));
        assert_eq!(ca.bytes_acked, TO_B as u64);
        assert_eq!(ca.bytes_received, TO_A as u64);
        assert!(ca.segments_sent >= (TO_B / 1460) as u64, "{ca:?}");
        assert_eq!((ca.recv_queue, ca.send_queue, ca.in_flight), (0, 0, 0));
        assert_eq!((ca.recv_buf_len, ca.send_buf_len), (64 << 10, 64 << 10));
        assert!(ca.srtt.is_some() && ca.rttvar.is_some(), "{ca:?}");
        assert!(ca.rto >= Duration::from_millis(10), "{ca:?}");
        assert!(ca.cwnd > 0 && ca.cwnd != usize::MAX, "{ca:?}");
        assert_eq!(ca.mss, 1460);
        assert_eq!(ca.retransmits, 0, "a clean link");
        check_counts(&mut net.a, &list);

        // The server: the connection, the other way round, and the listener's armed sockets.
        net.b.connections(net.now, &mut list);
        let conns = established(&list);
        assert_eq!(conns.len(), 1, "{list:#?}");
        let cb = conns[0].clone();
        assert_eq!(cb.local, SocketAddrV4::new(B, PORT));
        assert_eq!(cb.remote, Some(ca.local));
        assert_eq!(cb.bytes_acked, TO_A as u64);
        assert_eq!(cb.bytes_received, TO_B as u64);
        assert!(cb.srtt.is_some());
        let listening: Vec<_> = list
            .iter()
            .filter(|i| i.state == TcpState::Listen)
            .cloned()
            .collect();
        assert_eq!(listening.len(), BACKLOG, "{list:#?}");
        for l in &listening {
            assert_eq!(l.remote, None);
            assert_eq!(l.local, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT));
            assert_eq!((l.bytes_acked, l.bytes_received, l.mss), (0, 0, 0));
        }
        check_counts(&mut net.b, &list);

        // Idle time runs from the last data the application moved.
        net.a
            .connections(net.now + Duration::from_millis(250), &mut list);
        assert!(list[0].idle >= Duration::from_millis(250), "{:?}", list[0]);

        // One ss-like line.
        let line = ca.to_string();
        assert!(line.starts_with("ESTAB "), "{line}");
        for part in [
            format!(" {} ", ca.local),
            format!(" {B}:{PORT} "),
            format!(" bytes_acked:{TO_B} "),
            format!(" bytes_received:{TO_A} "),
            " rtt:".to_string(),
            " mss:1460 ".to_string(),
            " retrans:0 ".to_string(),
        ] {
            assert!(line.contains(&part), "{part:?} missing from {line}");
        }
        assert!(listening[0].to_string().contains(" *:* "));

        // Close from the client, then from the server: neither side stays ESTAB.
        net.a.close(c).unwrap();
        let mut buf = [0u8; 64];
        net.run_until(Duration::from_secs(5), |_, b| {
            b.recv(s, &mut buf) == Err(ConnError::Eof)
        });
        net.b.connections(net.now, &mut list);
        let cb = list.iter().find(|i| i.remote.is_some()).unwrap();
        assert_eq!(cb.state, TcpState::CloseWait);
        net.b.close(s).unwrap();
        net.run_until(Duration::from_secs(5), |a, b| {
            a.connection_states().get(TcpState::TimeWait) == 1
                && b.connection_states().get(TcpState::LastAck) == 0
        });
        net.a.connections(net.now, &mut list);
        assert!(established(&list).is_empty(), "{list:#?}");
        assert_eq!(list[0].state, TcpState::TimeWait);
        check_counts(&mut net.a, &list);
        net.b.connections(net.now, &mut list);
        assert!(established(&list).is_empty(), "{list:#?}");
        check_counts(&mut net.b, &list);
        assert_eq!(net.b.connection_states().get(TcpState::Established), 0);
    }

    #[test]
    fn loss_shows_retransmits_on_the_sender() {
        const TO_B: usize = 400_000;
        let mut net = Net::seeded(23);
        let (c, s) = net.connect(PORT, BACKLOG);
        net.link.set_faults(Faults::none().with_loss(0.05)).unwrap();
        net.exchange(s, c, TO_B, 0);
        let mut list = Vec::new();
        net.a.connections(net.now, &mut list);
        let ca = &list[0];
        assert!(ca.retransmits > 0, "{ca:?}");
        assert_eq!(ca.bytes_acked, TO_B as u64, "each byte counted once");
        assert!(ca.segments_sent >= (TO_B / 1460) as u64);
        let stats = net.a.tcp_stats();
        assert_eq!(
            ca.retransmits,
            stats.retransmits() + stats.tail_loss_probes,
            "the only connection"
        );
        net.b.connections(net.now, &mut list);
        let cb = established(&list)[0];
        assert_eq!(cb.bytes_received, TO_B as u64, "duplicates not counted");
        assert_eq!(cb.retransmits, 0, "B sent no data");
    }

    #[test]
    fn durations_print_as_ss_does() {
        let ms = |us| Ms(Duration::from_micros(us)).to_string();
        assert_eq!(ms(52), "0.052");
        assert_eq!(ms(10_000), "10");
        assert_eq!(ms(1_500), "1.5");
        assert_eq!(ms(0), "0");
        assert_eq!(TcpState::SynReceived.name(), "SYN-RECV");
        assert_eq!(format!("{:<6}|", TcpState::Established), "ESTAB |");
    }
}

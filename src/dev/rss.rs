//! Receive-side scaling (RSS): which receive queue of a NIC a TCP flow lands on, and how a
//! client picks its source port so that a connection's replies come back to its own queue.
//!
//! # RSS and the Toeplitz hash
//!
//! A NIC with several receive queues spreads incoming flows over them: for each received
//! packet it hashes some header fields with a secret *key* (the Toeplitz hash of Microsoft's
//! RSS specification, [`toeplitz`]) and looks the hash up in an *indirection table* (the
//! RETA), whose entries are queue numbers: the hash's low bits index the table
//! ([`RssConfig::queue_of`]). Every packet of a flow carries the same fields, so a flow always
//! lands on the same queue, and a shard that owns that queue sees all of it.
//!
//! The Toeplitz hash runs over the input bit by bit, most significant bit of the first byte
//! first: for every bit that is set, the 32 key bits starting at that bit's position are
//! XORed into the result. The key must therefore be 4 bytes longer than the input. It is
//! linear: the hash of `a ^ b` is the hash of `a` XORed with the hash of `b`, which lets a
//! precomputed table per input byte ([`RssConfig::hash_ipv4_tcp`]) replace the bit loop.
//!
//! # The input of an IPv4/TCP packet
//!
//! For IPv4/TCP, NICs hash 12 bytes, each field big-endian as it is on the wire, taken from
//! the packet *as received*: source address, destination address, source port, destination
//! port ([`ipv4_tcp_input`]). IPv4 without ports hashes the first 8 of them.
//!
//! # Choosing a source port: the reply direction
//!
//! A client opening a connection chooses its ephemeral source port freely; the other three
//! fields are given. The packets the NIC hashes for that connection are the *replies*: they
//! come from the remote, so their source is the remote address and port and their destination
//! is ours. The SYN we send is never hashed by our own NIC's RSS. [`pick_source_port`] thus
//! hashes (remote address, local address, remote port, candidate port) and keeps a candidate
//! whose hash the RETA maps to the wanted queue: about one port in `queues` qualifies. F-Stack
//! and Seastar choose their client ports the same way.
//!
//! # Keys
//!
//! [`MICROSOFT_KEY`] is the 40-byte key of Microsoft's specification and its verification
//! vectors, and the default of many drivers and of DPDK's testpmd. [`SYMMETRIC_KEY`] repeats
//! the 16 bits `0x6d5a`: the 32 key bits at any bit position then depend only on that
//! position modulo 16, so the hash depends only on the XOR of the input's 16-bit words and a
//! flow and its reverse (addresses and ports swapped) hash alike. It spreads flows less well
//! for the same reason.
//!
//! The choice holds only when the key and table given here are the device's own: read them
//! from the NIC (`ethtool -x`, DPDK's `rte_eth_dev_rss_hash_conf_get` and
//! `rte_eth_dev_rss_reta_query`) or set them on it; a NIC hashing with another key sends the
//! replies to queues this module did not predict.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;

/// Bytes of the IPv4/TCP hash input: two addresses and two ports.
pub const IPV4_TCP_INPUT_LEN: usize = 12;

/// The shortest key that can hash the IPv4/TCP input ([`IPV4_TCP_INPUT_LEN`] + 4 bytes).
pub const KEY_LEN_MIN: usize = IPV4_TCP_INPUT_LEN + 4;

/// Entries of the default indirection table, as Linux drivers and DPDK build it.
pub const DEFAULT_RETA_LEN: usize = 128;

/// The 40-byte key of Microsoft's RSS specification (the one its verification vectors use),
/// the default of DPDK's testpmd and of many drivers.
pub const MICROSOFT_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// A 40-byte key that hashes a flow and its reverse alike: `0x6d5a` twenty times.
pub const SYMMETRIC_KEY: [u8; 40] = {
    let mut k = [0u8; 40];
    let mut i = 0;
    while i < 40 {
        k[i] = if i % 2 == 0 { 0x6d } else { 0x5a };
        i += 1;
    }
    k
};

/// The Toeplitz hash of `input` with `key`, as Microsoft's RSS specification defines it and
/// NICs compute it. Any key of at least `input.len() + 4` bytes works: 40 bytes (most NICs)
/// and 52 (Intel i40e, ice) both do; key bytes past `input.len() + 4` take no part. Allocates
/// nothing.
///
/// # Panics
///
/// When `key` is shorter than `input.len() + 4` bytes: a programming error (the key does not
/// cover the input), not a condition to handle at run time. [`RssConfig`] checks its key once,
/// when built.
pub fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    assert!(
        key.len() >= input.len() + 4,
        "Toeplitz key of {} bytes is too short for {} input bytes: it needs at least {}",
        key.len(),
        input.len(),
        input.len() + 4
    );
    let mut hash = 0;
    // The 32 key bits starting at the current input bit.
    let mut window = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    for (i, &byte) in input.iter().enumerate() {
        let incoming = key[i + 4];
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                hash ^= window;
            }
            window = (window << 1) | u32::from((incoming >> (7 - bit)) & 1);
        }
    }
    hash
}

/// The RSS hash input of an IPv4/TCP packet whose header says `src`:`src_port` to
/// `dst`:`dst_port`, in the NIC's order: source address, destination address, source port,
/// destination port, all big-endian. Give the fields as the packet to be hashed carries them
/// (for the replies of a connection we open: the remote is the source).
pub fn ipv4_tcp_input(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
) -> [u8; IPV4_TCP_INPUT_LEN] {
    let mut out = [0u8; IPV4_TCP_INPUT_LEN];
    out[0..4].copy_from_slice(&src.octets());
    out[4..8].copy_from_slice(&dst.octets());
    out[8..10].copy_from_slice(&src_port.to_be_bytes());
    out[10..12].copy_from_slice(&dst_port.to_be_bytes());
    out
}

/// Why an [`RssConfig`] cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RssError {
    /// The key cannot hash the IPv4/TCP input.
    #[error(
        "RSS key of {len} bytes is too short: the IPv4/TCP hash needs at least {KEY_LEN_MIN} \
         (NICs use 40, or 52 for Intel i40e/ice)"
    )]
    KeyTooShort {
        /// The key's length.
        len: usize,
    },
    /// A device without receive queues.
    #[error("RSS queue count is 0: a device has at least one receive queue")]
    NoQueues,
    /// An indirection table without entries.
    #[error(
        "RSS indirection table is empty: it needs a power-of-two number of entries \
         ({DEFAULT_RETA_LEN} is usual)"
    )]
    EmptyReta,
    /// An indirection table whose length is not a power of two.
    #[error(
        "RSS indirection table of {len} entries: the length must be a power of two \
         (the hash's low bits index it), such as {DEFAULT_RETA_LEN}"
    )]
    RetaNotPowerOfTwo {
        /// The table's length.
        len: usize,
    },
    /// A default table too short to name every queue.
    #[error(
        "RSS indirection table of {len} entries cannot reach {queues} queues: \
         it needs at least one entry per queue"
    )]
    RetaTooShort {
        /// The table's length.
        len: usize,
        /// The queue count.
        queues: u16,
    },
}

/// A device's RSS setting for IPv4/TCP: its key and indirection table (RETA), with the key's
/// hash tables precomputed. Built once (it allocates 12 KiB for the tables); hashing and
/// looking up allocate nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct RssConfig {
    key: Vec<u8>,
    reta: Vec<u16>,
    /// Per input byte position, the hash of each byte value there with the rest zero.
    table: Box<[[u32; 256]; IPV4_TCP_INPUT_LEN]>,
}

impl RssConfig {
    /// `key` with the default indirection table of [`DEFAULT_RETA_LEN`] entries over
    /// `queues` queues (entry `i` names queue `i % queues`, as Linux drivers and DPDK set it up).
    pub fn new(key: &[u8], queues: u16) -> Result<RssConfig, RssError> {
        RssConfig::with_reta_len(key, queues, DEFAULT_RETA_LEN)
    }

    /// `key` with a default indirection table of `reta_len` entries (a power of two, at least
    /// `queues`) over `queues` queues: entry `i` names queue `i % queues`.
    pub fn with_reta_len(key: &[u8], queues: u16, reta_len: usize) -> Result<RssConfig, RssError> {
        if queues == 0 {
            return Err(RssError::NoQueues);
        }
        check_reta_len(reta_len)?;
        if reta_len < usize::from(queues) {
            return Err(RssError::RetaTooShort {
                len: reta_len,
                queues,
            });
        }
        let reta = (0..reta_len)
            .map(|i| (i % usize::from(queues)) as u16)
            .collect();
        RssConfig::with_reta(key, reta)
    }

    /// `key` with the indirection table `reta` as the device has it (read from the NIC or set
    /// on it): entry `i` is the queue of the hashes whose low bits are `i`. Its length must be
    /// a power of two.
    pub fn with_reta(key: &[u8], reta: Vec<u16>) -> Result<RssConfig, RssError> {
        if key.len() < KEY_LEN_MIN {
            return Err(RssError::KeyTooShort { len: key.len() });
        }
        check_reta_len(reta.len())?;
        let mut table = Box::new([[0u32; 256]; IPV4_TCP_INPUT_LEN]);
        for (pos, row) in table.iter_mut().enumerate() {
            // The hash of byte value `b` at `pos`: that of `b` without its lowest set bit,
            // XOR the key window of that bit (the hash is linear in its input).
            for b in 1..256usize {
                let low = b.trailing_zeros() as usize;
                row[b] = row[b & (b - 1)] ^ key_window(key, pos * 8 + 7 - low);
            }
        }
        Ok(RssConfig {
            key: key.to_vec(),
            reta,
            table,
        })
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The indirection table: entry `i` is the queue of the hashes whose low bits are `i`.
    pub fn reta(&self) -> &[u16] {
        &self.reta
    }

    /// True when some entry of the indirection table names `queue`: flows can land on it.
    pub fn has_queue(&self, queue: u16) -> bool {
        self.reta.contains(&queue)
    }

    /// The Toeplitz hash of an IPv4/TCP input with this key (as [`toeplitz`] computes it,
    /// from the precomputed tables).
    pub fn hash_ipv4_tcp(&self, input: &[u8; IPV4_TCP_INPUT_LEN]) -> u32 {
        input
            .iter()
            .zip(self.table.iter())
            .fold(0, |h, (&b, row)| h ^ row[usize::from(b)])
    }

    /// The queue the device gives a packet whose RSS hash is `hash`: the indirection table's
    /// entry at the hash's low bits.
    pub fn queue_of(&self, hash: u32) -> u16 {
        self.reta[hash as usize & (self.reta.len() - 1)]
    }

    /// What the destination port `port` adds to an IPv4/TCP hash.
    fn dst_port_hash(&self, port: u16) -> u32 {
        let [hi, lo] = port.to_be_bytes();
        self.table[10][usize::from(hi)] ^ self.table[11][usize::from(lo)]
    }
}

impl fmt::Debug for RssConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Hex<'a>(&'a [u8]);
        impl fmt::Debug for Hex<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
        f.debug_struct("RssConfig")
            .field("key", &Hex(&self.key))
            .field("reta", &self.reta)
            .finish_non_exhaustive()
    }
}

fn check_reta_len(len: usize) -> Result<(), RssError> {
    if len == 0 {
        Err(RssError::EmptyReta)
    } else if !len.is_power_of_two() {
        Err(RssError::RetaNotPowerOfTwo { len })
    } else {
        Ok(())
    }
}

/// The 32 bits of `key` starting at bit `bit` (most significant bit of byte 0 first); bits
/// past the key's end read as 0.
fn key_window(key: &[u8], bit: usize) -> u32 {
    let at = bit / 8;
    let mut w = 0u64;
    for k in 0..5 {
        w = (w << 8) | u64::from(key.get(at + k).copied().unwrap_or(0));
    }
    (w >> (8 - bit % 8)) as u32
}

/// A stack that owns one receive queue of a multi-queue device: which device setting and
/// which queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RssSteer {
    /// The device's RSS key and indirection table, as the NIC uses them.
    pub rss: RssConfig,
    /// The receive queue this stack owns; some entry of `rss`'s table must name it.
    pub queue: u16,
}

/// The first source port, walking `range` upwards from `start` and wrapping inside it, for a
/// connection from `local` to `remote` whose *replies* the device sends to `want_queue`, and
/// that `taken` does not refuse; `None` when no port of the range qualifies. Each port is
/// looked at once at most, and `taken` is asked only about ports that hash to `want_queue`.
/// A `start` outside the range starts at its first port; port 0 is never chosen. Allocates
/// nothing.
///
/// The replies are what the device hashes for this connection: they come from `remote`, so
/// the hash input is (remote address, local address, remote port, candidate port). The
/// packets we send go out whatever their hash. About one port in as many as the queues
/// qualifies, so a range of N ports offers about N / queues connections to one remote.
pub fn pick_source_port(
    cfg: &RssConfig,
    local: Ipv4Addr,
    remote: SocketAddrV4,
    want_queue: u16,
    start: u16,
    range: RangeInclusive<u16>,
    mut taken: impl FnMut(u16) -> bool,
) -> Option<u16> {
    let (first, last) = (*range.start(), *range.end());
    if first > last || !cfg.has_queue(want_queue) {
        return None;
    }
    // The hash with the candidate port's bytes zero; each candidate XORs its own part in.
    let fixed = cfg.hash_ipv4_tcp(&ipv4_tcp_input(*remote.ip(), local, remote.port(), 0));
    let mut port = if range.contains(&start) { start } else { first };
    for _ in 0..=u32::from(last - first) {
        if port != 0 && cfg.queue_of(fixed ^ cfg.dst_port_hash(port)) == want_queue && !taken(port)
        {
            return Some(port);
        }
        port = if port == last { first } else { port + 1 };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    /// Microsoft's "Verifying the RSS Hash Calculation" IPv4 vectors: destination, source
    /// (as the specification lists them), the IPv4-only hash, the IPv4/TCP hash.
    const MS_VECTORS: [(&str, &str, u32, u32); 5] = [
        (
            "161.142.100.80:1766",
            "66.9.149.187:2794",
            0x323e_8fc2,
            0x51cc_c178,
        ),
        (
            "65.69.140.83:4739",
            "199.92.111.2:14230",
            0xd718_262a,
            0xc626_b0ea,
        ),
        (
            "12.22.207.184:38024",
            "24.19.198.95:12898",
            0xd2d0_a5de,
            0x5c2b_394a,
        ),
        (
            "209.142.163.6:2217",
            "38.27.205.30:48228",
            0x8298_9176,
            0xafc7_327f,
        ),
        (
            "202.188.127.2:1303",
            "153.39.163.191:44251",
            0x5d18_09c5,
            0x10e8_28a2,
        ),
    ];

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn microsoft_vectors_ipv4_only() {
        for (dst, src, want, _) in MS_VECTORS {
            let (dst, src) = (addr(dst), addr(src));
            let mut input = [0u8; 8];
            input[..4].copy_from_slice(&src.ip().octets());
            input[4..].copy_from_slice(&dst.ip().octets());
            assert_eq!(
                toeplitz(&MICROSOFT_KEY, &input),
                want,
                "{src} -> {dst}: got {:#010x}",
                toeplitz(&MICROSOFT_KEY, &input)
            );
        }
    }

    #[test]
    fn microsoft_vectors_ipv4_tcp() {
        let cfg = RssConfig::new(&MICROSOFT_KEY, 1).unwrap();
        for (dst, src, _, want) in MS_VECTORS {
            let (dst, src) = (addr(dst), addr(src));
            let input = ipv4_tcp_input(*src.ip(), *dst.ip(), src.port(), dst.port());
            assert_eq!(toeplitz(&MICROSOFT_KEY, &input), want, "{src} -> {dst}");
            assert_eq!(cfg.hash_ipv4_tcp(&input), want, "{src} -> {dst}, tables");
        }
    }

    #[test]
    fn key_bytes_past_the_input_take_no_part() {
        // A 52-byte key (i40e/ice) that starts like the Microsoft key hashes 12 bytes alike.
        let mut long = [0xa5u8; 52];
        long[..40].copy_from_slice(&MICROSOFT_KEY);
        let (dst, src, _, want) = MS_VECTORS[0];
        let (dst, src) = (addr(dst), addr(src));
        let input = ipv4_tcp_input(*src.ip(), *dst.ip(), src.port(), dst.port());
        assert_eq!(toeplitz(&long, &input), want);
        assert_eq!(toeplitz(&long[..16], &input), want, "the shortest key");
        assert_eq!(
            RssConfig::new(&long, 4).unwrap().hash_ipv4_tcp(&input),
            want
        );
        assert_eq!(toeplitz(&MICROSOFT_KEY, &[]), 0);
    }

    #[test]
    #[should_panic(expected = "Toeplitz key of 15 bytes is too short for 12 input bytes")]
    fn toeplitz_refuses_a_short_key() {
        toeplitz(&MICROSOFT_KEY[..15], &[0; 12]);
    }

    #[test]
    fn symmetric_key_hashes_the_xor_of_16_bit_words() {
        // What the module documentation says of the symmetric key, on one input.
        let input = ipv4_tcp_input(
            Ipv4Addr::new(10, 1, 2, 3),
            Ipv4Addr::new(192, 168, 7, 9),
            40000,
            443,
        );
        let fold = input
            .chunks(2)
            .fold([0u8; 2], |a, w| [a[0] ^ w[0], a[1] ^ w[1]]);
        assert_eq!(
            toeplitz(&SYMMETRIC_KEY, &input),
            toeplitz(&SYMMETRIC_KEY[..6], &fold)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// The symmetric key hashes a 4-tuple and its reverse alike, IPv4-only too.
        #[test]
        fn symmetric_key_hashes_both_directions_alike(
            a in any::<u32>(), b in any::<u32>(), pa in any::<u16>(), pb in any::<u16>(),
        ) {
            let (a, b) = (Ipv4Addr::from(a), Ipv4Addr::from(b));
            let there = ipv4_tcp_input(a, b, pa, pb);
            let back = ipv4_tcp_input(b, a, pb, pa);
            prop_assert_eq!(toeplitz(&SYMMETRIC_KEY, &there), toeplitz(&SYMMETRIC_KEY, &back));
            prop_assert_eq!(
                toeplitz(&SYMMETRIC_KEY, &there[..8]),
                toeplitz(&SYMMETRIC_KEY, &back[..8])
            );
        }

        /// The precomputed tables give the bit loop's hash, for any key and input.
        #[test]
        fn tables_agree_with_the_bit_loop(
            key in proptest::collection::vec(any::<u8>(), KEY_LEN_MIN..=52),
            input in any::<[u8; IPV4_TCP_INPUT_LEN]>(),
        ) {
            let cfg = RssConfig::new(&key, 1).unwrap();
            prop_assert_eq!(cfg.hash_ipv4_tcp(&input), toeplitz(&key, &input));
        }
    }

    #[test]
    fn default_reta_is_round_robin() {
        let cfg = RssConfig::new(&MICROSOFT_KEY, 3).unwrap();
        assert_eq!(cfg.reta().len(), DEFAULT_RETA_LEN);
        assert!(cfg
            .reta()
            .iter()
            .enumerate()
            .all(|(i, &q)| q == (i % 3) as u16));
        assert_eq!(cfg.queue_of(0x1234_5600 | 5), 2);
        assert_eq!(
            cfg.queue_of(0xffff_ff80 | 6),
            0,
            "only the low 7 bits count"
        );
        assert!(cfg.has_queue(2) && !cfg.has_queue(3));
        let cfg = RssConfig::with_reta_len(&SYMMETRIC_KEY, 4, 512).unwrap();
        assert_eq!(cfg.reta().len(), 512);
        assert_eq!(cfg.queue_of(511), 3);
        let cfg = RssConfig::with_reta(&MICROSOFT_KEY, vec![7, 7, 1, 7]).unwrap();
        assert_eq!(cfg.queue_of(6), 1);
        assert!(!cfg.has_queue(0));
        assert_eq!(cfg.key(), &MICROSOFT_KEY);
    }

    #[test]
    fn bad_settings_are_refused_with_reasons() {
        let e = RssConfig::new(&MICROSOFT_KEY[..15], 4).unwrap_err();
        assert_eq!(e, RssError::KeyTooShort { len: 15 });
        assert!(e.to_string().contains("at least 16"), "{e}");
        assert_eq!(
            RssConfig::new(&MICROSOFT_KEY, 0).unwrap_err(),
            RssError::NoQueues
        );
        let e = RssConfig::with_reta(&MICROSOFT_KEY, Vec::new()).unwrap_err();
        assert_eq!(e, RssError::EmptyReta);
        assert!(e.to_string().contains("power-of-two"), "{e}");
        let e = RssConfig::with_reta_len(&MICROSOFT_KEY, 4, 100).unwrap_err();
        assert_eq!(e, RssError::RetaNotPowerOfTwo { len: 100 });
        assert!(e.to_string().contains("power of two"), "{e}");
        assert_eq!(
            RssConfig::with_reta(&MICROSOFT_KEY, vec![0; 3]).unwrap_err(),
            RssError::RetaNotPowerOfTwo { len: 3 }
        );
        let e = RssConfig::with_reta_len(&MICROSOFT_KEY, 16, 8).unwrap_err();
        assert_eq!(e, RssError::RetaTooShort { len: 8, queues: 16 });
        assert!(e.to_string().contains("cannot reach 16 queues"), "{e}");
        assert!(RssConfig::with_reta_len(&MICROSOFT_KEY, 1, 1).is_ok());
    }

    /// The queue the device gives the replies of a connection from `local`:`port` to `remote`.
    fn reply_queue(cfg: &RssConfig, local: Ipv4Addr, port: u16, remote: SocketAddrV4) -> u16 {
        let input = ipv4_tcp_input(*remote.ip(), local, remote.port(), port);
        cfg.queue_of(toeplitz(cfg.key(), &input))
    }

    const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    #[test]
    fn picked_ports_bring_replies_to_the_wanted_queue() {
        let remote = addr("10.0.0.2:7000");
        for key in [&MICROSOFT_KEY, &SYMMETRIC_KEY] {
            for queues in [2u16, 4, 8, 16] {
                let cfg = RssConfig::new(key, queues).unwrap();
                for want in 0..queues {
                    // Twenty ports in a row for each queue, each one past the last.
                    let mut start = 49152;
                    for _ in 0..20 {
                        let port = pick_source_port(
                            &cfg,
                            LOCAL,
                            remote,
                            want,
                            start,
                            49152..=65535,
                            |_| false,
                        )
                        .unwrap_or_else(|| panic!("no port for queue {want} of {queues}"));
                        assert!(port >= start, "{port} before {start}: no wrap expected yet");
                        assert_eq!(reply_queue(&cfg, LOCAL, port, remote), want);
                        // Every port skipped would have gone elsewhere.
                        for skipped in start..port {
                            assert_ne!(reply_queue(&cfg, LOCAL, skipped, remote), want);
                        }
                        start = port + 1;
                    }
                }
            }
        }
    }

    #[test]
    fn picking_respects_taken_and_wraps_inside_the_range() {
        let cfg = RssConfig::new(&MICROSOFT_KEY, 4).unwrap();
        let remote = addr("192.168.1.20:443");
        let range = 1000..=1999;
        let good: Vec<u16> = range
            .clone()
            .filter(|&p| reply_queue(&cfg, LOCAL, p, remote) == 1)
            .collect();
        assert!(good.len() > 150, "about a quarter qualify: {}", good.len());
        let pick = |start, taken: &dyn Fn(u16) -> bool| {
            pick_source_port(&cfg, LOCAL, remote, 1, start, range.clone(), taken)
        };
        assert_eq!(pick(1000, &|_| false), Some(good[0]));
        // Taken ports are passed over; `taken` is asked only about ports of the right queue.
        assert_eq!(
            pick(1000, &|p| {
                assert!(good.contains(&p), "asked about {p}");
                p == good[0] || p == good[1]
            }),
            Some(good[2])
        );
        // From past the last good port, the walk wraps to the range's start.
        let last = *good.last().unwrap();
        if last < 1999 {
            assert_eq!(pick(last + 1, &|_| false), Some(good[0]));
        }
        assert_eq!(pick(last, &|p| p == last), Some(good[0]));
        // A start outside the range starts at its first port.
        assert_eq!(pick(80, &|_| false), Some(good[0]));
        // Every qualifying port taken: none.
        assert_eq!(pick(1500, &|_| true), None);
    }

    #[test]
    fn picking_finds_nothing_when_no_port_qualifies() {
        let cfg = RssConfig::new(&MICROSOFT_KEY, 8).unwrap();
        let remote = addr("172.16.0.9:80");
        let q = reply_queue(&cfg, LOCAL, 50000, remote);
        let other = (q + 1) % 8;
        let one = 50000..=50000;
        assert_eq!(
            pick_source_port(&cfg, LOCAL, remote, q, 50000, one.clone(), |_| false),
            Some(50000)
        );
        assert_eq!(
            pick_source_port(&cfg, LOCAL, remote, other, 50000, one, |_| false),
            None
        );
        // A queue no table entry names, and an empty range.
        assert_eq!(
            pick_source_port(&cfg, LOCAL, remote, 8, 1, 1..=65535, |_| false),
            None
        );
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 5..=4;
        assert_eq!(
            pick_source_port(&cfg, LOCAL, remote, q, 5, empty, |_| false),
            None
        );
        // Port 0 is never chosen, even where it would hash right.
        let cfg = RssConfig::new(&MICROSOFT_KEY, 1).unwrap();
        assert_eq!(
            pick_source_port(&cfg, LOCAL, remote, 0, 0, 0..=0, |_| false),
            None
        );
        assert_eq!(
            pick_source_port(&cfg, LOCAL, remote, 0, 0, 0..=1, |_| false),
            Some(1)
        );
    }
}

//! Ethernet / ARP / IPv4 / TCP frames for test peers that speak to a stack byte by byte: reading
//! the fields of a segment and its options (MSS, window scale, SACK-permitted, SACK blocks),
//! building segments and ARP packets with lengths and checksums right, patching them, and
//! resealing lengths and checksums.
//!
//! Written from the RFCs (791, 793, 826, 1071, 2018, 7323) rather than with smoltcp, so a test
//! does not share the parser it is testing (and `tests/` never sees smoltcp, which the crate
//! keeps private to `src/stack`). Every accessor checks its bounds: frames here may be whatever
//! a fuzzer made of them. Used by the scripted peers of `tests/sim_tcp_script.rs` and
//! `tests/syn_flood.rs`, and by the `stack_rx` fuzz target (`fuzz/fuzz_targets/stack_rx.rs`
//! includes this file by path).
#![allow(dead_code)]

use std::net::Ipv4Addr;

pub const ETH_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// TCP flag bits (byte 13 of the header).
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;

/// The Internet checksum (RFC 1071) of `data`, starting from the partial sum `sum`.
pub fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header sum of a TCP segment of `len` bytes.
fn pseudo_sum(src: [u8; 4], dst: [u8; 4], len: usize) -> u32 {
    let mut sum = 0u32;
    for w in [src, dst] {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        sum += u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    sum + 6 + (len as u32 & 0xffff)
}

/// What the harness reads from a TCP/IPv4 frame (no validation beyond bounds).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Byte offset of the TCP header in the frame.
    pub tcp_at: usize,
    /// TCP header length (data offset x 4).
    pub hdr_len: usize,
    /// Payload bytes (as the IPv4 total length says, cut to the frame).
    pub payload_len: usize,
}

impl Tcp {
    /// Sequence space the segment takes (payload, SYN and FIN).
    pub fn seq_len(&self) -> u32 {
        self.payload_len as u32
            + u32::from(self.flags & SYN != 0)
            + u32::from(self.flags & FIN != 0)
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Parses an Ethernet + IPv4 + TCP frame; `None` for anything else or anything cut short.
pub fn parse_tcp(f: &[u8]) -> Option<Tcp> {
    if f.len() < ETH_LEN + 20 || u16::from_be_bytes([f[12], f[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &f[ETH_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 6 || total < ihl + 20 {
        return None;
    }
    let t = &ip[ihl..total];
    let hdr_len = usize::from(t[12] >> 4) * 4;
    if hdr_len < 20 || hdr_len > t.len() {
        return None;
    }
    let b4 = |a: &[u8]| [a[0], a[1], a[2], a[3]];
    Some(Tcp {
        dst_mac: f[0..6].try_into().ok()?,
        src_mac: f[6..12].try_into().ok()?,
        src: Ipv4Addr::from(b4(&ip[12..16])),
        dst: Ipv4Addr::from(b4(&ip[16..20])),
        sport: u16::from_be_bytes([t[0], t[1]]),
        dport: u16::from_be_bytes([t[2], t[3]]),
        seq: u32::from_be_bytes(b4(&t[4..8])),
        ack: u32::from_be_bytes(b4(&t[8..12])),
        flags: t[13],
        window: u16::from_be_bytes([t[14], t[15]]),
        tcp_at: ETH_LEN + ihl,
        hdr_len,
        payload_len: t.len() - hdr_len,
    })
}

/// The TCP options of a parsed segment.
pub fn options<'a>(f: &'a [u8], t: &Tcp) -> &'a [u8] {
    &f[t.tcp_at + 20..t.tcp_at + t.hdr_len]
}

/// Walks TCP options: calls `each(kind, value)` for every well-formed option.
pub fn each_option(opts: &[u8], mut each: impl FnMut(u8, &[u8])) {
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => return,
            1 => i += 1,
            kind => {
                let Some(&len) = opts.get(i + 1) else { return };
                let len = usize::from(len);
                if len < 2 || i + len > opts.len() {
                    return;
                }
                each(kind, &opts[i + 2..i + len]);
                i += len;
            }
        }
    }
}

/// The window scale option's shift, if the segment carries one.
pub fn window_scale(f: &[u8], t: &Tcp) -> Option<u8> {
    let mut ws = None;
    each_option(options(f, t), |kind, v| {
        if kind == 3 && v.len() == 1 {
            ws = Some(v[0].min(14));
        }
    });
    ws
}

/// The MSS option's value, if the segment carries one.
pub fn mss(f: &[u8], t: &Tcp) -> Option<u16> {
    let mut mss = None;
    each_option(options(f, t), |kind, v| {
        if kind == 2 && v.len() == 2 {
            mss = Some(u16::from_be_bytes([v[0], v[1]]));
        }
    });
    mss
}

/// Whether the segment carries the SACK-permitted option.
pub fn sack_permitted(f: &[u8], t: &Tcp) -> bool {
    let mut yes = false;
    each_option(options(f, t), |kind, v| yes |= kind == 4 && v.is_empty());
    yes
}

/// The SACK blocks of the segment, as (left, right) sequence numbers, in the order sent.
pub fn sack_blocks(f: &[u8], t: &Tcp) -> Vec<(u32, u32)> {
    let mut blocks = Vec::new();
    each_option(options(f, t), |kind, v| {
        if kind == 5 {
            for b in v.chunks_exact(8) {
                let l = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                let r = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                blocks.push((l, r));
            }
        }
    });
    blocks
}

/// The payload of a parsed segment.
pub fn payload<'a>(f: &'a [u8], t: &Tcp) -> &'a [u8] {
    let start = t.tcp_at + t.hdr_len;
    &f[start..start + t.payload_len]
}

/// Options for a SYN or SYN|ACK: MSS, then window scale (when given) and SACK-permitted (when
/// `sack`), NOP-padded as Linux sends them.
pub fn syn_options(mss: u16, window_shift: Option<u8>, sack: bool) -> Vec<u8> {
    let mut o = vec![2, 4];
    o.extend_from_slice(&mss.to_be_bytes());
    if let Some(shift) = window_shift {
        o.extend_from_slice(&[1, 3, 3, shift]);
    }
    if sack {
        o.extend_from_slice(&[1, 1, 4, 2]);
    }
    o
}

/// Whether the segment carries a SACK option with at least one block.
pub fn has_sack_blocks(f: &[u8], t: &Tcp) -> bool {
    let mut yes = false;
    each_option(options(f, t), |kind, v| yes |= kind == 5 && v.len() >= 8);
    yes
}

/// An ARP packet for IPv4 over Ethernet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Arp {
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

pub fn parse_arp(f: &[u8]) -> Option<Arp> {
    if f.len() < ETH_LEN + 28 || u16::from_be_bytes([f[12], f[13]]) != ETHERTYPE_ARP {
        return None;
    }
    let a = &f[ETH_LEN..];
    Some(Arp {
        op: u16::from_be_bytes([a[6], a[7]]),
        sender_mac: a[8..14].try_into().ok()?,
        sender_ip: Ipv4Addr::new(a[14], a[15], a[16], a[17]),
        target_ip: Ipv4Addr::new(a[24], a[25], a[26], a[27]),
    })
}

/// An ARP frame (`op` 1 request, 2 reply).
pub fn build_arp(
    eth_dst: [u8; 6],
    op: u16,
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_LEN + 28);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&target_mac);
    f.extend_from_slice(&target_ip.octets());
    f
}

/// The reply to ARP request `req` from `mac`, the owner of the address it asks for.
pub fn arp_reply(req: &Arp, mac: [u8; 6]) -> Vec<u8> {
    build_arp(
        req.sender_mac,
        2,
        mac,
        req.target_ip,
        req.sender_mac,
        req.sender_ip,
    )
}

/// The addressing of a TCP segment.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Ends {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

impl Ends {
    /// The same flow seen from the other end.
    pub fn reversed(&self) -> Ends {
        Ends {
            src_mac: self.dst_mac,
            dst_mac: self.src_mac,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// A TCP segment in an Ethernet frame, lengths and checksums right.
pub fn build_tcp(
    e: &Ends,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    opts: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let opt_len = opts.len().min(40).next_multiple_of(4);
    let mut f = Vec::with_capacity(ETH_LEN + 40 + opt_len + payload.len());
    f.extend_from_slice(&e.dst_mac);
    f.extend_from_slice(&e.src_mac);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    // IPv4: version 4, IHL 5, DF, TTL 64, TCP; length and checksum by `reseal`.
    f.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&e.src.octets());
    f.extend_from_slice(&e.dst.octets());
    f.extend_from_slice(&e.sport.to_be_bytes());
    f.extend_from_slice(&e.dport.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&ack.to_be_bytes());
    f.push((((20 + opt_len) / 4) as u8) << 4);
    f.push(flags);
    f.extend_from_slice(&window.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    let start = f.len();
    f.extend_from_slice(&opts[..opts.len().min(40)]);
    f.resize(start + opt_len, 0);
    f.extend_from_slice(payload);
    reseal(&mut f, true);
    f
}

/// Rewrites the IPv4 total length (when `lengths`) and the IPv4 and TCP checksums of an
/// Ethernet + IPv4 frame so they match its bytes; leaves other frames alone.
pub fn reseal(f: &mut [u8], lengths: bool) {
    if f.len() < ETH_LEN + 20 || u16::from_be_bytes([f[12], f[13]]) != ETHERTYPE_IPV4 {
        return;
    }
    let ip_len = f.len() - ETH_LEN;
    let ihl = usize::from(f[ETH_LEN] & 0x0f) * 4;
    if ihl < 20 || ihl > ip_len {
        return;
    }
    if lengths {
        let total = ip_len.min(0xffff) as u16;
        f[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
    }
    f[ETH_LEN + 10..ETH_LEN + 12].fill(0);
    let c = checksum(0, &f[ETH_LEN..ETH_LEN + ihl]);
    f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
    let total = usize::from(u16::from_be_bytes([f[ETH_LEN + 2], f[ETH_LEN + 3]])).min(ip_len);
    if f[ETH_LEN + 9] != 6 || total < ihl + 20 {
        return;
    }
    let src: [u8; 4] = f[ETH_LEN + 12..ETH_LEN + 16].try_into().unwrap();
    let dst: [u8; 4] = f[ETH_LEN + 16..ETH_LEN + 20].try_into().unwrap();
    let tcp = ETH_LEN + ihl..ETH_LEN + total;
    f[tcp.start + 16..tcp.start + 18].fill(0);
    let c = checksum(pseudo_sum(src, dst, tcp.len()), &f[tcp.clone()]);
    f[tcp.start + 16..tcp.start + 18].copy_from_slice(&c.to_be_bytes());
}

/// Whether the IPv4 header checksum and (for TCP) the TCP checksum are right, and the lengths
/// consistent: what a receiver that checks everything would take.
pub fn sealed(f: &[u8]) -> bool {
    lengths_ok(f) && {
        let t = parse_tcp(f).unwrap();
        let ip = &f[ETH_LEN..];
        let ihl = t.tcp_at - ETH_LEN;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let seg = &ip[ihl..total];
        checksum(0, &ip[..ihl]) == 0
            && checksum(pseudo_sum(t.src.octets(), t.dst.octets(), seg.len()), seg) == 0
    }
}

/// Whether a TCP/IPv4 frame's lengths are consistent (the IPv4 total length within the frame).
pub fn lengths_ok(f: &[u8]) -> bool {
    let Some(t) = parse_tcp(f) else {
        return false;
    };
    let ip = &f[ETH_LEN..];
    usize::from(u16::from_be_bytes([ip[2], ip[3]])) <= ip.len() && t.tcp_at > ETH_LEN
}

/// Replaces the TCP options of a TCP/IPv4 frame (payload kept), padding with EOL to a multiple
/// of 4 (at most 40 bytes).
pub fn set_options(f: &mut Vec<u8>, opts: &[u8]) {
    let Some(t) = parse_tcp(f) else { return };
    let opts = &opts[..opts.len().min(40)];
    let padded = opts.len().next_multiple_of(4);
    let start = t.tcp_at + 20;
    let end = t.tcp_at + t.hdr_len;
    let mut new = opts.to_vec();
    new.resize(padded, 0);
    f.splice(start..end, new);
    f[t.tcp_at + 12] = (((20 + padded) / 4) as u8) << 4 | (f[t.tcp_at + 12] & 0x0f);
}

/// Replaces the payload of a TCP/IPv4 frame.
pub fn set_payload(f: &mut Vec<u8>, payload: &[u8]) {
    let Some(t) = parse_tcp(f) else { return };
    f.truncate(t.tcp_at + t.hdr_len);
    f.extend_from_slice(payload);
}

/// SACK option bytes (NOP, NOP, kind 5) for `blocks` given as (left, right) sequence numbers.
pub fn sack_option(blocks: &[(u32, u32)]) -> Vec<u8> {
    let blocks = &blocks[..blocks.len().min(4)];
    let mut o = vec![1, 1, 5, (2 + 8 * blocks.len()) as u8];
    for (l, r) in blocks {
        o.extend_from_slice(&l.to_be_bytes());
        o.extend_from_slice(&r.to_be_bytes());
    }
    o
}

/// One line about a frame, for traces.
pub fn describe(f: &[u8]) -> String {
    if let Some(t) = parse_tcp(f) {
        let mut flags = String::new();
        for (bit, c) in [
            (SYN, 'S'),
            (ACK, '.'),
            (FIN, 'F'),
            (RST, 'R'),
            (PSH, 'P'),
            (URG, 'U'),
        ] {
            if t.flags & bit != 0 {
                flags.push(c);
            }
        }
        let sack = sack_blocks(f, &t);
        return format!(
            "{}:{} > {}:{} [{flags}] seq {} ack {} win {} len {}{}{}",
            t.src,
            t.sport,
            t.dst,
            t.dport,
            t.seq,
            t.ack,
            t.window,
            t.payload_len,
            if sack.is_empty() {
                String::new()
            } else {
                format!(" sack {sack:?}")
            },
            if sealed(f) {
                ""
            } else {
                " (bad checksum/length)"
            },
        );
    }
    if let Some(a) = parse_arp(f) {
        return format!(
            "ARP op {} {} is {:02x?} -> {}",
            a.op, a.sender_ip, a.sender_mac, a.target_ip
        );
    }
    format!("{} bytes", f.len())
}

/// Wrapping sequence-number comparison: `a` is after `b`.
pub fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Whether `x` lies in the window `[start, start + len)` of sequence space (wrapping).
pub fn seq_in(x: u32, start: u32, len: u32) -> bool {
    x.wrapping_sub(start) < len
}

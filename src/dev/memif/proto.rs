//! memif control messages: the 128-byte messages exchanged on the control socket, with
//! `parse` and `emit`.
//!
//! Layout (memif version 2.0, as DPDK 22.11's `memif.h` and libmemif define it): every message
//! is exactly [`MSG_LEN`] bytes; a 16-bit type at offset 0 is followed by the packed fields of
//! that type; the rest is zero. Integers are in host byte order (memif peers share a host), i.e.
//! little-endian on x86-64.
//!
//! | type | fields (byte offset) |
//! |---|---|
//! | HELLO (S→C) | name\[32\] @2, min_version u16 @34, max_version u16 @36, max_region u16 @38, max_s2c_ring u16 @40, max_c2s_ring u16 @42, max_log2_ring_size u8 @44 |
//! | INIT (C→S) | version u16 @2, id u32 @4, mode u8 @8, secret\[24\] @9, name\[32\] @33 |
//! | ADD_REGION (C→S, with the region's fd) | index u16 @2, size u64 @4 |
//! | ADD_RING (C→S, with the ring's eventfd) | flags u16 @2, index u16 @4, region u16 @6, offset u32 @8, log2_ring_size u8 @12, private_hdr_size u16 @13 |
//! | CONNECT (C→S), CONNECTED (S→C) | if_name\[32\] @2 |
//! | DISCONNECT (both) | code u32 @2, reason\[96\] @6 |
//! | ACK (S→C) | — |
//!
//! The `max_*_ring` and `max_region` fields of HELLO are the highest *index* the server takes
//! (count − 1), which is how DPDK and libmemif read them.

/// Length of every control message.
pub const MSG_LEN: usize = 128;
/// Protocol version 2.0, `(major << 8) | minor`.
pub const VERSION: u16 = 0x0200;
/// Magic value at the start of every ring.
pub const COOKIE: u32 = 0x03E3_1F20;
/// Length of the name fields.
pub const NAME_LEN: usize = 32;
/// Length of the secret field.
pub const SECRET_LEN: usize = 24;
/// Length of the disconnect reason.
pub const REASON_LEN: usize = 96;
/// Largest ring size (log2) DPDK's net_memif accepts; we take the same.
pub const LOG2_RING_SIZE_MAX: u8 = 14;
/// Interface mode: Ethernet frames (the only one ustack speaks).
pub const MODE_ETHERNET: u8 = 0;
/// ADD_RING flag: the ring carries frames from client to server.
pub const ADD_RING_FLAG_C2S: u16 = 1;

/// Message type numbers.
mod ty {
    pub const ACK: u16 = 1;
    pub const HELLO: u16 = 2;
    pub const INIT: u16 = 3;
    pub const ADD_REGION: u16 = 4;
    pub const ADD_RING: u16 = 5;
    pub const CONNECT: u16 = 6;
    pub const CONNECTED: u16 = 7;
    pub const DISCONNECT: u16 = 8;
}

/// A fixed-length, NUL-padded name field.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct Name(pub [u8; NAME_LEN]);

/// Where a ustack peer's capability mark sits in its application name field: the last
/// [`MARK_LEN`] bytes, behind the NUL that ends the name, so a peer that reads the field as a C
/// string (libmemif, DPDK, VPP) never sees it. The memif protocol has no feature bits.
const MARK_AT: usize = NAME_LEN - MARK_LEN;
/// Length of the mark: 4 magic bytes, a version, a flags byte, 2 bytes reserved (zero).
const MARK_LEN: usize = 8;
/// The mark's magic bytes.
const MARK_MAGIC: [u8; 4] = *b"ustk";
/// The mark's version.
const MARK_VERSION: u8 = 1;

/// Flag of the capability mark: "I do not verify the IPv4 and TCP checksums of frames I
/// receive: leave them out". A peer that sees it may send frames without them.
pub const CAP_RX_CHECKSUMS_TRUSTED: u8 = 1;

impl Name {
    /// The name from `s`, cut to 31 bytes so it stays NUL-terminated.
    pub fn new(s: &str) -> Name {
        Name(padded(s.as_bytes()))
    }

    /// The name from `s`, cut to 23 bytes, with ustack's capability mark carrying `flags`
    /// behind it (see [`Name::capabilities`]).
    pub fn with_capabilities(s: &str, flags: u8) -> Name {
        let mut out = [0u8; NAME_LEN];
        let n = s.len().min(MARK_AT - 1);
        out[..n].copy_from_slice(&s.as_bytes()[..n]);
        out[MARK_AT..MARK_AT + 4].copy_from_slice(&MARK_MAGIC);
        out[MARK_AT + 4] = MARK_VERSION;
        out[MARK_AT + 5] = flags;
        Name(out)
    }

    /// The capability flags a ustack peer marked its name with, or 0 for a name without the
    /// mark (any other memif implementation). The mark counts only behind the name's NUL.
    pub fn capabilities(&self) -> u8 {
        let b = &self.0;
        let hidden = b[..MARK_AT].contains(&0);
        if hidden && b[MARK_AT..MARK_AT + 4] == MARK_MAGIC && b[MARK_AT + 4] == MARK_VERSION {
            b[MARK_AT + 5]
        } else {
            0
        }
    }

    /// The bytes up to the first NUL, lossily as UTF-8.
    pub fn to_string_lossy(&self) -> String {
        text(&self.0)
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string_lossy())
    }
}

/// Copies `s` into a zeroed array, keeping the last byte NUL.
fn padded<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N - 1);
    out[..n].copy_from_slice(&s[..n]);
    out
}

/// The bytes of a NUL-padded field up to the first NUL, lossily as UTF-8.
fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// HELLO: the server's limits, sent when a client connects.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The server application's name.
    pub name: Name,
    /// Lowest protocol version the server speaks.
    pub min_version: u16,
    /// Highest protocol version the server speaks.
    pub max_version: u16,
    /// Highest region index the server takes.
    pub max_region: u16,
    /// Highest server-to-client ring index the server takes.
    pub max_s2c_ring: u16,
    /// Highest client-to-server ring index the server takes.
    pub max_c2s_ring: u16,
    /// Largest ring size (log2) the server takes.
    pub max_log2_ring_size: u8,
}

/// INIT: which interface the client wants, and its secret.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Init {
    /// Protocol version the client speaks.
    pub version: u16,
    /// Interface id (selects one interface among those on the socket).
    pub id: u32,
    /// Interface mode ([`MODE_ETHERNET`]).
    pub mode: u8,
    /// Shared secret, NUL-padded (all zero: none).
    pub secret: [u8; SECRET_LEN],
    /// The client application's name.
    pub name: Name,
}

impl Init {
    /// The secret bytes up to the first NUL.
    pub fn secret_bytes(&self) -> &[u8] {
        let end = self
            .secret
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(SECRET_LEN);
        &self.secret[..end]
    }
}

/// ADD_REGION: a shared memory region (its memory file travels with the message).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AddRegion {
    /// Region index (regions are announced in order from 0).
    pub index: u16,
    /// Region length in bytes.
    pub size: u64,
}

/// ADD_RING: a descriptor ring inside a region (its interrupt eventfd travels with the message).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AddRing {
    /// [`ADD_RING_FLAG_C2S`] for a client-to-server ring.
    pub flags: u16,
    /// Ring index within its direction.
    pub index: u16,
    /// Region holding the ring.
    pub region: u16,
    /// Byte offset of the ring within the region.
    pub offset: u32,
    /// Slots in the ring (log2).
    pub log2_ring_size: u8,
    /// Private header length; always 0 (libmemif refuses anything else).
    pub private_hdr_size: u16,
}

impl AddRing {
    /// True for a client-to-server ring.
    pub fn is_c2s(&self) -> bool {
        self.flags & ADD_RING_FLAG_C2S != 0
    }
}

/// DISCONNECT: why the sender ends the connection.
#[derive(Copy, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Error code (0 in DPDK and libmemif's messages).
    pub code: u32,
    /// Reason, NUL-padded.
    pub reason: [u8; REASON_LEN],
}

impl Disconnect {
    /// A disconnect message with `reason` (cut to 95 bytes).
    pub fn new(code: u32, reason: &str) -> Disconnect {
        Disconnect {
            code,
            reason: padded(reason.as_bytes()),
        }
    }

    /// The reason, lossily as UTF-8.
    pub fn reason_lossy(&self) -> String {
        text(&self.reason)
    }
}

impl std::fmt::Debug for Disconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disconnect")
            .field("code", &self.code)
            .field("reason", &self.reason_lossy())
            .finish()
    }
}

/// One control message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// The server took the last message; the client sends its next one.
    Ack,
    /// The server's limits.
    Hello(Hello),
    /// The client's interface id, mode and secret.
    Init(Init),
    /// A region (with a memory file descriptor).
    AddRegion(AddRegion),
    /// A ring (with an eventfd).
    AddRing(AddRing),
    /// The client finished announcing; carries its interface name.
    Connect(Name),
    /// The server mapped everything; carries its interface name.
    Connected(Name),
    /// The sender disconnects.
    Disconnect(Disconnect),
}

/// Why a message could not be parsed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    /// A control message must be exactly 128 bytes.
    #[error("control message of {0} bytes (memif messages are 128 bytes)")]
    BadLength(usize),
    /// The type field holds no known message type.
    #[error("unknown control message type {0}")]
    UnknownType(u16),
}

#[inline]
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

#[inline]
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}

fn array_at<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

impl Msg {
    /// The message type number.
    pub fn type_id(&self) -> u16 {
        match self {
            Msg::Ack => ty::ACK,
            Msg::Hello(_) => ty::HELLO,
            Msg::Init(_) => ty::INIT,
            Msg::AddRegion(_) => ty::ADD_REGION,
            Msg::AddRing(_) => ty::ADD_RING,
            Msg::Connect(_) => ty::CONNECT,
            Msg::Connected(_) => ty::CONNECTED,
            Msg::Disconnect(_) => ty::DISCONNECT,
        }
    }

    /// Parses one received message. Bytes after the fields of its type are ignored.
    pub fn parse(b: &[u8]) -> Result<Msg, MsgError> {
        if b.len() != MSG_LEN {
            return Err(MsgError::BadLength(b.len()));
        }
        Ok(match u16_at(b, 0) {
            ty::ACK => Msg::Ack,
            ty::HELLO => Msg::Hello(Hello {
                name: Name(array_at(b, 2)),
                min_version: u16_at(b, 34),
                max_version: u16_at(b, 36),
                max_region: u16_at(b, 38),
                max_s2c_ring: u16_at(b, 40),
                max_c2s_ring: u16_at(b, 42),
                max_log2_ring_size: b[44],
            }),
            ty::INIT => Msg::Init(Init {
                version: u16_at(b, 2),
                id: u32_at(b, 4),
                mode: b[8],
                secret: array_at(b, 9),
                name: Name(array_at(b, 33)),
            }),
            ty::ADD_REGION => Msg::AddRegion(AddRegion {
                index: u16_at(b, 2),
                size: u64_at(b, 4),
            }),
            ty::ADD_RING => Msg::AddRing(AddRing {
                flags: u16_at(b, 2),
                index: u16_at(b, 4),
                region: u16_at(b, 6),
                offset: u32_at(b, 8),
                log2_ring_size: b[12],
                private_hdr_size: u16_at(b, 13),
            }),
            ty::CONNECT => Msg::Connect(Name(array_at(b, 2))),
            ty::CONNECTED => Msg::Connected(Name(array_at(b, 2))),
            ty::DISCONNECT => Msg::Disconnect(Disconnect {
                code: u32_at(b, 2),
                reason: array_at(b, 6),
            }),
            t => return Err(MsgError::UnknownType(t)),
        })
    }

    /// Writes the message into `b` (all of it: unused bytes are zeroed).
    pub fn emit(&self, b: &mut [u8; MSG_LEN]) {
        b.fill(0);
        b[0..2].copy_from_slice(&self.type_id().to_ne_bytes());
        match self {
            Msg::Ack => {}
            Msg::Hello(h) => {
                b[2..34].copy_from_slice(&h.name.0);
                b[34..36].copy_from_slice(&h.min_version.to_ne_bytes());
                b[36..38].copy_from_slice(&h.max_version.to_ne_bytes());
                b[38..40].copy_from_slice(&h.max_region.to_ne_bytes());
                b[40..42].copy_from_slice(&h.max_s2c_ring.to_ne_bytes());
                b[42..44].copy_from_slice(&h.max_c2s_ring.to_ne_bytes());
                b[44] = h.max_log2_ring_size;
            }
            Msg::Init(i) => {
                b[2..4].copy_from_slice(&i.version.to_ne_bytes());
                b[4..8].copy_from_slice(&i.id.to_ne_bytes());
                b[8] = i.mode;
                b[9..33].copy_from_slice(&i.secret);
                b[33..65].copy_from_slice(&i.name.0);
            }
            Msg::AddRegion(r) => {
                b[2..4].copy_from_slice(&r.index.to_ne_bytes());
                b[4..12].copy_from_slice(&r.size.to_ne_bytes());
            }
            Msg::AddRing(r) => {
                b[2..4].copy_from_slice(&r.flags.to_ne_bytes());
                b[4..6].copy_from_slice(&r.index.to_ne_bytes());
                b[6..8].copy_from_slice(&r.region.to_ne_bytes());
                b[8..12].copy_from_slice(&r.offset.to_ne_bytes());
                b[12] = r.log2_ring_size;
                b[13..15].copy_from_slice(&r.private_hdr_size.to_ne_bytes());
            }
            Msg::Connect(n) | Msg::Connected(n) => b[2..34].copy_from_slice(&n.0),
            Msg::Disconnect(d) => {
                b[2..6].copy_from_slice(&d.code.to_ne_bytes());
                b[6..102].copy_from_slice(&d.reason);
            }
        }
    }

    /// The message as bytes.
    pub fn to_bytes(&self) -> [u8; MSG_LEN] {
        let mut b = [0u8; MSG_LEN];
        self.emit(&mut b);
        b
    }
}

/// A secret as the INIT message carries it: NUL-padded to 24 bytes (a 24-byte secret has no
/// terminating NUL, as in DPDK). `None` if it is longer than 24 bytes or contains a NUL.
pub fn secret_field(secret: &str) -> Option<[u8; SECRET_LEN]> {
    let b = secret.as_bytes();
    if b.len() > SECRET_LEN || b.contains(&0) {
        return None;
    }
    let mut out = [0u8; SECRET_LEN];
    out[..b.len()].copy_from_slice(b);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Msg> {
        vec![
            Msg::Ack,
            Msg::Hello(Hello {
                name: Name::new("DPDK 22.11.0"),
                min_version: VERSION,
                max_version: VERSION,
                max_region: 255,
                max_s2c_ring: 254,
                max_c2s_ring: 253,
                max_log2_ring_size: 14,
            }),
            Msg::Init(Init {
                version: VERSION,
                id: 0xDEAD_BEEF,
                mode: MODE_ETHERNET,
                secret: secret_field("s3cret").unwrap(),
                name: Name::new("ustack"),
            }),
            Msg::AddRegion(AddRegion {
                index: 1,
                size: 0x1_2345_6789,
            }),
            Msg::AddRing(AddRing {
                flags: ADD_RING_FLAG_C2S,
                index: 3,
                region: 0,
                offset: 0x8100,
                log2_ring_size: 10,
                private_hdr_size: 0,
            }),
            Msg::Connect(Name::new("memif0")),
            Msg::Connected(Name::new("net_memif")),
            Msg::Disconnect(Disconnect::new(7, "Incorrect secret")),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all() {
            let b = m.to_bytes();
            assert_eq!(Msg::parse(&b), Ok(m));
        }
    }

    /// Byte positions as DPDK 22.11's packed `memif_msg_t` puts them (little-endian host).
    #[test]
    #[cfg(target_endian = "little")]
    fn fields_sit_where_dpdk_puts_them() {
        let m = all();
        let hello = m[1].to_bytes();
        assert_eq!(&hello[0..2], &[2, 0]);
        assert_eq!(&hello[2..14], b"DPDK 22.11.0");
        assert_eq!(&hello[34..38], &[0, 2, 0, 2]);
        assert_eq!(&hello[38..45], &[255, 0, 254, 0, 253, 0, 14]);
        assert!(hello[45..].iter().all(|&b| b == 0));

        let init = m[2].to_bytes();
        assert_eq!(&init[0..2], &[3, 0]);
        assert_eq!(&init[2..4], &[0, 2]);
        assert_eq!(&init[4..8], &[0xEF, 0xBE, 0xAD, 0xDE]);
        assert_eq!(init[8], 0);
        assert_eq!(&init[9..15], b"s3cret");
        assert_eq!(&init[33..39], b"ustack");

        let region = m[3].to_bytes();
        assert_eq!(&region[2..12], &[1, 0, 0x89, 0x67, 0x45, 0x23, 1, 0, 0, 0]);

        let ring = m[4].to_bytes();
        assert_eq!(
            &ring[2..15],
            &[1, 0, 3, 0, 0, 0, 0x00, 0x81, 0, 0, 10, 0, 0]
        );

        let disc = m[7].to_bytes();
        assert_eq!(&disc[0..6], &[8, 0, 7, 0, 0, 0]);
        assert_eq!(&disc[6..22], b"Incorrect secret");
    }

    #[test]
    fn bad_messages_are_refused() {
        assert_eq!(Msg::parse(&[0u8; 127]), Err(MsgError::BadLength(127)));
        assert_eq!(Msg::parse(&[0u8; 129]), Err(MsgError::BadLength(129)));
        assert_eq!(Msg::parse(&[0u8; 128]), Err(MsgError::UnknownType(0)));
        let mut b = [0u8; 128];
        b[0] = 9;
        assert_eq!(Msg::parse(&b), Err(MsgError::UnknownType(9)));
    }

    #[test]
    fn names_and_secrets() {
        let long = "x".repeat(40);
        let n = Name::new(&long);
        assert_eq!(n.to_string_lossy().len(), 31);
        assert_eq!(n.0[31], 0);
        assert!(secret_field(&"y".repeat(25)).is_none());
        assert!(secret_field("a\0b").is_none());
        let s = secret_field(&"z".repeat(24)).unwrap();
        assert_eq!(s, [b'z'; 24]);
        let i = Init {
            version: VERSION,
            id: 0,
            mode: 0,
            secret: s,
            name: Name::new(""),
        };
        assert_eq!(i.secret_bytes().len(), 24);
        assert_eq!(
            Disconnect::new(0, &"r".repeat(200)).reason_lossy().len(),
            95
        );
    }

    #[test]
    fn capability_mark_hides_behind_the_name() {
        let n = Name::with_capabilities("ustack", CAP_RX_CHECKSUMS_TRUSTED);
        // What a C-string reader (libmemif, DPDK, VPP) and we show: the name alone.
        assert_eq!(n.to_string_lossy(), "ustack");
        assert_eq!(n.capabilities(), CAP_RX_CHECKSUMS_TRUSTED);
        // A long name is cut so the NUL comes before the mark.
        let long = Name::with_capabilities(&"x".repeat(40), CAP_RX_CHECKSUMS_TRUSTED);
        assert_eq!(long.to_string_lossy().len(), 23);
        assert_eq!(long.capabilities(), CAP_RX_CHECKSUMS_TRUSTED);
        // Names without the mark (any other implementation) announce nothing.
        assert_eq!(Name::new("ustack").capabilities(), 0);
        assert_eq!(Name::new(&"y".repeat(40)).capabilities(), 0);
        assert_eq!(Name([0; NAME_LEN]).capabilities(), 0);
        // The magic inside the name itself (no NUL before it) is not a mark.
        let mut fake = [b'a'; NAME_LEN];
        fake[MARK_AT..MARK_AT + 6].copy_from_slice(b"ustk\x01\x01");
        fake[NAME_LEN - 1] = 0;
        assert_eq!(Name(fake).capabilities(), 0);
        // Another version of the mark is not understood.
        let mut v2 = n;
        v2.0[MARK_AT + 4] = 2;
        assert_eq!(v2.capabilities(), 0);
    }

    proptest::proptest! {
        /// Any 128 bytes parse or are refused without panicking, and what parses re-emits to a
        /// message that parses the same.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 128)) {
            if let Ok(m) = Msg::parse(&bytes) {
                proptest::prop_assert_eq!(Msg::parse(&m.to_bytes()), Ok(m));
            }
        }
    }
}

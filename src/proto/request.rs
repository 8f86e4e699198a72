//! Request headers: ops, chunk ids, parse and emit.
//!
//! Layout (56 bytes, little-endian; see `docs/PROTOCOL.md`):
//!
//! ```text
//! off len field
//!   0   2 magic        "uQ"
//!   2   1 version      1
//!   3   1 op           1 PING, 2 WRITE, 3 READ, 4 DELETE, 5 STAT, 6 LIST
//!   4   4 payload_len  bytes after the header (WRITE data length, else 0)
//!   8   8 request_id
//!  16  16 chunk_id     u128 (LIST: the cursor, with flag AFTER)
//!  32   8 offset       WRITE, READ
//!  40   4 length       WRITE: = payload_len; READ: bytes wanted; LIST: entries wanted
//!  44   4 payload_crc  CRC32C of the payload (WRITE)
//!  48   4 flags        LIST: bit 0 AFTER (chunk_id is a cursor); otherwise 0
//!  52   4 header_crc   CRC32C of bytes 0..52
//! ```

use std::fmt;

use super::error::ParseError;
use super::wire::{self, get_u128, get_u32, get_u64, put_u128, put_u32, put_u64};
use super::{Limits, REQUEST_MAGIC};

const OFF_CHUNK_ID: usize = 16;
const OFF_OFFSET: usize = 32;
const OFF_LENGTH: usize = 40;
const OFF_PAYLOAD_CRC: usize = 44;
const OFF_FLAGS: usize = 48;

/// Request flag bit 0, LIST only: `chunk_id` is a cursor, and the listing starts after it.
/// Without it a LIST starts from the first chunk, and `chunk_id` must be 0. (A flag rather than
/// a reserved id, so every id can be a cursor.)
pub const REQUEST_FLAG_LIST_AFTER: u32 = 0x0000_0001;

/// The identity of a chunk: 128 bits (room for a UUID, or a file id plus a chunk index).
#[derive(Copy, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub u128);

impl ChunkId {
    /// The id with value `id`.
    pub const fn new(id: u128) -> ChunkId {
        ChunkId(id)
    }

    /// The id's value.
    pub const fn get(self) -> u128 {
        self.0
    }
}

impl From<u128> for ChunkId {
    fn from(id: u128) -> ChunkId {
        ChunkId(id)
    }
}

impl fmt::Display for ChunkId {
    /// 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({:032x})", self.0)
    }
}

/// An operation code (byte 3 of a header). Code 0 is never a valid request op; error responses
/// to frames whose header could not be believed carry op 0.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Liveness check; no chunk, no payload.
    Ping = 1,
    /// Write bytes into a chunk at an offset, creating the chunk if needed.
    Write = 2,
    /// Read bytes of a chunk.
    Read = 3,
    /// Delete a chunk.
    Delete = 4,
    /// A chunk's size and the CRC32C of its whole content.
    Stat = 5,
    /// A page of the chunks the server holds (ids and sizes), after a cursor.
    List = 6,
}

impl Op {
    /// Every op, in code order.
    pub const ALL: [Op; 6] = [
        Op::Ping,
        Op::Write,
        Op::Read,
        Op::Delete,
        Op::Stat,
        Op::List,
    ];

    /// The wire code.
    #[inline]
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The op with wire code `code`, if this version knows it.
    #[inline]
    pub const fn from_code(code: u8) -> Option<Op> {
        match code {
            1 => Some(Op::Ping),
            2 => Some(Op::Write),
            3 => Some(Op::Read),
            4 => Some(Op::Delete),
            5 => Some(Op::Stat),
            6 => Some(Op::List),
            _ => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Op::Ping => "PING",
            Op::Write => "WRITE",
            Op::Read => "READ",
            Op::Delete => "DELETE",
            Op::Stat => "STAT",
            Op::List => "LIST",
        };
        f.write_str(name)
    }
}

/// What a request asks for, with exactly the fields its op uses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Request {
    /// PING: answered with an empty OK.
    Ping,
    /// WRITE `len` bytes (the payload that follows the header) at `offset` of `chunk_id`.
    Write {
        /// The chunk.
        chunk_id: ChunkId,
        /// Byte offset in the chunk.
        offset: u64,
        /// Payload length (= data length).
        len: u32,
        /// CRC32C of the payload.
        crc: u32,
    },
    /// READ up to `len` bytes at `offset` of `chunk_id`.
    Read {
        /// The chunk.
        chunk_id: ChunkId,
        /// Byte offset in the chunk.
        offset: u64,
        /// Bytes wanted (the reply may be shorter at the end of the chunk).
        len: u32,
    },
    /// DELETE `chunk_id`.
    Delete {
        /// The chunk.
        chunk_id: ChunkId,
    },
    /// STAT `chunk_id`: its size and whole-content CRC32C.
    Stat {
        /// The chunk.
        chunk_id: ChunkId,
    },
    /// LIST up to `max` chunks (ids and sizes) that come after `after` in the server store's
    /// order, or from the first chunk when `after` is `None`. The server answers at most
    /// [`Limits::list_entries_max`] entries whatever `max` says.
    List {
        /// The cursor: the last id of the previous page (any id is a valid cursor); `None`
        /// starts from the first chunk.
        after: Option<ChunkId>,
        /// Entries wanted.
        max: u32,
    },
}

impl Request {
    /// The op code of this request.
    #[inline]
    pub const fn op(&self) -> Op {
        match self {
            Request::Ping => Op::Ping,
            Request::Write { .. } => Op::Write,
            Request::Read { .. } => Op::Read,
            Request::Delete { .. } => Op::Delete,
            Request::Stat { .. } => Op::Stat,
            Request::List { .. } => Op::List,
        }
    }

    /// The chunk this request is about (none for PING; for LIST, the cursor if any).
    #[inline]
    pub const fn chunk_id(&self) -> Option<ChunkId> {
        match self {
            Request::Ping => None,
            Request::List { after, .. } => *after,
            Request::Write { chunk_id, .. }
            | Request::Read { chunk_id, .. }
            | Request::Delete { chunk_id }
            | Request::Stat { chunk_id } => Some(*chunk_id),
        }
    }

    /// Bytes of payload following the header.
    #[inline]
    pub const fn payload_len(&self) -> u32 {
        match self {
            Request::Write { len, .. } => *len,
            _ => 0,
        }
    }

    /// CRC32C of the payload (0, the CRC of nothing, when there is none).
    #[inline]
    pub const fn payload_crc(&self) -> u32 {
        match self {
            Request::Write { crc, .. } => *crc,
            _ => 0,
        }
    }
}

/// A request header: a request id plus the request. The payload (WRITE data) follows it in the
/// stream and is not part of this value.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestHeader {
    /// Chosen by the client, echoed in the response; unique among the connection's requests in
    /// flight.
    pub request_id: u64,
    /// The operation and its fields.
    pub request: Request,
}

impl RequestHeader {
    /// Bytes of a request header on the wire.
    pub const HEADER_LEN: usize = 56;

    /// A header for `request` with id `request_id`.
    pub const fn new(request_id: u64, request: Request) -> RequestHeader {
        RequestHeader {
            request_id,
            request,
        }
    }

    /// Parses and validates the header in the first [`Self::HEADER_LEN`] bytes of `buf` (bytes
    /// after them are ignored: they are the payload or the next frame).
    ///
    /// Checks, in order: length, magic, version, header CRC, payload length against
    /// `limits.payload_len_max` (these five close the connection), then op, flags, and the
    /// op's own rules (fields it does not use are zero; WRITE `length` equals `payload_len`; READ
    /// `length` within the payload limit; `offset + length` within `limits.chunk_len_max`).
    /// Never panics and never reads past `buf`.
    pub fn parse(buf: &[u8], limits: &Limits) -> Result<RequestHeader, ParseError> {
        let b: &[u8; Self::HEADER_LEN] = wire::header_array(buf)?;
        let env = wire::parse_envelope(b, REQUEST_MAGIC, limits)?;
        let op = Op::from_code(env.op).ok_or(ParseError::UnknownOp { op: env.op })?;
        let flags = get_u32(b, OFF_FLAGS);
        let known = if op == Op::List {
            REQUEST_FLAG_LIST_AFTER
        } else {
            0
        };
        if flags & !known != 0 {
            return Err(ParseError::UnsupportedFlags {
                flags: flags & !known,
            });
        }
        let chunk_id = ChunkId(get_u128(b, OFF_CHUNK_ID));
        let offset = get_u64(b, OFF_OFFSET);
        let length = get_u32(b, OFF_LENGTH);
        let payload_crc = get_u32(b, OFF_PAYLOAD_CRC);

        let request = match op {
            Op::Write => {
                if length != env.payload_len {
                    return Err(ParseError::LengthMismatch {
                        len: length,
                        payload_len: env.payload_len,
                    });
                }
                if !range_fits(offset, length, limits.chunk_len_max) {
                    return Err(ParseError::WriteBeyondChunkLimit {
                        offset,
                        len: length,
                        max: limits.chunk_len_max,
                    });
                }
                Request::Write {
                    chunk_id,
                    offset,
                    len: length,
                    crc: payload_crc,
                }
            }
            Op::Read => {
                no_payload(env.payload_len)?;
                zero("payload_crc", u128::from(payload_crc))?;
                if length > limits.payload_len_max {
                    return Err(ParseError::ReadTooLarge {
                        len: length,
                        max: limits.payload_len_max,
                    });
                }
                if !range_fits(offset, length, limits.chunk_len_max) {
                    return Err(ParseError::ReadBeyondChunkLimit {
                        offset,
                        len: length,
                        max: limits.chunk_len_max,
                    });
                }
                Request::Read {
                    chunk_id,
                    offset,
                    len: length,
                }
            }
            Op::List => {
                no_payload(env.payload_len)?;
                let after = flags & REQUEST_FLAG_LIST_AFTER != 0;
                if !after {
                    zero("chunk_id", chunk_id.0)?;
                }
                zero("offset", u128::from(offset))?;
                zero("payload_crc", u128::from(payload_crc))?;
                Request::List {
                    after: after.then_some(chunk_id),
                    max: length,
                }
            }
            Op::Ping | Op::Delete | Op::Stat => {
                no_payload(env.payload_len)?;
                if op == Op::Ping {
                    zero("chunk_id", chunk_id.0)?;
                }
                zero("offset", u128::from(offset))?;
                zero("length", u128::from(length))?;
                zero("payload_crc", u128::from(payload_crc))?;
                match op {
                    Op::Delete => Request::Delete { chunk_id },
                    Op::Stat => Request::Stat { chunk_id },
                    _ => Request::Ping,
                }
            }
        };
        Ok(RequestHeader {
            request_id: env.request_id,
            request,
        })
    }

    /// The header's wire bytes.
    pub fn to_bytes(&self) -> [u8; Self::HEADER_LEN] {
        let mut b = [0u8; Self::HEADER_LEN];
        let r = &self.request;
        wire::put_envelope(
            &mut b,
            REQUEST_MAGIC,
            r.op().code(),
            r.payload_len(),
            self.request_id,
        );
        let (offset, length) = match *r {
            Request::Write { offset, len, .. } | Request::Read { offset, len, .. } => (offset, len),
            Request::List { max, .. } => (0, max),
            _ => (0, 0),
        };
        let flags = match *r {
            Request::List { after: Some(_), .. } => REQUEST_FLAG_LIST_AFTER,
            _ => 0,
        };
        put_u128(&mut b, OFF_CHUNK_ID, r.chunk_id().unwrap_or_default().0);
        put_u64(&mut b, OFF_OFFSET, offset);
        put_u32(&mut b, OFF_LENGTH, length);
        put_u32(&mut b, OFF_PAYLOAD_CRC, r.payload_crc());
        put_u32(&mut b, OFF_FLAGS, flags);
        wire::seal(&mut b);
        b
    }

    /// Writes the header into the first [`Self::HEADER_LEN`] bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`Self::HEADER_LEN`] (a caller bug: size buffers with
    /// [`Self::buffer_len`]).
    pub fn emit(&self, buf: &mut [u8]) {
        buf[..Self::HEADER_LEN].copy_from_slice(&self.to_bytes());
    }

    /// Bytes [`Self::emit`] writes: the header alone.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        Self::HEADER_LEN
    }

    /// Bytes of the whole frame: header plus payload.
    #[inline]
    pub const fn frame_len(&self) -> usize {
        Self::HEADER_LEN + self.request.payload_len() as usize
    }

    /// The op code.
    #[inline]
    pub const fn op(&self) -> Op {
        self.request.op()
    }

    /// Bytes of payload following the header.
    #[inline]
    pub const fn payload_len(&self) -> u32 {
        self.request.payload_len()
    }

    /// CRC32C the payload must have.
    #[inline]
    pub const fn payload_crc(&self) -> u32 {
        self.request.payload_crc()
    }
}

/// Whether `[offset, offset + len)` lies within `[0, max]`, without overflow.
#[inline]
fn range_fits(offset: u64, len: u32, max: u64) -> bool {
    match offset.checked_add(u64::from(len)) {
        Some(end) => end <= max,
        None => false,
    }
}

#[inline]
fn no_payload(payload_len: u32) -> Result<(), ParseError> {
    if payload_len == 0 {
        Ok(())
    } else {
        Err(ParseError::UnexpectedPayload { len: payload_len })
    }
}

#[inline]
fn zero(field: &'static str, value: u128) -> Result<(), ParseError> {
    if value == 0 {
        Ok(())
    } else {
        Err(ParseError::NonZeroField { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{crc32c, Rejection, Status};

    const L: Limits = Limits::DEFAULT;
    const HL: usize = RequestHeader::HEADER_LEN;

    fn chunk() -> ChunkId {
        ChunkId(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210)
    }

    /// Rewrites a field of a valid header and reseals it, so the CRC passes and the field's own
    /// check is what fails.
    fn tamper(h: &RequestHeader, f: impl FnOnce(&mut [u8; HL])) -> [u8; HL] {
        let mut b = h.to_bytes();
        f(&mut b);
        wire::seal(&mut b);
        b
    }

    fn all_ops() -> Vec<RequestHeader> {
        vec![
            RequestHeader::new(1, Request::Ping),
            RequestHeader::new(
                2,
                Request::Write {
                    chunk_id: chunk(),
                    offset: 4096,
                    len: 5,
                    crc: crc32c(b"hello"),
                },
            ),
            RequestHeader::new(
                3,
                Request::Read {
                    chunk_id: chunk(),
                    offset: 8192,
                    len: 65536,
                },
            ),
            RequestHeader::new(4, Request::Delete { chunk_id: chunk() }),
            RequestHeader::new(u64::MAX, Request::Stat { chunk_id: chunk() }),
            RequestHeader::new(
                6,
                Request::List {
                    after: None,
                    max: 100,
                },
            ),
            RequestHeader::new(
                7,
                Request::List {
                    after: Some(chunk()),
                    max: u32::MAX,
                },
            ),
            // Id 0 is a cursor like any other: the flag, not the id, says "from the start".
            RequestHeader::new(
                8,
                Request::List {
                    after: Some(ChunkId(0)),
                    max: 0,
                },
            ),
        ]
    }

    #[test]
    fn every_op_roundtrips() {
        for h in all_ops() {
            let mut buf = [0xEEu8; HL + 7];
            h.emit(&mut buf);
            assert_eq!(buf[HL..], [0xEE; 7], "emit wrote past the header");
            assert_eq!(RequestHeader::parse(&buf, &L), Ok(h), "{h:?}");
            assert_eq!(h.buffer_len(), HL);
            assert_eq!(h.frame_len(), HL + h.payload_len() as usize);
        }
    }

    #[test]
    fn field_offsets_match_the_spec() {
        let h = RequestHeader::new(
            0x1122_3344_5566_7788,
            Request::Write {
                chunk_id: chunk(),
                offset: 0x0A0B_0C0D,
                len: 5,
                crc: 0xDEAD_BEEF,
            },
        );
        let b = h.to_bytes();
        assert_eq!(&b[0..2], b"uQ");
        assert_eq!(b[2], 1);
        assert_eq!(b[3], 2);
        assert_eq!(b[4..8], 5u32.to_le_bytes());
        assert_eq!(b[8..16], 0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(b[16..32], chunk().0.to_le_bytes());
        assert_eq!(b[32..40], 0x0A0B_0C0Du64.to_le_bytes());
        assert_eq!(b[40..44], 5u32.to_le_bytes());
        assert_eq!(b[44..48], 0xDEAD_BEEFu32.to_le_bytes());
        assert_eq!(b[48..52], [0; 4]);
        assert_eq!(b[52..56], crc32c(&b[..52]).to_le_bytes());
    }

    #[test]
    fn ping_bytes_are_the_documented_example() {
        // The PING example in docs/PROTOCOL.md.
        let b = RequestHeader::new(1, Request::Ping).to_bytes();
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let mut expected = String::from("75510101");
        expected += "00000000";
        expected += "0100000000000000";
        expected += &"00".repeat(36);
        expected += &format!("{:08x}", crc32c(&b[..52]).swap_bytes());
        assert_eq!(hex, expected);
    }

    #[test]
    fn truncated_header() {
        let b = RequestHeader::new(1, Request::Ping).to_bytes();
        for n in 0..HL {
            assert_eq!(
                RequestHeader::parse(&b[..n], &L),
                Err(ParseError::Truncated { len: n, need: HL })
            );
        }
    }

    #[test]
    fn bad_magic_closes() {
        let mut b = RequestHeader::new(1, Request::Ping).to_bytes();
        b[0] = b'G';
        let e = RequestHeader::parse(&b, &L).unwrap_err();
        assert!(matches!(e, ParseError::BadMagic { found, .. } if found == [b'G', b'Q']));
        assert!(e.must_close());
        assert_eq!(e.status(), Status::Malformed);
        // A response header is not a request.
        let resp = crate::proto::ResponseHeader::ping(1).to_bytes();
        let mut buf = [0u8; HL];
        buf[..resp.len()].copy_from_slice(&resp);
        assert!(matches!(
            RequestHeader::parse(&buf, &L),
            Err(ParseError::BadMagic { .. })
        ));
    }

    #[test]
    fn bad_version_closes_even_with_valid_crc() {
        let h = RequestHeader::new(1, Request::Ping);
        let b = tamper(&h, |b| b[2] = 2);
        let e = RequestHeader::parse(&b, &L).unwrap_err();
        assert_eq!(e, ParseError::UnsupportedVersion { version: 2 });
        assert!(e.must_close());
        assert_eq!(e.status(), Status::UnsupportedVersion);
        assert!(!e.header_verified());
        assert_eq!(Rejection::new(&b, e).request_id, None);
    }

    #[test]
    fn header_crc_mismatch_on_any_bit_flip() {
        let h = all_ops()[1];
        let good = h.to_bytes();
        // Every single-bit flip outside magic and version is caught by the CRC.
        for byte in 3..HL {
            for bit in 0..8 {
                let mut b = good;
                b[byte] ^= 1 << bit;
                let e = RequestHeader::parse(&b, &L).unwrap_err();
                assert!(
                    matches!(e, ParseError::BadHeaderChecksum { .. }),
                    "byte {byte} bit {bit}: {e:?}"
                );
                assert!(e.must_close());
                assert_eq!(e.status(), Status::BadHeaderChecksum);
            }
        }
    }

    #[test]
    fn corrupted_length_is_not_believed() {
        // A length corrupted to something huge is caught by the header CRC, not by the limit.
        let h = all_ops()[1];
        let mut b = h.to_bytes();
        b[7] = 0xFF;
        assert!(matches!(
            RequestHeader::parse(&b, &L),
            Err(ParseError::BadHeaderChecksum { .. })
        ));
    }

    #[test]
    fn payload_over_limit_closes() {
        let limits = Limits {
            payload_len_max: 1024,
            ..L
        };
        let h = RequestHeader::new(
            7,
            Request::Write {
                chunk_id: chunk(),
                offset: 0,
                len: 1025,
                crc: 0,
            },
        );
        let b = h.to_bytes();
        let e = RequestHeader::parse(&b, &limits).unwrap_err();
        assert_eq!(
            e,
            ParseError::PayloadTooLarge {
                len: 1025,
                max: 1024
            }
        );
        assert!(e.must_close());
        assert_eq!(e.status(), Status::TooLarge);
        // The header was verified, so the error response can name the request.
        let rej = Rejection::new(&b, e);
        assert_eq!(rej.request_id, Some(7));
        let resp = rej.error_response();
        assert!(resp.closing);
        // Exactly at the limit is fine.
        let h = RequestHeader::new(
            7,
            Request::Write {
                chunk_id: chunk(),
                offset: 0,
                len: 1024,
                crc: 0,
            },
        );
        assert_eq!(RequestHeader::parse(&h.to_bytes(), &limits), Ok(h));
        // Also for a u32::MAX length with a valid CRC.
        let b = tamper(&h, |b| {
            b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
            b[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        });
        assert!(matches!(
            RequestHeader::parse(&b, &limits),
            Err(ParseError::PayloadTooLarge { len: u32::MAX, .. })
        ));
    }

    #[test]
    fn unknown_op_survives() {
        let h = RequestHeader::new(9, Request::Ping);
        for op in [0u8, 7, 0x7F, 0xFF] {
            let b = tamper(&h, |b| b[3] = op);
            let e = RequestHeader::parse(&b, &L).unwrap_err();
            assert_eq!(e, ParseError::UnknownOp { op });
            assert!(!e.must_close());
            assert_eq!(e.status(), Status::UnknownOp);
            let rej = Rejection::new(&b, e);
            assert_eq!((rej.request_id, rej.op), (Some(9), op));
            let resp = rej.error_response();
            assert!(!resp.closing);
            assert_eq!(resp.request_id, 9);
        }
    }

    #[test]
    fn flags_must_be_zero() {
        let h = RequestHeader::new(9, Request::Ping);
        let b = tamper(&h, |b| b[48] = 0x80);
        assert_eq!(
            RequestHeader::parse(&b, &L),
            Err(ParseError::UnsupportedFlags { flags: 0x80 })
        );
        // LIST's AFTER bit belongs to LIST alone.
        for h in all_ops().into_iter().filter(|h| h.op() != Op::List) {
            let b = tamper(&h, |b| b[48] = 0x01);
            assert_eq!(
                RequestHeader::parse(&b, &L),
                Err(ParseError::UnsupportedFlags { flags: 0x01 }),
                "{h:?}"
            );
        }
        let list = RequestHeader::new(
            9,
            Request::List {
                after: Some(chunk()),
                max: 1,
            },
        );
        let b = tamper(&list, |b| b[48] = 0x03);
        assert_eq!(
            RequestHeader::parse(&b, &L),
            Err(ParseError::UnsupportedFlags { flags: 0x02 })
        );
    }

    #[test]
    fn list_fields_and_cursor() {
        let from_start = RequestHeader::new(
            5,
            Request::List {
                after: None,
                max: 7,
            },
        );
        let b = from_start.to_bytes();
        assert_eq!(b[3], 6);
        assert_eq!(b[16..32], [0; 16]);
        assert_eq!(b[40..44], 7u32.to_le_bytes());
        assert_eq!(b[48..52], [0; 4]);
        let after = RequestHeader::new(
            5,
            Request::List {
                after: Some(chunk()),
                max: 7,
            },
        );
        let b = after.to_bytes();
        assert_eq!(b[16..32], chunk().0.to_le_bytes());
        assert_eq!(b[48..52], REQUEST_FLAG_LIST_AFTER.to_le_bytes());
        assert_eq!(RequestHeader::parse(&b, &L), Ok(after));
        assert_eq!(after.request.chunk_id(), Some(chunk()));
        // Any page size parses (the server caps it); a cursor without the flag does not.
        let huge = RequestHeader::new(
            5,
            Request::List {
                after: None,
                max: u32::MAX,
            },
        );
        assert_eq!(RequestHeader::parse(&huge.to_bytes(), &L), Ok(huge));
        let b = tamper(&from_start, |b| b[20] = 1);
        assert_eq!(
            RequestHeader::parse(&b, &L),
            Err(ParseError::NonZeroField { field: "chunk_id" })
        );
        for (off, field) in [(32, "offset"), (44, "payload_crc")] {
            for h in [from_start, after] {
                let b = tamper(&h, |b| b[off] = 1);
                let e = RequestHeader::parse(&b, &L).unwrap_err();
                assert_eq!(e, ParseError::NonZeroField { field });
                assert!(!e.must_close());
            }
        }
        let b = tamper(&after, |b| b[4] = 24);
        assert_eq!(
            RequestHeader::parse(&b, &L),
            Err(ParseError::UnexpectedPayload { len: 24 })
        );
        assert_eq!(Op::List.to_string(), "LIST");
    }

    #[test]
    fn unused_fields_must_be_zero() {
        let ping = RequestHeader::new(1, Request::Ping);
        let stat = RequestHeader::new(1, Request::Stat { chunk_id: chunk() });
        let del = RequestHeader::new(1, Request::Delete { chunk_id: chunk() });
        let read = all_ops()[2];
        let cases: [(RequestHeader, usize, &str); 9] = [
            (ping, 16, "chunk_id"),
            (ping, 32, "offset"),
            (ping, 40, "length"),
            (ping, 44, "payload_crc"),
            (stat, 32, "offset"),
            (stat, 40, "length"),
            (del, 44, "payload_crc"),
            (del, 39, "offset"),
            (read, 45, "payload_crc"),
        ];
        for (h, off, field) in cases {
            let b = tamper(&h, |b| b[off] = 1);
            let e = RequestHeader::parse(&b, &L).unwrap_err();
            assert_eq!(e, ParseError::NonZeroField { field }, "{h:?} @{off}");
            assert!(!e.must_close());
            assert_eq!(e.status(), Status::Malformed);
        }
    }

    #[test]
    fn payload_on_op_without_payload() {
        for h in [
            all_ops()[0],
            all_ops()[2],
            all_ops()[3],
            all_ops()[4],
            all_ops()[5],
        ] {
            let b = tamper(&h, |b| b[4] = 3);
            let e = RequestHeader::parse(&b, &L).unwrap_err();
            assert_eq!(e, ParseError::UnexpectedPayload { len: 3 }, "{h:?}");
            assert!(!e.must_close());
        }
    }

    #[test]
    fn write_length_must_equal_payload_len() {
        let h = all_ops()[1];
        let b = tamper(&h, |b| b[40] = 4);
        assert_eq!(
            RequestHeader::parse(&b, &L),
            Err(ParseError::LengthMismatch {
                len: 4,
                payload_len: 5
            })
        );
    }

    #[test]
    fn read_length_over_payload_limit() {
        let h = RequestHeader::new(
            1,
            Request::Read {
                chunk_id: chunk(),
                offset: 0,
                len: L.payload_len_max + 1,
            },
        );
        let e = RequestHeader::parse(&h.to_bytes(), &L).unwrap_err();
        assert!(matches!(e, ParseError::ReadTooLarge { .. }));
        assert!(!e.must_close());
        assert_eq!(e.status(), Status::TooLarge);
    }

    #[test]
    fn offset_plus_len_past_chunk_limit() {
        let max = L.chunk_len_max;
        let w = |offset, len| {
            RequestHeader::new(
                1,
                Request::Write {
                    chunk_id: chunk(),
                    offset,
                    len,
                    crc: 0,
                },
            )
        };
        let r = |offset, len| {
            RequestHeader::new(
                1,
                Request::Read {
                    chunk_id: chunk(),
                    offset,
                    len,
                },
            )
        };
        // Exactly reaching the limit is allowed.
        for h in [w(max - 10, 10), r(max - 10, 10), w(max, 0), r(max, 0)] {
            assert_eq!(RequestHeader::parse(&h.to_bytes(), &L), Ok(h));
        }
        // One past, and u64 overflow, are not.
        for (offset, len) in [(max - 10, 11), (max + 1, 0), (u64::MAX, 1), (u64::MAX, 0)] {
            let e = RequestHeader::parse(&w(offset, len).to_bytes(), &L).unwrap_err();
            assert!(
                matches!(e, ParseError::WriteBeyondChunkLimit { .. }),
                "{e:?}"
            );
            assert_eq!(e.status(), Status::ChunkTooLarge);
            assert!(!e.must_close());
            let e = RequestHeader::parse(&r(offset, len).to_bytes(), &L).unwrap_err();
            assert!(
                matches!(e, ParseError::ReadBeyondChunkLimit { .. }),
                "{e:?}"
            );
            assert_eq!(e.status(), Status::OutOfRange);
        }
    }

    #[test]
    fn chunk_id_formats_as_hex() {
        assert_eq!(
            chunk().to_string(),
            "0123456789abcdeffedcba9876543210".to_string()
        );
        assert_eq!(ChunkId::from(5u128).get(), 5);
        assert_eq!(format!("{:?}", ChunkId(1)).len(), "ChunkId()".len() + 32);
        for op in Op::ALL {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::from_code(0), None);
    }

    #[test]
    #[should_panic]
    fn emit_into_short_buffer_panics() {
        let mut buf = [0u8; HL - 1];
        RequestHeader::new(1, Request::Ping).emit(&mut buf);
    }
}

//! Response headers: parse and emit.
//!
//! Layout (40 bytes, little-endian; see `docs/PROTOCOL.md`):
//!
//! ```text
//! off len field
//!   0   2 magic        "uR"
//!   2   1 version      1
//!   3   1 op           the request's op byte, echoed (0 if the request header was not believed)
//!   4   4 payload_len  bytes after the header (READ data, LIST entries, else 0)
//!   8   8 request_id   the request's id, echoed (0 if not believed)
//!  16   2 status       0 = OK, else the error code
//!  18   2 flags        bit 0: CLOSING (the server closes the connection after this response);
//!                      bit 1: MORE (LIST OK only: chunks remain after the last entry)
//!  20   4 payload_crc  CRC32C of the payload (READ, LIST)
//!  24   8 chunk_size   WRITE, READ, STAT: the chunk's size
//!  32   4 chunk_crc    STAT: CRC32C of the chunk's whole content
//!  36   4 header_crc   CRC32C of bytes 0..36
//! ```

use super::error::{ParseError, Status};
use super::list::LIST_ENTRY_LEN;
use super::request::Op;
use super::wire::{self, get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};
use super::{Limits, RESPONSE_MAGIC};

const OFF_STATUS: usize = 16;
const OFF_FLAGS: usize = 18;
const OFF_PAYLOAD_CRC: usize = 20;
const OFF_CHUNK_SIZE: usize = 24;
const OFF_CHUNK_CRC: usize = 32;

/// Response flag bit 0: the server closes the connection after this response.
pub const RESPONSE_FLAG_CLOSING: u16 = 0x0001;

/// Response flag bit 1, LIST OK only: more chunks come after the last entry of this answer
/// (ask again with that entry's id as the cursor). Without it the listing is complete.
pub const RESPONSE_FLAG_MORE: u16 = 0x0002;

/// What a response says, with exactly the fields its op and status use.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reply {
    /// PING succeeded.
    Ping,
    /// WRITE succeeded (every byte was written).
    Write {
        /// The chunk's size after the write.
        chunk_size: u64,
    },
    /// READ succeeded; `len` bytes of data follow the header.
    Read {
        /// Bytes of data that follow: the requested length, or less at the end of the chunk.
        len: u32,
        /// CRC32C of the data.
        crc: u32,
        /// The chunk's size when it was read (tells a short read at the end from a hole).
        chunk_size: u64,
    },
    /// DELETE succeeded.
    Delete,
    /// STAT succeeded.
    Stat {
        /// The chunk's size in bytes.
        chunk_size: u64,
        /// CRC32C of the chunk's whole content (bytes 0..chunk_size).
        chunk_crc: u32,
    },
    /// LIST succeeded; `len` bytes of entries ([`ListEntry`](super::ListEntry), 24 bytes each)
    /// follow the header.
    List {
        /// Bytes of entries that follow: a multiple of [`LIST_ENTRY_LEN`].
        len: u32,
        /// CRC32C of the entries.
        crc: u32,
        /// More chunks come after the last entry (flag MORE).
        more: bool,
    },
    /// The request failed.
    Error {
        /// The request's op byte, echoed even if unknown; 0 if the request header was not
        /// believed.
        op: u8,
        /// Why. Never [`Status::Ok`] (emit writes what it is given, but parse turns an OK
        /// status into one of the other variants).
        status: Status,
    },
}

impl Reply {
    /// The status code on the wire.
    #[inline]
    pub const fn status(&self) -> Status {
        match self {
            Reply::Error { status, .. } => *status,
            _ => Status::Ok,
        }
    }

    /// The op byte on the wire.
    #[inline]
    pub const fn op_code(&self) -> u8 {
        match self {
            Reply::Ping => Op::Ping.code(),
            Reply::Write { .. } => Op::Write.code(),
            Reply::Read { .. } => Op::Read.code(),
            Reply::Delete => Op::Delete.code(),
            Reply::Stat { .. } => Op::Stat.code(),
            Reply::List { .. } => Op::List.code(),
            Reply::Error { op, .. } => *op,
        }
    }

    /// Bytes of payload following the header.
    #[inline]
    pub const fn payload_len(&self) -> u32 {
        match self {
            Reply::Read { len, .. } | Reply::List { len, .. } => *len,
            _ => 0,
        }
    }

    /// CRC32C of the payload (0 when there is none).
    #[inline]
    pub const fn payload_crc(&self) -> u32 {
        match self {
            Reply::Read { crc, .. } | Reply::List { crc, .. } => *crc,
            _ => 0,
        }
    }
}

/// A response header: the request id it answers, whether the server closes the connection after
/// it, and the reply. READ data follows it in the stream and is not part of this value.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResponseHeader {
    /// The request id this answers.
    pub request_id: u64,
    /// The server closes the connection after this response (it answers a frame that broke the
    /// framing, or the server is shutting down). Requests still in flight get no answer.
    pub closing: bool,
    /// The outcome.
    pub reply: Reply,
}

impl ResponseHeader {
    /// Bytes of a response header on the wire.
    pub const HEADER_LEN: usize = 40;

    /// A response with `closing` unset.
    pub const fn new(request_id: u64, reply: Reply) -> ResponseHeader {
        ResponseHeader {
            request_id,
            closing: false,
            reply,
        }
    }

    /// PING OK.
    pub const fn ping(request_id: u64) -> ResponseHeader {
        Self::new(request_id, Reply::Ping)
    }

    /// WRITE OK; the chunk now has `chunk_size` bytes.
    pub const fn write(request_id: u64, chunk_size: u64) -> ResponseHeader {
        Self::new(request_id, Reply::Write { chunk_size })
    }

    /// READ OK; `len` bytes with CRC32C `crc` follow; the chunk has `chunk_size` bytes.
    pub const fn read(request_id: u64, len: u32, crc: u32, chunk_size: u64) -> ResponseHeader {
        Self::new(
            request_id,
            Reply::Read {
                len,
                crc,
                chunk_size,
            },
        )
    }

    /// DELETE OK.
    pub const fn delete(request_id: u64) -> ResponseHeader {
        Self::new(request_id, Reply::Delete)
    }

    /// STAT OK.
    pub const fn stat(request_id: u64, chunk_size: u64, chunk_crc: u32) -> ResponseHeader {
        Self::new(
            request_id,
            Reply::Stat {
                chunk_size,
                chunk_crc,
            },
        )
    }

    /// LIST OK; `entries` entries (24 bytes each) with CRC32C `crc` follow; `more` if chunks
    /// remain after the last one.
    pub const fn list(request_id: u64, entries: u32, crc: u32, more: bool) -> ResponseHeader {
        Self::new(
            request_id,
            Reply::List {
                len: entries * LIST_ENTRY_LEN as u32,
                crc,
                more,
            },
        )
    }

    /// A failure of the request `request_id` whose op byte was `op`. `status` must not be
    /// [`Status::Ok`]. Set `closing` if the connection closes after this response.
    pub const fn error(request_id: u64, op: u8, status: Status, closing: bool) -> ResponseHeader {
        ResponseHeader {
            request_id,
            closing,
            reply: Reply::Error { op, status },
        }
    }

    /// Parses and validates the header in the first [`Self::HEADER_LEN`] bytes of `buf`.
    ///
    /// Checks, in order: length, magic, version, header CRC, payload length against
    /// `limits.payload_len_max` (these close the connection), then flags, status code, op (for
    /// an OK status), and the op's rules: fields the op and status do not use are zero, flag
    /// MORE only on a LIST OK, a LIST payload of whole entries. Never panics and never reads
    /// past `buf`.
    pub fn parse(buf: &[u8], limits: &Limits) -> Result<ResponseHeader, ParseError> {
        let b: &[u8; Self::HEADER_LEN] = wire::header_array(buf)?;
        let env = wire::parse_envelope(b, RESPONSE_MAGIC, limits)?;
        let flags = get_u16(b, OFF_FLAGS);
        let known = RESPONSE_FLAG_CLOSING | RESPONSE_FLAG_MORE;
        if flags & !known != 0 {
            return Err(ParseError::UnsupportedFlags {
                flags: u32::from(flags & !known),
            });
        }
        let more = flags & RESPONSE_FLAG_MORE != 0;
        let code = get_u16(b, OFF_STATUS);
        let status = Status::from_code(code).ok_or(ParseError::UnknownStatus { code })?;
        let payload_crc = get_u32(b, OFF_PAYLOAD_CRC);
        let chunk_size = get_u64(b, OFF_CHUNK_SIZE);
        let chunk_crc = get_u32(b, OFF_CHUNK_CRC);

        let reply = if status != Status::Ok {
            only_list_has_more(more, None)?;
            no_payload(env.payload_len)?;
            zero("payload_crc", u64::from(payload_crc))?;
            zero("chunk_size", chunk_size)?;
            zero("chunk_crc", u64::from(chunk_crc))?;
            Reply::Error { op: env.op, status }
        } else {
            let op = Op::from_code(env.op).ok_or(ParseError::UnknownOp { op: env.op })?;
            only_list_has_more(more, Some(op))?;
            if op != Op::Read && op != Op::List {
                no_payload(env.payload_len)?;
                zero("payload_crc", u64::from(payload_crc))?;
            }
            if op != Op::Stat {
                zero("chunk_crc", u64::from(chunk_crc))?;
            }
            match op {
                Op::Ping | Op::Delete => {
                    zero("chunk_size", chunk_size)?;
                    if op == Op::Ping {
                        Reply::Ping
                    } else {
                        Reply::Delete
                    }
                }
                Op::Write => Reply::Write { chunk_size },
                Op::Read => Reply::Read {
                    len: env.payload_len,
                    crc: payload_crc,
                    chunk_size,
                },
                Op::Stat => Reply::Stat {
                    chunk_size,
                    chunk_crc,
                },
                Op::List => {
                    zero("chunk_size", chunk_size)?;
                    if !(env.payload_len as usize).is_multiple_of(LIST_ENTRY_LEN) {
                        return Err(ParseError::ListLength {
                            len: env.payload_len,
                        });
                    }
                    Reply::List {
                        len: env.payload_len,
                        crc: payload_crc,
                        more,
                    }
                }
            }
        };
        Ok(ResponseHeader {
            request_id: env.request_id,
            closing: flags & RESPONSE_FLAG_CLOSING != 0,
            reply,
        })
    }

    /// The header's wire bytes.
    pub fn to_bytes(&self) -> [u8; Self::HEADER_LEN] {
        debug_assert!(
            !matches!(
                self.reply,
                Reply::Error {
                    status: Status::Ok,
                    ..
                }
            ),
            "Reply::Error with Status::Ok"
        );
        debug_assert!(
            !matches!(self.reply, Reply::List { len, .. } if !(len as usize).is_multiple_of(LIST_ENTRY_LEN)),
            "Reply::List with a partial entry"
        );
        let mut b = [0u8; Self::HEADER_LEN];
        let r = &self.reply;
        wire::put_envelope(
            &mut b,
            RESPONSE_MAGIC,
            r.op_code(),
            r.payload_len(),
            self.request_id,
        );
        let (chunk_size, chunk_crc) = match *r {
            Reply::Write { chunk_size } | Reply::Read { chunk_size, .. } => (chunk_size, 0),
            Reply::Stat {
                chunk_size,
                chunk_crc,
            } => (chunk_size, chunk_crc),
            _ => (0, 0),
        };
        put_u16(&mut b, OFF_STATUS, r.status().code());
        let mut flags = 0;
        if self.closing {
            flags |= RESPONSE_FLAG_CLOSING;
        }
        if let Reply::List { more: true, .. } = r {
            flags |= RESPONSE_FLAG_MORE;
        }
        put_u16(&mut b, OFF_FLAGS, flags);
        put_u32(&mut b, OFF_PAYLOAD_CRC, r.payload_crc());
        put_u64(&mut b, OFF_CHUNK_SIZE, chunk_size);
        put_u32(&mut b, OFF_CHUNK_CRC, chunk_crc);
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
        Self::HEADER_LEN + self.reply.payload_len() as usize
    }

    /// The status code.
    #[inline]
    pub const fn status(&self) -> Status {
        self.reply.status()
    }

    /// Bytes of payload following the header.
    #[inline]
    pub const fn payload_len(&self) -> u32 {
        self.reply.payload_len()
    }

    /// CRC32C the payload must have.
    #[inline]
    pub const fn payload_crc(&self) -> u32 {
        self.reply.payload_crc()
    }
}

/// Flag MORE belongs to a LIST OK (`op` is the op of an OK answer, `None` for an error).
#[inline]
fn only_list_has_more(more: bool, op: Option<Op>) -> Result<(), ParseError> {
    if more && op != Some(Op::List) {
        Err(ParseError::UnsupportedFlags {
            flags: u32::from(RESPONSE_FLAG_MORE),
        })
    } else {
        Ok(())
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
fn zero(field: &'static str, value: u64) -> Result<(), ParseError> {
    if value == 0 {
        Ok(())
    } else {
        Err(ParseError::NonZeroField { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::crc32c;

    const L: Limits = Limits::DEFAULT;
    const HL: usize = ResponseHeader::HEADER_LEN;

    fn tamper(h: &ResponseHeader, f: impl FnOnce(&mut [u8; HL])) -> [u8; HL] {
        let mut b = h.to_bytes();
        f(&mut b);
        wire::seal(&mut b);
        b
    }

    fn all_replies() -> Vec<ResponseHeader> {
        vec![
            ResponseHeader::ping(1),
            ResponseHeader::write(2, 1 << 20),
            ResponseHeader::read(3, 5, crc32c(b"hello"), 4096),
            ResponseHeader::read(3, 0, 0, 0),
            ResponseHeader::delete(4),
            ResponseHeader::stat(5, 64 << 20, 0xCAFE_F00D),
            ResponseHeader::error(6, Op::Read.code(), Status::NotFound, false),
            ResponseHeader::error(0, 0, Status::BadHeaderChecksum, true),
            ResponseHeader::error(7, 0xEE, Status::UnknownOp, false),
            ResponseHeader {
                closing: true,
                ..ResponseHeader::ping(8)
            },
            ResponseHeader::list(9, 2, 0x1234_5678, true),
            ResponseHeader::list(10, 0, 0, false),
            ResponseHeader {
                closing: true,
                ..ResponseHeader::list(11, 3, 1, true)
            },
            ResponseHeader::error(12, Op::List.code(), Status::Unsupported, false),
        ]
    }

    #[test]
    fn every_reply_roundtrips() {
        for h in all_replies() {
            let mut buf = [0xEEu8; HL + 3];
            h.emit(&mut buf);
            assert_eq!(buf[HL..], [0xEE; 3]);
            assert_eq!(ResponseHeader::parse(&buf, &L), Ok(h), "{h:?}");
            assert_eq!(h.buffer_len(), HL);
            assert_eq!(h.frame_len(), HL + h.payload_len() as usize);
        }
    }

    #[test]
    fn field_offsets_match_the_spec() {
        let h = ResponseHeader {
            closing: true,
            ..ResponseHeader::read(0x0102_0304_0506_0708, 77, 0xAABB_CCDD, 0x1_0000)
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..2], b"uR");
        assert_eq!(b[2], 1);
        assert_eq!(b[3], Op::Read.code());
        assert_eq!(b[4..8], 77u32.to_le_bytes());
        assert_eq!(b[8..16], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(b[16..18], [0, 0]);
        assert_eq!(b[18..20], [1, 0]);
        assert_eq!(b[20..24], 0xAABB_CCDDu32.to_le_bytes());
        assert_eq!(b[24..32], 0x1_0000u64.to_le_bytes());
        assert_eq!(b[32..36], [0; 4]);
        assert_eq!(b[36..40], crc32c(&b[..36]).to_le_bytes());
        let e = ResponseHeader::error(1, 3, Status::NoSpace, false).to_bytes();
        assert_eq!(e[16..18], 13u16.to_le_bytes());
    }

    #[test]
    fn envelope_errors() {
        let good = ResponseHeader::ping(1).to_bytes();
        assert_eq!(
            ResponseHeader::parse(&good[..HL - 1], &L),
            Err(ParseError::Truncated {
                len: HL - 1,
                need: HL
            })
        );
        let mut b = good;
        b[1] = b'Q';
        assert!(matches!(
            ResponseHeader::parse(&b, &L),
            Err(ParseError::BadMagic { .. })
        ));
        let b = tamper(&ResponseHeader::ping(1), |b| b[2] = 0);
        assert_eq!(
            ResponseHeader::parse(&b, &L),
            Err(ParseError::UnsupportedVersion { version: 0 })
        );
        let mut b = good;
        b[20] ^= 4;
        assert!(matches!(
            ResponseHeader::parse(&b, &L),
            Err(ParseError::BadHeaderChecksum { .. })
        ));
        let limits = Limits {
            payload_len_max: 4,
            ..L
        };
        let b = ResponseHeader::read(1, 5, 0, 5).to_bytes();
        assert_eq!(
            ResponseHeader::parse(&b, &limits),
            Err(ParseError::PayloadTooLarge { len: 5, max: 4 })
        );
    }

    #[test]
    fn unknown_status_flags_and_op() {
        let h = ResponseHeader::ping(1);
        let b = tamper(&h, |b| b[16] = 200);
        let e = ResponseHeader::parse(&b, &L).unwrap_err();
        assert_eq!(e, ParseError::UnknownStatus { code: 200 });
        assert!(!e.must_close());
        let b = tamper(&h, |b| b[18] = 0x03);
        assert_eq!(
            ResponseHeader::parse(&b, &L),
            Err(ParseError::UnsupportedFlags { flags: 0x02 })
        );
        // OK for an op this version does not know is not a valid reply.
        let b = tamper(&h, |b| b[3] = 42);
        assert_eq!(
            ResponseHeader::parse(&b, &L),
            Err(ParseError::UnknownOp { op: 42 })
        );
    }

    #[test]
    fn list_answer_layout_and_rules() {
        let h = ResponseHeader::list(0x55, 2, 0xAABB_CCDD, true);
        let b = h.to_bytes();
        assert_eq!(b[3], 6);
        assert_eq!(b[4..8], 48u32.to_le_bytes());
        assert_eq!(b[18..20], RESPONSE_FLAG_MORE.to_le_bytes());
        assert_eq!(b[20..24], 0xAABB_CCDDu32.to_le_bytes());
        assert_eq!(b[24..36], [0; 12]);
        assert_eq!(
            h.reply,
            Reply::List {
                len: 48,
                crc: 0xAABB_CCDD,
                more: true
            }
        );
        assert_eq!(h.frame_len(), HL + 48);
        // Without MORE the listing is complete.
        let last = ResponseHeader::list(0x55, 1, 7, false);
        assert_eq!(last.to_bytes()[18..20], [0, 0]);
        assert_eq!(ResponseHeader::parse(&last.to_bytes(), &L), Ok(last));
        // A payload of a partial entry.
        for len in [1u32, 23, 25, 47] {
            let b = tamper(&h, |b| b[4..8].copy_from_slice(&len.to_le_bytes()));
            let e = ResponseHeader::parse(&b, &L).unwrap_err();
            assert_eq!(e, ParseError::ListLength { len });
            assert!(!e.must_close());
            assert_eq!(e.status(), Status::Malformed);
        }
        // chunk_size and chunk_crc are unused.
        for (off, field) in [(24, "chunk_size"), (32, "chunk_crc")] {
            let b = tamper(&h, |b| b[off] = 1);
            assert_eq!(
                ResponseHeader::parse(&b, &L),
                Err(ParseError::NonZeroField { field })
            );
        }
        // MORE belongs to a LIST OK alone.
        for other in [
            ResponseHeader::ping(1),
            ResponseHeader::read(3, 5, 1, 5),
            ResponseHeader::error(6, Op::List.code(), Status::Io, false),
        ] {
            let b = tamper(&other, |b| b[18] |= 0x02);
            assert_eq!(
                ResponseHeader::parse(&b, &L),
                Err(ParseError::UnsupportedFlags { flags: 0x02 }),
                "{other:?}"
            );
        }
        // A LIST answer over the client's payload limit closes, like any payload.
        let limits = Limits {
            payload_len_max: 47,
            ..L
        };
        assert_eq!(
            ResponseHeader::parse(&b, &limits),
            Err(ParseError::PayloadTooLarge { len: 48, max: 47 })
        );
    }

    #[test]
    fn unused_fields_must_be_zero() {
        let err = ResponseHeader::error(6, 3, Status::NotFound, false);
        let cases: [(ResponseHeader, usize, &str); 7] = [
            (err, 20, "payload_crc"),
            (err, 24, "chunk_size"),
            (err, 32, "chunk_crc"),
            (ResponseHeader::ping(1), 24, "chunk_size"),
            (ResponseHeader::delete(1), 35, "chunk_crc"),
            (ResponseHeader::write(1, 9), 32, "chunk_crc"),
            (ResponseHeader::stat(1, 9, 9), 20, "payload_crc"),
        ];
        for (h, off, field) in cases {
            let b = tamper(&h, |b| b[off] = 1);
            assert_eq!(
                ResponseHeader::parse(&b, &L),
                Err(ParseError::NonZeroField { field }),
                "{h:?} @{off}"
            );
        }
        for h in [err, ResponseHeader::stat(1, 9, 9)] {
            let b = tamper(&h, |b| b[4] = 1);
            assert_eq!(
                ResponseHeader::parse(&b, &L),
                Err(ParseError::UnexpectedPayload { len: 1 })
            );
        }
    }
}

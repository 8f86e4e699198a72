//! Response headers: parse and emit.
//!
//! Layout (40 bytes, little-endian; see `docs/PROTOCOL.md`):
//!
//! ```text
//! off len field
//!   0   2 magic        "uR"
//!   2   1 version      1
//!   3   1 op           the request's op byte, echoed (0 if the request header was not believed)
//!   4   4 payload_len  bytes after the header (READ data, else 0)
//!   8   8 request_id   the request's id, echoed (0 if not believed)
//!  16   2 status       0 = OK, else the error code
//!  18   2 flags        bit 0: CLOSING (the server closes the connection after this response)
//!  20   4 payload_crc  CRC32C of the payload (READ)
//!  24   8 chunk_size   WRITE, READ, STAT: the chunk's size
//!  32   4 chunk_crc    STAT: CRC32C of the chunk's whole content
//!  36   4 header_crc   CRC32C of bytes 0..36
//! ```

use super::error::{ParseError, Status};
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
            Reply::Error { op, .. } => *op,
        }
    }

    /// Bytes of payload following the header.
    #[inline]
    pub const fn payload_len(&self) -> u32 {
        match self {
            Reply::Read { len, .. } => *len,
            _ => 0,
        }
    }

    /// CRC32C of the payload (0 when there is none).
    #[inline]
    pub const fn payload_crc(&self) -> u32 {
        match self {
            Reply::Read { crc, .. } => *crc,
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
    /// an OK status), and that fields the op and status do not use are zero. Never panics and
    /// never reads past `buf`.
    pub fn parse(buf: &[u8], limits: &Limits) -> Result<ResponseHeader, ParseError> {
        let b: &[u8; Self::HEADER_LEN] = wire::header_array(buf)?;
        let env = wire::parse_envelope(b, RESPONSE_MAGIC, limits)?;
        let flags = get_u16(b, OFF_FLAGS);
        if flags & !RESPONSE_FLAG_CLOSING != 0 {
            return Err(ParseError::UnsupportedFlags {
                flags: u32::from(flags & !RESPONSE_FLAG_CLOSING),
            });
        }
        let code = get_u16(b, OFF_STATUS);
        let status = Status::from_code(code).ok_or(ParseError::UnknownStatus { code })?;
        let payload_crc = get_u32(b, OFF_PAYLOAD_CRC);
        let chunk_size = get_u64(b, OFF_CHUNK_SIZE);
        let chunk_crc = get_u32(b, OFF_CHUNK_CRC);

        let reply = if status != Status::Ok {
            no_payload(env.payload_len)?;
            zero("payload_crc", u64::from(payload_crc))?;
            zero("chunk_size", chunk_size)?;
            zero("chunk_crc", u64::from(chunk_crc))?;
            Reply::Error { op: env.op, status }
        } else {
            let op = Op::from_code(env.op).ok_or(ParseError::UnknownOp { op: env.op })?;
            if op != Op::Read {
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
        put_u16(
            &mut b,
            OFF_FLAGS,
            if self.closing {
                RESPONSE_FLAG_CLOSING
            } else {
                0
            },
        );
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

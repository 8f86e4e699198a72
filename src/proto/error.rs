//! Status codes, parse errors, and what a server does about them.
//!
//! A leaf of the codec: it names nothing else of `proto` but the [`VERSION`](super::VERSION)
//! constant. What a server answers a rejected frame with ([`Rejection`](super::Rejection)) is
//! beside the decoder that rejects it.

use std::fmt;

/// The status code of a response (a `u16` on the wire). `Ok` is 0; every failure has its own code.
///
/// Codes are never reused or renumbered; new ones may be added in later protocol versions (a v1
/// peer that receives an unknown code reports [`ParseError::UnknownStatus`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The chunk does not exist (READ, DELETE, STAT).
    NotFound = 1,
    /// The payload's CRC32C did not match the one in its header (corrupted in transit); the
    /// WRITE was not applied. Sending it again may succeed.
    BadChecksum = 2,
    /// The header's CRC32C did not match; nothing in it was believed. The connection closes.
    BadHeaderChecksum = 3,
    /// A payload or a READ length exceeds the payload limit.
    TooLarge = 4,
    /// A READ starts past the end of the chunk, or would reach past the chunk-size limit.
    OutOfRange = 5,
    /// A WRITE would make the chunk larger than the chunk-size limit.
    ChunkTooLarge = 6,
    /// The op code is not one this server knows.
    UnknownOp = 7,
    /// The header's version is not one this server speaks; the response header carries the
    /// version the server does speak. The connection closes.
    UnsupportedVersion = 8,
    /// The frame breaks a rule of the format (bad magic, nonzero reserved field, unexpected
    /// payload, unknown flag, ...).
    Malformed = 9,
    /// The connection already has the maximum number of requests in flight; retry after a
    /// response arrives.
    TooManyInFlight = 10,
    /// A request with the same request id is still in flight on this connection.
    DuplicateRequestId = 11,
    /// The chunk store failed (I/O error).
    Io = 12,
    /// The chunk store is out of space.
    NoSpace = 13,
    /// The server is shutting down and takes no new requests.
    ShuttingDown = 14,
    /// The server is temporarily overloaded; retry later.
    Busy = 15,
    /// A bug in the server: a state it did not expect.
    Internal = 16,
    /// The chunk store did not answer within the server's storage timeout. The request may
    /// still take effect later: a WRITE's outcome is unknown (READ or STAT the chunk, or write
    /// it again).
    Timeout = 17,
    /// The chunk's bytes in the store failed their stored checksum (damaged on disk): nothing
    /// was served. The store logged and counted it; the chunk stays damaged until rewritten or
    /// deleted.
    Corrupt = 18,
    /// The server already has its maximum number of connections open and refuses this one:
    /// the only frame on it (request id 0), and the connection closes. Retry later or on
    /// another connection already open.
    TooManyConnections = 19,
    /// The server's store cannot do this operation: a LIST to a server whose store does not
    /// implement listing ([`ChunkStore::list`](crate::chunk::ChunkStore::list)'s default).
    /// (A server that does not know LIST at all answers [`Status::UnknownOp`].)
    Unsupported = 20,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 21] = [
        Status::Ok,
        Status::NotFound,
        Status::BadChecksum,
        Status::BadHeaderChecksum,
        Status::TooLarge,
        Status::OutOfRange,
        Status::ChunkTooLarge,
        Status::UnknownOp,
        Status::UnsupportedVersion,
        Status::Malformed,
        Status::TooManyInFlight,
        Status::DuplicateRequestId,
        Status::Io,
        Status::NoSpace,
        Status::ShuttingDown,
        Status::Busy,
        Status::Internal,
        Status::Timeout,
        Status::Corrupt,
        Status::TooManyConnections,
        Status::Unsupported,
    ];

    /// The wire code.
    #[inline]
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The status with wire code `code`, if this version knows it.
    #[inline]
    pub const fn from_code(code: u16) -> Option<Status> {
        if (code as usize) < Self::ALL.len() {
            Some(Self::ALL[code as usize])
        } else {
            None
        }
    }

    /// Whether this is [`Status::Ok`].
    #[inline]
    pub const fn is_ok(self) -> bool {
        matches!(self, Status::Ok)
    }

    /// Whether sending the same request again (after a while, or on a new connection) may
    /// succeed: the failure was in transit or in load, not in the request or the store.
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            Status::BadChecksum
                | Status::BadHeaderChecksum
                | Status::TooManyInFlight
                | Status::ShuttingDown
                | Status::Busy
                | Status::Timeout
                | Status::TooManyConnections
        )
    }
}

impl fmt::Display for Status {
    /// The status's name, then what it means: `NotFound: the chunk does not exist`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Status::Ok => "success",
            Status::NotFound => "the chunk does not exist",
            Status::BadChecksum => "the payload failed its CRC32C check (not applied)",
            Status::BadHeaderChecksum => "the request header failed its CRC32C check",
            Status::TooLarge => "the payload or READ length exceeds the payload limit",
            Status::OutOfRange => "the READ starts past the chunk's end or the chunk-size limit",
            Status::ChunkTooLarge => "the WRITE would make the chunk exceed the chunk-size limit",
            Status::UnknownOp => "the server does not know this operation",
            Status::UnsupportedVersion => "the server speaks another protocol version",
            Status::Malformed => "the request breaks the frame format",
            Status::TooManyInFlight => "too many requests in flight on this connection",
            Status::DuplicateRequestId => "a request with this id is still in flight",
            Status::Io => "the chunk store failed (I/O error)",
            Status::NoSpace => "the chunk store is out of space",
            Status::ShuttingDown => "the server is shutting down",
            Status::Busy => "the server is overloaded, retry later",
            Status::Internal => "a bug in the server",
            Status::Timeout => "the chunk store did not answer in time (outcome unknown)",
            Status::Corrupt => "the chunk is damaged in the store (failed its stored checksum)",
            Status::TooManyConnections => "the server has its maximum of connections open",
            Status::Unsupported => "the server's store cannot do this operation",
        };
        write!(f, "{self:?}: {what}")
    }
}

/// Why a header (or a payload) was rejected.
///
/// Each variant maps to the [`Status`] a server answers with ([`ParseError::status`]) and says
/// whether the connection must be closed after that answer ([`ParseError::must_close`]). The
/// rule: an error is survivable exactly when the header CRC was verified and the payload length
/// is within the limit, because then the frame's end — and so the next frame's start — is known
/// and skipping the payload costs at most one payload limit of bandwidth.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer bytes than a whole header were given to `parse`.
    #[error("truncated header: {len} bytes given, {need} needed")]
    Truncated {
        /// Bytes given.
        len: usize,
        /// Header length.
        need: usize,
    },
    /// The first two bytes are not the magic of this header kind: not this protocol, or the
    /// stream lost its framing.
    #[error("bad magic {found:02x?}, expected {expected:02x?}")]
    BadMagic {
        /// The bytes found.
        found: [u8; 2],
        /// The magic expected.
        expected: [u8; 2],
    },
    /// The version byte is not one this code speaks. The header layout of an unknown version is
    /// unknown, so neither its length nor its CRC can be found: the connection closes.
    #[error(
        "unsupported protocol version {version} (this side speaks {})",
        super::VERSION
    )]
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// The header CRC32C does not match: some header byte, maybe a length, is corrupted.
    #[error("header checksum mismatch: header says {expected:#010x}, computed {computed:#010x}")]
    BadHeaderChecksum {
        /// The CRC stored in the header.
        expected: u32,
        /// The CRC computed over the header bytes.
        computed: u32,
    },
    /// The payload length exceeds the limit. Checked before any payload byte is accepted; the
    /// connection closes rather than skip up to 4 GiB.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// The payload length in the header.
        len: u32,
        /// The configured limit.
        max: u32,
    },
    /// The op code is unknown.
    #[error("unknown op code {op:#04x}")]
    UnknownOp {
        /// The op byte.
        op: u8,
    },
    /// A flag bit this version does not define is set.
    #[error("unsupported flag bits {flags:#x}")]
    UnsupportedFlags {
        /// The unknown bits.
        flags: u32,
    },
    /// A frame whose op carries no payload has one.
    #[error("unexpected payload of {len} bytes for an op that carries none")]
    UnexpectedPayload {
        /// The payload length in the header.
        len: u32,
    },
    /// A field that this op (or status) does not use is not zero.
    #[error("field `{field}` must be zero for this op or status")]
    NonZeroField {
        /// The field's name, as in `docs/PROTOCOL.md`.
        field: &'static str,
    },
    /// A WRITE's `length` differs from its `payload_len`.
    #[error("WRITE length {len} differs from payload length {payload_len}")]
    LengthMismatch {
        /// The `length` field.
        len: u32,
        /// The `payload_len` field.
        payload_len: u32,
    },
    /// A READ asks for more bytes than one payload may hold.
    #[error("READ of {len} bytes exceeds the payload limit of {max} bytes")]
    ReadTooLarge {
        /// The requested length.
        len: u32,
        /// The configured limit.
        max: u32,
    },
    /// A WRITE would reach past the chunk-size limit (or overflow a u64).
    #[error("WRITE of {len} bytes at offset {offset} reaches past the chunk limit of {max} bytes")]
    WriteBeyondChunkLimit {
        /// Start offset.
        offset: u64,
        /// Bytes to write.
        len: u32,
        /// The configured chunk limit.
        max: u64,
    },
    /// A READ would reach past the chunk-size limit (or overflow a u64).
    #[error("READ of {len} bytes at offset {offset} reaches past the chunk limit of {max} bytes")]
    ReadBeyondChunkLimit {
        /// Start offset.
        offset: u64,
        /// Bytes to read.
        len: u32,
        /// The configured chunk limit.
        max: u64,
    },
    /// A response carries a status code this version does not know.
    #[error("unknown status code {code}")]
    UnknownStatus {
        /// The code.
        code: u16,
    },
    /// The payload's CRC32C does not match the header's `payload_crc`. The frame boundaries are
    /// intact (the header was verified), so the connection survives.
    #[error("payload checksum mismatch: header says {expected:#010x}, computed {computed:#010x}")]
    BadPayloadChecksum {
        /// The CRC announced in the header.
        expected: u32,
        /// The CRC computed over the payload.
        computed: u32,
    },
    /// A LIST answer's payload is not a whole number of 24-byte entries.
    #[error("LIST answer of {len} bytes is not a whole number of 24-byte entries")]
    ListLength {
        /// The payload length in the header.
        len: u32,
    },
    /// The stream ended (or the caller stopped) before the whole payload arrived.
    #[error("payload truncated: {missing} bytes missing")]
    PayloadTruncated {
        /// Bytes still expected.
        missing: u32,
    },
}

impl ParseError {
    /// The status code a server answers this error with.
    pub const fn status(&self) -> Status {
        match self {
            ParseError::Truncated { .. }
            | ParseError::BadMagic { .. }
            | ParseError::UnsupportedFlags { .. }
            | ParseError::UnexpectedPayload { .. }
            | ParseError::NonZeroField { .. }
            | ParseError::LengthMismatch { .. }
            | ParseError::UnknownStatus { .. }
            | ParseError::ListLength { .. }
            | ParseError::PayloadTruncated { .. } => Status::Malformed,
            ParseError::UnsupportedVersion { .. } => Status::UnsupportedVersion,
            ParseError::BadHeaderChecksum { .. } => Status::BadHeaderChecksum,
            ParseError::PayloadTooLarge { .. } | ParseError::ReadTooLarge { .. } => {
                Status::TooLarge
            }
            ParseError::UnknownOp { .. } => Status::UnknownOp,
            ParseError::WriteBeyondChunkLimit { .. } => Status::ChunkTooLarge,
            ParseError::ReadBeyondChunkLimit { .. } => Status::OutOfRange,
            ParseError::BadPayloadChecksum { .. } => Status::BadChecksum,
        }
    }

    /// Whether the connection must be closed after answering: the position of the next frame
    /// is unknown (framing lost, header not trustworthy, unknown layout, stream ended), or
    /// skipping the payload is not worth it (over the limit).
    pub const fn must_close(&self) -> bool {
        match self {
            ParseError::Truncated { .. }
            | ParseError::BadMagic { .. }
            | ParseError::UnsupportedVersion { .. }
            | ParseError::BadHeaderChecksum { .. }
            | ParseError::PayloadTooLarge { .. }
            | ParseError::PayloadTruncated { .. } => true,
            ParseError::UnknownOp { .. }
            | ParseError::UnsupportedFlags { .. }
            | ParseError::UnexpectedPayload { .. }
            | ParseError::NonZeroField { .. }
            | ParseError::LengthMismatch { .. }
            | ParseError::ReadTooLarge { .. }
            | ParseError::WriteBeyondChunkLimit { .. }
            | ParseError::ReadBeyondChunkLimit { .. }
            | ParseError::UnknownStatus { .. }
            | ParseError::ListLength { .. }
            | ParseError::BadPayloadChecksum { .. } => false,
        }
    }

    /// Whether the header CRC had been verified when this error was found, so the header's
    /// request id and op can be believed (and echoed in the error response).
    pub const fn header_verified(&self) -> bool {
        !matches!(
            self,
            ParseError::Truncated { .. }
                | ParseError::BadMagic { .. }
                | ParseError::UnsupportedVersion { .. }
                | ParseError::BadHeaderChecksum { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_roundtrip_and_are_dense() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(s.code() as usize, i);
            assert_eq!(Status::from_code(s.code()), Some(*s));
        }
        assert_eq!(Status::from_code(Status::ALL.len() as u16), None);
        assert_eq!(Status::from_code(u16::MAX), None);
        assert!(Status::Ok.is_ok());
        assert!(!Status::NotFound.is_ok());
        assert!(Status::Busy.is_transient());
        assert!(!Status::NotFound.is_transient());
    }

    #[test]
    fn parse_error_is_small_and_copy() {
        fn is_copy<T: Copy>() {}
        is_copy::<ParseError>();
        assert!(std::mem::size_of::<ParseError>() <= 32);
    }

    #[test]
    fn closing_errors_are_exactly_the_ones_that_lose_framing() {
        let closing = [
            ParseError::Truncated { len: 3, need: 56 },
            ParseError::BadMagic {
                found: *b"GE",
                expected: *b"uQ",
            },
            ParseError::UnsupportedVersion { version: 2 },
            ParseError::BadHeaderChecksum {
                expected: 1,
                computed: 2,
            },
            ParseError::PayloadTooLarge { len: 9, max: 8 },
            ParseError::PayloadTruncated { missing: 1 },
        ];
        for e in closing {
            assert!(e.must_close(), "{e:?}");
        }
        let surviving = [
            ParseError::UnknownOp { op: 9 },
            ParseError::UnsupportedFlags { flags: 1 },
            ParseError::UnexpectedPayload { len: 1 },
            ParseError::NonZeroField { field: "offset" },
            ParseError::LengthMismatch {
                len: 1,
                payload_len: 2,
            },
            ParseError::ReadTooLarge { len: 9, max: 8 },
            ParseError::WriteBeyondChunkLimit {
                offset: 1,
                len: 1,
                max: 1,
            },
            ParseError::ReadBeyondChunkLimit {
                offset: 1,
                len: 1,
                max: 1,
            },
            ParseError::UnknownStatus { code: 999 },
            ParseError::ListLength { len: 25 },
            ParseError::BadPayloadChecksum {
                expected: 1,
                computed: 2,
            },
        ];
        for e in surviving {
            assert!(!e.must_close(), "{e:?}");
            // A survivable error always comes after the header was verified.
            assert!(e.header_verified(), "{e:?}");
            assert_ne!(e.status(), Status::Ok);
        }
        assert_eq!(
            ParseError::WriteBeyondChunkLimit {
                offset: 0,
                len: 0,
                max: 0
            }
            .status(),
            Status::ChunkTooLarge
        );
        assert_eq!(
            ParseError::ReadBeyondChunkLimit {
                offset: 0,
                len: 0,
                max: 0
            }
            .status(),
            Status::OutOfRange
        );
        // Messages say what was found.
        let msg = ParseError::PayloadTooLarge { len: 9, max: 8 }.to_string();
        assert!(msg.contains('9') && msg.contains('8'), "{msg}");
    }
}

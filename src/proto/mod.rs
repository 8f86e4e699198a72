//! The chunk wire protocol: headers, parse/emit, CRC32C helpers and incremental framing.
//!
//! This module is sans-IO: it turns bytes into typed values and back, and never touches a socket,
//! a clock or the heap. The byte-exact specification is `docs/PROTOCOL.md` in the repository;
//! this module is its implementation and the two must agree.
//!
//! # Frames
//!
//! Every message is a *frame*: a fixed-size header followed by `payload_len` payload bytes.
//!
//! ```text
//! request:  [ RequestHeader: 56 bytes ][ payload: WRITE data, else nothing ]
//! response: [ ResponseHeader: 40 bytes ][ payload: READ data, LIST entries, else nothing ]
//! ```
//!
//! Both headers start with the same 16-byte envelope (magic, version, op, payload length, request
//! id) and end with a CRC32C of everything before it, so a corrupted length is caught before it
//! is believed. The payload carries its own CRC32C, stored in the header.
//!
//! # Two ways to read a stream
//!
//! * **Zero-copy, contiguous header:** when a caller has at least
//!   [`RequestHeader::HEADER_LEN`] contiguous bytes it calls [`RequestHeader::parse`], then reads
//!   the payload straight from its socket into its own buffer, checking it with
//!   [`crc32c_append`] / [`PayloadCheck`].
//! * **Arbitrary pieces:** [`FrameDecoder`] is fed whatever the transport delivered and yields
//!   [`Event`]s: a header, payload slices borrowed from the input, the end of the frame (with the
//!   payload CRC verdict), or a rejection. Its state is bounded: the header accumulates in a fixed
//!   array and payload bytes are never buffered.
//!
//! # Errors
//!
//! Every failure is a [`ParseError`] (a small `Copy` enum). Each maps to the [`Status`] code the
//! server answers with ([`ParseError::status`]) and says whether the connection must be closed
//! afterwards ([`ParseError::must_close`]): an error is survivable exactly when the header CRC
//! was verified and the payload length is within limits, because only then is the next frame's
//! position known.

mod crc;
mod decoder;
mod error;
mod list;
mod request;
mod response;
mod wire;

// The decoder's oracle (feature `testing`; users outside see it as `ustack::testing::decoder`).
#[cfg(any(test, feature = "testing"))]
pub mod oracle;
#[cfg(test)]
mod proptests;

pub use crc::{copy_crc, crc32c, crc32c_append, crc32c_combine, PayloadCheck, FUSED_BLOCK};
pub use decoder::{
    Event, FrameDecoder, Rejection, RequestDecoder, ResponseDecoder, WireHeader, HEADER_LEN_MAX,
};
pub use error::{ParseError, Status};
pub use list::{list_entries, ListEntry, LIST_ENTRY_LEN, LIST_PAGE_MAX};
pub use request::{ChunkId, Op, Request, RequestHeader, REQUEST_FLAG_LIST_AFTER};
pub use response::{Reply, ResponseHeader, RESPONSE_FLAG_CLOSING, RESPONSE_FLAG_MORE};

/// The protocol version this code speaks (byte 2 of every header).
pub const VERSION: u8 = 1;

/// First two bytes of every request header: ASCII `"uQ"`.
pub const REQUEST_MAGIC: [u8; 2] = *b"uQ";

/// First two bytes of every response header: ASCII `"uR"`.
pub const RESPONSE_MAGIC: [u8; 2] = *b"uR";

/// Size limits one connection enforces. Both peers should use the same values (a client with
/// smaller limits than its server rejects responses the server considers valid).
///
/// The codec checks `payload_len_max` and `chunk_len_max` while parsing, before any payload byte
/// is accepted; `in_flight_max` is carried here for the server, which enforces it (the codec
/// has no notion of outstanding requests).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Largest payload of one frame: WRITE data, READ length, READ response data.
    pub payload_len_max: u32,
    /// Largest chunk: no WRITE or READ may reach past this offset.
    pub chunk_len_max: u64,
    /// Most requests one connection may have outstanding; more get
    /// [`Status::TooManyInFlight`].
    pub in_flight_max: u32,
}

impl Limits {
    /// Default largest payload: 4 MiB.
    pub const DEFAULT_PAYLOAD_LEN_MAX: u32 = 4 << 20;
    /// Default largest chunk: 64 MiB.
    pub const DEFAULT_CHUNK_LEN_MAX: u64 = 64 << 20;
    /// Default requests in flight per connection.
    pub const DEFAULT_IN_FLIGHT_MAX: u32 = 64;

    /// The defaults: 4 MiB payloads, 64 MiB chunks, 64 requests in flight.
    pub const DEFAULT: Limits = Limits {
        payload_len_max: Self::DEFAULT_PAYLOAD_LEN_MAX,
        chunk_len_max: Self::DEFAULT_CHUNK_LEN_MAX,
        in_flight_max: Self::DEFAULT_IN_FLIGHT_MAX,
    };

    /// Checks that the limits make sense together: every limit is at least 1 and a payload is
    /// no larger than a chunk. Call it once when a server or client is configured.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.payload_len_max == 0 {
            return Err(LimitsError::ZeroPayload);
        }
        if self.chunk_len_max == 0 {
            return Err(LimitsError::ZeroChunk);
        }
        if self.in_flight_max == 0 {
            return Err(LimitsError::ZeroInFlight);
        }
        if u64::from(self.payload_len_max) > self.chunk_len_max {
            return Err(LimitsError::PayloadExceedsChunk {
                payload_len_max: self.payload_len_max,
                chunk_len_max: self.chunk_len_max,
            });
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A [`Limits`] value that cannot work, found by [`Limits::validate`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// `payload_len_max` is 0: no WRITE or READ could carry data.
    #[error("payload_len_max is 0: set it to at least 1 byte (default 4 MiB)")]
    ZeroPayload,
    /// `chunk_len_max` is 0: no chunk could hold data.
    #[error("chunk_len_max is 0: set it to at least 1 byte (default 64 MiB)")]
    ZeroChunk,
    /// `in_flight_max` is 0: no request could ever be accepted.
    #[error("in_flight_max is 0: allow at least 1 request in flight (default 64)")]
    ZeroInFlight,
    /// A payload may be larger than a whole chunk, which no request could use.
    #[error(
        "payload_len_max ({payload_len_max} bytes) exceeds chunk_len_max ({chunk_len_max} bytes): \
         lower payload_len_max or raise chunk_len_max"
    )]
    PayloadExceedsChunk {
        /// The configured largest payload.
        payload_len_max: u32,
        /// The configured largest chunk.
        chunk_len_max: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_valid_and_documented_values() {
        let l = Limits::default();
        assert_eq!(l.payload_len_max, 4 * 1024 * 1024);
        assert_eq!(l.chunk_len_max, 64 * 1024 * 1024);
        assert_eq!(l.in_flight_max, 64);
        assert_eq!(l.validate(), Ok(()));
    }

    #[test]
    fn invalid_limits_are_rejected() {
        let base = Limits::DEFAULT;
        let l = Limits {
            payload_len_max: 0,
            ..base
        };
        assert_eq!(l.validate(), Err(LimitsError::ZeroPayload));
        let l = Limits {
            chunk_len_max: 0,
            ..base
        };
        assert_eq!(l.validate(), Err(LimitsError::ZeroChunk));
        let l = Limits {
            in_flight_max: 0,
            ..base
        };
        assert_eq!(l.validate(), Err(LimitsError::ZeroInFlight));
        let l = Limits {
            payload_len_max: 2048,
            chunk_len_max: 1024,
            ..base
        };
        assert!(matches!(
            l.validate(),
            Err(LimitsError::PayloadExceedsChunk { .. })
        ));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    const SPEC: &str = include_str!("../../docs/PROTOCOL.md");

    /// The worked examples of docs/PROTOCOL.md section 12, produced by the code, and present in
    /// the document byte for byte.
    #[test]
    fn documented_examples_match_the_code() {
        let ping = RequestHeader::new(1, Request::Ping).to_bytes();
        let ping_hex = "7551010100000000010000000000000000000000000000000000000000000000\
                        000000000000000000000000000000000000000002009be5";
        assert_eq!(hex(&ping), ping_hex);

        let pong = ResponseHeader::ping(1).to_bytes();
        let pong_hex =
            "755201010000000001000000000000000000000000000000000000000000000000000000b1260716";
        assert_eq!(hex(&pong), pong_hex);

        let data = b"hello";
        assert_eq!(crc32c(data), 0x9a71_bb4c);
        let write = RequestHeader::new(
            2,
            Request::Write {
                chunk_id: ChunkId((1u128 << 64) | 7),
                offset: 4096,
                len: 5,
                crc: crc32c(data),
            },
        );
        let mut frame = write.to_bytes().to_vec();
        frame.extend_from_slice(data);
        let write_hex =
            "75510102050000000200000000000000070000000000000001000000000000000010000000\
                         000000050000004cbb719a00000000ddbacc3068656c6c6f";
        assert_eq!(hex(&frame), write_hex);

        let ack = ResponseHeader::write(2, 4101).to_bytes();
        let ack_hex =
            "755201020000000002000000000000000000000000000000051000000000000000000000f489b8b2";
        assert_eq!(hex(&ack), ack_hex);

        for example in [ping_hex, pong_hex, write_hex, ack_hex] {
            assert!(
                SPEC.contains(&format!("`{example}`")),
                "docs/PROTOCOL.md lacks {example}"
            );
        }
        // And they parse back.
        let mut dec = RequestDecoder::new(Limits::DEFAULT);
        let (n, ev) = dec.feed(&frame);
        assert_eq!((n, ev), (56, Some(Event::Header(write))));
    }

    /// The LIST worked example of docs/PROTOCOL.md section 12: two pages through a store of
    /// three chunks, produced by the code and present in the document byte for byte.
    #[test]
    fn documented_list_example_matches_the_code() {
        let a = ListEntry {
            id: ChunkId((1u128 << 64) | 7),
            size: 4101,
        };
        let b = ListEntry {
            id: ChunkId(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            size: 65536,
        };
        let c = ListEntry {
            id: ChunkId(42),
            size: 5,
        };
        // Page 1: from the start, 2 entries wanted; 2 come back, with MORE.
        let list1 = RequestHeader::new(
            3,
            Request::List {
                after: None,
                max: 2,
            },
        );
        let list1_hex = "7551010600000000030000000000000000000000000000000000000000000000\
                         0000000000000000020000000000000000000000f037931a";
        assert_eq!(hex(&list1.to_bytes()), list1_hex);
        let entries1 = [a.to_bytes(), b.to_bytes()].concat();
        let crc1 = crc32c(&entries1);
        let mut page1 = ResponseHeader::list(3, 2, crc1, true).to_bytes().to_vec();
        page1.extend_from_slice(&entries1);
        let page1_hex = "75520106300000000300000000000000000002000bb1741b0000000000000000\
                         00000000fc4297f6070000000000000001000000000000000510000000000000\
                         100f0e0d0c0b0a0908070605040302010000010000000000";
        assert_eq!(hex(&page1), page1_hex);

        // Page 2: after the last id of page 1 (flag AFTER); 1 entry, no MORE: the end.
        let list2 = RequestHeader::new(
            4,
            Request::List {
                after: Some(b.id),
                max: 2,
            },
        );
        let list2_hex = "75510106000000000400000000000000100f0e0d0c0b0a090807060504030201\
                         000000000000000002000000000000000100000092dc018d";
        assert_eq!(hex(&list2.to_bytes()), list2_hex);
        let entries2 = c.to_bytes();
        let mut page2 = ResponseHeader::list(4, 1, crc32c(&entries2), false)
            .to_bytes()
            .to_vec();
        page2.extend_from_slice(&entries2);
        let page2_hex = "75520106180000000400000000000000000000000b2730530000000000000000\
                         00000000d0814c402a0000000000000000000000000000000500000000000000";
        assert_eq!(hex(&page2), page2_hex);

        for example in [list1_hex, page1_hex, list2_hex, page2_hex] {
            assert!(
                SPEC.contains(&format!("`{example}`")),
                "docs/PROTOCOL.md lacks {example}"
            );
        }
        // They parse back, entries included.
        assert_eq!(
            RequestHeader::parse(&list2.to_bytes(), &Limits::DEFAULT),
            Ok(list2)
        );
        let h = ResponseHeader::parse(&page1, &Limits::DEFAULT).unwrap();
        assert_eq!(
            h.reply,
            Reply::List {
                len: 48,
                crc: crc1,
                more: true
            }
        );
        let payload = &page1[ResponseHeader::HEADER_LEN..];
        assert_eq!(crc32c(payload), crc1);
        assert_eq!(list_entries(payload).collect::<Vec<_>>(), [a, b]);
    }

    /// The status table of docs/PROTOCOL.md section 6 lists exactly the codes of [`Status`].
    #[test]
    fn documented_status_table_matches_the_code() {
        let start = SPEC.find("## 6. Status codes").expect("section 6");
        let end = SPEC.find("## 7. Limits").expect("section 7");
        let mut rows = Vec::new();
        for line in SPEC[start..end].lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() > 3 {
                if let (Ok(code), Some(name)) = (
                    cells[1].parse::<u16>(),
                    cells[2].strip_prefix('`').and_then(|n| n.strip_suffix('`')),
                ) {
                    rows.push((code, name.to_string()));
                }
            }
        }
        let expected: Vec<(u16, String)> = Status::ALL
            .iter()
            .map(|s| (s.code(), format!("{s:?}")))
            .collect();
        assert_eq!(rows, expected);
    }
}

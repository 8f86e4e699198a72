//! Property tests: emit/parse round trips, and the decoder's oracle
//! ([`super::oracle`], which the fuzz targets check too) on arbitrary bytes and on
//! generated streams cut at generated points.

use proptest::prelude::*;

use super::oracle::{check_parse, check_split_invariance, decode, Owned};
use super::*;

const L: Limits = Limits::DEFAULT;

fn chunk_id() -> impl Strategy<Value = ChunkId> {
    any::<u128>().prop_map(ChunkId)
}

/// Offset and length whose range fits the default chunk limit.
fn range(len_max: u32) -> impl Strategy<Value = (u64, u32)> {
    (0..=len_max).prop_flat_map(|len| (0..=L.chunk_len_max - u64::from(len), Just(len)))
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping),
        (chunk_id(), range(L.payload_len_max), any::<u32>()).prop_map(
            |(chunk_id, (offset, len), crc)| Request::Write {
                chunk_id,
                offset,
                len,
                crc
            }
        ),
        (chunk_id(), range(L.payload_len_max)).prop_map(|(chunk_id, (offset, len))| {
            Request::Read {
                chunk_id,
                offset,
                len,
            }
        }),
        chunk_id().prop_map(|chunk_id| Request::Delete { chunk_id }),
        chunk_id().prop_map(|chunk_id| Request::Stat { chunk_id }),
        (proptest::option::of(chunk_id()), any::<u32>())
            .prop_map(|(after, max)| Request::List { after, max }),
    ]
}

fn request_header() -> impl Strategy<Value = RequestHeader> {
    (any::<u64>(), request()).prop_map(|(id, r)| RequestHeader::new(id, r))
}

fn error_status() -> impl Strategy<Value = Status> {
    proptest::sample::select(&Status::ALL[1..])
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        Just(Reply::Ping),
        any::<u64>().prop_map(|chunk_size| Reply::Write { chunk_size }),
        (0..=L.payload_len_max, any::<u32>(), any::<u64>()).prop_map(|(len, crc, chunk_size)| {
            Reply::Read {
                len,
                crc,
                chunk_size,
            }
        }),
        Just(Reply::Delete),
        (any::<u64>(), any::<u32>()).prop_map(|(chunk_size, chunk_crc)| Reply::Stat {
            chunk_size,
            chunk_crc
        }),
        (0..=L.list_entries_max(), any::<u32>(), any::<bool>()).prop_map(|(entries, crc, more)| {
            Reply::List {
                len: entries * LIST_ENTRY_LEN as u32,
                crc,
                more,
            }
        }),
        (any::<u8>(), error_status()).prop_map(|(op, status)| Reply::Error { op, status }),
    ]
}

fn response_header() -> impl Strategy<Value = ResponseHeader> {
    (any::<u64>(), any::<bool>(), reply()).prop_map(|(request_id, closing, reply)| ResponseHeader {
        request_id,
        closing,
        reply,
    })
}

/// One frame of a test stream: a valid header, a small payload of its announced length, and an
/// optional corruption (byte index, xor mask) applied to the frame's bytes.
fn request_frame() -> impl Strategy<Value = Vec<u8>> {
    let small = prop_oneof![
        3 => (any::<u64>(), chunk_id(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(
            |(id, chunk_id, data)| {
                let h = RequestHeader::new(
                    id,
                    Request::Write {
                        chunk_id,
                        offset: 0,
                        len: data.len() as u32,
                        crc: crc32c(&data),
                    },
                );
                let mut v = h.to_bytes().to_vec();
                v.extend_from_slice(&data);
                v
            }
        ),
        2 => request_header()
            .prop_filter("no payload", |h| h.payload_len() == 0)
            .prop_map(|h| h.to_bytes().to_vec()),
    ];
    (
        small,
        proptest::option::weighted(0.3, (any::<prop::sample::Index>(), 1u8..)),
    )
        .prop_map(|(mut frame, corrupt)| {
            if let Some((idx, mask)) = corrupt {
                let i = idx.index(frame.len());
                frame[i] ^= mask;
            }
            frame
        })
}

fn split<'a>(data: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for p in points {
        pieces.push(&data[start..p]);
        start = p;
    }
    pieces.push(&data[start..]);
    pieces
}

proptest! {
    #[test]
    fn request_roundtrip(h in request_header()) {
        let mut buf = vec![0u8; h.buffer_len()];
        h.emit(&mut buf);
        prop_assert_eq!(RequestHeader::parse(&buf, &L), Ok(h));
    }

    #[test]
    fn response_roundtrip(h in response_header()) {
        let mut buf = vec![0u8; h.buffer_len()];
        h.emit(&mut buf);
        prop_assert_eq!(ResponseHeader::parse(&buf, &L), Ok(h));
    }

    #[test]
    fn any_single_byte_corruption_of_a_header_is_caught(
        h in request_header(),
        r in response_header(),
        idx in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let mut b = h.to_bytes();
        b[idx.index(b.len())] ^= mask;
        prop_assert!(RequestHeader::parse(&b, &L).is_err());
        let mut b = r.to_bytes();
        b[idx.index(b.len())] ^= mask;
        prop_assert!(ResponseHeader::parse(&b, &L).is_err());
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let tiny = Limits { payload_len_max: 64, chunk_len_max: 1024, in_flight_max: 1 };
        for limits in [L, tiny] {
            check_parse::<RequestHeader>(&data, &limits);
            check_parse::<ResponseHeader>(&data, &limits);
            decode::<RequestHeader>(limits, &[&data]);
            decode::<ResponseHeader>(limits, &[&data]);
        }
    }

    #[test]
    fn random_bytes_with_valid_prefix_never_panic(
        h in request_header(),
        tail in proptest::collection::vec(any::<u8>(), 0..200),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        // Garbage after a valid header reaches the payload and next-header paths.
        let mut data = h.to_bytes().to_vec();
        data.extend_from_slice(&tail);
        check_split_invariance::<RequestHeader>(L, &data, &split(&data, &cuts));
    }

    #[test]
    fn split_points_do_not_change_events(
        frames in proptest::collection::vec(request_frame(), 1..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let stream: Vec<u8> = frames.concat();
        check_split_invariance::<RequestHeader>(L, &stream, &split(&stream, &cuts));
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        check_split_invariance::<RequestHeader>(L, &stream, &bytewise);
    }

    #[test]
    fn uncorrupted_streams_decode_exactly(
        frames in proptest::collection::vec(
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)), 1..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (id, data) in &frames {
            let h = ResponseHeader::read(*id, data.len() as u32, crc32c(data), 1 << 20);
            stream.extend_from_slice(&h.to_bytes());
            stream.extend_from_slice(data);
            expected.push(Owned::Header(h));
            if !data.is_empty() {
                expected.push(Owned::Payload(data.clone()));
            }
            expected.push(Owned::End(Ok(())));
        }
        let (events, closed) = decode::<ResponseHeader>(L, &split(&stream, &cuts));
        prop_assert!(!closed);
        prop_assert_eq!(events, expected);
    }
}

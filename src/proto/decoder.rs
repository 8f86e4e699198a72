//! [`FrameDecoder`]: incremental framing for callers that receive arbitrary byte pieces.
//!
//! The decoder is a small state machine with bounded state: the header accumulates in a fixed
//! array of [`HEADER_LEN_MAX`] bytes, payload bytes are handed back as slices of the caller's
//! input and never copied or buffered, and the payload CRC is computed on the way through.

use std::marker::PhantomData;

use super::crc::{PayloadCheck, FUSED_BLOCK};
use super::error::ParseError;
use super::request::RequestHeader;
use super::response::ResponseHeader;
use super::wire;
use super::{Limits, REQUEST_MAGIC, RESPONSE_MAGIC};

/// The longest header of any kind, in bytes: the size of [`FrameDecoder`]'s header array.
pub const HEADER_LEN_MAX: usize = RequestHeader::HEADER_LEN;

// The decoder's header array must hold either header.
const _: () = assert!(
    HEADER_LEN_MAX >= RequestHeader::HEADER_LEN && HEADER_LEN_MAX >= ResponseHeader::HEADER_LEN
);

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::RequestHeader {}
    impl Sealed for super::ResponseHeader {}
}

/// A header kind [`FrameDecoder`] can decode: [`RequestHeader`] or [`ResponseHeader`].
/// Sealed: no other type implements it.
pub trait WireHeader: sealed::Sealed + Copy {
    /// Bytes of this header on the wire (at most [`HEADER_LEN_MAX`]).
    const HEADER_LEN: usize;
    /// The magic this header kind starts with.
    const MAGIC: [u8; 2];
    /// Parses and validates a header from the first `HEADER_LEN` bytes of `buf`.
    fn parse(buf: &[u8], limits: &Limits) -> Result<Self, ParseError>;
    /// Bytes of payload following the header.
    fn payload_len(&self) -> u32;
    /// CRC32C the payload must have.
    fn payload_crc(&self) -> u32;
}

impl WireHeader for RequestHeader {
    const HEADER_LEN: usize = RequestHeader::HEADER_LEN;
    const MAGIC: [u8; 2] = REQUEST_MAGIC;
    #[inline]
    fn parse(buf: &[u8], limits: &Limits) -> Result<Self, ParseError> {
        RequestHeader::parse(buf, limits)
    }
    #[inline]
    fn payload_len(&self) -> u32 {
        RequestHeader::payload_len(self)
    }
    #[inline]
    fn payload_crc(&self) -> u32 {
        RequestHeader::payload_crc(self)
    }
}

impl WireHeader for ResponseHeader {
    const HEADER_LEN: usize = ResponseHeader::HEADER_LEN;
    const MAGIC: [u8; 2] = RESPONSE_MAGIC;
    #[inline]
    fn parse(buf: &[u8], limits: &Limits) -> Result<Self, ParseError> {
        ResponseHeader::parse(buf, limits)
    }
    #[inline]
    fn payload_len(&self) -> u32 {
        ResponseHeader::payload_len(self)
    }
    #[inline]
    fn payload_crc(&self) -> u32 {
        ResponseHeader::payload_crc(self)
    }
}

/// What [`FrameDecoder::feed`] found.
///
/// A good frame gives `Header`, zero or more `Payload` slices (together exactly
/// `payload_len()` bytes), then `End`. A rejected frame gives one `Rejected` and nothing else:
/// if its error does not close the connection, the decoder skips its payload silently and goes
/// on with the next frame; otherwise the decoder is closed.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a, H> {
    /// A valid header. Its payload, if any, follows as `Payload` events.
    Header(H),
    /// The next piece of the current frame's payload: a sub-slice of the input given to `feed`.
    Payload(&'a [u8]),
    /// The current frame is complete. `Err(ParseError::BadPayloadChecksum)` if the payload did
    /// not match the header's CRC (the frame boundaries are intact: the connection survives).
    End(Result<(), ParseError>),
    /// The header was rejected. Answer with [`Rejection::error_response`]; if
    /// [`Rejection::must_close`], close the connection after that (the decoder takes no more
    /// input).
    Rejected(Rejection),
}

/// A rejected frame: the error plus what can be believed of its header, enough to address an
/// error response.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// What was wrong.
    pub error: ParseError,
    /// The frame's request id, if its header CRC was verified.
    pub request_id: Option<u64>,
    /// The frame's op byte if its header CRC was verified, else 0.
    pub op: u8,
}

impl Rejection {
    /// The rejection for `error`, found while parsing the header in `header` (at least the
    /// 16-byte envelope for the request id and op to be read; shorter input gives none).
    pub fn new(header: &[u8], error: ParseError) -> Rejection {
        let (request_id, op) = if error.header_verified() {
            match wire::envelope_fields(header) {
                Some((op, id)) => (Some(id), op),
                None => (None, 0),
            }
        } else {
            (None, 0)
        };
        Rejection {
            error,
            request_id,
            op,
        }
    }

    /// Whether the connection must be closed after the error response.
    pub const fn must_close(&self) -> bool {
        self.error.must_close()
    }

    /// The error response a server sends for this rejection: the request id (0 if unknown), the
    /// op byte echoed, the status of the error, and the `closing` flag if the server will close
    /// the connection after it.
    pub fn error_response(&self) -> ResponseHeader {
        ResponseHeader::error(
            self.request_id.unwrap_or(0),
            self.op,
            self.error.status(),
            self.must_close(),
        )
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    /// Accumulating header bytes; `FrameDecoder::fill` of them are in the array.
    Header,
    /// Passing payload bytes through.
    Payload(PayloadCheck),
    /// The payload is complete; the `End` event is next.
    End(Result<(), ParseError>),
    /// Discarding the payload of a rejected frame.
    Skip { remaining: u32 },
    /// A rejection closed the connection.
    Closed,
}

/// Incremental frame decoder: feed it bytes as they arrive, in pieces of any size, and it yields
/// [`Event`]s.
///
/// ```
/// use ustack::proto::{crc32c, ChunkId, Event, Limits, Request, RequestDecoder, RequestHeader};
///
/// let data = b"hello";
/// let h = RequestHeader::new(7, Request::Write {
///     chunk_id: ChunkId(1), offset: 0, len: 5, crc: crc32c(data),
/// });
/// let mut stream = h.to_bytes().to_vec();
/// stream.extend_from_slice(data);
///
/// let mut dec = RequestDecoder::new(Limits::default());
/// let mut input = &stream[..];
/// let mut got = Vec::new();
/// loop {
///     let (n, event) = dec.feed(input);
///     input = &input[n..];
///     match event {
///         None => break, // all input consumed: wait for more
///         Some(Event::Header(h)) => assert_eq!(h.request_id, 7),
///         Some(Event::Payload(piece)) => got.extend_from_slice(piece),
///         Some(Event::End(verdict)) => assert_eq!(verdict, Ok(())),
///         Some(Event::Rejected(r)) => panic!("{:?}", r.error),
///     }
/// }
/// assert_eq!(got, data);
/// assert!(dec.at_frame_boundary());
/// ```
#[derive(Clone, Debug)]
pub struct FrameDecoder<H: WireHeader> {
    limits: Limits,
    state: State,
    header: [u8; HEADER_LEN_MAX],
    fill: usize,
    _header: PhantomData<H>,
}

/// A [`FrameDecoder`] for the server side: decodes requests.
pub type RequestDecoder = FrameDecoder<RequestHeader>;
/// A [`FrameDecoder`] for the client side: decodes responses.
pub type ResponseDecoder = FrameDecoder<ResponseHeader>;

impl<H: WireHeader> FrameDecoder<H> {
    const FITS: () = assert!(H::HEADER_LEN <= HEADER_LEN_MAX && H::HEADER_LEN >= 20);

    /// A decoder at the start of a stream, checking frames against `limits`.
    pub fn new(limits: Limits) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::FITS;
        FrameDecoder {
            limits,
            state: State::Header,
            header: [0; HEADER_LEN_MAX],
            fill: 0,
            _header: PhantomData,
        }
    }

    /// The limits frames are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes bytes from the front of `input` and returns how many it took and the event they
    /// completed, if any. At most one event per call: call again with the rest of the input.
    ///
    /// Returns `None` only when it took all of `input` (feed more when it arrives), or when the
    /// decoder is closed (it then takes nothing). An event may be returned having taken no bytes
    /// (the `End` of a frame whose last byte came in the previous call), so loop until `None`.
    pub fn feed<'a>(&mut self, input: &'a [u8]) -> (usize, Option<Event<'a, H>>) {
        let mut consumed = 0;
        loop {
            let rest = &input[consumed..];
            match self.state {
                State::Closed => return (consumed, None),
                State::End(verdict) => {
                    self.state = State::Header;
                    return (consumed, Some(Event::End(verdict)));
                }
                State::Skip { remaining } => {
                    let take = rest.len().min(remaining as usize);
                    consumed += take;
                    // take <= remaining, a u32.
                    let remaining = remaining - take as u32;
                    if remaining == 0 {
                        self.state = State::Header;
                    } else {
                        self.state = State::Skip { remaining };
                        return (consumed, None);
                    }
                }
                State::Payload(mut check) => {
                    if rest.is_empty() {
                        return (consumed, None);
                    }
                    // Pieces of at most one fused block: the caller copies each right after
                    // the CRC read it, from the L1 cache, so check and copy are one pass.
                    let piece = &rest[..rest.len().min(FUSED_BLOCK)];
                    let take = check.update(piece);
                    consumed += take;
                    self.state = if check.is_complete() {
                        State::End(check.finish())
                    } else {
                        State::Payload(check)
                    };
                    return (consumed, Some(Event::Payload(&rest[..take])));
                }
                State::Header => {
                    let before = self.fill;
                    let take = rest.len().min(H::HEADER_LEN - before);
                    self.header[before..before + take].copy_from_slice(&rest[..take]);
                    self.fill += take;
                    consumed += take;
                    if before <= wire::OFF_VERSION {
                        // Garbage is rejected as soon as the magic or version byte is in.
                        if let Err(error) = wire::check_prefix(&self.header[..self.fill], H::MAGIC)
                        {
                            return (consumed, Some(self.reject(error)));
                        }
                    }
                    if self.fill < H::HEADER_LEN {
                        return (consumed, None);
                    }
                    self.fill = 0;
                    let event = match H::parse(&self.header[..H::HEADER_LEN], &self.limits) {
                        Ok(h) => {
                            let check = PayloadCheck::new(h.payload_len(), h.payload_crc());
                            self.state = if check.is_complete() {
                                State::End(check.finish())
                            } else {
                                State::Payload(check)
                            };
                            Event::Header(h)
                        }
                        Err(error) => self.reject(error),
                    };
                    return (consumed, Some(event));
                }
            }
        }
    }

    /// Records a rejection of the header in the array and picks the next state.
    fn reject<'a>(&mut self, error: ParseError) -> Event<'a, H> {
        let rejection = Rejection::new(&self.header[..H::HEADER_LEN], error);
        self.fill = 0;
        self.state = if error.must_close() {
            State::Closed
        } else {
            // Not closing means the header CRC was verified and the length is within the
            // limit: the length can be believed, and skipping costs at most one payload.
            match wire::envelope_payload_len(&self.header) {
                Some(remaining) if remaining > 0 => State::Skip { remaining },
                _ => State::Header,
            }
        };
        Event::Rejected(rejection)
    }

    /// Whether a rejection closed the decoder: it takes no more input, and the connection
    /// should be closed once the error response is sent.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the decoder sits between frames (no partial header, no payload or `End` pending):
    /// the only state in which the stream may end cleanly.
    pub fn at_frame_boundary(&self) -> bool {
        self.state == State::Header && self.fill == 0
    }

    /// The CRC32C of the current frame's payload bytes seen so far (0 outside a payload),
    /// for a caller that takes the next ones outside [`FrameDecoder::feed`].
    pub fn payload_crc_so_far(&self) -> u32 {
        match self.state {
            State::Payload(check) => check.crc_so_far(),
            _ => 0,
        }
    }

    /// Counts `len` bytes of the current frame's payload that the caller received outside
    /// [`FrameDecoder::feed`] (a receive path that placed them straight into its buffer):
    /// `crc` is [`FrameDecoder::payload_crc_so_far`] continued over them (`crc32c_append`),
    /// and the payload check goes on as if they had been fed. The `End` event comes from the
    /// next `feed` (with any input, even none) once the payload is complete. Only between a
    /// `Header` event and its payload's end; `len` at most
    /// [`FrameDecoder::payload_remaining`] (anything else is a caller bug: debug builds panic,
    /// release builds ignore the call).
    pub fn payload_placed(&mut self, len: u32, crc: u32) {
        let State::Payload(mut check) = self.state else {
            debug_assert!(len == 0, "payload placed outside a payload");
            return;
        };
        if len == 0 {
            return;
        }
        check.absorb(len, crc);
        self.state = if check.is_complete() {
            State::End(check.finish())
        } else {
            State::Payload(check)
        };
    }

    /// Payload bytes still expected for the current frame (0 between frames).
    pub fn payload_remaining(&self) -> u32 {
        match self.state {
            State::Payload(check) => check.remaining(),
            State::Skip { remaining } => remaining,
            _ => 0,
        }
    }

    /// The verdict when the stream ends (the peer closed its side): `Ok` at a frame boundary,
    /// else the error for the frame cut short.
    pub fn finish(&self) -> Result<(), ParseError> {
        match self.state {
            State::Header if self.fill == 0 => Ok(()),
            State::Header => Err(ParseError::Truncated {
                len: self.fill,
                need: H::HEADER_LEN,
            }),
            State::Payload(_) | State::Skip { .. } => Err(ParseError::PayloadTruncated {
                missing: self.payload_remaining(),
            }),
            // Only the End event is missing: the caller stopped feeding, the frame is whole.
            State::End(_) | State::Closed => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{crc32c, ChunkId, Reply, Request, Status};

    /// An owned copy of an event, with payload pieces kept separately.
    #[derive(Debug, PartialEq, Eq)]
    enum Ev<H> {
        Header(H),
        Payload(Vec<u8>),
        End(Result<(), ParseError>),
        Rejected(Rejection),
    }

    fn drain<H: WireHeader>(dec: &mut FrameDecoder<H>, mut input: &[u8], out: &mut Vec<Ev<H>>) {
        loop {
            let (n, ev) = dec.feed(input);
            assert!(n <= input.len());
            input = &input[n..];
            match ev {
                None => {
                    assert!(input.is_empty() || dec.is_closed());
                    return;
                }
                Some(Event::Header(h)) => out.push(Ev::Header(h)),
                Some(Event::Payload(p)) => {
                    assert!(!p.is_empty());
                    out.push(Ev::Payload(p.to_vec()))
                }
                Some(Event::End(v)) => out.push(Ev::End(v)),
                Some(Event::Rejected(r)) => out.push(Ev::Rejected(r)),
            }
        }
    }

    fn write(id: u64, data: &[u8]) -> Vec<u8> {
        let h = RequestHeader::new(
            id,
            Request::Write {
                chunk_id: ChunkId(id as u128),
                offset: 0,
                len: data.len() as u32,
                crc: crc32c(data),
            },
        );
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(data);
        v
    }

    fn ping(id: u64) -> Vec<u8> {
        RequestHeader::new(id, Request::Ping).to_bytes().to_vec()
    }

    #[test]
    fn pipelined_frames_byte_by_byte() {
        let mut stream = ping(1);
        stream.extend(write(2, b"abcdef"));
        stream.extend(ping(3));
        let mut dec = RequestDecoder::new(Limits::DEFAULT);
        let mut events = Vec::new();
        for b in &stream {
            drain(&mut dec, std::slice::from_ref(b), &mut events);
        }
        // The last End is produced on the next call, with no input.
        drain(&mut dec, &[], &mut events);
        let mut payload = Vec::new();
        let mut headers = Vec::new();
        let mut ends = 0;
        for e in &events {
            match e {
                Ev::Header(h) => headers.push(h.request_id),
                Ev::Payload(p) => payload.extend_from_slice(p),
                Ev::End(v) => {
                    assert_eq!(*v, Ok(()));
                    ends += 1
                }
                Ev::Rejected(r) => panic!("{r:?}"),
            }
        }
        assert_eq!(headers, [1, 2, 3]);
        assert_eq!(ends, 3);
        assert_eq!(payload, b"abcdef");
        assert!(dec.at_frame_boundary());
        assert_eq!(dec.finish(), Ok(()));
    }

    #[test]
    fn payload_slices_borrow_the_input() {
        let stream = write(1, &[7u8; 1000]);
        let mut dec = RequestDecoder::new(Limits::DEFAULT);
        let (n, ev) = dec.feed(&stream);
        assert_eq!(n, RequestHeader::HEADER_LEN);
        assert!(matches!(ev, Some(Event::Header(_))));
        let (n, ev) = dec.feed(&stream[RequestHeader::HEADER_LEN..]);
        assert_eq!(n, 1000);
        match ev {
            Some(Event::Payload(p)) => {
                assert_eq!(p.as_ptr(), stream[RequestHeader::HEADER_LEN..].as_ptr())
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(dec.feed(&[]), (0, Some(Event::End(Ok(())))));
        assert_eq!(dec.feed(&[]), (0, None));
    }

    #[test]
    fn corrupted_payload_ends_with_bad_checksum_and_continues() {
        let mut stream = write(1, b"payload!");
        let last = stream.len() - 1;
        stream[last] ^= 0x20;
        stream.extend(ping(2));
        let mut dec = RequestDecoder::new(Limits::DEFAULT);
        let mut events = Vec::new();
        drain(&mut dec, &stream, &mut events);
        assert!(matches!(
            events[2],
            Ev::End(Err(ParseError::BadPayloadChecksum { .. }))
        ));
        assert!(matches!(events[3], Ev::Header(h) if h.request_id == 2));
        assert_eq!(events.len(), 5);
    }

    #[test]
    fn zero_length_write_with_wrong_crc_is_caught() {
        let h = RequestHeader::new(
            1,
            Request::Write {
                chunk_id: ChunkId(1),
                offset: 0,
                len: 0,
                crc: 1,
            },
        );
        let mut dec = RequestDecoder::new(Limits::DEFAULT);
        let mut events = Vec::new();
        drain(&mut dec, &h.to_bytes(), &mut events);
        assert!(matches!(
            events[1],
            Ev::End(Err(ParseError::BadPayloadChecksum { .. }))
        ));
    }

    #[test]
    fn survivable_rejection_skips_payload() {
        // A WRITE past the chunk limit: rejected, its payload skipped, the next frame decoded.
        let limits = Limits {
            chunk_len_max: 4096,
            ..Limits::DEFAULT
        };
        let data = [1u8; 100];
        let h = RequestHeader::new(
            5,
            Request::Write {
                chunk_id: ChunkId(1),
                offset: 4000,
                len: 100,
                crc: crc32c(&data),
            },
        );
        let mut stream = h.to_bytes().to_vec();
        stream.extend_from_slice(&data);
        stream.extend(ping(6));
        for split in [1, 7, 56, 60, 156, stream.len()] {
            let mut dec = RequestDecoder::new(limits);
            let mut events = Vec::new();
            for piece in stream.chunks(split) {
                drain(&mut dec, piece, &mut events);
            }
            drain(&mut dec, &[], &mut events);
            assert_eq!(events.len(), 3, "split {split}: {events:?}");
            match &events[0] {
                Ev::Rejected(r) => {
                    assert_eq!(r.request_id, Some(5));
                    assert_eq!(r.error.status(), Status::ChunkTooLarge);
                    assert!(!r.must_close());
                    let resp = r.error_response();
                    assert_eq!(
                        resp.reply,
                        Reply::Error {
                            op: 2,
                            status: Status::ChunkTooLarge
                        }
                    );
                }
                other => panic!("{other:?}"),
            }
            assert!(matches!(events[1], Ev::Header(h) if h.request_id == 6));
            assert_eq!(events[2], Ev::End(Ok(())));
            assert!(!dec.is_closed());
        }
    }

    #[test]
    fn unknown_op_with_payload_is_skipped() {
        let mut b = write(9, b"xyz")[..RequestHeader::HEADER_LEN].to_vec();
        b[3] = 0x42;
        let crc = crc32c(&b[..52]);
        b[52..56].copy_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(b"xyz");
        b.extend(ping(10));
        let mut dec = RequestDecoder::new(Limits::DEFAULT);
        let mut events = Vec::new();
        drain(&mut dec, &b, &mut events);
        assert!(matches!(
            &events[0],
            Ev::Rejected(r) if r.error == ParseError::UnknownOp { op: 0x42 } && r.op == 0x42
        ));
        assert!(matches!(events[1], Ev::Header(h) if h.request_id == 10));
    }

    #[test]
    fn garbage_is_rejected_after_two_bytes_and_closes() {
        let mut dec = RequestDecoder::new(Limits::DEFAULT);
        assert_eq!(dec.feed(b"G"), (1, None));
        // The second byte settles it; no need to wait for a whole header.
        let (n, ev) = dec.feed(b"E");
        assert_eq!(n, 1);
        match ev {
            Some(Event::Rejected(r)) => {
                assert!(matches!(r.error, ParseError::BadMagic { found, .. } if found == *b"GE"));
                assert!(r.must_close());
                assert_eq!(r.request_id, None);
                assert!(r.error_response().closing);
            }
            other => panic!("{other:?}"),
        }
        assert!(dec.is_closed());
        assert_eq!(dec.feed(b"more"), (0, None));
    }

    #[test]
    fn bad_version_rejected_at_third_byte() {
        let mut dec = RequestDecoder::new(Limits::DEFAULT);
        assert_eq!(dec.feed(b"uQ"), (2, None));
        let (n, ev) = dec.feed(&[9]);
        assert_eq!(n, 1);
        assert!(matches!(
            ev,
            Some(Event::Rejected(Rejection {
                error: ParseError::UnsupportedVersion { version: 9 },
                ..
            }))
        ));
        assert!(dec.is_closed());
    }

    #[test]
    fn oversized_payload_closes_before_any_payload_byte() {
        let limits = Limits {
            payload_len_max: 16,
            chunk_len_max: 1 << 20,
            ..Limits::DEFAULT
        };
        let stream = write(3, &[0u8; 17]);
        let mut dec = RequestDecoder::new(limits);
        let (n, ev) = dec.feed(&stream);
        assert_eq!(n, RequestHeader::HEADER_LEN);
        match ev {
            Some(Event::Rejected(r)) => {
                assert_eq!(r.error, ParseError::PayloadTooLarge { len: 17, max: 16 });
                assert_eq!(r.request_id, Some(3));
                assert!(r.must_close());
            }
            other => panic!("{other:?}"),
        }
        assert!(dec.is_closed());
        assert_eq!(dec.payload_remaining(), 0);
    }

    #[test]
    fn header_crc_error_closes() {
        let mut stream = ping(1);
        stream[10] ^= 1;
        let mut dec = RequestDecoder::new(Limits::DEFAULT);
        let mut events = Vec::new();
        drain(&mut dec, &stream, &mut events);
        assert!(matches!(
            &events[..],
            [Ev::Rejected(Rejection {
                error: ParseError::BadHeaderChecksum { .. },
                request_id: None,
                op: 0
            })]
        ));
        assert!(dec.is_closed());
    }

    #[test]
    fn finish_reports_cut_frames() {
        let stream = write(1, b"0123456789");
        let mut dec = RequestDecoder::new(Limits::DEFAULT);
        let mut events = Vec::new();
        drain(&mut dec, &stream[..20], &mut events);
        assert_eq!(
            dec.finish(),
            Err(ParseError::Truncated {
                len: 20,
                need: RequestHeader::HEADER_LEN
            })
        );
        drain(&mut dec, &stream[20..60], &mut events);
        assert_eq!(dec.payload_remaining(), 6);
        assert_eq!(
            dec.finish(),
            Err(ParseError::PayloadTruncated { missing: 6 })
        );
        assert!(dec.finish().unwrap_err().must_close());
        drain(&mut dec, &stream[60..], &mut events);
        drain(&mut dec, &[], &mut events);
        assert_eq!(dec.finish(), Ok(()));
    }

    #[test]
    fn response_decoder_reads_out_of_order_replies() {
        let data = b"chunk data";
        let mut stream = ResponseHeader::stat(2, 10, crc32c(data))
            .to_bytes()
            .to_vec();
        stream.extend(
            ResponseHeader::read(1, data.len() as u32, crc32c(data), 10)
                .to_bytes()
                .to_vec(),
        );
        stream.extend_from_slice(data);
        stream.extend(
            ResponseHeader::error(3, 4, Status::NotFound, false)
                .to_bytes()
                .to_vec(),
        );
        let mut dec = ResponseDecoder::new(Limits::DEFAULT);
        let mut events = Vec::new();
        for piece in stream.chunks(9) {
            drain(&mut dec, piece, &mut events);
        }
        drain(&mut dec, &[], &mut events);
        let ids: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Ev::Header(h) => Some(h.request_id),
                _ => None,
            })
            .collect();
        assert_eq!(ids, [2, 1, 3]);
        let payload: Vec<u8> = events
            .iter()
            .filter_map(|e| match e {
                Ev::Payload(p) => Some(p.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(payload, data);
        // A request fed to a response decoder is bad magic.
        let mut dec = ResponseDecoder::new(Limits::DEFAULT);
        let request = ping(1);
        let (_, ev) = dec.feed(&request);
        assert!(matches!(
            ev,
            Some(Event::Rejected(Rejection {
                error: ParseError::BadMagic { .. },
                ..
            }))
        ));
    }

    #[test]
    fn decoder_state_is_small_and_bounded() {
        // Header array plus a few words: no buffers that grow with input.
        assert!(std::mem::size_of::<RequestDecoder>() <= 160);
    }
}

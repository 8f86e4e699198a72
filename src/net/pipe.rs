//! The byte plumbing both kernel-TCP endpoints share: a fixed receive buffer that holds what a
//! protocol core has not taken yet, and a small send buffer that gathers short pieces (headers,
//! small payloads) so a pipeline of small answers leaves in one `sendmsg`, while a large payload
//! goes straight from its staging buffer to the socket behind them.

use std::io::{self, IoSlice, Read};
use std::os::fd::BorrowedFd;

use crate::chunk::{ClientConn, ServerConn};
use crate::sys::socket;

/// Bytes a connection buffers on receive: what one `read` may bring in, and the most a core
/// that pushes back can leave unconsumed.
pub const RECV_BUFFER_LEN: usize = 256 << 10;

/// Bytes a connection gathers before a send.
pub const SEND_BUFFER_LEN: usize = 64 << 10;

/// Pieces up to this long are copied into the send buffer; longer ones are sent from where they
/// are.
const COPY_LEN_MAX: usize = 16 << 10;

/// A protocol core's outgoing byte stream.
pub(crate) trait Output {
    /// The next bytes to send, if any.
    fn next_piece(&mut self) -> Option<&[u8]>;
    /// `n` bytes of the last piece were sent.
    fn advance(&mut self, n: usize);
}

impl Output for ServerConn {
    fn next_piece(&mut self) -> Option<&[u8]> {
        self.next_output()
    }
    fn advance(&mut self, n: usize) {
        self.advance_output(n);
    }
}

impl Output for ClientConn {
    fn next_piece(&mut self) -> Option<&[u8]> {
        self.next_output()
    }
    fn advance(&mut self, n: usize) {
        self.advance_output(n);
    }
}

/// What one read brought.
#[derive(Debug)]
pub(crate) enum ReadOutcome {
    /// Bytes were appended to the receive buffer. `drained`: fewer came than there was room
    /// for, so the socket was most likely emptied (the next read would say WouldBlock; wait for
    /// readiness instead of asking).
    Data {
        /// The read did not fill the free space.
        drained: bool,
    },
    /// Nothing to read now.
    WouldBlock,
    /// No room: the core has not taken what is buffered.
    Full,
    /// The peer closed its sending side.
    Eof,
}

/// Receive and send buffers of one connection, allocated once and reused.
pub(crate) struct Pipe {
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    tx: Box<[u8]>,
    tx_start: usize,
    tx_end: usize,
    /// The last send found the socket's buffer full: wait for POLLOUT before trying again.
    pub(crate) write_blocked: bool,
}

impl Pipe {
    pub(crate) fn new() -> Pipe {
        Pipe::with_lens(RECV_BUFFER_LEN, SEND_BUFFER_LEN)
    }

    pub(crate) fn with_lens(rx_len: usize, tx_len: usize) -> Pipe {
        Pipe {
            rx: vec![0; rx_len.max(1)].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            tx: vec![0; tx_len.max(1)].into_boxed_slice(),
            tx_start: 0,
            tx_end: 0,
            write_blocked: false,
        }
    }

    /// Empties both buffers for a new connection.
    pub(crate) fn reset(&mut self) {
        self.rx_start = 0;
        self.rx_end = 0;
        self.tx_start = 0;
        self.tx_end = 0;
        self.write_blocked = false;
    }

    /// Received bytes the core has not taken yet.
    pub(crate) fn received(&self) -> &[u8] {
        &self.rx[self.rx_start..self.rx_end]
    }

    /// The core took `n` bytes of [`Pipe::received`].
    pub(crate) fn consume(&mut self, n: usize) {
        self.rx_start = self.rx_start.saturating_add(n).min(self.rx_end);
        if self.rx_start == self.rx_end {
            self.rx_start = 0;
            self.rx_end = 0;
        }
    }

    /// Whether every received byte was taken.
    pub(crate) fn rx_is_empty(&self) -> bool {
        self.rx_start == self.rx_end
    }

    /// Gathered bytes not yet sent.
    pub(crate) fn tx_is_empty(&self) -> bool {
        self.tx_start == self.tx_end
    }

    /// Reads once from `src` into the free end of the receive buffer.
    pub(crate) fn read_from(&mut self, src: &mut impl Read) -> io::Result<ReadOutcome> {
        if self.rx_end == self.rx.len() {
            if self.rx_start == 0 {
                return Ok(ReadOutcome::Full);
            }
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        let room = self.rx.len() - self.rx_end;
        loop {
            return match src.read(&mut self.rx[self.rx_end..]) {
                Ok(0) => Ok(ReadOutcome::Eof),
                Ok(n) => {
                    self.rx_end += n;
                    // The kernel copies from its socket buffer into ours.
                    crate::copies::count(crate::copies::Pass::Socket, n);
                    Ok(ReadOutcome::Data { drained: n < room })
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Whether gathered bytes wait for room in the socket.
    pub(crate) fn has_unsent(&self) -> bool {
        self.tx_end > self.tx_start
    }

    /// Sends what `out` has until it has nothing more or the socket's buffer is full (then
    /// `write_blocked` is set). Returns the bytes handed to the kernel.
    pub(crate) fn flush(&mut self, fd: BorrowedFd<'_>, out: &mut impl Output) -> io::Result<usize> {
        let mut sent_total = 0;
        loop {
            self.gather(out);
            let gathered = self.tx_end - self.tx_start;
            let piece = out.next_piece();
            let piece_len = piece.map_or(0, <[u8]>::len);
            if gathered == 0 && piece_len == 0 {
                return Ok(sent_total);
            }
            let iov = [
                IoSlice::new(&self.tx[self.tx_start..self.tx_end]),
                IoSlice::new(piece.unwrap_or(&[])),
            ];
            let iov = if piece_len == 0 { &iov[..1] } else { &iov[..] };
            match socket::send_vectored(fd, iov) {
                Ok(n) => {
                    let from_tx = n.min(gathered);
                    self.tx_start += from_tx;
                    if self.tx_start == self.tx_end {
                        self.tx_start = 0;
                        self.tx_end = 0;
                    }
                    if n > from_tx {
                        out.advance(n - from_tx);
                    }
                    // A short send means the socket's buffer is (nearly) full: the next send
                    // says WouldBlock, or takes more.
                    sent_total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.write_blocked = true;
                    return Ok(sent_total);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Copies short pieces of `out` into the send buffer while they fit.
    fn gather(&mut self, out: &mut impl Output) {
        if self.tx_start > 0 {
            self.tx.copy_within(self.tx_start..self.tx_end, 0);
            self.tx_end -= self.tx_start;
            self.tx_start = 0;
        }
        loop {
            let room = self.tx.len() - self.tx_end;
            let Some(piece) = out.next_piece() else {
                return;
            };
            let n = piece.len();
            if n == 0 {
                // A finished item still at the front: advancing by zero retires it.
                out.advance(0);
                continue;
            }
            if n > COPY_LEN_MAX || n > room {
                return;
            }
            self.tx[self.tx_end..self.tx_end + n].copy_from_slice(piece);
            self.tx_end += n;
            out.advance(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// Pieces to send, each sent front to back.
    struct Pieces {
        q: VecDeque<Vec<u8>>,
        sent: usize,
    }

    impl Output for Pieces {
        fn next_piece(&mut self) -> Option<&[u8]> {
            let sent = self.sent;
            self.q.front().map(|p| &p[sent..])
        }
        fn advance(&mut self, n: usize) {
            self.sent += n;
            if self.q.front().is_some_and(|p| self.sent >= p.len()) {
                self.q.pop_front();
                self.sent = 0;
            }
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn flush_keeps_the_stream_in_order_through_a_full_socket() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut want = Vec::new();
        let mut q = VecDeque::new();
        for (i, len) in [40, 4096, 40, 0, 1 << 20, 7, 100_000, 40, 3 << 20]
            .into_iter()
            .enumerate()
        {
            let p = pattern(len, i as u8);
            want.extend_from_slice(&p);
            q.push_back(p);
        }
        let mut out = Pieces { q, sent: 0 };
        let mut pipe = Pipe::with_lens(1024, 8192);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        while !(out.q.is_empty() && pipe.tx_is_empty()) {
            pipe.flush(a.as_fd(), &mut out).unwrap();
            if pipe.write_blocked {
                pipe.write_blocked = false;
                let mut fds = [socket::PollFd::new(
                    std::os::fd::AsRawFd::as_raw_fd(&a),
                    socket::POLLOUT,
                )];
                socket::poll(&mut fds, std::time::Duration::from_secs(5)).unwrap();
            }
        }
        drop(a);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "stream reordered or corrupted");
    }

    #[test]
    fn gathers_small_pieces_into_one_send() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let q = (0..100).map(|i| pattern(40, i)).collect::<VecDeque<_>>();
        let want: Vec<u8> = q.iter().flatten().copied().collect();
        let mut out = Pieces { q, sent: 0 };
        let mut pipe = Pipe::with_lens(1024, 8192);
        assert_eq!(pipe.flush(a.as_fd(), &mut out).unwrap(), 4000);
        assert!(out.q.is_empty());
        let mut got = vec![0u8; 4000];
        b.read_exact(&mut got).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn receive_buffer_reports_full_and_compacts() {
        let mut pipe = Pipe::with_lens(8, 8);
        let mut src: &[u8] = b"0123456789abcdef";
        assert!(matches!(
            pipe.read_from(&mut src).unwrap(),
            ReadOutcome::Data { drained: false }
        ));
        assert_eq!(pipe.received(), b"01234567");
        assert!(matches!(
            pipe.read_from(&mut src).unwrap(),
            ReadOutcome::Full
        ));
        pipe.consume(3);
        assert_eq!(pipe.received(), b"34567");
        assert!(matches!(
            pipe.read_from(&mut src).unwrap(),
            ReadOutcome::Data { drained: false }
        ));
        assert_eq!(pipe.received(), b"3456789a");
        pipe.consume(8);
        assert!(pipe.rx_is_empty());
        assert!(matches!(
            pipe.read_from(&mut src).unwrap(),
            ReadOutcome::Data { drained: true }
        ));
        assert_eq!(pipe.received(), b"bcdef");
        assert!(matches!(
            pipe.read_from(&mut src).unwrap(),
            ReadOutcome::Eof
        ));
    }
}

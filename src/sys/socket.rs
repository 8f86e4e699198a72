//! Raw socket syscalls for the kernel-TCP transport ([`crate::net`]) that `std::net` does not
//! offer: waiting on many descriptors at once (`ppoll`), a vectored send that never raises
//! `SIGPIPE`, closing with a reset, and changing a listener's backlog.
//!
//! Each function returns the plain OS error; the caller decides what it means.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

/// Readable (or a connection waiting to be accepted).
pub const POLLIN: i16 = libc::POLLIN;
/// Writable.
pub const POLLOUT: i16 = libc::POLLOUT;
/// An error is pending on the socket (always reported, never requested).
pub const POLLERR: i16 = libc::POLLERR;
/// The peer hung up (always reported, never requested).
pub const POLLHUP: i16 = libc::POLLHUP;
/// The descriptor is not open (always reported, never requested).
pub const POLLNVAL: i16 = libc::POLLNVAL;

/// One descriptor to wait on: a `struct pollfd`.
#[derive(Copy, Clone)]
#[repr(transparent)]
pub struct PollFd(libc::pollfd);

impl PollFd {
    /// Waits on `fd` for `events` ([`POLLIN`], [`POLLOUT`]; errors and hang-ups are always
    /// reported). A descriptor that is not open is reported as [`POLLNVAL`], nothing worse.
    pub fn new(fd: RawFd, events: i16) -> PollFd {
        PollFd(libc::pollfd {
            fd,
            events,
            revents: 0,
        })
    }

    /// The descriptor.
    pub fn fd(&self) -> RawFd {
        self.0.fd
    }

    /// What happened, after [`poll`].
    pub fn revents(&self) -> i16 {
        self.0.revents
    }
}

impl std::fmt::Debug for PollFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollFd")
            .field("fd", &self.0.fd)
            .field("events", &self.0.events)
            .field("revents", &self.0.revents)
            .finish()
    }
}

/// Waits until one of `fds` is ready or `timeout` passes (microsecond resolution, `ppoll`);
/// returns how many descriptors have events. An interrupted wait (`EINTR`) returns 0, as if it
/// timed out.
pub fn poll(fds: &mut [PollFd], timeout: Duration) -> io::Result<usize> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: PollFd is repr(transparent) over libc::pollfd, so the slice is `fds.len()` valid,
    // exclusively borrowed pollfds the kernel may write `revents` into; `ts` is a valid timespec
    // that lives for the call; a null signal mask leaves the mask unchanged.
    let rc = unsafe {
        libc::ppoll(
            fds.as_mut_ptr().cast::<libc::pollfd>(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(rc as usize)
}

/// Sends `bufs` in order on the connected stream socket `fd` without blocking (`sendmsg` with
/// `MSG_DONTWAIT | MSG_NOSIGNAL`): returns the bytes taken, which may be fewer than offered;
/// `WouldBlock` when the send buffer is full. A closed peer gives `EPIPE`, never a `SIGPIPE`.
pub fn send_vectored(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: msghdr is a plain C struct; all-zero is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with struct iovec on Unix; sendmsg only reads the
    // vectors, so casting away const is sound.
    msg.msg_iov = bufs.as_ptr().cast_mut().cast::<libc::iovec>();
    msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
    // SAFETY: msg points to `msg_iovlen` valid iovecs borrowed for the call, each describing
    // readable memory of its length; fd is a live descriptor borrowed for the call.
    let rc = unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// Sets `SO_LINGER` to zero seconds, so closing the socket resets the connection (RST) instead
/// of the orderly FIN, and drops unsent data.
pub fn set_linger_zero(fd: BorrowedFd<'_>) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid struct linger that lives for the call, and the length passed
    // is its size; fd is a live descriptor borrowed for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the receive (`receive`) or send buffer of socket `fd` to `bytes` (the kernel doubles
/// it for its bookkeeping). With `CAP_NET_ADMIN` the system maximum (`net.core.rmem_max` /
/// `wmem_max`) does not apply (`SO_RCVBUFFORCE`); without, the buffer is capped at it.
pub fn set_buffer_len(fd: BorrowedFd<'_>, receive: bool, bytes: usize) -> io::Result<()> {
    let (force, plain) = if receive {
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)
    } else {
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)
    };
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |name: libc::c_int| {
        // SAFETY: `v` is a c_int that lives for the call and the length passed is its size, as
        // both options take; fd is a live descriptor borrowed for the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                name,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    set(force).or_else(|_| set(plain))
}

/// Calls `listen` again on a listening socket to set its accept backlog (Linux applies the new
/// value; the kernel caps it at `net.core.somaxconn`).
pub fn set_listen_backlog(fd: BorrowedFd<'_>, backlog: usize) -> io::Result<()> {
    let backlog = backlog.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: listen takes no pointers; fd is a live descriptor borrowed for the call.
    let rc = unsafe { libc::listen(fd.as_raw_fd(), backlog) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn poll_times_out_then_sees_data() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut fds = [PollFd::new(a.as_raw_fd(), POLLIN)];
        let t = std::time::Instant::now();
        assert_eq!(poll(&mut fds, Duration::from_millis(20)).unwrap(), 0);
        assert!(t.elapsed() >= Duration::from_millis(19));
        b.write_all(b"x").unwrap();
        assert_eq!(poll(&mut fds, Duration::from_secs(5)).unwrap(), 1);
        assert_ne!(fds[0].revents() & POLLIN, 0);
    }

    #[test]
    fn poll_reports_a_closed_descriptor() {
        let mut fds = [PollFd::new(i32::MAX - 1, POLLIN)];
        assert_eq!(poll(&mut fds, Duration::ZERO).unwrap(), 1);
        assert_ne!(fds[0].revents() & POLLNVAL, 0);
    }

    #[test]
    fn send_vectored_keeps_order_and_reports_epipe() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let n = send_vectored(a.as_fd(), &[IoSlice::new(b"head"), IoSlice::new(b"-tail")]).unwrap();
        assert_eq!(n, 9);
        let mut got = [0u8; 9];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"head-tail");
        drop(b);
        let err = send_vectored(a.as_fd(), &[IoSlice::new(b"x")]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn send_vectored_would_block_when_full() {
        let (a, _b) = UnixStream::pair().unwrap();
        let chunk = vec![0u8; 64 << 10];
        let mut err = None;
        for _ in 0..10_000 {
            match send_vectored(a.as_fd(), &[IoSlice::new(&chunk)]) {
                Ok(_) => {}
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert_eq!(err.unwrap().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn buffer_lengths_are_set() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        set_buffer_len(s.as_fd(), true, 1 << 20).unwrap();
        set_buffer_len(s.as_fd(), false, 1 << 20).unwrap();
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are writable and live for the call; the socket is open.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        // Doubled by the kernel, or capped at rmem_max without privileges.
        assert!(v > 0);
    }

    #[test]
    fn linger_zero_close_resets_the_peer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        set_listen_backlog(l.as_fd(), 4).unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        set_linger_zero(s.as_fd()).unwrap();
        drop(s);
        let mut buf = [0u8; 8];
        let err = c.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}

/// Readable, for [`Epoll::add`].
pub const EPOLLIN: u32 = libc::EPOLLIN as u32;
/// Writable.
pub const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
/// An error is pending (always reported).
pub const EPOLLERR: u32 = libc::EPOLLERR as u32;
/// Hang-up (always reported).
pub const EPOLLHUP: u32 = libc::EPOLLHUP as u32;
/// The peer shut its sending side.
pub const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;
/// Edge-triggered: an event is reported when the state changes (new data, new room), not for
/// as long as it lasts.
pub const EPOLLET: u32 = libc::EPOLLET as u32;

/// One readiness report of [`Epoll::wait`]: a `struct epoll_event`.
#[derive(Copy, Clone)]
#[repr(transparent)]
pub struct EpollEvent(libc::epoll_event);

impl EpollEvent {
    /// An empty slot for [`Epoll::wait`] to fill.
    pub const EMPTY: EpollEvent = EpollEvent(libc::epoll_event { events: 0, u64: 0 });

    /// The events that happened.
    pub fn events(&self) -> u32 {
        self.0.events
    }

    /// The token given to [`Epoll::add`].
    pub fn token(&self) -> u64 {
        self.0.u64
    }
}

impl std::fmt::Debug for EpollEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (events, token) = (self.0.events, self.0.u64);
        f.debug_struct("EpollEvent")
            .field("events", &events)
            .field("token", &token)
            .finish()
    }
}

/// An epoll instance: the cost of a wait does not grow with the descriptors registered.
#[derive(Debug)]
pub struct Epoll {
    fd: std::os::fd::OwnedFd,
}

impl Epoll {
    /// A new epoll instance (close-on-exec).
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let rc = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `rc` is a descriptor we just opened and own.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(rc) };
        Ok(Epoll { fd })
    }

    /// Registers `fd` for `events`, reported with `token`. Closing `fd` removes it.
    pub fn add(&self, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    fn ctl(&self, op: libc::c_int, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event living for the call; both descriptors are open.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until an event or `timeout` (rounded up to whole milliseconds; zero does not
    /// wait); fills `events` from the start and returns how many. `EINTR` returns 0.
    pub fn wait(&self, events: &mut [EpollEvent], timeout: Duration) -> io::Result<usize> {
        let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
        // SAFETY: EpollEvent is repr(transparent) over epoll_event: the kernel writes at most
        // `events.len()` of them into the exclusively borrowed slice.
        let rc = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr().cast::<libc::epoll_event>(),
                events.len().min(i32::MAX as usize) as i32,
                ms,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        Ok(rc as usize)
    }
}

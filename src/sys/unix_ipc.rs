//! Local inter-process communication that `std` does not offer:
//!
//! - unix `SOCK_SEQPACKET` sockets (filesystem or abstract addresses) that carry one file
//!   descriptor per message (`SCM_RIGHTS`), never blocking and never raising `SIGPIPE`;
//! - `memfd_create` (optionally on hugepages, `MFD_HUGETLB`) and file seals, for shared memory a
//!   peer process can map;
//! - `eventfd`, the memif interrupt line, and `fstat` of a received descriptor.
//!
//! The memif backend ([`crate::dev::memif`]) uses all of it (its control channel, shared
//! memory and interrupt lines); shared memory (`mem::shm`) the memory files, and the serving
//! loops' wake-ups the eventfds. Each function returns the plain OS error; the caller decides
//! what it means.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Longest socket name: `sun_path` holds 108 bytes, one of them the terminating NUL (or, for an
/// abstract name, the leading NUL).
pub const SOCKET_NAME_LEN_MAX: usize = 107;

/// Seal: the file may not shrink (so a mapping of it can never point past its end).
pub const SEAL_SHRINK: i32 = libc::F_SEAL_SHRINK;
/// Seal: the file may not grow.
pub const SEAL_GROW: i32 = libc::F_SEAL_GROW;

/// The address of a unix socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UnixAddr {
    /// A socket file in the filesystem (permissions of its directory and of the file apply).
    Path(PathBuf),
    /// A name in the network namespace's abstract socket namespace (no file, no permissions);
    /// the bytes without the leading NUL.
    Abstract(Vec<u8>),
}

impl UnixAddr {
    /// Bytes of the name as it goes into `sun_path` (without the leading NUL of an abstract name).
    fn name_bytes(&self) -> &[u8] {
        match self {
            UnixAddr::Path(p) => p.as_os_str().as_bytes(),
            UnixAddr::Abstract(a) => a,
        }
    }

    /// Checks that the address fits a `sockaddr_un`.
    pub fn check(&self) -> io::Result<()> {
        let name = self.name_bytes();
        if name.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty socket name",
            ));
        }
        if name.len() > SOCKET_NAME_LEN_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "socket name longer than 107 bytes",
            ));
        }
        if matches!(self, UnixAddr::Path(_)) && name.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "socket path contains a NUL byte",
            ));
        }
        Ok(())
    }

    /// The `sockaddr_un` and the length to pass with it. A path is NUL-terminated; an abstract
    /// name is exactly its bytes after the leading NUL (the length matters: it is part of the
    /// name), as DPDK's net_memif computes it.
    fn to_raw(&self) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
        self.check()?;
        // SAFETY: sockaddr_un is a plain C struct for which all-zero bytes are valid.
        let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
        let name = self.name_bytes();
        let (start, len) = match self {
            UnixAddr::Path(_) => (0, base + name.len() + 1),
            UnixAddr::Abstract(_) => (1, base + 1 + name.len()),
        };
        for (dst, &b) in sa.sun_path[start..].iter_mut().zip(name) {
            *dst = b as libc::c_char;
        }
        Ok((sa, len as libc::socklen_t))
    }
}

impl std::fmt::Display for UnixAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnixAddr::Path(p) => write!(f, "{}", p.display()),
            UnixAddr::Abstract(a) => write!(f, "@{}", String::from_utf8_lossy(a)),
        }
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Takes ownership of a descriptor the kernel just returned.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn new_seqpacket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    owned(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })
}

/// A listening unix `SOCK_SEQPACKET` socket (non-blocking).
#[derive(Debug)]
pub struct SeqPacketListener {
    fd: OwnedFd,
}

impl SeqPacketListener {
    /// Creates the socket, binds it to `addr` and listens with `backlog`. A socket file that
    /// exists already gives `AddrInUse` (the caller decides whether it is stale).
    pub fn bind(addr: &UnixAddr, backlog: usize) -> io::Result<SeqPacketListener> {
        let (sa, len) = addr.to_raw()?;
        let fd = new_seqpacket()?;
        // SAFETY: `sa` is a valid sockaddr_un of at least `len` bytes, living for the call.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_un).cast(),
                len,
            )
        })?;
        let backlog = backlog.min(libc::c_int::MAX as usize) as libc::c_int;
        // SAFETY: listen takes no pointers; fd is ours.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
        Ok(SeqPacketListener { fd })
    }

    /// Accepts a waiting connection (non-blocking itself); `None` when there is none.
    pub fn accept(&self) -> io::Result<Option<SeqPacket>> {
        // SAFETY: null address pointers are allowed (the peer address is not wanted).
        let rc = unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        match owned(rc) {
            Ok(fd) => Ok(Some(SeqPacket { fd })),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted
                    || e.raw_os_error() == Some(libc::ECONNABORTED) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl AsFd for SeqPacketListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SeqPacketListener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// One received message.
#[derive(Debug)]
pub struct Received {
    /// Bytes of the message copied into the buffer (0 means the peer closed the connection).
    pub len: usize,
    /// The first descriptor the message carried, if any.
    pub fd: Option<OwnedFd>,
    /// Further descriptors the message carried; they were closed.
    pub extra_fds: usize,
    /// The message or its control data did not fit the buffers and was cut.
    pub truncated: bool,
}

/// A connected unix `SOCK_SEQPACKET` socket (non-blocking): message boundaries are kept, and a
/// message can carry file descriptors.
#[derive(Debug)]
pub struct SeqPacket {
    fd: OwnedFd,
}

/// Room for the control data of one received message: a few descriptors and credentials.
const CONTROL_LEN: usize = 256;

impl SeqPacket {
    /// Connects to a listening socket. A listener whose backlog is full gives `WouldBlock`; no
    /// listener gives `ConnectionRefused` (or `NotFound` for a missing socket file).
    pub fn connect(addr: &UnixAddr) -> io::Result<SeqPacket> {
        let (sa, len) = addr.to_raw()?;
        let fd = new_seqpacket()?;
        // SAFETY: `sa` is a valid sockaddr_un of at least `len` bytes, living for the call.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        match cvt(rc) {
            Ok(_) => Ok(SeqPacket { fd }),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(SeqPacket { fd }),
            Err(e) => Err(e),
        }
    }

    /// A connected pair (for tests).
    pub fn pair() -> io::Result<(SeqPacket, SeqPacket)> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        cvt(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        })?;
        // SAFETY: socketpair succeeded: both descriptors are new and ours alone.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((SeqPacket { fd: a }, SeqPacket { fd: b }))
    }

    /// Sends `data` as one message, with `fd` attached (`SCM_RIGHTS`) when given. Never blocks
    /// (a full socket gives `WouldBlock`) and never raises `SIGPIPE` (a closed peer gives `EPIPE`).
    pub fn send(&self, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<usize> {
        // Aligned room for one cmsghdr carrying one int.
        let mut control = [0u64; 4];
        let mut iov = libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        };
        // SAFETY: msghdr is a plain C struct; all-zero is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = fd {
            // SAFETY: CMSG_SPACE only computes a size.
            let space = unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) } as usize;
            debug_assert!(space <= size_of::<[u64; 4]>());
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: msg_control points to `space` zeroed, 8-byte aligned bytes, enough for one
            // cmsghdr with one int (checked above), so CMSG_FIRSTHDR returns a valid, non-null
            // header inside it and CMSG_DATA points to its int-sized payload.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as _;
                std::ptr::write_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<libc::c_int>(),
                    fd.as_raw_fd(),
                );
            }
        }
        // SAFETY: msg points to one valid iovec describing `data` (only read by sendmsg) and, if
        // set, to initialised control data; all live for the call.
        let rc = unsafe {
            libc::sendmsg(
                self.fd.as_raw_fd(),
                &msg,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }

    /// Receives one message into `buf` without blocking (`WouldBlock` when none is waiting).
    /// Every descriptor that came with it is owned by the result (the first) or closed (the
    /// rest), so none leaks. `len == 0` means the peer closed the connection.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let mut control = [0u64; CONTROL_LEN / 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is a plain C struct; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = CONTROL_LEN as _;
        // SAFETY: the iovec describes `buf`, writable for its length; the control buffer is
        // CONTROL_LEN writable, aligned bytes; all live for the call.
        let rc = unsafe {
            libc::recvmsg(
                self.fd.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Received {
            len: rc as usize,
            fd: None,
            extra_fds: 0,
            truncated: msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0,
        };
        // SAFETY: recvmsg filled `msg_controllen` bytes of the control buffer with well-formed
        // cmsghdrs; CMSG_FIRSTHDR/CMSG_NXTHDR stay inside that length and return null at its end.
        // Each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors that the kernel
        // installed for us, which we take ownership of exactly once.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                    let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..payload / size_of::<libc::c_int>() {
                        let raw = std::ptr::read_unaligned(data.add(i));
                        let fd = OwnedFd::from_raw_fd(raw);
                        if out.fd.is_none() {
                            out.fd = Some(fd);
                        } else {
                            out.extra_fds += 1;
                            drop(fd);
                        }
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Ok(out)
    }

    /// Process id, user id and group id of the peer (`SO_PEERCRED`), for logs.
    pub fn peer_cred(&self) -> io::Result<(i32, u32, u32)> {
        let mut cred = MaybeUninit::<libc::ucred>::zeroed();
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` has room for a ucred and `len` says so; both live for the call.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                cred.as_mut_ptr().cast(),
                &mut len,
            )
        })?;
        // SAFETY: zero-initialised and (partly) filled by the kernel: every bit pattern is valid.
        let cred = unsafe { cred.assume_init() };
        Ok((cred.pid, cred.uid, cred.gid))
    }
}

impl AsFd for SeqPacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SeqPacket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Creates an anonymous memory file (`memfd_create`, close-on-exec, sealable). With
/// `huge_page_shift` (21 for 2 MiB, 30 for 1 GiB) it lives on hugepages (`MFD_HUGETLB`): its
/// size must then be a multiple of that page size, and mapping it fails when too few hugepages
/// are free.
pub fn memfd_create(name: &str, huge_page_shift: Option<u8>) -> io::Result<OwnedFd> {
    let name = CString::new(name.replace('\0', "_"))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "memfd name"))?;
    let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    if let Some(shift) = huge_page_shift {
        flags |= libc::MFD_HUGETLB | (u32::from(shift) << 26);
    }
    // SAFETY: `name` is a valid NUL-terminated string living for the call.
    owned(unsafe { libc::memfd_create(name.as_ptr(), flags) })
}

/// Adds seals (`SEAL_SHRINK`, `SEAL_GROW`) to a sealable memory file.
pub fn add_seals(fd: BorrowedFd<'_>, seals: i32) -> io::Result<()> {
    // SAFETY: fcntl(F_ADD_SEALS) takes an int argument, no pointers.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) }).map(|_| ())
}

/// The seals of a memory file (0 for files that cannot be sealed).
pub fn seals(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: fcntl(F_GET_SEALS) takes no argument.
    match cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) }) {
        Ok(s) => Ok(s),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Size in bytes and block size (the page size of a hugetlbfs file) of the file behind `fd`.
pub fn file_size(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let mut st = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` has room for a struct stat, written by the kernel.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded and filled the struct.
    let st = unsafe { st.assume_init() };
    Ok((st.st_size.max(0) as u64, st.st_blksize.max(0) as u64))
}

/// Sets `O_NONBLOCK` on a descriptor (a peer's interrupt descriptor must never block us).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl(F_GETFL/F_SETFL) takes int arguments, no pointers.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        if flags & libc::O_NONBLOCK == 0 {
            cvt(libc::fcntl(
                fd.as_raw_fd(),
                libc::F_SETFL,
                flags | libc::O_NONBLOCK,
            ))?;
        }
    }
    Ok(())
}

/// A new non-blocking, close-on-exec eventfd with counter 0.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    owned(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })
}

/// Adds 1 to an eventfd's counter (wakes a waiter). A counter at its maximum (`WouldBlock`)
/// already wakes the waiter and is not an error.
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from `one`, which lives for the call.
    let rc = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Reads and resets an eventfd's counter; 0 when it was already 0.
pub fn eventfd_drain(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into `v`, which lives for the call.
    let rc = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn unique_path(tag: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::env::temp_dir().join(format!("ustack-sys-{tag}-{}-{n}.sock", std::process::id()))
    }

    #[test]
    fn messages_keep_boundaries_and_carry_a_descriptor() {
        let (a, b) = SeqPacket::pair().unwrap();
        let efd = eventfd().unwrap();
        assert_eq!(a.send(b"hello", Some(efd.as_fd())).unwrap(), 5);
        assert_eq!(a.send(b"second", None).unwrap(), 6);
        let mut buf = [0u8; 128];
        let r = b.recv(&mut buf).unwrap();
        assert_eq!((r.len, r.extra_fds, r.truncated), (5, 0, false));
        assert_eq!(&buf[..5], b"hello");
        let got = r.fd.expect("a descriptor");
        // The received descriptor is the same eventfd: a signal on it is seen on ours.
        eventfd_signal(got.as_fd()).unwrap();
        assert_eq!(eventfd_drain(efd.as_fd()).unwrap(), 1);
        assert_eq!(eventfd_drain(efd.as_fd()).unwrap(), 0);
        let r = b.recv(&mut buf).unwrap();
        assert_eq!(r.len, 6);
        assert!(r.fd.is_none());
        let e = b.recv(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        assert_eq!(b.recv(&mut buf).unwrap().len, 0, "end of stream");
    }

    #[test]
    fn long_messages_are_reported_truncated_and_epipe_is_an_error() {
        let (a, b) = SeqPacket::pair().unwrap();
        a.send(&[7u8; 200], None).unwrap();
        let mut buf = [0u8; 128];
        let r = b.recv(&mut buf).unwrap();
        assert!(r.truncated);
        drop(b);
        let e = a.send(b"x", None).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn listen_connect_accept_on_a_path_and_an_abstract_name() {
        let path = unique_path("lca");
        for addr in [
            UnixAddr::Path(path.clone()),
            UnixAddr::Abstract(format!("ustack-test-{}", std::process::id()).into_bytes()),
        ] {
            let l = SeqPacketListener::bind(&addr, 4).unwrap();
            assert!(l.accept().unwrap().is_none());
            let c = SeqPacket::connect(&addr).unwrap();
            let s = l.accept().unwrap().expect("a connection");
            c.send(b"ping", None).unwrap();
            let mut buf = [0u8; 8];
            assert_eq!(s.recv(&mut buf).unwrap().len, 4);
            let (pid, _, _) = s.peer_cred().unwrap();
            assert_eq!(pid as u32, std::process::id());
            // A second bind on the same address fails.
            let e = SeqPacketListener::bind(&addr, 4).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        }
        let _ = std::fs::remove_file(&path);
        let e = SeqPacket::connect(&UnixAddr::Path(path)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn addresses_are_checked() {
        assert!(UnixAddr::Path(PathBuf::from("x".repeat(107)))
            .check()
            .is_ok());
        assert!(UnixAddr::Path(PathBuf::from("x".repeat(108)))
            .check()
            .is_err());
        assert!(UnixAddr::Abstract(Vec::new()).check().is_err());
        assert!(UnixAddr::Path(PathBuf::from("a\0b")).check().is_err());
    }

    #[test]
    fn memfd_size_and_seals() {
        let fd = memfd_create("ustack-test", None).unwrap();
        let file = std::fs::File::from(fd.try_clone().unwrap());
        file.set_len(12345).unwrap();
        assert_eq!(file_size(fd.as_fd()).unwrap().0, 12345);
        add_seals(fd.as_fd(), SEAL_SHRINK).unwrap();
        assert_ne!(seals(fd.as_fd()).unwrap() & SEAL_SHRINK, 0);
        assert!(file.set_len(100).is_err(), "a sealed file cannot shrink");
        set_nonblocking(fd.as_fd()).unwrap();
    }
}

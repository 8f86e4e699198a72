//! AF_PACKET raw sockets: whole Ethernet frames to and from one interface, for user-space
//! relays and test peers that must see every frame (the fault relay `examples/faultwire.rs`).
//!
//! A [`PacketSocket`] is bound to one interface (by name or index) with protocol `ETH_P_ALL`,
//! so it receives every frame that arrives on that interface, and sends frames out of it as
//! they are (the caller writes the Ethernet header). It is non-blocking and can be waited on
//! with `poll(2)` ([`AsFd`], e.g. [`crate::host::socket::poll`]).
//!
//! - [`PacketSocket::set_promiscuous`] puts the interface in promiscuous mode for as long as
//!   the socket is open (`PACKET_ADD_MEMBERSHIP` with `PACKET_MR_PROMISC`; the kernel drops the
//!   membership when the socket closes, even if the process is killed).
//! - [`PacketSocket::set_ignore_outgoing`] stops the socket from seeing the frames that leave
//!   the interface (its own included): only arrivals remain (`PACKET_IGNORE_OUTGOING`).
//! - [`PacketSocket::recv`] / [`PacketSocket::send`] move one frame;
//!   [`PacketSocket::recv_batch`] / [`PacketSocket::send_batch`] move up to [`BATCH_MAX`] per
//!   system call (`recvmmsg` / `sendmmsg`) through a [`FrameBatch`] allocated once.
//!
//! Frames longer than the receive buffer are reported with their length on the wire, so the
//! caller can tell a truncated frame from a whole one. The interface must not use offloads that
//! hand over frames longer than its MTU or with partial checksums (on a veth: `ethtool -K IFACE
//! tx off tso off gso off gro off`, see [`crate::host::iface::set_offload`]), or the frames
//! received here are not what a wire would carry.
//!
//! Needs `CAP_NET_RAW` (root).

use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The most frames one [`PacketSocket::recv_batch`] or [`PacketSocket::send_batch`] moves.
pub const BATCH_MAX: usize = 64;

/// `ETH_P_ALL` in network byte order, as `socket` and `sockaddr_ll` take it.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

/// `PACKET_IGNORE_OUTGOING` (Linux 4.20) from `linux/if_packet.h`.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// Errors from opening and configuring a packet socket.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// No interface of that name (or index) in the calling thread's network namespace.
    #[error(
        "no such interface {iface:?} in this network namespace (see `ip link`; inside a \
         namespace, run in it: `ip netns exec NAME ...`)"
    )]
    NoSuchInterface {
        /// The name or index asked for.
        iface: String,
    },
    /// The process lacks `CAP_NET_RAW`.
    #[error("opening an AF_PACKET socket on {iface:?} needs CAP_NET_RAW: run as root ({source})")]
    NotPermitted {
        /// The interface.
        iface: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// An interface name that cannot be one (empty, too long, holding a NUL).
    #[error("{iface:?} is not an interface name: 1 to 15 bytes, no NUL")]
    InvalidName {
        /// The name given.
        iface: String,
    },
    /// Another step failed.
    #[error("{op} on the AF_PACKET socket of {iface:?}: {source}")]
    Setup {
        /// What was tried.
        op: &'static str,
        /// The interface.
        iface: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Counters the kernel keeps for a packet socket (`PACKET_STATISTICS`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PacketStats {
    /// Frames the socket received (those dropped included).
    pub packets: u64,
    /// Frames dropped because the socket's receive buffer was full.
    pub drops: u64,
}

/// One frame received by [`PacketSocket::recv`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes written into the buffer.
    pub len: usize,
    /// The frame's length on the wire: larger than `len` when the buffer was too short.
    pub wire_len: usize,
}

impl Received {
    /// Whether the frame did not fit the buffer.
    pub fn truncated(&self) -> bool {
        self.wire_len > self.len
    }
}

/// An AF_PACKET raw socket bound to one interface. See the [module docs](crate::host::packet).
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
    iface: String,
}

fn setup_error<'a>(op: &'static str, iface: &'a str) -> impl FnOnce(io::Error) -> PacketError + 'a {
    move |source| PacketError::Setup {
        op,
        iface: iface.to_string(),
        source,
    }
}

/// The name of interface `ifindex` in the calling thread's network namespace.
fn ifname_of(ifindex: u32) -> io::Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, what if_indextoname writes at most (name and NUL);
    // it lives for the call.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success if_indextoname wrote a NUL-terminated name into `buf`.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// The index of interface `name` in the calling thread's network namespace.
fn ifindex_of(name: &str) -> Result<u32, PacketError> {
    let invalid = || PacketError::InvalidName {
        iface: name.to_string(),
    };
    if name.is_empty() || name.len() >= libc::IF_NAMESIZE {
        return Err(invalid());
    }
    let c = CString::new(name).map_err(|_| invalid())?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENXIO) => PacketError::NoSuchInterface {
                iface: name.to_string(),
            },
            _ => PacketError::Setup {
                op: "if_nametoindex",
                iface: name.to_string(),
                source: e,
            },
        });
    }
    Ok(idx)
}

/// A `sockaddr_ll` for `ifindex` and every protocol.
fn sockaddr_ll(ifindex: u32) -> Result<libc::sockaddr_ll, io::Error> {
    let ifindex = libc::c_int::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index too large"))?;
    // SAFETY: sockaddr_ll is a plain C struct of integers and a byte array; all-zero is valid.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as libc::c_ushort;
    sa.sll_protocol = ETH_P_ALL_BE;
    sa.sll_ifindex = ifindex;
    Ok(sa)
}

impl PacketSocket {
    /// Opens a non-blocking AF_PACKET socket bound to interface `iface` (in the calling
    /// thread's network namespace), receiving every protocol.
    pub fn open(iface: &str) -> Result<PacketSocket, PacketError> {
        let ifindex = ifindex_of(iface)?;
        PacketSocket::bind(ifindex, iface.to_string())
    }

    /// Like [`PacketSocket::open`], by interface index.
    pub fn open_index(ifindex: u32) -> Result<PacketSocket, PacketError> {
        let iface = ifname_of(ifindex).map_err(|_| PacketError::NoSuchInterface {
            iface: format!("index {ifindex}"),
        })?;
        PacketSocket::bind(ifindex, iface)
    }

    fn bind(ifindex: u32, iface: String) -> Result<PacketSocket, PacketError> {
        // Protocol 0 receives nothing until bind names the protocol and the interface, so no
        // frame of another interface slips in between the two calls.
        // SAFETY: socket takes no pointers.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    PacketError::NotPermitted { iface, source: e }
                }
                _ => PacketError::Setup {
                    op: "socket(AF_PACKET, SOCK_RAW)",
                    iface,
                    source: e,
                },
            });
        }
        // SAFETY: socket just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sa = sockaddr_ll(ifindex).map_err(setup_error("bind", &iface))?;
        // SAFETY: `sa` is a valid sockaddr_ll that lives for the call, and the length passed is
        // its size; the descriptor is live.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENODEV) | Some(libc::ENXIO) => PacketError::NoSuchInterface { iface },
                _ => PacketError::Setup {
                    op: "bind",
                    iface,
                    source: e,
                },
            });
        }
        Ok(PacketSocket { fd, ifindex, iface })
    }

    /// The interface's name.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The interface's index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn setsockopt<T>(&self, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
        // SAFETY: `value` points to a live `T` for the call and the length passed is its size;
        // every option set through here takes exactly that type; the descriptor is live.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (value as *const T).cast(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Puts the interface in promiscuous mode (`on`) for as long as this socket is open, or
    /// takes this socket's request back.
    pub fn set_promiscuous(&self, on: bool) -> Result<(), PacketError> {
        // SAFETY: packet_mreq is a plain C struct of integers and a byte array; all-zero valid.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = self.ifindex as libc::c_int;
        mreq.mr_type = libc::PACKET_MR_PROMISC as libc::c_ushort;
        let op = if on {
            libc::PACKET_ADD_MEMBERSHIP
        } else {
            libc::PACKET_DROP_MEMBERSHIP
        };
        self.setsockopt(libc::SOL_PACKET, op, &mreq)
            .map_err(setup_error(
                "PACKET_ADD_MEMBERSHIP (promiscuous)",
                &self.iface,
            ))
    }

    /// Stops (`true`) or resumes delivering the frames that leave the interface, this socket's
    /// own included.
    pub fn set_ignore_outgoing(&self, ignore: bool) -> Result<(), PacketError> {
        let v = libc::c_int::from(ignore);
        self.setsockopt(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &v)
            .map_err(setup_error(
                "PACKET_IGNORE_OUTGOING (needs Linux 4.20)",
                &self.iface,
            ))
    }

    /// Sets the socket's receive and send buffers (bytes; the kernel doubles them for its
    /// bookkeeping). With `CAP_NET_ADMIN` the system maximum (`net.core.rmem_max`) does not
    /// apply; without, the buffers are capped at it.
    pub fn set_buffers(&self, rcvbuf: usize, sndbuf: usize) -> Result<(), PacketError> {
        super::socket::set_buffer_len(self.fd.as_fd(), true, rcvbuf)
            .map_err(setup_error("SO_RCVBUF", &self.iface))?;
        super::socket::set_buffer_len(self.fd.as_fd(), false, sndbuf)
            .map_err(setup_error("SO_SNDBUF", &self.iface))
    }

    /// Receives one frame into `buf`: `Ok(None)` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call; MSG_TRUNC makes
        // the kernel return the frame's whole length but still write at most `buf.len()`.
        let rc = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if rc < 0 {
            return would_block_is_none(io::Error::last_os_error());
        }
        let wire_len = rc as usize;
        Ok(Some(Received {
            len: wire_len.min(buf.len()),
            wire_len,
        }))
    }

    /// Sends one whole frame out of the interface: `Ok(false)` when the socket's send buffer is
    /// full (try again after `poll` says writable).
    pub fn send(&self, frame: &[u8]) -> io::Result<bool> {
        // SAFETY: `frame` is valid for reads of `frame.len()` bytes for the call; no address is
        // given, so the frame leaves through the bound interface.
        let rc = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            return would_block_is_none::<()>(io::Error::last_os_error()).map(|o| o.is_some());
        }
        Ok(true)
    }

    /// Receives up to `batch.capacity()` frames in one system call (`recvmmsg`), replacing the
    /// batch's contents; returns how many (0 when none is waiting).
    pub fn recv_batch(&self, batch: &mut FrameBatch) -> io::Result<usize> {
        batch.clear();
        let cap = batch.capacity();
        let slot_len = batch.slot_len;
        let mut msgs = MsgVec::new();
        for (i, slot) in batch.data.chunks_exact_mut(slot_len).take(cap).enumerate() {
            msgs.set(i, slot.as_mut_ptr(), slot_len);
        }
        let hdrs = msgs.headers(cap);
        // SAFETY: the first `cap` headers each point to one iovec describing a distinct slot of
        // `batch.data`, writable for `slot_len` bytes; headers, iovecs and data all outlive the
        // call and are not otherwise used meanwhile. MSG_TRUNC makes `msg_len` the whole frame
        // length without writing past a slot.
        let rc = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs,
                cap as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return would_block_is_none(io::Error::last_os_error()).map(|o| o.unwrap_or(0));
        }
        let n = rc as usize;
        for i in 0..n {
            let wire_len = msgs.received(i);
            batch.wire_lens[i] = wire_len;
            batch.lens[i] = wire_len.min(slot_len);
        }
        batch.count = n;
        Ok(n)
    }

    /// Sends the frames `from..` of `batch` in one system call (`sendmmsg`); returns how many
    /// went (0 when the send buffer is full). The caller retries the rest.
    pub fn send_batch(&self, batch: &FrameBatch, from: usize) -> io::Result<usize> {
        let frames = batch.count.saturating_sub(from);
        if frames == 0 {
            return Ok(0);
        }
        let mut msgs = MsgVec::new();
        for (k, i) in (from..batch.count).enumerate() {
            let frame = batch.frame(i);
            // sendmmsg only reads the frames.
            msgs.set(k, frame.as_ptr().cast_mut(), frame.len());
        }
        let hdrs = msgs.headers(frames);
        // SAFETY: the first `frames` headers each point to one iovec describing a frame of
        // `batch`, readable for its length; everything outlives the call. No address is given,
        // so the frames leave through the bound interface.
        let rc = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                hdrs,
                frames as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            return would_block_is_none(io::Error::last_os_error()).map(|o| o.unwrap_or(0));
        }
        Ok(rc as usize)
    }

    /// The kernel's counters since the last call (reading resets them).
    pub fn statistics(&self) -> io::Result<PacketStats> {
        // SAFETY: tpacket_stats is two integers; all-zero is valid.
        let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `st` is writable for `len` bytes and `len` is writable; both outlive the
        // call; the descriptor is live.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketStats {
            packets: u64::from(st.tp_packets),
            drops: u64::from(st.tp_drops),
        })
    }
}

/// The message headers of one `recvmmsg` or `sendmmsg` call, one buffer per message, on the
/// stack (no allocation per call).
struct MsgVec {
    hdrs: [libc::mmsghdr; BATCH_MAX],
    iovs: [libc::iovec; BATCH_MAX],
}

impl MsgVec {
    fn new() -> MsgVec {
        MsgVec {
            // SAFETY: mmsghdr and iovec are plain C structs of integers and raw pointers;
            // all-zero is a valid value for each (null pointers, zero lengths).
            hdrs: unsafe { std::mem::zeroed() },
            // SAFETY: as above.
            iovs: unsafe { std::mem::zeroed() },
        }
    }

    /// Message `i` is the one buffer at `base`, `len` bytes long.
    fn set(&mut self, i: usize, base: *mut u8, len: usize) {
        self.iovs[i] = libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        };
    }

    /// Points the first `n` headers at their buffers and returns the array for the call. The
    /// pointers stay valid while `self` is not moved.
    fn headers(&mut self, n: usize) -> *mut libc::mmsghdr {
        for (hdr, iov) in self.hdrs.iter_mut().zip(self.iovs.iter_mut()).take(n) {
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
        }
        self.hdrs.as_mut_ptr()
    }

    /// The length the kernel reported for message `i`.
    fn received(&self, i: usize) -> usize {
        self.hdrs[i].msg_len as usize
    }
}

/// `WouldBlock` (and an interrupted call) as `Ok(None)`, anything else as the error.
fn would_block_is_none<T>(e: io::Error) -> io::Result<Option<T>> {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
        _ => Err(e),
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl fmt::Debug for PacketSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketSocket")
            .field("fd", &self.fd.as_raw_fd())
            .field("iface", &self.iface)
            .field("ifindex", &self.ifindex)
            .finish()
    }
}

/// Up to [`BATCH_MAX`] frames in fixed slots, allocated once: what
/// [`PacketSocket::recv_batch`] fills and [`PacketSocket::send_batch`] sends.
pub struct FrameBatch {
    data: Vec<u8>,
    slot_len: usize,
    lens: Vec<usize>,
    wire_lens: Vec<usize>,
    count: usize,
}

impl FrameBatch {
    /// A batch of `frames` slots (at most [`BATCH_MAX`]; at least 1) of `slot_len` bytes each.
    pub fn new(frames: usize, slot_len: usize) -> FrameBatch {
        let frames = frames.clamp(1, BATCH_MAX);
        let slot_len = slot_len.max(1);
        FrameBatch {
            data: vec![0; frames * slot_len],
            slot_len,
            lens: vec![0; frames],
            wire_lens: vec![0; frames],
            count: 0,
        }
    }

    /// Slots.
    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// Bytes per slot: the longest frame a slot holds.
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// Frames in the batch.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the batch holds no frame.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether every slot holds a frame.
    pub fn is_full(&self) -> bool {
        self.count == self.capacity()
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// Frame `i` (panics if `i >= len()`).
    pub fn frame(&self, i: usize) -> &[u8] {
        assert!(i < self.count, "frame {i} of a batch of {}", self.count);
        let at = i * self.slot_len;
        &self.data[at..at + self.lens[i]]
    }

    /// Frame `i`, writable (panics if `i >= len()`).
    pub fn frame_mut(&mut self, i: usize) -> &mut [u8] {
        assert!(i < self.count, "frame {i} of a batch of {}", self.count);
        let at = i * self.slot_len;
        &mut self.data[at..at + self.lens[i]]
    }

    /// Frame `i`'s length on the wire, larger than `frame(i).len()` when it was truncated.
    pub fn wire_len(&self, i: usize) -> usize {
        assert!(i < self.count, "frame {i} of a batch of {}", self.count);
        self.wire_lens[i]
    }

    /// Copies `frame` into the next slot; `false` (nothing copied) when the batch is full or
    /// the frame is longer than a slot.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        if self.is_full() || frame.len() > self.slot_len {
            return false;
        }
        let i = self.count;
        let at = i * self.slot_len;
        self.data[at..at + frame.len()].copy_from_slice(frame);
        self.lens[i] = frame.len();
        self.wire_lens[i] = frame.len();
        self.count += 1;
        true
    }
}

impl fmt::Debug for FrameBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameBatch")
            .field("len", &self.count)
            .field("capacity", &self.capacity())
            .field("slot_len", &self.slot_len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netns::{netns_or_skip, VethConfig, VethPair};
    use crate::sys::socket::{poll, PollFd, POLLIN};
    use std::time::Duration;

    #[test]
    fn batch_slots_and_bounds() {
        let mut b = FrameBatch::new(1000, 100);
        assert_eq!(b.capacity(), BATCH_MAX);
        assert!(b.is_empty());
        assert!(b.push(&[1, 2, 3]));
        assert!(!b.push(&[0; 101]), "longer than a slot");
        assert_eq!(b.frame(0), &[1, 2, 3]);
        b.frame_mut(0)[0] = 9;
        assert_eq!(b.frame(0), &[9, 2, 3]);
        assert_eq!(b.wire_len(0), 3);
        let mut small = FrameBatch::new(2, 8);
        assert!(small.push(&[0; 8]) && small.push(&[1; 8]));
        assert!(small.is_full() && !small.push(&[2]));
        small.clear();
        assert!(small.is_empty());
    }

    #[test]
    fn missing_and_bad_interfaces_are_named() {
        let e = PacketSocket::open("ust-none-xyz").unwrap_err();
        assert!(matches!(e, PacketError::NoSuchInterface { .. }), "{e}");
        assert!(e.to_string().contains("no such interface"), "{e}");
        let e = PacketSocket::open("a-name-much-too-long").unwrap_err();
        assert!(matches!(e, PacketError::InvalidName { .. }), "{e}");
        assert!(PacketSocket::open("").is_err());
        assert!(matches!(
            PacketSocket::open_index(u32::MAX - 7).unwrap_err(),
            PacketError::NoSuchInterface { .. }
        ));
    }

    /// A frame from `src` to `dst` with a 2-byte id, padded to `len` bytes; ethertype 0x88b5
    /// (local experimental), so no kernel protocol answers it.
    fn frame(dst: [u8; 6], src: [u8; 6], id: u16, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        f[14..16].copy_from_slice(&id.to_be_bytes());
        f
    }

    fn wait_readable(s: &PacketSocket) {
        let mut fds = [PollFd::new(s.as_raw_fd(), POLLIN)];
        poll(&mut fds, Duration::from_secs(5)).unwrap();
    }

    /// Frames sent on one end of a veth pair arrive whole, in order, at a promiscuous socket on
    /// the other end, one by one and in batches; truncation is reported; the sender's own
    /// frames are not seen when outgoing frames are ignored.
    #[test]
    fn frames_cross_a_veth_pair() {
        if !netns_or_skip() {
            return;
        }
        let pair = VethPair::create(&VethConfig {
            prefix: "ust-pkt".into(),
            ..VethConfig::default()
        })
        .expect("veth pair");
        let (ia, ib) = (pair.iface_a().to_string(), pair.iface_b().to_string());
        let rx = pair
            .b()
            .run(move || {
                let s = PacketSocket::open(&ib).expect("open B");
                s.set_promiscuous(true).expect("promiscuous");
                s.set_ignore_outgoing(true).expect("ignore outgoing");
                s.set_buffers(1 << 20, 1 << 20).expect("buffers");
                s
            })
            .unwrap();
        let tx = pair
            .a()
            .run(move || {
                let s = PacketSocket::open(&ia).expect("open A");
                s.set_ignore_outgoing(true).expect("ignore outgoing");
                s
            })
            .unwrap();
        assert_eq!(tx.iface(), pair.iface_a());
        // A unicast address that is not B's: only a promiscuous receiver takes it.
        let dst = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let src = [0x02, 0, 0, 0, 0, 1];
        // One at a time.
        for id in 0..5u16 {
            assert!(tx.send(&frame(dst, src, id, 60 + usize::from(id))).unwrap());
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < 5 {
            wait_readable(&rx);
            while let Some(r) = rx.recv(&mut buf).unwrap() {
                assert!(!r.truncated());
                if buf[12..14] == [0x88, 0xb5] {
                    got.push((u16::from_be_bytes([buf[14], buf[15]]), r.len));
                }
            }
        }
        assert_eq!(
            got,
            (0..5).map(|i| (i, 60 + usize::from(i))).collect::<Vec<_>>()
        );
        // The sender ignores its own outgoing frames.
        assert_eq!(tx.recv(&mut buf).unwrap(), None);

        // Batches.
        let mut out = FrameBatch::new(32, 2048);
        for id in 100..132u16 {
            assert!(out.push(&frame(dst, src, id, 1514)));
        }
        let mut sent = 0;
        while sent < out.len() {
            sent += tx.send_batch(&out, sent).unwrap();
        }
        let mut inb = FrameBatch::new(16, 2048);
        let mut ids = Vec::new();
        while ids.len() < 32 {
            wait_readable(&rx);
            rx.recv_batch(&mut inb).unwrap();
            for i in 0..inb.len() {
                let f = inb.frame(i);
                if f[12..14] == [0x88, 0xb5] {
                    assert_eq!((f.len(), inb.wire_len(i)), (1514, 1514));
                    ids.push(u16::from_be_bytes([f[14], f[15]]));
                }
            }
        }
        assert_eq!(ids, (100..132).collect::<Vec<_>>());

        // A frame longer than the buffer is cut and says so.
        assert!(tx.send(&frame(dst, src, 7, 1000)).unwrap());
        wait_readable(&rx);
        let mut short = [0u8; 100];
        let r = loop {
            if let Some(r) = rx.recv(&mut short).unwrap() {
                if short[12..14] == [0x88, 0xb5] {
                    break r;
                }
            } else {
                wait_readable(&rx);
            }
        };
        assert_eq!((r.len, r.wire_len), (100, 1000));
        assert!(r.truncated());
        let st = rx.statistics().unwrap();
        assert!(st.packets >= 38, "{st:?}");
        assert_eq!(st.drops, 0);
    }
}

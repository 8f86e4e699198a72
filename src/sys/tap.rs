//! Raw Linux TAP syscalls: open `/dev/net/tun`, attach it to a TAP interface, move single
//! frames, poll, and set the interface's MTU and flags.
//!
//! Each step is its own function returning the plain OS error, so the device layer
//! ([`crate::dev::tap`]) can tell which step failed and turn the errno into advice.
//!
//! Frames are plain Ethernet frames: the interface is created with `IFF_TAP | IFF_NO_PI` and no
//! virtio-net header, so one `read` returns one whole frame and one `write` sends one.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// The clone device every TUN/TAP interface is created through.
pub const TUN_PATH: &CStr = c"/dev/net/tun";

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const IFNAME_LEN_MAX: usize = libc::IFNAMSIZ - 1;

/// Opens `/dev/net/tun` read-write, non-blocking and close-on-exec.
///
/// Typical errors: `ENOENT`/`ENODEV`/`ENXIO` when the tun module or device node is missing,
/// `EACCES` when the node's permissions exclude the caller.
pub fn open_tun() -> io::Result<OwnedFd> {
    // SAFETY: TUN_PATH is a NUL-terminated string that outlives the call; open has no other
    // memory effects.
    let fd = unsafe {
        libc::open(
            TUN_PATH.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open just returned this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `ifreq` with `name` copied into `ifr_name`, or `InvalidInput` when the name does not fit
/// (longer than [`IFNAME_LEN_MAX`] bytes) or holds a NUL byte.
fn ifreq_named(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.len() > IFNAME_LEN_MAX || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name longer than 15 bytes or containing NUL",
        ));
    }
    // SAFETY: ifreq is a plain C struct (arrays, integers, a union of those and a raw pointer);
    // all-zero bytes are a valid value for every field.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// The name in an `ifreq` filled by the kernel (up to the first NUL).
fn ifreq_name(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Attaches a descriptor from [`open_tun`] to a TAP interface (`IFF_TAP | IFF_NO_PI`), creating
/// it if needed, and returns the interface name the kernel chose.
///
/// `name` is either a fixed name or a template with one `%d` (such as `"ust%d"`), which the
/// kernel replaces with the lowest free number. An empty name means the kernel's own `tap%d`.
///
/// Typical errors: `EPERM` without `CAP_NET_ADMIN`, `EBUSY` when the named TAP is already
/// attached to another descriptor, `EINVAL` when the name is taken by an interface of another
/// kind or is not a valid interface name, `InvalidInput` when it is longer than 15 bytes.
pub fn set_iff_tap(fd: BorrowedFd<'_>, name: &str) -> io::Result<String> {
    let mut req = ifreq_named(name)?;
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: fd is a live descriptor (borrowed for the call), and TUNSETIFF reads and writes
    // one `struct ifreq`, which `req` is, valid and exclusively borrowed for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ifreq_name(&req))
}

/// Reads one frame into `buf` and returns the frame's length.
///
/// A frame longer than `buf` is cut to fit and its rest is lost; the result is then
/// `buf.len()` (measured on Linux 6.18), so a result equal to `buf.len()` means the frame may
/// not be whole: give a buffer longer than the longest acceptable frame. `WouldBlock` means no
/// frame is queued.
#[inline]
pub fn read_frame(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes and exclusively borrowed; read writes
    // at most that many bytes into it.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Writes one whole frame and returns the number of bytes the kernel took (the frame's length
/// on success). `WouldBlock` means the interface's send buffer is full for now.
#[inline]
pub fn write_frame(fd: BorrowedFd<'_>, frame: &[u8]) -> io::Result<usize> {
    // SAFETY: frame is valid for reads of frame.len() bytes for the duration of the call.
    let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Waits until `fd` is readable or `timeout` passes; returns whether it is readable.
///
/// The timeout has microsecond resolution (`ppoll`); an interrupted wait (`EINTR`) returns
/// `Ok(false)` so the caller's loop rechecks its own deadline.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: pfd is one valid pollfd and ts one valid timespec, both live for the call; a null
    // signal mask means the mask is left unchanged.
    let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(rc > 0 && pfd.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0)
}

/// A datagram socket used only as a handle for interface ioctls in the caller's namespace.
fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket just returned this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Issues one `SIOC*IF*` ioctl on interface `name` (in the calling thread's network namespace).
///
/// # Safety
///
/// `req` must hold what `request` expects besides the name (which this function fills in).
/// When the request reads a pointer from the union (`SIOCETHTOOL` reads `ifr_data`), that
/// pointer must point to a live, exclusively borrowed value of the type the request's command
/// uses, for the duration of the call.
unsafe fn if_ioctl(name: &str, request: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
    let sock = ioctl_socket()?;
    let named = ifreq_named(name)?;
    req.ifr_name = named.ifr_name;
    // SAFETY: sock is a live socket; `req` is a valid, exclusively borrowed `struct ifreq`, and
    // the caller guarantees any pointer inside it is valid for this request.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The MTU of interface `name` in the calling thread's network namespace.
pub fn mtu(name: &str) -> io::Result<usize> {
    // SAFETY: all-zero is a valid ifreq (see ifreq_named).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: SIOCGIFMTU only writes `ifru_mtu`; no pointers are involved.
    unsafe { if_ioctl(name, libc::SIOCGIFMTU, &mut req)? };
    // SAFETY: SIOCGIFMTU succeeded and filled the `ifru_mtu` member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(mtu.max(0) as usize)
}

/// Sets the MTU of interface `name` in the calling thread's network namespace (needs
/// `CAP_NET_ADMIN`).
pub fn set_mtu(name: &str, mtu: usize) -> io::Result<()> {
    let mtu = libc::c_int::try_from(mtu)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "MTU does not fit in a C int"))?;
    // SAFETY: all-zero is a valid ifreq (see ifreq_named).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_ifru.ifru_mtu = mtu;
    // SAFETY: SIOCSIFMTU only reads `ifru_mtu`, set above; no pointers are involved.
    unsafe { if_ioctl(name, libc::SIOCSIFMTU, &mut req) }
}

/// Brings interface `name` up or down (`IFF_UP`) in the calling thread's network namespace
/// (needs `CAP_NET_ADMIN`). Moving an interface to another namespace takes it down again.
pub fn set_up(name: &str, up: bool) -> io::Result<()> {
    // SAFETY: all-zero is a valid ifreq (see ifreq_named).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: SIOCGIFFLAGS only writes `ifru_flags`; no pointers are involved.
    unsafe { if_ioctl(name, libc::SIOCGIFFLAGS, &mut req)? };
    // SAFETY: SIOCGIFFLAGS succeeded and filled the `ifru_flags` member of the union.
    let mut flags = unsafe { req.ifr_ifru.ifru_flags };
    if up {
        flags |= libc::IFF_UP as libc::c_short;
    } else {
        flags &= !(libc::IFF_UP as libc::c_short);
    }
    req.ifr_ifru.ifru_flags = flags;
    // SAFETY: SIOCSIFFLAGS only reads `ifru_flags`, set above; no pointers are involved.
    unsafe { if_ioctl(name, libc::SIOCSIFFLAGS, &mut req) }
}

/// `ETHTOOL_GTXCSUM`: get TX checksum offload (legacy ethtool ioctl command).
const ETHTOOL_GTXCSUM: u32 = 0x16;
/// `ETHTOOL_STXCSUM`: set TX checksum offload.
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value` from `linux/ethtool.h`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

fn ethtool_value(name: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: all-zero is a valid ifreq (see ifreq_named).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL reads `ifr_data` as a pointer to the command struct: it points to
    // `value`, a `struct ethtool_value` (what the GTXCSUM/STXCSUM commands use), which lives
    // on this stack frame past the call and is not otherwise borrowed meanwhile.
    unsafe { if_ioctl(name, libc::SIOCETHTOOL, &mut req)? };
    Ok(value.data)
}

/// Whether TX checksum offload is on for interface `name` (what `ethtool -k` calls
/// `tx-checksumming`), in the calling thread's network namespace.
pub fn tx_checksum_offload(name: &str) -> io::Result<bool> {
    Ok(ethtool_value(name, ETHTOOL_GTXCSUM, 0)? != 0)
}

/// Turns TX checksum offload on or off for interface `name` (`ethtool -K NAME tx off`), in the
/// calling thread's network namespace. A veth whose peer hands frames to user space (AF_XDP,
/// AF_PACKET) must have it off, or the kernel sends TCP/UDP with only a partial checksum.
/// Turning it off also turns off the offloads that depend on it (TSO).
pub fn set_tx_checksum_offload(name: &str, on: bool) -> io::Result<()> {
    ethtool_value(name, ETHTOOL_STXCSUM, u32::from(on)).map(|_| ())
}

/// An offload that `ethtool -K` turns on and off, through the legacy ethtool commands (which
/// the kernel maps onto its feature flags).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Offload {
    /// TX checksum offload (`tx`): off, the kernel sends complete TCP/UDP checksums.
    TxChecksum,
    /// TCP segmentation offload (`tso`).
    Tso,
    /// Generic segmentation offload (`gso`): off, no frame leaves longer than the MTU.
    Gso,
    /// Generic receive offload (`gro`): off, received frames are not merged.
    Gro,
}

impl Offload {
    /// Every offload in this enum, in the order they are best turned off.
    pub const ALL: [Offload; 4] = [
        Offload::TxChecksum,
        Offload::Tso,
        Offload::Gso,
        Offload::Gro,
    ];

    /// The (get, set) ethtool commands.
    const fn commands(self) -> (u32, u32) {
        match self {
            Offload::TxChecksum => (ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM),
            Offload::Tso => (0x1e, 0x1f),
            Offload::Gso => (0x23, 0x24),
            Offload::Gro => (0x2b, 0x2c),
        }
    }

    /// The name `ethtool -K` uses.
    pub const fn name(self) -> &'static str {
        match self {
            Offload::TxChecksum => "tx",
            Offload::Tso => "tso",
            Offload::Gso => "gso",
            Offload::Gro => "gro",
        }
    }
}

/// Whether `offload` is on for interface `name`, in the calling thread's network namespace.
pub fn offload(name: &str, offload: Offload) -> io::Result<bool> {
    Ok(ethtool_value(name, offload.commands().0, 0)? != 0)
}

/// Turns `offload` on or off for interface `name` (`ethtool -K NAME tso off`, ...), in the
/// calling thread's network namespace. Needs `CAP_NET_ADMIN`.
pub fn set_offload(name: &str, offload: Offload, on: bool) -> io::Result<()> {
    ethtool_value(name, offload.commands().1, u32::from(on)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn ifreq_name_round_trip_and_limits() {
        let req = ifreq_named("ust%d").unwrap();
        assert_eq!(ifreq_name(&req), "ust%d");
        let max = "a".repeat(IFNAME_LEN_MAX);
        assert_eq!(ifreq_name(&ifreq_named(&max).unwrap()), max);
        let too_long = "a".repeat(IFNAME_LEN_MAX + 1);
        assert_eq!(
            ifreq_named(&too_long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(ifreq_named("a\0b").is_err());
    }

    #[test]
    fn loopback_ioctls_read() {
        // Reading the MTU and the TX checksum flag of `lo` needs no privilege.
        assert!(mtu("lo").unwrap() >= 1500);
        assert!(tx_checksum_offload("lo").is_ok());
        for o in Offload::ALL {
            assert!(offload("lo", o).is_ok(), "{}", o.name());
        }
        assert!(mtu("no-such-if0").is_err());
    }

    #[test]
    fn poll_times_out_on_an_idle_fd() {
        let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd: OwnedFd = r.into();
        let t = std::time::Instant::now();
        assert!(!poll_readable(fd.as_fd(), Duration::from_millis(20)).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(19));
    }
}

//! [`TapDevice`]: a Linux TAP interface as a [`PacketDevice`].
//!
//! This is not kernel bypass. Every frame crosses the kernel with one `read` or `write` system
//! call and a copy. It is the debugging and compatibility backend: it lets ustack's user-space
//! stack talk to the host kernel's own TCP/IP stack, which makes it the reference peer for
//! tests and the way to try ustack on any Linux machine.
//!
//! The usual test topology (see [`crate::host::netns`]):
//!
//! 1. open a `TapDevice` (it creates the interface, `ust0`, `ust1`, … by default),
//! 2. move the interface into a fresh network namespace and give it an address there
//!    (`ip -n NS addr add 10.x.y.1/24 dev TAP; ip -n NS link set TAP up`); the descriptor this
//!    process holds keeps working after the move,
//! 3. run ustack on the device with another address of that subnet (10.x.y.2), and the kernel
//!    peer (`std::net` sockets) on a thread that entered the namespace
//!    ([`NetNs::run`](crate::host::netns::NetNs::run)).
//!
//! The kernel side of a TAP without offloads sends frames with complete checksums and checks
//! every checksum of what it receives, so the device claims no checksum offload.
//!
//! Counters: a received frame shorter than an Ethernet header or longer than `mtu + 14` is
//! dropped and counted in `rx_errors`; a frame sent while the kernel side is down is lost and
//! counted in `tx_dropped`; an outgoing frame of bad length or refused otherwise counts in
//! `tx_errors`. When the pool is empty, receiving stops and the kernel keeps the frames queued.
//!
//! Closing the device (dropping it) deletes the interface, wherever it is.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::dev::{Batch, ChecksumCaps, DeviceCaps, Frame, LinkStats, PacketDevice, ETH_HEADER_LEN};
use crate::mem::{BufPool, MemError, PageSize, PoolBuf};
use crate::sys::tap as sys;
use crate::time::Instant;

/// Headroom left in front of every frame buffer.
const HEADROOM: usize = 128;
/// The smallest buffer (headroom included) the pool is built with.
const BUF_LEN_MIN: usize = 2048;
/// Smallest IPv4 MTU (RFC 791).
const MTU_MIN: usize = 68;
/// Largest MTU a TAP interface takes: 65535 minus the Ethernet header.
const MTU_MAX: usize = 65535 - ETH_HEADER_LEN;
/// Name template used when none is given: the kernel picks the first free `ust<N>`.
const DEFAULT_NAME_TEMPLATE: &str = "ust%d";

/// How to open a [`TapDevice`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapConfig {
    /// Interface name, or a template with one `%d` that the kernel fills in (`"ust%d"` when
    /// `None`). At most 15 bytes. An existing TAP interface of that name that no descriptor
    /// holds (a persistent one) is attached to rather than created.
    pub name: Option<String>,
    /// IP MTU in bytes: frames up to `mtu + 14` bytes are accepted. The interface's own MTU is
    /// set to this at open when it differs. Default 1500.
    pub mtu: usize,
    /// Frame buffers in the device's pool, shared by receive and transmit. Default 1024.
    pub pool_frames: usize,
    /// Most frames moved by one `rx_burst` or `tx_burst`. Default 32.
    pub burst_max: usize,
}

impl Default for TapConfig {
    fn default() -> TapConfig {
        TapConfig {
            name: None,
            mtu: 1500,
            pool_frames: 1024,
            burst_max: 32,
        }
    }
}

/// Errors from opening a [`TapDevice`].
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` does not exist or has no driver behind it.
    #[error(
        "/dev/net/tun is missing ({source}): load the driver with `modprobe tun`, or in a \
         container pass the device in (`--device /dev/net/tun`)"
    )]
    NoTunDevice {
        /// The OS error from `open`.
        #[source]
        source: io::Error,
    },
    /// The process may not create or attach TAP interfaces.
    #[error(
        "{op} was refused ({source}): creating a TAP interface needs CAP_NET_ADMIN: run as root \
         or `setcap cap_net_admin+ep BINARY`"
    )]
    PermissionDenied {
        /// What was refused.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The requested interface name does not fit.
    #[error("interface name {name:?} is {len} bytes long; at most 15 fit")]
    NameTooLong {
        /// The name given.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The requested interface name is not a valid interface name.
    #[error("interface name {name:?} is invalid: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The name is taken: by a TAP interface another descriptor holds, or by an interface that
    /// is not a TAP.
    #[error(
        "interface {name} exists and is held by another process or is not a TAP ({source}): \
         choose another name, or leave the name unset to let the kernel pick one"
    )]
    Busy {
        /// The name given.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A configuration value out of range.
    #[error("invalid TAP configuration: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field of [`TapConfig`].
        field: &'static str,
        /// Its value.
        value: usize,
        /// The allowed range.
        reason: &'static str,
    },
    /// The frame pool could not be built.
    #[error("building the TAP frame pool: {0}")]
    Pool(#[from] MemError),
    /// Any other failed system call.
    #[error("{op} failed: {source}")]
    Io {
        /// What was tried.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Turns the error of opening `/dev/net/tun` into advice.
fn open_error(source: io::Error) -> TapError {
    match source.raw_os_error() {
        Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => TapError::NoTunDevice { source },
        Some(libc::EACCES | libc::EPERM) => TapError::PermissionDenied {
            op: "opening /dev/net/tun",
            source,
        },
        _ => TapError::Io {
            op: "opening /dev/net/tun",
            source,
        },
    }
}

/// Turns the error of `TUNSETIFF` into advice. `name` is the name given, if any.
fn set_iff_error(name: Option<&str>, source: io::Error) -> TapError {
    match (source.raw_os_error(), name) {
        (Some(libc::EPERM | libc::EACCES), _) => TapError::PermissionDenied {
            op: "creating a TAP interface (TUNSETIFF)",
            source,
        },
        // EBUSY: a TAP of that name is attached to another descriptor. EINVAL with a fixed
        // name: the name belongs to an interface of another kind (or a TUN).
        (Some(libc::EBUSY), Some(name)) | (Some(libc::EINVAL), Some(name)) => TapError::Busy {
            name: name.to_string(),
            source,
        },
        _ => TapError::Io {
            op: "creating a TAP interface (TUNSETIFF)",
            source,
        },
    }
}

/// Checks a requested interface name (or `%d` template) the way the kernel will.
fn check_name(name: &str) -> Result<(), TapError> {
    let invalid = |reason| {
        Err(TapError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.len() > sys::IFNAME_LEN_MAX {
        return Err(TapError::NameTooLong {
            name: name.to_string(),
            len: name.len(),
        });
    }
    if name.is_empty() {
        return invalid("empty");
    }
    if name == "." || name == ".." {
        return invalid("'.' and '..' are not interface names");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return invalid("must not contain '/', ':', NUL or whitespace");
    }
    if name.matches('%').count() > 1 {
        return invalid("at most one '%d' template");
    }
    Ok(())
}

/// Checks the numeric fields of a config.
fn check_config(config: &TapConfig) -> Result<(), TapError> {
    if !(MTU_MIN..=MTU_MAX).contains(&config.mtu) {
        return Err(TapError::InvalidConfig {
            field: "mtu",
            value: config.mtu,
            reason: "must be within 68..=65521",
        });
    }
    if config.burst_max == 0 {
        return Err(TapError::InvalidConfig {
            field: "burst_max",
            value: 0,
            reason: "must be at least 1",
        });
    }
    if config.pool_frames < 2 {
        return Err(TapError::InvalidConfig {
            field: "pool_frames",
            value: config.pool_frames,
            reason: "must be at least 2",
        });
    }
    Ok(())
}

/// Pool buffer length (headroom included) for an MTU: the data capacity must exceed
/// `mtu + 14`, so that a frame filling the whole buffer is known to be oversized.
fn buf_len_for(mtu: usize) -> usize {
    (HEADROOM + mtu + ETH_HEADER_LEN + 1)
        .next_multiple_of(64)
        .max(BUF_LEN_MIN)
}

/// What a read of `n` bytes means for a device with frames up to `frame_len_max` bytes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum RxLen {
    /// A whole frame of acceptable length.
    Ok,
    /// Shorter than an Ethernet header.
    Runt,
    /// Longer than the MTU allows (it may also have been cut to fit the buffer).
    Oversized,
}

#[inline]
fn classify_rx_len(n: usize, frame_len_max: usize) -> RxLen {
    if n < ETH_HEADER_LEN {
        RxLen::Runt
    } else if n > frame_len_max {
        RxLen::Oversized
    } else {
        RxLen::Ok
    }
}

/// A TAP interface: ustack's end of a virtual Ethernet link to the kernel's network stack.
///
/// Frames are [`PoolBuf`]s from the device's own pool (2 MiB hugepages if reserved, else base
/// pages with a warning from [`crate::mem::HugeRegion::map`]).
pub struct TapDevice {
    fd: OwnedFd,
    name: String,
    pool: BufPool,
    caps: DeviceCaps,
    stats: LinkStats,
}

impl TapDevice {
    /// Creates (or attaches to) the TAP interface and builds the frame pool.
    ///
    /// The interface starts down, in the caller's network namespace, with the configured MTU.
    /// Configure its kernel side with `ip` (in a namespace for tests), or with
    /// [`crate::host::iface::set_up`].
    pub fn open(config: &TapConfig) -> Result<TapDevice, TapError> {
        check_config(config)?;
        let requested = config.name.as_deref();
        let template = requested.unwrap_or(DEFAULT_NAME_TEMPLATE);
        check_name(template)?;

        let fd = sys::open_tun().map_err(open_error)?;
        let name =
            sys::set_iff_tap(fd.as_fd(), template).map_err(|e| set_iff_error(requested, e))?;

        match sys::mtu(&name) {
            Ok(current) if current == config.mtu => {}
            _ => sys::set_mtu(&name, config.mtu).map_err(|source| TapError::Io {
                op: "setting the TAP interface's MTU (SIOCSIFMTU)",
                source,
            })?,
        }

        let pool = BufPool::with_capacity(
            config.pool_frames,
            buf_len_for(config.mtu),
            HEADROOM,
            PageSize::Huge2M,
        )?;
        debug_assert!(pool.buf_len() - pool.headroom() > config.mtu + ETH_HEADER_LEN);

        tracing::info!(
            iface = %name,
            mtu = config.mtu,
            pool_frames = pool.capacity(),
            page = %pool.page_size(),
            "opened TAP device"
        );
        Ok(TapDevice {
            fd,
            name,
            pool,
            caps: DeviceCaps {
                mtu: config.mtu,
                burst_max: config.burst_max,
                checksum: ChecksumCaps::default(),
            },
            stats: LinkStats::default(),
        })
    }

    /// The interface name the kernel gave (fill-in of the `%d` template).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's frame pool (shared by receive and transmit).
    pub fn pool(&self) -> &BufPool {
        &self.pool
    }
}

impl std::fmt::Debug for TapDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapDevice")
            .field("name", &self.name)
            .field("fd", &self.fd.as_raw_fd())
            .field("caps", &self.caps)
            .field("stats", &self.stats)
            .finish()
    }
}

impl AsFd for TapDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for TapDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl PacketDevice for TapDevice {
    type Frame = PoolBuf;

    fn caps(&self) -> DeviceCaps {
        self.caps
    }

    fn rx_burst(&mut self, _now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
        let want = batch.free().min(self.caps.burst_max);
        let frame_len_max = self.caps.frame_len_max();
        let mut got = 0;
        // One buffer is reused across discarded frames; it returns to the pool on exit.
        let mut spare: Option<PoolBuf> = None;
        while got < want {
            let mut buf = match spare.take().or_else(|| self.pool.alloc()) {
                Some(buf) => buf,
                // No buffer free: stop reading; the kernel keeps the frames queued.
                None => break,
            };
            let cap = Frame::capacity(&buf);
            // The buffer memory is always initialised; its stale contents are overwritten.
            let _ = buf.set_len(cap);
            match sys::read_frame(self.fd.as_fd(), buf.as_mut_slice()) {
                Ok(n) => match classify_rx_len(n, frame_len_max) {
                    RxLen::Ok => {
                        let _ = buf.set_len(n);
                        self.stats.rx_packets += 1;
                        self.stats.rx_bytes += n as u64;
                        // Cannot fail: got < want <= batch.free() at the start.
                        if batch.push(buf).is_err() {
                            self.stats.rx_dropped += 1;
                            break;
                        }
                        got += 1;
                    }
                    bad => {
                        self.stats.rx_errors += 1;
                        tracing::debug!(iface = %self.name, len = n, kind = ?bad, "dropped received frame");
                        buf.reset();
                        spare = Some(buf);
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => spare = Some(buf),
                Err(e) => {
                    self.stats.rx_errors += 1;
                    tracing::debug!(iface = %self.name, "TAP read failed: {e}");
                    break;
                }
            }
        }
        got
    }

    fn tx_alloc(&mut self) -> Option<PoolBuf> {
        self.pool.alloc()
    }

    fn tx_burst(&mut self, _now: Instant, batch: &mut Batch<PoolBuf>) -> usize {
        let frame_len_max = self.caps.frame_len_max();
        let mut taken = 0;
        while taken < self.caps.burst_max {
            let Some(frame) = batch.front() else { break };
            let len = frame.len();
            if len > frame_len_max || len < ETH_HEADER_LEN {
                self.stats.tx_errors += 1;
                tracing::debug!(iface = %self.name, len, "dropped outgoing frame of bad length");
                drop(batch.pop());
                taken += 1;
                continue;
            }
            match sys::write_frame(self.fd.as_fd(), frame.as_slice()) {
                Ok(_) => {
                    self.stats.tx_packets += 1;
                    self.stats.tx_bytes += len as u64;
                }
                // Full for now: leave this frame and the rest in the batch.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EIO: the kernel side of the interface is down; the frame is lost.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    self.stats.tx_dropped += 1;
                    tracing::debug!(iface = %self.name, len, "TAP interface down, frame dropped");
                }
                Err(e) => {
                    self.stats.tx_errors += 1;
                    tracing::debug!(iface = %self.name, len, "TAP write failed, frame dropped: {e}");
                }
            }
            drop(batch.pop());
            taken += 1;
        }
        taken
    }

    fn stats(&self) -> LinkStats {
        self.stats
    }

    fn wait(&mut self, timeout: Duration) {
        if let Err(e) = sys::poll_readable(self.fd.as_fd(), timeout) {
            tracing::debug!(iface = %self.name, "poll on TAP failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn rx_length_check() {
        let max = 1500 + ETH_HEADER_LEN;
        assert_eq!(classify_rx_len(0, max), RxLen::Runt);
        assert_eq!(classify_rx_len(13, max), RxLen::Runt);
        assert_eq!(classify_rx_len(14, max), RxLen::Ok);
        assert_eq!(classify_rx_len(max, max), RxLen::Ok);
        assert_eq!(classify_rx_len(max + 1, max), RxLen::Oversized);
    }

    #[test]
    fn buffers_hold_more_than_a_full_frame() {
        for mtu in [MTU_MIN, 1500, 1905, 1906, 4000, 9000, MTU_MAX] {
            let data = buf_len_for(mtu) - HEADROOM;
            assert!(data > mtu + ETH_HEADER_LEN, "mtu {mtu}");
            assert_eq!(buf_len_for(mtu) % 64, 0);
        }
        assert_eq!(buf_len_for(1500), 2048);
    }

    #[test]
    fn errno_becomes_advice() {
        assert!(matches!(
            open_error(os(libc::ENOENT)),
            TapError::NoTunDevice { .. }
        ));
        let e = open_error(os(libc::EACCES));
        assert!(matches!(e, TapError::PermissionDenied { .. }));
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
        assert!(open_error(os(libc::ENODEV))
            .to_string()
            .contains("modprobe tun"));
        assert!(matches!(
            set_iff_error(None, os(libc::EPERM)),
            TapError::PermissionDenied { .. }
        ));
        assert!(matches!(
            set_iff_error(Some("x"), os(libc::EBUSY)),
            TapError::Busy { .. }
        ));
        assert!(matches!(
            set_iff_error(None, os(libc::EINVAL)),
            TapError::Io { .. }
        ));
    }

    #[test]
    fn config_and_names_are_checked() {
        assert!(check_name("ust%d").is_ok());
        assert!(check_name("abcdefghijklmno").is_ok());
        assert!(matches!(
            check_name("abcdefghijklmnop"),
            Err(TapError::NameTooLong { len: 16, .. })
        ));
        assert!(matches!(
            check_name("a b"),
            Err(TapError::InvalidName { .. })
        ));
        assert!(matches!(
            check_name("a/b"),
            Err(TapError::InvalidName { .. })
        ));
        assert!(matches!(check_name(""), Err(TapError::InvalidName { .. })));
        let bad_mtu = TapConfig {
            mtu: 40,
            ..TapConfig::default()
        };
        assert!(matches!(
            check_config(&bad_mtu),
            Err(TapError::InvalidConfig { field: "mtu", .. })
        ));
        let bad_burst = TapConfig {
            burst_max: 0,
            ..TapConfig::default()
        };
        assert!(check_config(&bad_burst).is_err());
        assert!(check_config(&TapConfig::default()).is_ok());
    }

    #[test]
    fn open_rejects_long_names_before_any_syscall() {
        let config = TapConfig {
            name: Some("a-name-that-is-too-long".into()),
            ..TapConfig::default()
        };
        assert!(matches!(
            TapDevice::open(&config),
            Err(TapError::NameTooLong { len: 23, .. })
        ));
    }
}

//! [`XdpError`]: what went wrong opening an AF_XDP device, and what to do about it.

use std::fmt;
use std::io;

use crate::mem::MemError;
use crate::sys::xdp::XskStep;

use super::mode::{AttachMode, BindMode};

/// The modes tried for one step, each with the error it got, shown as
/// `native: <error>; generic: <error>`.
#[derive(Debug)]
pub struct Attempts<M>(pub Vec<(M, io::Error)>);

impl<M: fmt::Display> fmt::Display for Attempts<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (mode, e)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{mode}: {e}")?;
        }
        Ok(())
    }
}

impl<M> Attempts<M> {
    /// Whether any attempt failed with this errno.
    pub fn any_errno(&self, errno: i32) -> bool {
        self.0.iter().any(|(_, e)| e.raw_os_error() == Some(errno))
    }
}

/// Capability names, shown as `CAP_NET_RAW, CAP_BPF`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapList(pub Vec<&'static str>);

impl fmt::Display for CapList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

/// A locked-memory limit for messages: bytes, or unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemlockLimit(pub Option<u64>);

impl fmt::Display for MemlockLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("unlimited"),
            Some(b) => write!(f, "{} KiB", b / 1024),
        }
    }
}

/// Errors from [`XdpDevice::open`](super::XdpDevice::open) and
/// [`XdpDevice::probe`](super::XdpDevice::probe). Each says what was tried and what to do.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// A configuration value out of range.
    #[error("invalid AF_XDP configuration: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field of [`XdpConfig`](super::XdpConfig).
        field: &'static str,
        /// Its value.
        value: u64,
        /// What is allowed.
        reason: &'static str,
    },
    /// There is no such interface in the calling thread's network namespace.
    #[error(
        "no interface named {ifname:?} in this network namespace ({source}); `ip link` lists \
         them (an interface in another namespace needs the device opened from inside it)"
    )]
    NoSuchInterface {
        /// The name given.
        ifname: String,
        /// The OS error of the lookup.
        #[source]
        source: io::Error,
    },
    /// The process lacks capabilities AF_XDP needs.
    #[error(
        "AF_XDP on {ifname} needs {missing}, missing from this process's effective capabilities: \
         run as root, or grant them with `setcap cap_net_raw,cap_net_admin,cap_bpf,cap_ipc_lock+ep \
         BINARY`"
    )]
    MissingCapabilities {
        /// The interface.
        ifname: String,
        /// The missing capabilities, by name.
        missing: CapList,
    },
    /// The capability check passed but the kernel still refused (a security module, a user
    /// namespace that does not own the network namespace, ...).
    #[error(
        "{op} on {ifname} was refused ({source}): AF_XDP needs CAP_NET_RAW, CAP_NET_ADMIN and \
         CAP_BPF (or CAP_SYS_ADMIN) in the interface's network namespace"
    )]
    PermissionDenied {
        /// The interface.
        ifname: String,
        /// What was refused.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Registering the UMEM failed for want of lockable memory.
    #[error(
        "registering the {umem_len}-byte UMEM failed ({source}): its pages are locked, which \
         needs CAP_IPC_LOCK or a locked-memory limit of at least {need_kib} KiB (`ulimit -l`, \
         now {limit}; LimitMEMLOCK= in a systemd unit), or a smaller UMEM (fewer frames)",
        need_kib = .umem_len.div_ceil(1024)
    )]
    LockedMemory {
        /// UMEM bytes.
        umem_len: usize,
        /// The current soft limit.
        limit: MemlockLimit,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel has no AF_XDP or BPF support.
    #[error("{op} failed ({source}): the kernel lacks {config}")]
    NotSupported {
        /// What was tried.
        op: &'static str,
        /// The kernel option that is missing.
        config: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The interface's MTU does not fit a UMEM frame, and multi-buffer cannot help.
    #[error(
        "interface {ifname} has MTU {mtu}, but a {frame_len}-byte UMEM frame holds frames of at \
         most {capacity} bytes after its headroom (MTU + 14 must fit) and {why}: use frame_len \
         4096, less headroom, or lower the interface's MTU to {mtu_fits} or less",
        mtu_fits = .capacity.saturating_sub(14)
    )]
    MtuTooLarge {
        /// The interface.
        ifname: String,
        /// Its MTU.
        mtu: usize,
        /// The configured frame length.
        frame_len: usize,
        /// Longest Ethernet frame a UMEM frame holds.
        capacity: usize,
        /// Why frames cannot be carried in several UMEM frames instead.
        why: &'static str,
    },
    /// The MTU needs multi-buffer (frames in several UMEM frames) and the kernel or driver
    /// refused a step of it.
    #[error(
        "interface {ifname} has MTU {mtu}: its frames do not fit one {frame_len}-byte UMEM frame \
         ({capacity} bytes after the headroom), and carrying them in several (AF_XDP \
         multi-buffer) failed when {step} ({source}); without multi-buffer, frames over \
         {capacity} bytes are dropped by the kernel and TCP stalls. Lower the MTU to {mtu_fits} \
         or less (`ip link set dev {ifname} mtu {mtu_fits}`), use frame_len 4096 if it is 2048, \
         or run Linux 6.6 or later (multi-buffer in copy mode; zero-copy needs driver support)",
        mtu_fits = .capacity.saturating_sub(14)
    )]
    MultiBufferRefused {
        /// The interface.
        ifname: String,
        /// Its MTU.
        mtu: usize,
        /// The configured frame length.
        frame_len: usize,
        /// Longest Ethernet frame one UMEM frame holds.
        capacity: usize,
        /// What was refused.
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Busy polling was required ([`BusyPoll::On`](super::BusyPoll::On)) and the kernel
    /// refused one of its socket options.
    #[error(
        "busy polling on {ifname} (BusyPoll::On): the kernel refused {option} ({source}); it \
         needs CAP_NET_ADMIN and a kernel built with CONFIG_NET_RX_BUSY_POLL. BusyPoll::Auto \
         falls back to the wakeup path instead"
    )]
    BusyPollRefused {
        /// The interface.
        ifname: String,
        /// The socket option refused.
        option: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The UMEM pool could not be built.
    #[error("building the UMEM pool: {0}")]
    Pool(#[from] MemError),
    /// Creating the AF_XDP socket or its rings failed.
    #[error("{step} for {ifname} queue {queue_id} failed: {source}")]
    Socket {
        /// The interface.
        ifname: String,
        /// The queue.
        queue_id: u32,
        /// The step that failed.
        step: XskStep,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Creating or filling the XSKMAP failed.
    #[error("{op} failed: {source}")]
    Map {
        /// What was tried.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel's verifier refused the program (a bug in ustack: please report it with the
    /// log).
    #[error("the kernel refused ustack's XDP program ({source}); verifier log:\n{log}")]
    ProgramRejected {
        /// The OS error.
        #[source]
        source: io::Error,
        /// The tail of the verifier log.
        log: String,
    },
    /// No mode of attaching the program to the interface worked.
    #[error("attaching the XDP program to {ifname} failed ({attempts}): {hint}")]
    AttachRefused {
        /// The interface.
        ifname: String,
        /// The modes tried, each with its error.
        attempts: Attempts<AttachMode>,
        /// What probably happened and what to do.
        hint: &'static str,
    },
    /// No mode of binding the socket to the queue worked.
    #[error("binding an AF_XDP socket to {ifname} queue {queue_id} failed ({attempts}): {hint}")]
    Bind {
        /// The interface.
        ifname: String,
        /// The queue.
        queue_id: u32,
        /// The modes tried, each with its error.
        attempts: Attempts<BindMode>,
        /// What probably happened and what to do.
        hint: &'static str,
    },
    /// One socket per queue was asked for more queues than the interface has.
    #[error(
        "{ifname} has no receive queue {queue_id} (binding it failed: {source}): it has fewer \
         than the {wanted} queues asked for (one per core); give it more (`ethtool -L {ifname} \
         combined {wanted}`, or numrxqueues/numtxqueues for a veth) or ask for fewer cores"
    )]
    TooFewQueues {
        /// The interface.
        ifname: String,
        /// The first queue that could not be bound.
        queue_id: u32,
        /// Queues asked for.
        wanted: u32,
        /// The bind's error.
        #[source]
        source: Box<XdpError>,
    },
    /// Any other failed system call.
    #[error("{op} on {ifname} failed: {source}")]
    Io {
        /// The interface.
        ifname: String,
        /// What was tried.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What to say when attaching failed with these errors.
pub(crate) fn attach_hint(attempts: &Attempts<AttachMode>) -> &'static str {
    if attempts.any_errno(libc::EBUSY) || attempts.any_errno(libc::EEXIST) {
        "another XDP program is attached to the interface (another ustack process, or one \
         attached with `ip link set dev IFACE xdp ...`): see `ip link show dev IFACE`, and \
         detach it or use another interface"
    } else if attempts.any_errno(libc::EPERM) || attempts.any_errno(libc::EACCES) {
        "attaching needs CAP_NET_ADMIN (and CAP_BPF)"
    } else if attempts.any_errno(libc::ERANGE) {
        "the MTU (the veth peer's, on veth) is too large for native XDP with this program: \
         lower it, or use XdpMode::Auto or XdpMode::Generic"
    } else if attempts.0.iter().all(|(m, _)| *m == AttachMode::Native) {
        "the driver has no native XDP for this interface (or its MTU is too large for it): \
         use XdpMode::Auto or XdpMode::Generic"
    } else {
        "neither the driver (native) nor the kernel (generic) accepted the program; check \
         `dmesg` and the interface's MTU"
    }
}

/// What to say when binding failed with these errors.
pub(crate) fn bind_hint(attempts: &Attempts<BindMode>) -> &'static str {
    if attempts.any_errno(libc::EBUSY) {
        "another AF_XDP socket holds the queue (still busy after 2 s of retries): stop the other \
         process, or use another queue"
    } else if attempts.any_errno(libc::EOPNOTSUPP)
        && attempts.0.iter().all(|(m, _)| *m == BindMode::ZeroCopy)
    {
        "the driver has no zero-copy AF_XDP: use ZeroCopy::Auto or ZeroCopy::Off"
    } else if attempts.any_errno(libc::EINVAL) {
        "the interface may not have this queue (`ethtool -l IFACE` lists the channels)"
    } else {
        "check that the interface is up and `dmesg` for driver messages"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(e: i32) -> io::Error {
        io::Error::from_raw_os_error(e)
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = XdpError::MissingCapabilities {
            ifname: "eth1".into(),
            missing: CapList(vec!["CAP_NET_RAW", "CAP_BPF"]),
        };
        let s = e.to_string();
        assert!(
            s.contains("CAP_NET_RAW, CAP_BPF") && s.contains("setcap"),
            "{s}"
        );
        let e = XdpError::LockedMemory {
            umem_len: 32 << 20,
            limit: MemlockLimit(Some(8 << 20)),
            source: os(libc::ENOBUFS),
        };
        let s = e.to_string();
        assert!(
            s.contains("CAP_IPC_LOCK") && s.contains("ulimit -l") && s.contains("32768 KiB"),
            "{s}"
        );
        assert!(s.contains("now 8192 KiB"), "{s}");
        let e = XdpError::MultiBufferRefused {
            ifname: "eth1".into(),
            mtu: 9000,
            frame_len: 4096,
            capacity: 3840,
            step: "binding the socket with XDP_USE_SG",
            source: os(libc::EINVAL),
        };
        let s = e.to_string();
        for want in ["MTU 9000", "4096-byte", "XDP_USE_SG", "mtu 3826", "6.6"] {
            assert!(s.contains(want), "{want}: {s}");
        }
        let e = XdpError::MtuTooLarge {
            ifname: "eth1".into(),
            mtu: 9000,
            frame_len: 2048,
            capacity: 1792,
            why: "multi-buffer is off (XdpConfig::multi_buffer)",
        };
        let s = e.to_string();
        assert!(
            s.contains("1778 or less") && s.contains("multi_buffer"),
            "{s}"
        );
    }

    #[test]
    fn hints_follow_the_errors() {
        let busy = Attempts(vec![(AttachMode::Native, os(libc::EBUSY))]);
        assert!(attach_hint(&busy).contains("another XDP program"));
        let native = Attempts(vec![(AttachMode::Native, os(libc::EOPNOTSUPP))]);
        assert!(attach_hint(&native).contains("Generic"));
        let both = Attempts(vec![
            (AttachMode::Native, os(libc::EOPNOTSUPP)),
            (AttachMode::Generic, os(libc::EINVAL)),
        ]);
        assert!(attach_hint(&both).contains("neither"));
        assert_eq!(
            both.to_string(),
            format!(
                "native: {}; generic: {}",
                os(libc::EOPNOTSUPP),
                os(libc::EINVAL)
            )
        );
        let zc = Attempts(vec![(BindMode::ZeroCopy, os(libc::EOPNOTSUPP))]);
        assert!(bind_hint(&zc).contains("ZeroCopy::Off"));
        let busy = Attempts(vec![(BindMode::Copy, os(libc::EBUSY))]);
        assert!(bind_hint(&busy).contains("holds the queue"));
    }
}

//! The steps of [`XdpDevice::open`](super::XdpDevice::open): lookups, capability check, program
//! load, attach (native, else generic) and bind (zero-copy, else copy) with `EBUSY` retries, and
//! the mapping of OS errors to [`XdpError`]s that say what to do.

use std::ffi::CStr;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::{Duration, Instant as WallInstant};

use crate::sys::bpf;
use crate::sys::xdp::{self as sys, Xsk, XskSetupError, XskStep};

use super::error::{self, Attempts, CapList, MemlockLimit, XdpError};
use super::{caps, AttachMode, BindMode, XdpConfig, XdpMode, ZeroCopy};

/// Longest total time `open` keeps retrying a bind (or attach) that fails with `EBUSY`.
const BUSY_RETRY_MAX: Duration = Duration::from_secs(2);
/// First pause between `EBUSY` retries; doubles up to [`BUSY_BACKOFF_MAX`].
const BUSY_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between `EBUSY` retries.
const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// License string of the program (it calls no GPL-only helper).
const PROGRAM_LICENSE: &CStr = c"Dual MIT/GPL";
/// Name of the program and map, as `bpftool` shows them.
const PROGRAM_NAME: &str = "ustack_xdp";
pub(super) const MAP_NAME: &str = "ustack_xsks";

/// A MAC address as `02:00:5e:10:20:30`, for logs.
pub(super) struct MacText(pub(super) [u8; 6]);

impl std::fmt::Display for MacText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

pub(super) fn lookup(ifname: &str) -> Result<u32, XdpError> {
    sys::ifindex(ifname).map_err(|source| XdpError::NoSuchInterface {
        ifname: ifname.to_string(),
        source,
    })
}

/// Fails with the missing capabilities by name; returns the effective set.
pub(super) fn check_capabilities(ifname: &str) -> Result<u64, XdpError> {
    let set = caps::effective().map_err(|source| XdpError::Io {
        ifname: ifname.to_string(),
        op: "reading CapEff from /proc/self/status",
        source,
    })?;
    let missing = caps::missing_for_xdp(set);
    if !missing.is_empty() {
        return Err(XdpError::MissingCapabilities {
            ifname: ifname.to_string(),
            missing: CapList(missing),
        });
    }
    Ok(set)
}

pub(super) fn map_error(ifname: &str, op: &'static str, source: io::Error) -> XdpError {
    match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => XdpError::PermissionDenied {
            ifname: ifname.to_string(),
            op,
            source,
        },
        Some(libc::ENOSYS) => XdpError::NotSupported {
            op,
            config: "the bpf() system call (CONFIG_BPF_SYSCALL)",
            source,
        },
        Some(libc::EINVAL) if op == "creating the XSKMAP" => XdpError::NotSupported {
            op,
            config: "XSKMAP support (CONFIG_XDP_SOCKETS)",
            source,
        },
        _ => XdpError::Map { op, source },
    }
}

/// Loads the program; `frags` loads it for multi-buffer packets (`BPF_F_XDP_HAS_FRAGS`: it
/// reads only the Ethernet, IPv4 and ARP headers, which are in the first buffer).
pub(super) fn load_program(
    ifname: &str,
    insns: &[bpf::Insn],
    frags: bool,
) -> Result<OwnedFd, XdpError> {
    let flags = if frags { bpf::BPF_F_XDP_HAS_FRAGS } else { 0 };
    bpf::load_xdp_program(insns, PROGRAM_LICENSE, PROGRAM_NAME, flags).map_err(|e| {
        match e.source.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) if e.log.is_empty() => XdpError::PermissionDenied {
                ifname: ifname.to_string(),
                op: "loading the XDP program",
                source: e.source,
            },
            _ => XdpError::ProgramRejected {
                source: e.source,
                log: e.log,
            },
        }
    })
}

/// Runs `f` until it does not fail with `EBUSY`, for at most [`BUSY_RETRY_MAX`] in all, with
/// doubling pauses; returns its result and how many retries it took.
fn retry_busy<T>(
    what: &str,
    ifname: &str,
    mut f: impl FnMut() -> io::Result<T>,
) -> (io::Result<T>, u32) {
    let start = WallInstant::now();
    let mut pause = BUSY_BACKOFF_MIN;
    let mut retries = 0;
    loop {
        match f() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if start.elapsed() + pause > BUSY_RETRY_MAX {
                    return (Err(e), retries);
                }
                if retries == 0 {
                    tracing::info!(
                        iface = %ifname,
                        "{what}: busy (a socket or program on it closed moments ago?); \
                         retrying for up to {BUSY_RETRY_MAX:?}"
                    );
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(BUSY_BACKOFF_MAX);
                retries += 1;
            }
            r => {
                if retries > 0 && r.is_ok() {
                    tracing::info!(
                        iface = %ifname,
                        "{what}: succeeded after {retries} retries ({:?})",
                        start.elapsed()
                    );
                }
                return (r, retries);
            }
        }
    }
}

/// Attaches the program, native first when `mode` allows, through a BPF link.
pub(super) fn attach(
    ifname: &str,
    ifindex: u32,
    prog: BorrowedFd<'_>,
    mode: XdpMode,
) -> Result<(OwnedFd, AttachMode, u32), XdpError> {
    let tries: &[AttachMode] = match mode {
        XdpMode::Auto => &[AttachMode::Native, AttachMode::Generic],
        XdpMode::Native => &[AttachMode::Native],
        XdpMode::Generic => &[AttachMode::Generic],
    };
    let mut attempts = Vec::new();
    let mut retries_all = 0;
    for &m in tries {
        let flags = match m {
            AttachMode::Native => bpf::XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => bpf::XDP_FLAGS_SKB_MODE,
        };
        let (r, retries) = retry_busy("attaching the XDP program", ifname, || {
            bpf::link_xdp(prog, ifindex, flags)
        });
        retries_all += retries;
        match r {
            Ok(link) => {
                if !attempts.is_empty() {
                    tracing::warn!(
                        iface = %ifname,
                        "native XDP refused ({}); using generic XDP, which is slower",
                        Attempts(attempts)
                    );
                }
                tracing::debug!(iface = %ifname, mode = %m, "XDP program attached through a BPF link");
                return Ok((link, m, retries_all));
            }
            Err(e) => {
                let fatal = matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY | libc::EPERM | libc::EACCES | libc::ENODEV)
                );
                attempts.push((m, e));
                if fatal {
                    break;
                }
            }
        }
    }
    let attempts = Attempts(attempts);
    let hint = error::attach_hint(&attempts);
    Err(XdpError::AttachRefused {
        ifname: ifname.to_string(),
        attempts,
        hint,
    })
}

/// Binds the socket, zero-copy first when `zc` allows, retrying `EBUSY`; `sg` adds
/// `XDP_USE_SG` (multi-buffer).
pub(super) fn bind(
    xsk: &Xsk,
    config: &XdpConfig,
    zc: ZeroCopy,
    sg: bool,
) -> Result<(BindMode, u32), XdpError> {
    let tries: &[BindMode] = match zc {
        ZeroCopy::Auto => &[BindMode::ZeroCopy, BindMode::Copy],
        ZeroCopy::On => &[BindMode::ZeroCopy],
        ZeroCopy::Off => &[BindMode::Copy],
    };
    let wakeup = if config.need_wakeup {
        sys::XDP_USE_NEED_WAKEUP
    } else {
        0
    } | if sg { sys::XDP_USE_SG } else { 0 };
    let mut attempts: Vec<(BindMode, io::Error)> = Vec::new();
    let mut retries_all = 0;
    for &m in tries {
        let flags = wakeup
            | match m {
                BindMode::ZeroCopy => sys::XDP_ZEROCOPY,
                BindMode::Copy => sys::XDP_COPY,
            };
        let (r, retries) = retry_busy("binding the AF_XDP socket", &config.ifname, || {
            xsk.bind(flags)
        });
        retries_all += retries;
        match r {
            Ok(()) => {
                if let Some((_, e)) = attempts.last() {
                    tracing::info!(
                        iface = %config.ifname,
                        queue = config.queue_id,
                        "zero-copy bind refused ({e}); using copy mode"
                    );
                }
                return Ok((m, retries_all));
            }
            Err(e) => {
                let fatal = matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY | libc::EPERM | libc::EACCES | libc::ENODEV)
                );
                attempts.push((m, e));
                if fatal {
                    break;
                }
            }
        }
    }
    let attempts = Attempts(attempts);
    let hint = error::bind_hint(&attempts);
    Err(XdpError::Bind {
        ifname: config.ifname.clone(),
        queue_id: config.queue_id,
        attempts,
        hint,
    })
}

pub(super) fn socket_error(config: &XdpConfig, umem_len: usize, e: XskSetupError) -> XdpError {
    let errno = e.source.raw_os_error();
    match (e.step, errno) {
        (XskStep::Socket, Some(libc::EAFNOSUPPORT)) => XdpError::NotSupported {
            op: "creating an AF_XDP socket",
            config: "AF_XDP sockets (CONFIG_XDP_SOCKETS)",
            source: e.source,
        },
        (XskStep::Socket, Some(libc::EPERM | libc::EACCES)) => XdpError::PermissionDenied {
            ifname: config.ifname.clone(),
            op: "creating an AF_XDP socket",
            source: e.source,
        },
        (XskStep::UmemRegister, Some(libc::ENOBUFS | libc::ENOMEM | libc::EPERM)) => {
            XdpError::LockedMemory {
                umem_len,
                limit: MemlockLimit(sys::memlock_limit().unwrap_or(None)),
                source: e.source,
            }
        }
        _ => XdpError::Socket {
            ifname: config.ifname.clone(),
            queue_id: config.queue_id,
            step: e.step,
            source: e.source,
        },
    }
}

/// A refusal of multi-buffer at `step`, with the error that said so.
pub(super) type MbRefused<'a> = &'a dyn Fn(&'static str, io::Error) -> XdpError;

/// [`load_program`], flagged for fragments when `frags`; a kernel that does not know the flag
/// gets the program without it unless `multi_buffer` needs it (then `mb_refused`). Returns
/// the program and whether it carries the flag.
pub(super) fn load_program_frags(
    ifname: &str,
    insns: &[bpf::Insn],
    frags: bool,
    multi_buffer: bool,
    mb_refused: MbRefused<'_>,
) -> Result<(OwnedFd, bool), XdpError> {
    let loaded = match load_program(ifname, insns, frags) {
        // An unknown flag is EINVAL with an empty verifier log (kernels before 5.18).
        Err(XdpError::ProgramRejected { source, log })
            if frags && log.is_empty() && source.raw_os_error() == Some(libc::EINVAL) =>
        {
            if multi_buffer {
                return Err(mb_refused(
                    "loading the XDP program with BPF_F_XDP_HAS_FRAGS",
                    source,
                ));
            }
            tracing::info!(
                iface = %ifname,
                "the kernel does not take BPF_F_XDP_HAS_FRAGS ({source}); native XDP may be \
                 refused at this interface's MTU"
            );
            (load_program(ifname, insns, false)?, false)
        }
        r => (r?, frags),
    };
    Ok(loaded)
}

/// [`bind`], turning a copy-mode refusal of `XDP_USE_SG` into `mb_refused` when
/// `multi_buffer`.
pub(super) fn bind_sg(
    xsk: &Xsk,
    config: &XdpConfig,
    zc: ZeroCopy,
    multi_buffer: bool,
    mb_refused: MbRefused<'_>,
) -> Result<(BindMode, u32), XdpError> {
    let bound = match bind(xsk, config, zc, multi_buffer) {
        // Copy mode refuses XDP_USE_SG before Linux 6.6 (EINVAL). (A zero-copy driver
        // without multi-buffer says EOPNOTSUPP, and the copy-mode attempt follows; when
        // only zero-copy was allowed, the bind error and its hint stand.)
        Err(XdpError::Bind { attempts, .. })
            if multi_buffer
                && attempts.0.iter().any(|(m, e)| {
                    *m == BindMode::Copy
                        && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP))
                }) =>
        {
            let source = attempts
                .0
                .into_iter()
                .rfind(|(m, _)| *m == BindMode::Copy)
                .map(|(_, e)| e)
                .unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL));
            return Err(mb_refused(
                "binding the socket with XDP_USE_SG (or the queue does not exist)",
                source,
            ));
        }
        r => r?,
    };
    Ok(bound)
}

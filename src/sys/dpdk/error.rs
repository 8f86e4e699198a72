//! What a DPDK call can fail with: [`CallError`] (one call, its error number and text) and
//! [`EalError`] (bringing up the EAL), and reading DPDK's error number and text.

use std::ffi::{c_int, CStr};
use std::io;

use super::ffi;

/// A DPDK call that failed: which one, and the error number it gave.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op} failed: {reason}{}", errno_suffix(*.errno))]
pub struct CallError {
    /// The DPDK function (and what it was asked).
    pub op: &'static str,
    /// The positive error number (`errno` values, or DPDK's own above 1000); 0 when the call
    /// gave none.
    pub errno: i32,
    /// `rte_strerror(errno)`.
    pub reason: String,
}

/// ` (error N)`, or nothing when there is no error number.
fn errno_suffix(errno: i32) -> String {
    if errno == 0 {
        String::new()
    } else {
        format!(" (error {errno})")
    }
}

impl CallError {
    pub(super) fn new(op: &'static str, errno: i32) -> CallError {
        let errno = errno.abs();
        CallError {
            op,
            errno,
            reason: strerror(errno),
        }
    }

    /// From a DPDK return value that is a negative errno.
    pub(super) fn from_ret(op: &'static str, ret: c_int) -> CallError {
        CallError::new(op, ret)
    }

    /// From `rte_errno` of this thread, for calls that return -1 or NULL.
    pub(super) fn from_rte_errno(op: &'static str) -> CallError {
        CallError::new(op, rte_errno())
    }
}

/// Errors from bringing up the EAL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EalError {
    /// The EAL runs already, with other settings; DPDK initialises once per process.
    #[error(
        "DPDK's EAL already initialised in this process with other arguments \
         (running: {running:?}; requested: {requested:?}); it initialises only once per process: \
         open this device with the running EAL's settings (only vdevs may differ), or run the \
         other configuration in its own process"
    )]
    AlreadyInitialised {
        /// The arguments the EAL was started with.
        running: Vec<String>,
        /// The arguments this request would have used.
        requested: Vec<String>,
    },
    /// `rte_eal_init` failed in this call.
    #[error(
        "rte_eal_init failed: {reason} (error {errno}); arguments {args:?}; the EAL's own log \
         lines above say more"
    )]
    InitFailed {
        /// The arguments given.
        args: Vec<String>,
        /// `rte_errno` after the failure.
        errno: i32,
        /// Its text.
        reason: String,
    },
    /// `rte_eal_init` failed earlier in this process, which cannot retry it.
    #[error(
        "rte_eal_init failed earlier in this process ({reason}, arguments {args:?}) and cannot \
         be retried: fix the arguments and restart the process"
    )]
    FailedEarlier {
        /// The arguments of the failed attempt.
        args: Vec<String>,
        /// What went wrong then.
        reason: String,
    },
    /// Hugepages were required and not enough are free.
    #[error(
        "no hugepages for DPDK: {free_mb} MiB of hugepages free, {needed_mb} MiB needed: reserve \
         some (`scripts/hugepages.sh 1024`, or `echo 1024 > /proc/sys/vm/nr_hugepages` as \
         root), or allow the fallback to 4 KiB pages (Hugepages::Auto, EAL's --no-huge)"
    )]
    NoHugepages {
        /// Free hugepage memory, all page sizes together.
        free_mb: u64,
        /// What the configuration needs.
        needed_mb: u64,
    },
    /// An argument that cannot be passed to the EAL.
    #[error("invalid EAL argument {arg:?}: {reason}")]
    BadArgument {
        /// The argument.
        arg: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The bindings in `vendor/` do not match the DPDK this was built against.
    #[error(
        "the DPDK bindings do not match the installed DPDK: sizeof({what}) is {c_size} in C and \
         {rust_size} in vendor/dpdk_bindings.rs: regenerate them with \
         scripts/gen-dpdk-bindings.sh"
    )]
    AbiMismatch {
        /// The structure.
        what: &'static str,
        /// Its size as the C compiler sees it.
        c_size: usize,
        /// Its size in the bindings.
        rust_size: usize,
    },
}

/// `rte_errno` of the calling thread.
pub(super) fn rte_errno() -> i32 {
    // SAFETY: reads a thread-local integer through the shim; no arguments.
    unsafe { ffi::ustack_errno() }
}

/// `rte_strerror(errno)`, copied out of DPDK's (thread-local) buffer.
pub(super) fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror accepts any value and returns a NUL-terminated string that stays
    // valid until the next call on this thread; it is copied at once.
    let p = unsafe { ffi::rte_strerror(errno) };
    if p.is_null() {
        return io::Error::from_raw_os_error(errno).to_string();
    }
    // SAFETY: p is non-null and NUL-terminated (above).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

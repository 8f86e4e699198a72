//! SIGINT/SIGTERM as a flag, for poll loops that shut down cleanly.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work here: two atomic stores.
    SIGNAL.store(sig, Ordering::Relaxed);
    STOP.store(true, Ordering::Release);
}

/// Installs handlers for SIGINT and SIGTERM that set a flag (read it with [`stop_requested`])
/// instead of killing the process. A second signal after the flag is set still only sets it:
/// the loop decides how long shutdown may take.
pub fn install_stop_handlers() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction with a zeroed struct, an empty mask and a handler that only does
        // atomic stores (async-signal-safe); the old action is not needed.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived since the handlers were installed.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Acquire)
}

/// The last stop signal received (0 if none), e.g. `libc::SIGTERM`.
pub fn stop_signal() -> i32 {
    SIGNAL.load(Ordering::Relaxed)
}

/// `SIGTERM`: ask a process to stop cleanly.
pub const SIGTERM: i32 = libc::SIGTERM;
/// `SIGINT`: what ^C sends.
pub const SIGINT: i32 = libc::SIGINT;
/// `SIGKILL`: stop a process at once.
pub const SIGKILL: i32 = libc::SIGKILL;

/// Sends signal `sig` to the process `pid` (`kill(2)`), for stopping a child this process
/// started, by its PID. `ESRCH` when no such process exists (any more).
pub fn send(pid: u32, sig: i32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a single process id (kill(2) would signal a group)",
            )
        })?;
    // SAFETY: kill takes no pointers; a positive pid names exactly one process.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigterm_sets_the_flag() {
        install_stop_handlers().unwrap();
        // SAFETY: raise sends a signal to this thread; our handler only stores atomics.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        assert!(stop_requested());
        assert_eq!(stop_signal(), libc::SIGTERM);
    }

    #[test]
    fn send_refuses_groups_and_reports_missing_processes() {
        assert!(send(0, SIGTERM).is_err());
        assert!(send(u32::MAX, SIGTERM).is_err());
        // Signal 0 checks that the process exists.
        send(std::process::id(), 0).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(send(pid, 0).unwrap_err().raw_os_error(), Some(libc::ESRCH));
    }
}

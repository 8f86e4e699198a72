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
}

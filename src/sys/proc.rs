//! Processes: CPU accounting, and child processes that are stopped by their PID.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use super::signal;

/// CPU time (user + system) this process has used so far.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is always valid.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv =
        |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A child process that is killed (`SIGKILL`, by its PID) and reaped when dropped, so a test
/// or tool that fails or panics leaves none behind. [`OwnedChild::terminate`] asks it to stop
/// cleanly first (`SIGTERM`), as a server that writes its counters on the way out needs.
#[derive(Debug)]
pub struct OwnedChild {
    child: Child,
    what: String,
    reaped: bool,
}

impl OwnedChild {
    /// Starts `cmd`; `what` names it in messages (e.g. `"fileserver in ns-b"`).
    pub fn spawn(cmd: &mut Command, what: impl Into<String>) -> io::Result<OwnedChild> {
        let what = what.into();
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("starting {what} ({:?}): {e}", cmd.get_program()),
            )
        })?;
        Ok(OwnedChild {
            child,
            what,
            reaped: false,
        })
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What it is, as given to [`OwnedChild::spawn`].
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The [`Child`] itself (to take its piped output).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let st = self.child.try_wait()?;
        self.reaped |= st.is_some();
        Ok(st)
    }

    /// Waits up to `timeout` for it to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `SIGTERM` and waits up to `grace` for it to exit; after that, `SIGKILL`. Returns
    /// its exit status and whether it had to be killed.
    pub fn terminate(&mut self, grace: Duration) -> io::Result<(ExitStatus, bool)> {
        if let Some(st) = self.try_wait()? {
            return Ok((st, false));
        }
        match signal::send(self.id(), signal::SIGTERM) {
            Ok(()) => {}
            // It exited meanwhile: reaped below.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e),
        }
        if let Some(st) = self.wait_timeout(grace)? {
            return Ok((st, false));
        }
        tracing::warn!(
            pid = self.id(),
            "{} ignored SIGTERM for {grace:?}: killing it",
            self.what
        );
        self.child.kill()?;
        let st = self.child.wait()?;
        self.reaped = true;
        Ok((st, true))
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // Child::kill is SIGKILL to this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminate_stops_a_child_with_sigterm_and_drop_kills() {
        let mut child = OwnedChild::spawn(Command::new("sleep").arg("30"), "sleep").unwrap();
        let t = Instant::now();
        let (st, killed) = child.terminate(Duration::from_secs(5)).unwrap();
        assert!(!killed && !st.success());
        assert!(t.elapsed() < Duration::from_secs(5));
        // A shell that ignores SIGTERM is killed after the grace time.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; while :; do sleep 0.05; done"]);
        let mut stubborn = OwnedChild::spawn(&mut cmd, "stubborn").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let (_, killed) = stubborn.terminate(Duration::from_millis(200)).unwrap();
        assert!(killed);
        let mut dropped = OwnedChild::spawn(Command::new("sleep").arg("30"), "sleep").unwrap();
        let pid = dropped.id();
        assert!(dropped.try_wait().unwrap().is_none());
        drop(dropped);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
                // A zombie would mean it was not reaped.
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map_or(true, |s| !s.contains(") Z"))
            }
        );
        let missing = OwnedChild::spawn(&mut Command::new("/nonexistent/x"), "nothing");
        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("starting nothing"));
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let a = cpu_time();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_time() > a);
    }
}

//! Child processes of a test: programs it runs ([`Watched`], e.g. the example `fileserver`), and
//! the test binary itself run again to play one side of a test in a process of its own (a memif
//! peer, a server to kill with SIGKILL, a client without privileges, one DPDK EAL per process).
//!
//! The protocol, one for every test that runs itself as a child:
//!
//! - **Entry point.** A child's code runs in a test function of its own, marked `#[ignore]` so
//!   a normal run does not count its no-op as a pass. Without a role it returns at once:
//!
//!   ```ignore
//!   #[test]
//!   #[ignore = "child process of the memif tests, run by them"]
//!   fn memif_child() {
//!       let Some(role) = child::role() else { return };
//!       ...
//!   }
//!   ```
//!
//! - **Start.** The parent runs `<this test binary> --ignored --exact ENTRY --nocapture
//!   --test-threads=1` with [`ROLE_ENV`] naming the role ([`ChildCommand`]), and what the role
//!   needs in variables of its own.
//! - **Ready.** The child prints a line (`READY` and what the parent must know, e.g.
//!   `READY uid=65534`) once it serves; the parent waits for it ([`Watched::wait_for_line`]).
//!   libtest's own `test ENTRY ... ` in front of the child's first line is taken off.
//! - **Stop.** The child's stdin is a pipe from the parent. The parent closes it to ask the child
//!   to finish ([`Watched::finish`]); it also ends when the parent dies, so a child never
//!   outlives its test. The child watches it with [`stdin_closed`]. A child still running when
//!   its [`Watched`] is dropped is killed (SIGKILL, by its pid).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ustack::host::process::OwnedChild;

/// Names the role of a child process; unset in the test harness's own process.
pub const ROLE_ENV: &str = "USTACK_TEST_ROLE";

/// The marker a child prints once it is ready.
pub const READY: &str = "READY";

/// The role this process plays, when it is a child ([`ROLE_ENV`]).
pub fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// In a child: prints `line` and flushes, so the parent sees it at once.
pub fn report(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
    let _ = std::io::stdout().flush();
}

/// In a child: a flag that turns true when stdin ends (the parent closed it, or died).
pub fn stdin_closed() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&flag);
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        f.store(true, Ordering::Release);
    });
    flag
}

/// How to start this test binary as a child in a role.
pub struct ChildCommand {
    cmd: Command,
    /// The entry point, for a test binary (`None`: a binary with a `main` of its own).
    entry: Option<String>,
    role: String,
}

impl ChildCommand {
    /// `<this test binary> --ignored --exact ENTRY --nocapture --test-threads=1` with
    /// [`ROLE_ENV`] = `role`. `ENTRY` is the test's path in its binary (`module::name` inside a
    /// module).
    pub fn new(entry: &str, role: &str) -> ChildCommand {
        ChildCommand::wrapped(&[], entry, role)
    }

    /// The same, run through `wrapper` (a program and its arguments that then run the binary:
    /// `ip netns exec NS`, `setpriv ...`, `unshare ...`).
    pub fn wrapped(wrapper: &[&str], entry: &str, role: &str) -> ChildCommand {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args([
            "--ignored",
            "--exact",
            entry,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, role)
        .env("RUST_BACKTRACE", "1");
        ChildCommand {
            cmd,
            entry: Some(entry.to_string()),
            role: role.to_string(),
        }
    }

    /// `<this binary>` with [`ROLE_ENV`] = `role` and no arguments: for a binary with a `main`
    /// of its own (a bench with `harness = false`), which plays the role first thing.
    pub fn main(role: &str) -> ChildCommand {
        let exe = std::env::current_exe().expect("this binary's path");
        let mut cmd = Command::new(exe);
        cmd.env(ROLE_ENV, role).env("RUST_BACKTRACE", "1");
        ChildCommand {
            cmd,
            entry: None,
            role: role.to_string(),
        }
    }

    /// Sets a variable for the child.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> ChildCommand {
        self.cmd.env(key, value);
        self
    }

    /// Leaves a variable of this process out of the child's environment.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> ChildCommand {
        self.cmd.env_remove(key);
        self
    }

    /// Runs the child as user and group `id` (the test runs as root).
    pub fn run_as(mut self, id: u32) -> ChildCommand {
        self.cmd.uid(id).gid(id);
        self
    }

    /// Starts it: stdin a pipe from this process (see [`Watched::finish`]), stdout read line by
    /// line (each line also echoed here, prefixed with the role), stderr the test's.
    pub fn spawn(mut self) -> Watched {
        self.cmd.stdin(Stdio::piped()).stderr(Stdio::inherit());
        let libtest = match &self.entry {
            Some(entry) => format!("test {entry} ... "),
            None => String::new(),
        };
        Watched::start(&mut self.cmd, &self.role, Some((&self.role, libtest)))
    }

    /// Starts it from a thread inside `ns`: the child lives in that network namespace.
    pub fn spawn_in(self, ns: &ustack::host::netns::NetNs) -> Watched {
        ns.run(move || self.spawn()).expect("enter the namespace")
    }

    /// Runs it to the end with stdin closed; its status and standard output (libtest's lines
    /// included) and error.
    pub fn output(mut self) -> std::process::Output {
        self.cmd.stdin(Stdio::null());
        self.cmd
            .output()
            .unwrap_or_else(|e| panic!("running the {} child: {e}", self.role))
    }
}

/// A child process whose standard output is read line by line on a thread: every line is kept
/// (for the test's checks and its failure messages) and can be waited for. Killed (SIGKILL, by
/// its pid) and reaped if still running when dropped.
pub struct Watched {
    pub child: OwnedChild,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Watched {
    /// Starts a program with its standard output piped (stdin empty, standard error the
    /// test's).
    pub fn spawn(cmd: &mut Command, what: &str) -> Watched {
        cmd.stdin(Stdio::null());
        Watched::start(cmd, what, None)
    }

    /// Starts `cmd`; a child test's lines are echoed here with its role (`test`: the role and
    /// libtest's `test ENTRY ... `, which is taken off the line it precedes).
    fn start(cmd: &mut Command, what: &str, test: Option<(&str, String)>) -> Watched {
        cmd.stdout(Stdio::piped());
        let mut child = OwnedChild::spawn(cmd, what).expect("spawn");
        let stdout = child.child_mut().stdout.take().expect("piped stdout");
        let stdin = child.child_mut().stdin.take();
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&log);
        let test = test.map(|(role, libtest)| (role.to_string(), libtest));
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(mut line) = line else { break };
                if let Some((role, libtest)) = &test {
                    if let Some(rest) = line.strip_prefix(libtest.as_str()) {
                        line = rest.to_string();
                    }
                    println!("[{role}] {line}");
                }
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Watched {
            child,
            stdin,
            lines,
            log,
            reader: Some(reader),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for a line that starts with `prefix` and returns it; `Err` with
    /// what the program printed if it does not come (or the program exits first).
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String, String> {
        self.next_line(prefix, timeout, None)
    }

    /// [`Watched::wait_for_line`], calling `pump` whenever no line came for 200 us (to keep
    /// this process's side of a link polled meanwhile).
    pub fn wait_for_line_pumping(
        &mut self,
        prefix: &str,
        timeout: Duration,
        mut pump: impl FnMut(),
    ) -> Result<String, String> {
        self.next_line(prefix, timeout, Some(&mut pump))
    }

    fn next_line(
        &mut self,
        prefix: &str,
        timeout: Duration,
        mut pump: Option<&mut dyn FnMut()>,
    ) -> Result<String, String> {
        let end = Instant::now() + timeout;
        loop {
            let wait = match pump {
                Some(_) => Duration::from_micros(200),
                None => end.saturating_duration_since(Instant::now()),
            };
            match self.lines.recv_timeout(wait) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < end => {
                    if let Some(pump) = pump.as_mut() {
                        pump();
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "{}: no line starting with {prefix:?} ({e}); it printed:\n{}",
                        self.child.what(),
                        self.output()
                    ))
                }
            }
        }
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waitpid")
    }

    /// Writes a line to its stdin.
    pub fn send(&mut self, line: &str) {
        if let Some(s) = &mut self.stdin {
            let _ = writeln!(s, "{line}");
        }
    }

    /// Closes its stdin (a child's cue to finish) and waits up to `timeout` for it to exit,
    /// calling `pump` meanwhile; `None` if it is still running then.
    pub fn finish(&mut self, timeout: Duration, mut pump: impl FnMut()) -> Option<ExitStatus> {
        drop(self.stdin.take());
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("waitpid") {
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            pump();
        }
    }

    /// [`Watched::finish`] with nothing to pump: checks every 10 ms.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.finish(timeout, || std::thread::sleep(Duration::from_millis(10)))
    }

    /// Kills it with SIGKILL (by its pid) and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(st) = self.child.try_wait().expect("waitpid") {
            return st;
        }
        self.child.child_mut().kill().expect("SIGKILL");
        let st = self.child.child_mut().wait().expect("wait");
        // Reaped: this records it, so the drop does not signal a pid that may be reused.
        let _ = self.child.try_wait();
        st
    }

    /// Waits up to `timeout` for it to exit by itself and returns its status and everything it
    /// printed; `Err` with its output if it is still running then (it is killed).
    pub fn wait(mut self, timeout: Duration) -> Result<(ExitStatus, String), String> {
        match self.child.wait_timeout(timeout) {
            Ok(Some(st)) => Ok((st, self.collect())),
            Ok(None) => Err(format!(
                "{} still running after {timeout:?}; it printed:\n{}",
                self.child.what(),
                self.output()
            )),
            Err(e) => Err(format!("waiting for {}: {e}", self.child.what())),
        }
    }

    /// Stops it with SIGTERM (SIGKILL after `grace`) and returns its status, whether it had to
    /// be killed, and everything it printed.
    pub fn terminate(mut self, grace: Duration) -> (ExitStatus, bool, String) {
        let (st, killed) = self.child.terminate(grace).expect("terminate");
        (st, killed, self.collect())
    }

    /// Everything it printed, once its output has ended.
    pub fn collect(&mut self) -> String {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.output()
    }

    /// Every line it printed, once its output has ended (call after it exited).
    pub fn lines(&mut self) -> Vec<String> {
        self.collect();
        self.log.lock().unwrap().clone()
    }

    /// Everything it printed on standard output so far.
    pub fn output(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

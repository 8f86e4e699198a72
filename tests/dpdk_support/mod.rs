//! Shared by the DPDK tests that need two processes (DPDK's EAL starts once per process): the
//! test binary starts itself as a child with `USTACK_DPDK_TEST_ROLE` set, and the child runs
//! only its side of the same test.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use super::common::{Pattern, Rng};

/// The role this process plays; unset in the test harness's own process.
pub const ROLE_ENV: &str = "USTACK_DPDK_TEST_ROLE";

/// The role of this process, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// True when running as root (DPDK needs it for hugepages and devices).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1)?.parse::<u32>().ok())
        })
        == Some(0)
}

/// A child process running one test of this binary in a role. Its stdout lines are echoed
/// (prefixed) and kept; its stdin is a pipe the parent closes to ask it to stop.
pub struct ChildProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl ChildProc {
    /// Starts `prefix... <this test binary> <test> --exact --nocapture` with the role and
    /// `env` set. `prefix` runs the binary through another command (`ip netns exec NS`).
    pub fn spawn(prefix: &[&str], test: &str, role: &str, env: &[(&str, &str)]) -> ChildProc {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args([test, "--exact", "--nocapture", "--include-ignored"])
            .env(ROLE_ENV, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(OsStr::new(k), OsStr::new(v));
        }
        let mut child = cmd.spawn().expect("start the child process");
        let out = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        let tag = role.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("[{tag}] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildProc {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits up to `limit` for a line starting with `prefix`; returns it.
    pub fn wait_for_line(&mut self, prefix: &str, limit: Duration) -> Option<String> {
        let end = std::time::Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return Some(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if std::time::Instant::now() < end => {}
                Err(_) => return None,
            }
        }
    }

    /// Whether it has exited (and how).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waitpid")
    }

    /// Closes its stdin (the signal to stop) and waits up to `limit` for it to exit.
    pub fn stop(&mut self, limit: Duration) -> Option<ExitStatus> {
        drop(self.stdin.take());
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Every line it printed (waits for the output to end; call after it exited).
    pub fn lines(&mut self) -> Vec<String> {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        self.seen.clone()
    }

    /// Writes a line to its stdin.
    pub fn send(&mut self, line: &str) {
        if let Some(s) = &mut self.stdin {
            let _ = writeln!(s, "{line}");
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        // Only a child still running (a failed test) is killed: the process this test started,
        // by its pid.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// In a child: a flag that turns true when the parent closes our stdin (or dies).
pub fn stdin_closed_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::io::Read;
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = std::sync::Arc::clone(&flag);
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        f.store(true, std::sync::atomic::Ordering::Release);
    });
    flag
}

/// Chunks of the round-trip tests.
pub const CHUNKS: u32 = 500;
/// The largest chunk.
pub const CHUNK_LEN_MAX: usize = 4 << 20;

/// Chunk `i` of a round trip: its id and length (log-uniform, 1 B ..= 4 MiB), the lengths
/// drawn in order from one seeded generator.
pub struct ChunkPlan {
    rng: Rng,
}

impl ChunkPlan {
    /// The plan for `seed`.
    pub fn new(seed: u64) -> ChunkPlan {
        ChunkPlan {
            rng: Rng::new(seed),
        }
    }

    /// The next length.
    pub fn next_len(&mut self) -> usize {
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let len = ((CHUNK_LEN_MAX as f64 + 1.0).ln() * u).exp() as usize;
        len.clamp(1, CHUNK_LEN_MAX)
    }
}

/// Fills `buf` with the content of chunk `i`.
pub fn chunk_content(i: u32, buf: &mut [u8]) {
    Pattern::new(0x5eed ^ u64::from(i)).fill(0, buf);
}

/// Where `got` first differs from `want`, if it does (lengths included).
pub fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    if got.len() != want.len() {
        return Some(got.len().min(want.len()));
    }
    got.iter().zip(want).position(|(a, b)| a != b)
}

//! The admin socket: a unix socket on which operators ask a running server for its counters,
//! its connections and packet captures (`chunkctl admin`).
//!
//! One request per connection: a line of at most [`ADMIN_LINE_MAX`] bytes ending in `\n`. The
//! answer is `ok` or `error: WHY` on its first line, then the body, then the server closes the
//! connection. Commands:
//!
//! ```text
//! help                                   the commands
//! stats                                  every counter, in words
//! metrics                                the Prometheus exposition (as GET /metrics serves it)
//! connections                            the connections, like `ss -ti`
//! capture start PATH [--packets N] [--bytes N] [--snaplen N]
//!                                        capture frames to a new pcap file (absolute PATH; at
//!                                        least one limit)
//! capture stop                           stop it and report
//! capture status                         how it stands
//! ```
//!
//! The socket is created owner-only (mode 0600, bound under a temporary name and renamed into
//! place, so nobody else can connect in between). [`ADMIN_THREADS`] threads take connections,
//! each with read and write timeouts, so clients that connect and say nothing, send too much,
//! or never read delay only other admin clients, never the serving loop.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::acceptors::Acceptors;
use super::http::scrape;
use super::text::human_lines;
use super::{Answer, Ask, Hub, SNAPSHOT_WAIT};
use crate::stack::{CaptureSpec, CaptureStatus, ConnInfo};

/// The longest request line taken (longer: an error, and the connection is closed).
pub const ADMIN_LINE_MAX: usize = 4096;
/// Threads serving admin connections.
pub const ADMIN_THREADS: usize = 2;
/// Read and write timeout of each admin connection.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command waits for the serving loop.
const LOOP_WAIT: Duration = Duration::from_secs(2);

/// Why the admin socket could not start, or an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket could not be created.
    #[error("cannot create the admin socket {path}: {source}; check that its directory exists and is writable")]
    Bind {
        /// The path tried.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Something else than a stale socket is at the path.
    #[error("cannot create the admin socket {path}: {why}")]
    InUse {
        /// The path tried.
        path: PathBuf,
        /// What is there.
        why: String,
    },
    /// A thread could not be started.
    #[error("cannot start the admin thread: {0}")]
    Thread(#[source] io::Error),
    /// The client could not connect.
    #[error("cannot connect to the admin socket {path}: {source}; is the server running with --admin-socket {path}, and are you its user (the socket is owner-only)?")]
    Connect {
        /// The path tried.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The request or its answer failed in transit.
    #[error("admin request failed: {0}")]
    Io(#[source] io::Error),
    /// The server answered with an error.
    #[error("{0}")]
    Refused(String),
}

/// A running admin socket. Dropping it stops its threads and removes the socket file.
pub struct AdminServer {
    path: PathBuf,
    threads: Acceptors,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("path", &self.path)
            .finish()
    }
}

impl AdminServer {
    /// Creates the socket at `path` (owner-only) and serves commands against `hub`. A stale
    /// socket left by a server that died is replaced; a live one, or any other file, is an
    /// error.
    pub fn start(path: impl Into<PathBuf>, hub: Hub) -> Result<AdminServer, AdminError> {
        let path: PathBuf = path.into();
        let bind_err = |source| AdminError::Bind {
            path: path.clone(),
            source,
        };
        match std::fs::symlink_metadata(&path) {
            Ok(md) if md.file_type().is_socket() => {
                if UnixStream::connect(&path).is_ok() {
                    return Err(AdminError::InUse {
                        path: path.clone(),
                        why: "another server answers on it (stop it, or pick another path)".into(),
                    });
                }
                std::fs::remove_file(&path).map_err(bind_err)?;
            }
            Ok(_) => {
                return Err(AdminError::InUse {
                    path: path.clone(),
                    why: "a file that is not a socket is there (remove it, or pick another path)"
                        .into(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let name = path
            .file_name()
            .ok_or_else(|| bind_err(io::Error::other("the path names no file")))?;
        let tmp = path.with_file_name(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(bind_err)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(bind_err(e));
        }
        let threads = Acceptors::start(
            &listener,
            ADMIN_THREADS,
            "ustack-admin",
            "admin connection",
            &hub,
            serve,
        )
        .map_err(AdminError::Thread)?;
        Ok(AdminServer { path, threads })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let path = self.path.clone();
        self.threads.stop(|| {
            let _ = UnixStream::connect(&path);
        });
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(stream: UnixStream, hub: &Hub) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut out = stream.try_clone()?;
    let mut line = Vec::with_capacity(256);
    let got = BufReader::new(stream)
        .take(ADMIN_LINE_MAX as u64 + 1)
        .read_until(b'\n', &mut line);
    let reply = match got {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!(
                "no complete request line within {} s",
                IO_TIMEOUT.as_secs()
            ))
        }
        Err(e) => return Err(e),
        Ok(_) if line.len() > ADMIN_LINE_MAX => {
            Err(format!("request longer than {ADMIN_LINE_MAX} bytes"))
        }
        Ok(_) if !line.ends_with(b"\n") => {
            Err("the request line was cut short (no newline before the end)".into())
        }
        Ok(_) => match std::str::from_utf8(&line) {
            Ok(text) => run(text.trim(), hub),
            Err(_) => Err("the request is not UTF-8".into()),
        },
    };
    let text = match reply {
        Ok(body) => format!("ok\n{body}"),
        Err(why) => format!("error: {why}\n"),
    };
    out.write_all(text.as_bytes())?;
    out.flush()
}

const HELP: &str = "\
commands:
  help                                   this list
  stats                                  every counter, in words
  metrics                                the Prometheus exposition
  connections                            the connections, like ss -ti
  capture start PATH [--packets N] [--bytes N] [--snaplen N]
                                         capture frames to a new pcap file (absolute PATH;
                                         at least one of --packets and --bytes)
  capture stop                           stop the capture and report
  capture status                         how the capture stands
";

/// Runs one command; `Ok` is the body of an `ok` answer.
fn run(line: &str, hub: &Hub) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => Err("empty request; try `help`".into()),
        ["help"] => Ok(HELP.to_string()),
        ["stats"] => match hub.snapshot(SNAPSHOT_WAIT) {
            Some(s) => Ok(human_lines(&s.with_process()).join("\n") + "\n"),
            None => Err("the serving loop has not answered yet; try again".into()),
        },
        ["metrics"] => Ok(scrape(hub)),
        ["connections"] => match ask(hub, Ask::Connections)? {
            Answer::Connections(list) => Ok(connection_table(&list)),
            Answer::Unsupported(why) => Err(why),
            _ => Err("unexpected answer from the serving loop".into()),
        },
        ["capture", "start", rest @ ..] => {
            let spec = parse_capture(rest)?;
            capture_answer(ask(hub, Ask::CaptureStart(spec))?, "started")
        }
        ["capture", "stop"] => capture_answer(ask(hub, Ask::CaptureStop)?, "stopped"),
        ["capture", "status"] => capture_answer(ask(hub, Ask::CaptureStatus)?, "status"),
        [cmd, ..] => Err(format!("unknown command `{cmd}`; try `help`")),
    }
}

fn ask(hub: &Hub, q: Ask) -> Result<Answer, String> {
    hub.ask(q, LOOP_WAIT).map_err(|e| e.to_string())
}

fn capture_answer(a: Answer, what: &str) -> Result<String, String> {
    match a {
        Answer::Capture(Ok(Some(st))) => Ok(format!("capture {what}: {}\n", capture_line(&st))),
        Answer::Capture(Ok(None)) => Ok("no capture\n".into()),
        Answer::Capture(Err(why)) | Answer::Unsupported(why) => Err(why),
        _ => Err("unexpected answer from the serving loop".into()),
    }
}

/// One line on a capture: file, frames and bytes written, frames missed, how it stands.
pub(crate) fn capture_line(st: &CaptureStatus) -> String {
    let how = match (&st.ended, st.running) {
        (Some(end), _) => format!("ended: {end}"),
        (None, true) => "running".to_string(),
        (None, false) => "stopped".to_string(),
    };
    format!(
        "{} packets={} bytes={} dropped={} ({how})",
        st.path.display(),
        st.packets,
        st.bytes,
        st.dropped
    )
}

fn parse_capture(words: &[&str]) -> Result<CaptureSpec, String> {
    let usage = "usage: capture start PATH [--packets N] [--bytes N] [--snaplen N]";
    let (path, mut rest) = match words {
        [p, rest @ ..] if !p.starts_with("--") => (*p, rest),
        _ => return Err(format!("no file given; {usage}")),
    };
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(format!(
            "the capture file must be an absolute path (the server's working directory is not yours): {}",
            path.display()
        ));
    }
    let mut spec = CaptureSpec::new(path);
    while let [flag, value, tail @ ..] = rest {
        let n: u64 =
            parse_count(value).ok_or_else(|| format!("{flag} needs a number, not `{value}`"))?;
        match *flag {
            "--packets" => spec.packets_max = Some(n),
            "--bytes" => spec.bytes_max = Some(n),
            "--snaplen" => {
                spec.snaplen =
                    usize::try_from(n).map_err(|_| "--snaplen is too large".to_string())?
            }
            other => return Err(format!("unknown option `{other}`; {usage}")),
        }
        rest = tail;
    }
    if let [extra] = rest {
        return Err(format!("`{extra}` needs a value; {usage}"));
    }
    Ok(spec)
}

/// A count with an optional binary suffix (`64KiB`, `10MiB`, `1GiB`, or `k`/`M`/`G`).
fn parse_count(s: &str) -> Option<u64> {
    let (num, mult) = [
        ("KiB", 1u64 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ]
    .iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((s, 1));
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// The connection list as `ss` prints it: a header, one line per connection, and one line per
/// listening port (a listener keeps several sockets armed; the line says how many).
pub(crate) fn connection_table(list: &[ConnInfo]) -> String {
    use crate::stack::TcpState;
    let conns: Vec<&ConnInfo> = list
        .iter()
        .filter(|c| c.state != TcpState::Listen)
        .collect();
    let mut listeners: Vec<(std::net::SocketAddrV4, usize)> = Vec::new();
    for c in list.iter().filter(|c| c.state == TcpState::Listen) {
        match listeners.iter_mut().find(|(a, _)| *a == c.local) {
            Some((_, n)) => *n += 1,
            None => listeners.push((c.local, 1)),
        }
    }
    let mut out = format!(
        "{} connections, {} listening ports\n{}\n",
        conns.len(),
        listeners.len(),
        ConnInfo::HEADER
    );
    for (addr, n) in listeners {
        out.push_str(&format!(
            "{:<10} {:>6} {:>6} {:<21} {:<21} sockets_armed:{n}\n",
            "LISTEN",
            0,
            0,
            addr.to_string(),
            "*:*"
        ));
    }
    for c in conns {
        out.push_str(&c.to_string());
        out.push('\n');
    }
    out
}

/// Sends `line` to the admin socket at `path` and returns the body of the answer, or the
/// server's error ([`AdminError::Refused`]). `timeout` bounds each read and write.
pub fn admin_request(path: &Path, line: &str, timeout: Duration) -> Result<String, AdminError> {
    let mut s = UnixStream::connect(path).map_err(|source| AdminError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    s.set_read_timeout(Some(timeout)).map_err(AdminError::Io)?;
    s.set_write_timeout(Some(timeout)).map_err(AdminError::Io)?;
    let mut req = line.trim_end_matches('\n').to_string();
    req.push('\n');
    s.write_all(req.as_bytes()).map_err(AdminError::Io)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(AdminError::Io)?;
    if let Some(body) = answer.strip_prefix("ok\n") {
        Ok(body.to_string())
    } else if let Some(why) = answer.strip_prefix("error: ") {
        Err(AdminError::Refused(why.trim_end().to_string()))
    } else {
        Err(AdminError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not an admin answer: {:?}",
                answer.lines().next().unwrap_or("")
            ),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_commands_parse_or_say_why_not() {
        let s = parse_capture(&["/tmp/x.pcap", "--packets", "10", "--bytes", "1MiB"]).unwrap();
        assert_eq!(s.path, PathBuf::from("/tmp/x.pcap"));
        assert_eq!(s.packets_max, Some(10));
        assert_eq!(s.bytes_max, Some(1 << 20));
        assert!(parse_capture(&["x.pcap", "--packets", "1"])
            .unwrap_err()
            .contains("absolute"));
        assert!(parse_capture(&[]).unwrap_err().contains("no file"));
        assert!(parse_capture(&["/tmp/x", "--packets"])
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse_capture(&["/tmp/x", "--frames", "3"])
            .unwrap_err()
            .contains("unknown option"));
        assert!(parse_capture(&["/tmp/x", "--packets", "ten"])
            .unwrap_err()
            .contains("needs a number"));
        assert_eq!(parse_count("64KiB"), Some(65536));
        assert_eq!(parse_count("3k"), Some(3000));
        assert_eq!(parse_count("99999999999GiB"), None);
    }
}

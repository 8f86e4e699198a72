//! Network namespaces for tests: throw-away topologies that never touch the host's own network.
//!
//! Tests of every module that needs a real kernel peer (TAP, veth, AF_XDP) build on these:
//!
//! - [`NetNs`]: a named namespace (`ip netns add`), unique per process and call, deleted when
//!   dropped. Namespaces left behind by a killed test run are swept the next time a namespace
//!   with the same prefix is created.
//! - [`NetNs::run`]: runs a closure on a fresh thread that has entered the namespace
//!   (`setns(CLONE_NEWNET)` on that thread only), so kernel sockets (`std::net`) opened inside
//!   it live in the namespace while the rest of the process stays outside. [`NetNs::spawn`] does
//!   the same without waiting, for a kernel peer that runs beside the caller.
//! - [`VethPair`]: two namespaces joined by a veth pair with IPv4 addresses, links up.
//! - [`can_create_netns`]: whether this process may do any of that, for tests to decide between
//!   running and skipping with a reason.
//!
//! Commands go through `ip` from iproute2, which must be installed. Everything needs
//! `CAP_SYS_ADMIN` and `CAP_NET_ADMIN` (root).
//!
//! ```no_run
//! use ustack::host::netns::NetNs;
//! # fn main() -> Result<(), ustack::host::netns::NetNsError> {
//! let ns = NetNs::create("ust-doc")?;
//! ns.ip(["link", "set", "lo", "up"])?;
//! let addr = ns.run(|| {
//!     let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
//!     s.local_addr().unwrap()
//! })?;
//! # let _ = addr;
//! # Ok(()) }
//! ```

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Where iproute2 keeps the bind mounts that name namespaces (`/var/run` links here).
const NETNS_RUN_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// Per-process counter that makes namespace and interface names unique.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `ip netns add/del` from several threads at once can race on the first mount of
/// `/run/netns`; this process runs them one at a time.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Errors from building or tearing down test topologies.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The `ip` command is not installed.
    #[error("`ip` not found: install iproute2 (apt-get install iproute2)")]
    IpNotFound,
    /// The process lacks the capabilities; `command` is what was tried.
    #[error("`{command}` needs CAP_SYS_ADMIN/CAP_NET_ADMIN: run as root ({detail})")]
    NotPermitted {
        /// The command line, or the operation, that was refused.
        command: String,
        /// What the kernel or the command said.
        detail: String,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A command could not be started at all.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A name that cannot be used for a namespace or an interface.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Entering the namespace from a thread failed.
    #[error("cannot enter network namespace {name} ({path}): {source}", path = path.display())]
    Enter {
        /// The namespace.
        name: String,
        /// The bind mount that names it.
        path: PathBuf,
        /// The OS error from `open` or `setns`.
        #[source]
        source: io::Error,
    },
    /// The thread that would enter the namespace could not be spawned.
    #[error("cannot spawn a thread to enter network namespace {name}: {source}")]
    Thread {
        /// The namespace.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An interface ioctl inside a namespace failed.
    #[error("{op} on interface {iface} in namespace {ns}: {source}")]
    Interface {
        /// What was tried.
        op: &'static str,
        /// The interface.
        iface: String,
        /// The namespace.
        ns: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Whether this process can create network namespaces (and so run the tests that need them).
///
/// Returns `Err` with the reason, meant to be printed as the reason for skipping, when `ip` is
/// missing ([`NetNsError::IpNotFound`]) or the process lacks `CAP_SYS_ADMIN` or
/// `CAP_NET_ADMIN` ([`NetNsError::NotPermitted`]). It creates nothing: a test that passes this
/// check and then fails to build its topology should fail, not skip.
pub fn can_create_netns() -> Result<(), NetNsError> {
    // `ip -V` prints the version and needs no privilege.
    ip_output(std::iter::once("-V"))?;
    let caps = effective_caps().map_err(|e| NetNsError::NotPermitted {
        command: "read /proc/self/status".into(),
        detail: e.to_string(),
    })?;
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let missing: Vec<&str> = [
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    ]
    .into_iter()
    .filter(|&(bit, _)| caps & (1u64 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if !missing.is_empty() {
        return Err(NetNsError::NotPermitted {
            command: "ip netns add".into(),
            detail: format!("missing {}", missing.join(" and ")),
        });
    }
    Ok(())
}

/// For the unit tests that need namespaces: whether they can run here; when not, says why
/// (a failure under `scripts/test.sh` as root: `crate::sys::privileged`).
#[cfg(test)]
pub(crate) fn netns_or_skip() -> bool {
    match can_create_netns() {
        Ok(()) => true,
        Err(e) => {
            crate::sys::privileged::skip(&e.to_string());
            false
        }
    }
}

/// The effective capability set of this process, from `/proc/self/status`.
fn effective_caps() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapEff line"))
}

/// Renders a command line for error messages.
fn command_line<I, S>(program: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut line = program.to_string();
    for a in args {
        line.push(' ');
        line.push_str(&a.as_ref().to_string_lossy());
    }
    line
}

/// Runs `ip ARGS...` and returns its standard output, or an error naming the command line and
/// what it printed on standard error.
fn ip_output<I, S>(args: I) -> Result<String, NetNsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let command = command_line("ip", &args);
    let out = match Command::new("ip").args(&args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(NetNsError::IpNotFound),
        Err(source) => return Err(NetNsError::Spawn { command, source }),
    };
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
        return Err(NetNsError::NotPermitted {
            command,
            detail: stderr,
        });
    }
    Err(NetNsError::CommandFailed {
        command,
        status: out.status,
        stderr,
    })
}

/// Checks a name for use as a namespace prefix or an interface name.
fn check_name(name: &str, len_max: usize) -> Result<(), NetNsError> {
    let bad = |reason| {
        Err(NetNsError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > len_max {
        return bad("too long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return bad("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    if name.starts_with('-') || name == "." || name == ".." {
        return bad("must not start with '-' or be '.' or '..'");
    }
    Ok(())
}

/// The names of all named network namespaces (`ip netns list`).
pub fn list_netns() -> Result<Vec<String>, NetNsError> {
    let out = ip_output(["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// If `name` is `{prefix}-{pid}-{counter}`, the pid.
fn owner_pid(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (pid, counter) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(counter) {
        return None;
    }
    pid.parse().ok()
}

/// Whether a process with this pid exists (in this process's pid namespace).
fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// A named network namespace that is deleted (`ip netns del`) when dropped.
///
/// Deleting the namespace also deletes the virtual interfaces inside it (veth, TAP) and moves
/// physical ones back to the host.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace named `{prefix}-{pid}-{counter}`, unique within this process and,
    /// through the pid, among live processes.
    ///
    /// Before that it sweeps namespaces named `{prefix}-{pid}-{counter}` whose pid is no longer
    /// alive (left by a test run that was killed before its guards ran); see
    /// [`NetNs::sweep_stale`]. The whole name must fit in 255 bytes; the prefix may hold ASCII
    /// letters, digits, `-`, `_` and `.`.
    pub fn create(prefix: &str) -> Result<NetNs, NetNsError> {
        check_name(prefix, 200)?;
        if let Err(e) = NetNs::sweep_stale(prefix) {
            tracing::warn!("sweeping stale {prefix}-* namespaces failed: {e}");
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let _serial = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        ip_output(["netns", "add", name.as_str()])?;
        tracing::debug!(netns = %name, "created network namespace");
        Ok(NetNs { name })
    }

    /// Deletes namespaces named `{prefix}-{pid}-{counter}` whose process `pid` no longer exists,
    /// and returns how many it deleted. Names that do not match the pattern exactly, and those
    /// of live processes (this one included), are left alone.
    pub fn sweep_stale(prefix: &str) -> Result<usize, NetNsError> {
        let mut swept = 0;
        for name in list_netns()? {
            let Some(pid) = owner_pid(prefix, &name) else {
                continue;
            };
            if pid == std::process::id() || pid_alive(pid) {
                continue;
            }
            let _serial = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            match ip_output(["netns", "del", name.as_str()]) {
                Ok(_) => {
                    tracing::info!(netns = %name, pid, "deleted stale network namespace of a dead process");
                    swept += 1;
                }
                // Another process may have swept it first.
                Err(NetNsError::CommandFailed { .. }) if !netns_exists(&name) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(swept)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that names the namespace (`/run/netns/NAME`).
    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// Runs `ip -n NAME ARGS...` and returns its standard output; on failure the error holds
    /// the command line and its standard error.
    pub fn ip<I, S>(&self, args: I) -> Result<String, NetNsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["-n".into(), self.name.as_str().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        ip_output(all)
    }

    /// A command that runs `program` inside this namespace (`ip netns exec NAME PROGRAM`).
    /// `ip` enters the namespace and then executes the program in its own place, so the child's
    /// PID is the program's: signals sent to it by PID reach the program.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name.as_str()]).arg(program);
        cmd
    }

    /// Creates a veth pair: interface `iface` in this namespace, its peer `peer` directly in
    /// namespace `peer_ns` (so neither name ever appears in the caller's namespace).
    pub fn add_veth(&self, iface: &str, peer: &str, peer_ns: &NetNs) -> Result<(), NetNsError> {
        self.add_veth_queues(iface, peer, peer_ns, 1)
    }

    /// [`NetNs::add_veth`] with `queues` receive and transmit queues at each end.
    pub fn add_veth_queues(
        &self,
        iface: &str,
        peer: &str,
        peer_ns: &NetNs,
        queues: u32,
    ) -> Result<(), NetNsError> {
        let q = queues.max(1).to_string();
        let per_end = ["numrxqueues", q.as_str(), "numtxqueues", q.as_str()];
        let n = if queues > 1 { per_end.len() } else { 0 };
        let mut args = vec!["link", "add", iface];
        args.extend_from_slice(&per_end[..n]);
        args.extend_from_slice(&["type", "veth", "peer", "name", peer]);
        args.extend_from_slice(&per_end[..n]);
        args.extend_from_slice(&["netns", peer_ns.name()]);
        self.ip(args).map(|_| ())
    }

    /// Moves interface `dev` from the caller's namespace into this one
    /// (`ip link set DEV netns NAME`). The interface arrives down and without addresses.
    /// Descriptors bound to it (a TAP's fd) keep working.
    pub fn move_link(&self, dev: &str) -> Result<(), NetNsError> {
        ip_output(["link", "set", dev, "netns", self.name.as_str()]).map(|_| ())
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    ///
    /// Only that thread changes namespace (`setns(CLONE_NEWNET)`); sockets it opens belong to
    /// the namespace for their whole life, even if handed back to other threads. A panic in
    /// `f` is resumed on the calling thread.
    pub fn run<R, F>(&self, f: F) -> Result<R, NetNsError>
    where
        R: Send,
        F: FnOnce() -> R + Send,
    {
        let path = self.path();
        // Open the namespace here so a missing namespace is reported before spawning.
        let ns_file = File::open(&path).map_err(|source| NetNsError::Enter {
            name: self.name.clone(),
            path: path.clone(),
            source,
        })?;
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(scope, move || {
                    setns_net(ns_file.as_fd())?;
                    drop(ns_file);
                    Ok::<R, io::Error>(f())
                })
                .map_err(|source| NetNsError::Thread {
                    name: self.name.clone(),
                    source,
                })?;
            match handle.join() {
                Ok(result) => result.map_err(|source| NetNsError::Enter {
                    name: self.name.clone(),
                    path,
                    source,
                }),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a new thread inside this namespace and returns its handle once the thread
    /// has entered the namespace, for kernel peers that must run while the caller does other
    /// work (a `std::net` server answering a user-space stack polled on the calling thread).
    ///
    /// The thread does not keep the namespace alive by name: join it before the [`NetNs`] is
    /// dropped (sockets it holds keep the namespace itself alive, nameless, until closed).
    pub fn spawn<R, F>(&self, f: F) -> Result<std::thread::JoinHandle<R>, NetNsError>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let path = self.path();
        let enter_error = |source| NetNsError::Enter {
            name: self.name.clone(),
            path: path.clone(),
            source,
        };
        let ns_file = File::open(&path).map_err(enter_error)?;
        let (entered_tx, entered_rx) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
        let handle = std::thread::Builder::new()
            .name(format!("netns-{}", self.name))
            .spawn(move || {
                let entered = setns_net(ns_file.as_fd());
                drop(ns_file);
                let failed = entered.is_err();
                // The caller waits for this message, so the receiver is still there.
                let _ = entered_tx.send(entered);
                if failed {
                    // End the thread without running `f` (and without the panic hook's
                    // message): the caller has the error already.
                    std::panic::resume_unwind(Box::new("setns failed"));
                }
                f()
            })
            .map_err(|source| NetNsError::Thread {
                name: self.name.clone(),
                source,
            })?;
        match entered_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(source)) => {
                let _ = handle.join();
                Err(enter_error(source))
            }
            // The thread ended before reporting (it cannot, short of an abort): say so.
            Err(_) => Err(enter_error(io::Error::other(
                "the thread ended before entering the namespace",
            ))),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _serial = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        match ip_output(["netns", "del", self.name.as_str()]) {
            Ok(_) => tracing::debug!(netns = %self.name, "deleted network namespace"),
            Err(e) => tracing::warn!(netns = %self.name, "deleting network namespace failed: {e}"),
        }
    }
}

/// Moves the calling thread into the network namespace that `ns` refers to (a namespace file
/// such as `/run/netns/NAME` or `/proc/PID/ns/net`).
fn setns_net(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns takes a live descriptor (borrowed for the call) and a flag; it changes only
    // the calling thread's network namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn netns_path(name: &str) -> PathBuf {
    NETNS_RUN_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new(NETNS_RUN_DIRS[0]).join(name))
}

fn netns_exists(name: &str) -> bool {
    list_netns().is_ok_and(|names| names.iter().any(|n| n == name))
}

/// A stem for interface names, `v{pid}x{counter}` in hex (at most 14 bytes), unique per
/// process and call: with a one-letter suffix it fits the 15 bytes of an interface name.
pub(crate) fn unique_stem() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("v{:x}x{:x}", std::process::id(), n)
}

/// Checks an interface name made from [`unique_stem`].
pub(crate) fn check_ifname(name: &str) -> Result<(), NetNsError> {
    check_name(name, super::tap::IFNAME_LEN_MAX)
}

/// What a [`VethPair`] should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethConfig {
    /// Prefix of the two namespaces' names (each gets its own unique name).
    pub prefix: String,
    /// IPv4 address of side A.
    pub addr_a: Ipv4Addr,
    /// IPv4 address of side B.
    pub addr_b: Ipv4Addr,
    /// Prefix length of both addresses.
    pub prefix_len: u8,
    /// IP MTU of both ends; `None` keeps the kernel's default (1500).
    pub mtu: Option<usize>,
    /// Turn TX checksum offload off on both ends (`ethtool -K IFACE tx off`), so frames handed
    /// to user space (AF_XDP, AF_PACKET) carry complete TCP/UDP checksums. Default on.
    pub tx_checksum_off: bool,
    /// Receive and transmit queues of each end (`numrxqueues`/`numtxqueues`). A frame arrives
    /// on the receive queue numbered as the transmit queue the sender picked (for kernel TCP,
    /// a hash per connection). Default 1.
    pub queues: u32,
}

impl Default for VethConfig {
    fn default() -> VethConfig {
        VethConfig {
            prefix: "ust-veth".into(),
            addr_a: Ipv4Addr::new(10, 202, 0, 1),
            addr_b: Ipv4Addr::new(10, 202, 0, 2),
            prefix_len: 24,
            mtu: None,
            tx_checksum_off: true,
            queues: 1,
        }
    }
}

/// The two ends of a test topology: namespaces A and B, an interface in each, and their
/// addresses. [`VethPair`] and [`super::lossy::LossyPath`] dereference to it.
#[derive(Debug)]
pub struct Endpoints {
    // Field order: b is dropped after a.
    a: NetNs,
    b: NetNs,
    iface_a: String,
    iface_b: String,
    addr_a: Ipv4Addr,
    addr_b: Ipv4Addr,
}

impl Endpoints {
    pub(crate) fn new(
        (a, iface_a, addr_a): (NetNs, String, Ipv4Addr),
        (b, iface_b, addr_b): (NetNs, String, Ipv4Addr),
    ) -> Endpoints {
        Endpoints {
            a,
            b,
            iface_a,
            iface_b,
            addr_a,
            addr_b,
        }
    }

    /// Namespace of side A.
    pub fn a(&self) -> &NetNs {
        &self.a
    }

    /// Namespace of side B.
    pub fn b(&self) -> &NetNs {
        &self.b
    }

    /// Interface name of side A (inside namespace A).
    pub fn iface_a(&self) -> &str {
        &self.iface_a
    }

    /// Interface name of side B (inside namespace B).
    pub fn iface_b(&self) -> &str {
        &self.iface_b
    }

    /// Address of side A.
    pub fn addr_a(&self) -> Ipv4Addr {
        self.addr_a
    }

    /// Address of side B.
    pub fn addr_b(&self) -> Ipv4Addr {
        self.addr_b
    }
}

/// Two network namespaces joined by a veth pair: interface [`Endpoints::iface_a`] in namespace
/// [`Endpoints::a`] with [`VethConfig::addr_a`], and its peer [`Endpoints::iface_b`] in
/// [`Endpoints::b`] with `addr_b`; loopback and both ends up. The accessors are those of
/// [`Endpoints`], which it dereferences to.
///
/// Dropping it deletes both namespaces, and with them the veth pair.
#[derive(Debug)]
pub struct VethPair {
    ends: Endpoints,
}

impl std::ops::Deref for VethPair {
    type Target = Endpoints;
    fn deref(&self) -> &Endpoints {
        &self.ends
    }
}

impl VethPair {
    /// Builds the topology. Interface names are `v{pid}x{counter}a`/`…b` in hex (at most 15
    /// bytes), unique per process, and created directly inside their namespaces, so they never
    /// appear in the caller's namespace.
    pub fn create(config: &VethConfig) -> Result<VethPair, NetNsError> {
        let a = NetNs::create(&config.prefix)?;
        let b = NetNs::create(&config.prefix)?;
        let stem = unique_stem();
        let iface_a = format!("{stem}a");
        let iface_b = format!("{stem}b");
        check_name(&iface_a, super::tap::IFNAME_LEN_MAX)?;
        a.add_veth_queues(&iface_a, &iface_b, &b, config.queues)?;
        for (ns, iface, addr) in [(&a, &iface_a, config.addr_a), (&b, &iface_b, config.addr_b)] {
            let cidr = format!("{addr}/{}", config.prefix_len);
            ns.ip(["addr", "add", cidr.as_str(), "dev", iface.as_str()])?;
            if let Some(mtu) = config.mtu {
                let mtu = mtu.to_string();
                ns.ip(["link", "set", iface.as_str(), "mtu", mtu.as_str()])?;
            }
            if config.tx_checksum_off {
                let iface_name = iface.clone();
                ns.run(move || super::tap::set_tx_checksum_offload(&iface_name, false))?
                    .map_err(|source| NetNsError::Interface {
                        op: "turning TX checksum offload off",
                        iface: iface.clone(),
                        ns: ns.name().to_string(),
                        source,
                    })?;
            }
            ns.ip(["link", "set", "lo", "up"])?;
            ns.ip(["link", "set", iface.as_str(), "up"])?;
        }
        Ok(VethPair {
            ends: Endpoints::new((a, iface_a, config.addr_a), (b, iface_b, config.addr_b)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_matches_only_the_pattern() {
        assert_eq!(owner_pid("ust", "ust-123-4"), Some(123));
        assert_eq!(owner_pid("ust-tap", "ust-tap-9-0"), Some(9));
        assert_eq!(owner_pid("ust", "ust-123"), None);
        assert_eq!(owner_pid("ust", "ust-123-4x"), None);
        assert_eq!(owner_pid("ust", "ust-x-4"), None);
        assert_eq!(owner_pid("ust", "ust-1-2-3"), None);
        assert_eq!(owner_pid("ust", "ustx-1-2"), None);
        assert_eq!(owner_pid("ust", "other-1-2"), None);
        // A longer prefix that starts with ours is not ours.
        assert_eq!(owner_pid("ust", "ust-tap-1-2"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("ust-tap_1.x", 15).is_ok());
        assert!(check_name("", 15).is_err());
        assert!(check_name("a b", 15).is_err());
        assert!(check_name("a/b", 15).is_err());
        assert!(check_name("-a", 15).is_err());
        assert!(check_name("..", 15).is_err());
        assert!(check_name(&"a".repeat(16), 15).is_err());
    }

    #[test]
    fn veth_names_fit() {
        // The largest pid (2^22) and a large counter still give a 15-byte name.
        let stem = format!("v{:x}x{:x}", 1u32 << 22, 0xff_ffffu32);
        assert!(format!("{stem}a").len() <= super::super::tap::IFNAME_LEN_MAX);
    }

    #[test]
    fn this_process_is_alive() {
        assert!(pid_alive(std::process::id()));
    }
}

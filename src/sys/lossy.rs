//! A lossy network path between two namespaces, for tests and benchmarks of loss recovery: the
//! frames between A and B cross a third namespace, M, where a user-space relay forwards them at
//! layer 2 with seeded faults (`examples/faultwire.rs`; `tc netem` is not in every kernel).
//!
//! ```text
//!  namespace A                 namespace M                       namespace B
//!  iface_a (addr_a) <-veth-> iface_left  [faultwire]  iface_right <-veth-> iface_b (addr_b)
//! ```
//!
//! [`LossyPath::create`] builds it:
//!
//! - three namespaces ([`NetNs`], unique names, deleted on drop: on every exit path, panics
//!   included; ones left by a killed run are swept by the next run);
//! - two veth pairs, A and B on one subnet, M's two ends without addresses and promiscuous;
//! - every offload that would let the kernel hand the relay something a wire would not carry
//!   turned off on all four ends (`ethtool -K IFACE tx off tso off gso off gro off`): with them
//!   on, the kernel passes 64 KB GSO super-frames and partial checksums over veth, which a relay
//!   cannot forward and AF_XDP cannot verify;
//! - IPv6 off in all three namespaces, so the only frames on the path are the test's (and ARP):
//!   the relay's per-MAC counters then say exactly what each endpoint sent.
//!
//! [`LossyPath::start_relay`] starts the relay inside M (by PID) on the two M ends and waits
//! until it forwards; [`Relay::stop`] sends it `SIGTERM` by PID and returns the one-line report
//! it writes on the way out (parse it with [`crate::dev::faults::WireReport`]). Dropping a
//! [`Relay`] kills it. Commands go through `ip`; everything needs root.

use std::io::{BufRead, BufReader};
use std::marker::PhantomData;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::netns::{check_ifname, unique_stem, Endpoints, NetNs, NetNsError};
use super::proc::OwnedChild;
use super::tap::{set_offload, Offload};

/// The line the relay prints on standard output once it forwards frames.
pub const RELAY_READY: &str = "faultwire: forwarding";

/// How long [`LossyPath::start_relay`] waits for [`RELAY_READY`].
const RELAY_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Relay::stop`] lets the relay take to write its report after `SIGTERM`.
const RELAY_STOP_GRACE: Duration = Duration::from_secs(10);

/// Lines of the relay's standard output kept for error messages.
const OUTPUT_LINES_MAX: usize = 40;

/// Makes the relays' report files unique within this process.
static RELAY_COUNTER: AtomicU32 = AtomicU32::new(0);

/// What a [`LossyPath`] should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LossyConfig {
    /// Prefix of the three namespaces' names (each gets its own unique name).
    pub prefix: String,
    /// IPv4 address of side A's interface.
    pub addr_a: Ipv4Addr,
    /// IPv4 address of side B's interface.
    pub addr_b: Ipv4Addr,
    /// Prefix length of both addresses.
    pub prefix_len: u8,
    /// IP MTU of all four ends; `None` keeps the kernel's default (1500).
    pub mtu: Option<usize>,
}

impl Default for LossyConfig {
    fn default() -> LossyConfig {
        LossyConfig {
            prefix: "ust-lossy".into(),
            addr_a: Ipv4Addr::new(10, 206, 0, 1),
            addr_b: Ipv4Addr::new(10, 206, 0, 2),
            prefix_len: 24,
            mtu: None,
        }
    }
}

/// Errors from starting and stopping the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The relay could not be started.
    #[error("cannot start the relay {program} in namespace {ns}: {source}", program = program.display())]
    Spawn {
        /// The relay program.
        program: PathBuf,
        /// Namespace M.
        ns: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The relay did not say it was forwarding in time, or exited first.
    #[error("the relay did not start forwarding: {detail}; its output:\n{output}")]
    NotReady {
        /// What happened.
        detail: String,
        /// The relay's last lines of output.
        output: String,
    },
    /// The relay exited with a failure, or had to be killed.
    #[error("the relay ended badly ({detail}); its output:\n{output}")]
    Failed {
        /// Exit status, or that it ignored SIGTERM.
        detail: String,
        /// The relay's last lines of output.
        output: String,
    },
    /// Its report could not be read.
    #[error("cannot read the relay's report {path}: {source}", path = path.display())]
    Report {
        /// The report file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Signalling or waiting for the relay failed.
    #[error("stopping the relay (PID {pid}): {source}")]
    Stop {
        /// The relay's PID.
        pid: u32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Three namespaces, A - M - B, joined by two veth pairs through M. See the
/// [module docs](crate::host::lossy). A and B, their interfaces and addresses are those of [`Endpoints`],
/// which it dereferences to. Dropping it deletes the namespaces and with them the interfaces.
#[derive(Debug)]
pub struct LossyPath {
    ends: Endpoints,
    m: NetNs,
    iface_left: String,
    iface_right: String,
    mac_a: [u8; 6],
    mac_b: [u8; 6],
}

impl std::ops::Deref for LossyPath {
    type Target = Endpoints;
    fn deref(&self) -> &Endpoints {
        &self.ends
    }
}

/// Turns IPv6 off for every interface of the namespace the calling thread is in.
fn disable_ipv6() -> std::io::Result<()> {
    for key in ["all", "default"] {
        let path = format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6");
        match std::fs::write(&path, "1") {
            Ok(()) => {}
            // A kernel without IPv6 sends none.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{path}: {e}"))),
        }
    }
    Ok(())
}

/// Turns every offload in [`Offload::ALL`] off on `iface` (in the calling thread's namespace)
/// and checks that it stayed off.
fn offloads_off(iface: &str) -> std::io::Result<()> {
    for o in Offload::ALL {
        set_offload(iface, o, false).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("ethtool -K {iface} {} off: {e}", o.name()),
            )
        })?;
    }
    for o in Offload::ALL {
        if super::tap::offload(iface, o)? {
            return Err(std::io::Error::other(format!(
                "{} is still on for {iface} after turning it off",
                o.name()
            )));
        }
    }
    Ok(())
}

impl LossyPath {
    /// Builds the topology. Interface names are `v{pid}x{counter}` in hex with the suffix `a`,
    /// `l` (M's end toward A), `r` (M's end toward B) or `b`, created directly inside their
    /// namespaces, so they never appear in the caller's.
    pub fn create(config: &LossyConfig) -> Result<LossyPath, NetNsError> {
        let a = NetNs::create(&config.prefix)?;
        let m = NetNs::create(&config.prefix)?;
        let b = NetNs::create(&config.prefix)?;
        let stem = unique_stem();
        let [iface_a, iface_left, iface_right, iface_b] =
            ["a", "l", "r", "b"].map(|s| format!("{stem}{s}"));
        check_ifname(&iface_left)?;
        for ns in [&a, &m, &b] {
            ns.run(disable_ipv6)?
                .map_err(|source| NetNsError::Interface {
                    op: "turning IPv6 off",
                    iface: "all".into(),
                    ns: ns.name().to_string(),
                    source,
                })?;
        }
        a.add_veth(&iface_a, &iface_left, &m)?;
        m.add_veth(&iface_right, &iface_b, &b)?;
        let ends = [
            (&a, &iface_a, Some(config.addr_a)),
            (&m, &iface_left, None),
            (&m, &iface_right, None),
            (&b, &iface_b, Some(config.addr_b)),
        ];
        for (ns, iface, addr) in ends {
            if let Some(addr) = addr {
                let cidr = format!("{addr}/{}", config.prefix_len);
                ns.ip(["addr", "add", cidr.as_str(), "dev", iface.as_str()])?;
            } else {
                ns.ip(["link", "set", "dev", iface.as_str(), "promisc", "on"])?;
            }
            if let Some(mtu) = config.mtu {
                let mtu = mtu.to_string();
                ns.ip(["link", "set", "dev", iface.as_str(), "mtu", mtu.as_str()])?;
            }
            let name = iface.clone();
            ns.run(move || offloads_off(&name))?
                .map_err(|source| NetNsError::Interface {
                    op: "turning offloads off (tx, tso, gso, gro)",
                    iface: iface.clone(),
                    ns: ns.name().to_string(),
                    source,
                })?;
        }
        for (ns, iface, _) in ends {
            ns.ip(["link", "set", "dev", "lo", "up"])?;
            ns.ip(["link", "set", "dev", iface.as_str(), "up"])?;
        }
        let mac = |ns: &NetNs, iface: &String| -> Result<[u8; 6], NetNsError> {
            let name = iface.clone();
            ns.run(move || super::xdp::hw_addr(&name))?
                .map_err(|source| NetNsError::Interface {
                    op: "reading the MAC address",
                    iface: iface.clone(),
                    ns: ns.name().to_string(),
                    source,
                })
        };
        let mac_a = mac(&a, &iface_a)?;
        let mac_b = mac(&b, &iface_b)?;
        tracing::debug!(
            a = a.name(),
            m = m.name(),
            b = b.name(),
            "lossy path created"
        );
        Ok(LossyPath {
            ends: Endpoints::new((a, iface_a, config.addr_a), (b, iface_b, config.addr_b)),
            m,
            iface_left,
            iface_right,
            mac_a,
            mac_b,
        })
    }

    /// Namespace M, where the relay runs.
    pub fn m(&self) -> &NetNs {
        &self.m
    }

    /// M's end of the veth pair toward A (the relay's `--left`).
    pub fn iface_left(&self) -> &str {
        &self.iface_left
    }

    /// M's end of the veth pair toward B (the relay's `--right`).
    pub fn iface_right(&self) -> &str {
        &self.iface_right
    }

    /// The MAC address of A's interface: every frame A sends has it as its source, whichever
    /// stack (the kernel's, or ustack on AF_XDP on that interface) sends it.
    pub fn mac_a(&self) -> [u8; 6] {
        self.mac_a
    }

    /// The MAC address of B's interface.
    pub fn mac_b(&self) -> [u8; 6] {
        self.mac_b
    }

    /// Starts the relay `program` (the `faultwire` example) inside M with
    /// `--left IFACE_LEFT --right IFACE_RIGHT --stats-file FILE` followed by `args` (seed and
    /// faults), and returns once it prints [`RELAY_READY`].
    pub fn start_relay<S: AsRef<std::ffi::OsStr>>(
        &self,
        program: &Path,
        args: &[S],
    ) -> Result<Relay<'_>, RelayError> {
        let n = RELAY_COUNTER.fetch_add(1, Ordering::Relaxed);
        let stats_file = std::env::temp_dir().join(format!(
            "ustack-faultwire-{}-{n}.report",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&stats_file);
        let mut cmd = self.m.command(program);
        cmd.args(["--left", &self.iface_left, "--right", &self.iface_right])
            .arg("--stats-file")
            .arg(&stats_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = OwnedChild::spawn(&mut cmd, format!("faultwire in {}", self.m.name()))
            .map_err(|source| RelayError::Spawn {
                program: program.to_path_buf(),
                ns: self.m.name().to_string(),
                source,
            })?;
        let output = Arc::new(Mutex::new(Vec::<String>::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        if let Some(stdout) = child.child_mut().stdout.take() {
            let keep = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with(RELAY_READY) {
                        let _ = ready_tx.send(());
                    }
                    let mut lines = keep.lock().unwrap_or_else(|p| p.into_inner());
                    if lines.len() == OUTPUT_LINES_MAX {
                        lines.remove(0);
                    }
                    lines.push(line);
                }
            });
        }
        let mut relay = Relay {
            child: Some(child),
            stats_file,
            output,
            _path: PhantomData,
        };
        match ready_rx.recv_timeout(RELAY_READY_TIMEOUT) {
            Ok(()) => Ok(relay),
            Err(e) => {
                let detail = match relay.child.as_mut().map(|c| c.try_wait()) {
                    Some(Ok(Some(st))) => format!("it exited first ({st})"),
                    _ if e == mpsc::RecvTimeoutError::Timeout => {
                        format!("no `{RELAY_READY}` line within {RELAY_READY_TIMEOUT:?}")
                    }
                    _ => "its output ended".to_string(),
                };
                Err(RelayError::NotReady {
                    detail,
                    output: relay.output_text(),
                })
            }
        }
    }
}

/// The relay process started by [`LossyPath::start_relay`]. Dropping it kills it (by PID).
#[derive(Debug)]
pub struct Relay<'a> {
    child: Option<OwnedChild>,
    stats_file: PathBuf,
    output: Arc<Mutex<Vec<String>>>,
    _path: PhantomData<&'a LossyPath>,
}

impl Relay<'_> {
    /// The relay's PID.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, OwnedChild::id)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn output_text(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// Stops the relay with `SIGTERM` (by PID) and returns the report it wrote: one line
    /// `FAULTWIRE key=value ...` (see [`crate::dev::faults::WireReport`]).
    pub fn stop(mut self) -> Result<String, RelayError> {
        let Some(mut child) = self.child.take() else {
            return Err(RelayError::Failed {
                detail: "already stopped".into(),
                output: String::new(),
            });
        };
        let pid = child.id();
        let (status, killed): (ExitStatus, bool) = child
            .terminate(RELAY_STOP_GRACE)
            .map_err(|source| RelayError::Stop { pid, source })?;
        if killed || !status.success() {
            return Err(RelayError::Failed {
                detail: if killed {
                    format!("it ignored SIGTERM for {RELAY_STOP_GRACE:?} and was killed")
                } else {
                    format!("exit status {status}")
                },
                output: self.output_text(),
            });
        }
        std::fs::read_to_string(&self.stats_file).map_err(|source| RelayError::Report {
            path: self.stats_file.clone(),
            source,
        })
    }
}

impl Drop for Relay<'_> {
    fn drop(&mut self) {
        // The child (if still held) is killed and reaped by its own guard.
        drop(self.child.take());
        let _ = std::fs::remove_file(&self.stats_file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netns::netns_or_skip;

    /// A path on 10.207.`subnet`.0/24, or `None` where namespaces cannot be made.
    fn path(subnet: u8, mtu: Option<usize>) -> Option<LossyPath> {
        if !netns_or_skip() {
            return None;
        }
        let path = LossyPath::create(&LossyConfig {
            prefix: "ust-lossyt".into(),
            addr_a: Ipv4Addr::new(10, 207, subnet, 1),
            addr_b: Ipv4Addr::new(10, 207, subnet, 2),
            mtu,
            ..LossyConfig::default()
        });
        Some(path.expect("lossy path"))
    }

    #[test]
    fn the_path_is_built_with_offloads_and_ipv6_off_and_removed() {
        let Some(path) = path(1, Some(1400)) else {
            return;
        };
        let names = [path.a().name(), path.m().name(), path.b().name()].map(str::to_string);
        for (ns, iface) in [
            (path.a(), path.iface_a()),
            (path.m(), path.iface_left()),
            (path.m(), path.iface_right()),
            (path.b(), path.iface_b()),
        ] {
            let name = iface.to_string();
            let (offloads, mtu) = ns
                .run(move || {
                    let o: Vec<bool> = Offload::ALL
                        .iter()
                        .map(|&o| super::super::tap::offload(&name, o).unwrap())
                        .collect();
                    (o, super::super::tap::mtu(&name).unwrap())
                })
                .unwrap();
            assert_eq!(offloads, vec![false; 4], "{iface}");
            assert_eq!(mtu, 1400, "{iface}");
            let link = ns.ip(["link", "show", "dev", iface]).unwrap();
            assert!(link.contains("UP"), "{link}");
            if ns.name() == path.m().name() {
                assert!(link.contains("PROMISC"), "{link}");
            }
            let v6 = ns
                .run(|| std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6"))
                .unwrap();
            if let Ok(v) = v6 {
                assert_eq!(v.trim(), "1");
            }
        }
        assert_ne!(path.mac_a(), path.mac_b());
        assert!(path.iface_left().len() <= 15);
        drop(path);
        let left = crate::sys::netns::list_netns().unwrap();
        for n in names {
            assert!(!left.contains(&n), "{n} left behind");
        }
    }

    #[test]
    fn a_relay_that_does_not_start_is_reported() {
        let Some(path) = path(2, None) else {
            return;
        };
        // `true` takes any arguments, prints nothing and exits.
        let err = path
            .start_relay(Path::new("true"), &["--seed", "1"])
            .unwrap_err();
        assert!(matches!(err, RelayError::NotReady { .. }), "{err}");
        let err = path
            .start_relay(Path::new("/nonexistent/faultwire"), &[] as &[&str])
            .unwrap_err();
        assert!(matches!(err, RelayError::NotReady { .. }), "{err}");
    }
}

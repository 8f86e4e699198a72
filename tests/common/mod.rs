//! Shared test support: a virtual-time driver for two stacks on the simulated link, test data
//! patterns, child processes (`child`), and the rule for tests that need privileges.
#![allow(dead_code)]

pub mod child;
pub mod frames;
/// The rule for tests that need privileges, and the is-root check: the file the crate's unit
/// tests use as `sys::privileged`.
#[path = "../../src/sys/privileged.rs"]
mod privileged;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use child::Watched;
#[allow(unused_imports)]
pub use privileged::{effective_uid, is_root, root_or_skip, skip};

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ustack::dev::sim::{SimConfig, SimLink, SimPort, SplitMix64};
use ustack::stack::{ConnId, ConnState, MacAddr, Stack, StackConfig};
use ustack::{Instant, PacketDevice, PageSize};

pub const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// A stack configuration for simulated runs: fixed seed and MAC, modest socket memory.
pub fn sim_stack_config(ip: Ipv4Addr, seed: u64) -> StackConfig {
    let mut c = StackConfig::new(ip, 24);
    c.random_seed = seed;
    c.mac = Some(MacAddr::local_from_seed(seed ^ u64::from(u32::from(ip))));
    c.sockets_max = 8;
    c.page_size = PageSize::Huge2M;
    c
}

/// What an application step did.
pub enum Step<T> {
    /// Finished with a result.
    Done(T),
    /// Moved data or changed something: poll again at the same instant.
    Busy,
    /// Waiting for the network.
    Idle,
}

/// Two stacks joined by a simulated link, driven in virtual time from one thread.
pub struct SimNet<D: PacketDevice> {
    pub link: SimLink,
    pub a: Stack<D>,
    pub b: Stack<D>,
    pub now: Instant,
}

impl SimNet<SimPort> {
    pub fn new(sim: SimConfig, seed: u64) -> SimNet<SimPort> {
        SimNet::with_wrap(sim, seed, |p, _| p)
    }
}

impl<D: PacketDevice> SimNet<D> {
    /// Builds the pair, wrapping each port (e.g. in a pcap capture); the bool is true for A.
    pub fn with_wrap(sim: SimConfig, seed: u64, wrap: impl Fn(SimPort, bool) -> D) -> SimNet<D> {
        let (link, pa, pb) = SimLink::new(sim).expect("sim link");
        let a = Stack::new(wrap(pa, true), sim_stack_config(IP_A, seed)).expect("stack A");
        let b = Stack::new(
            wrap(pb, false),
            sim_stack_config(IP_B, seed.wrapping_add(1)),
        )
        .expect("stack B");
        SimNet {
            link,
            a,
            b,
            now: Instant::ZERO,
        }
    }

    /// Polls both stacks and runs `app` until it is done, jumping the clock over idle time.
    /// Fails if `limit` of virtual time passes first.
    pub fn drive<T>(
        &mut self,
        limit: Duration,
        mut app: impl FnMut(&mut Stack<D>, &mut Stack<D>, Instant) -> Result<Step<T>, String>,
    ) -> Result<T, String> {
        let end = self.now + limit;
        loop {
            let busy = self.a.poll(self.now) | self.b.poll(self.now);
            let app_busy = match app(&mut self.a, &mut self.b, self.now)? {
                Step::Done(t) => return Ok(t),
                Step::Busy => true,
                Step::Idle => false,
            };
            if self.now >= end {
                return Err(format!("not done after {limit:?} of virtual time"));
            }
            if !busy && !app_busy {
                let timers = [self.a.poll_at(self.now), self.b.poll_at(self.now)];
                let next = self.link.next_event(self.now, timers);
                self.now = next.unwrap_or(end).min(end);
            }
        }
    }
}

/// Connects A to a listener on B; returns (server-side conn on B, client conn on A), both
/// established.
pub fn connect_pair<D: PacketDevice>(
    net: &mut SimNet<D>,
    port: u16,
) -> Result<(ConnId, ConnId), String> {
    let l = net.b.listen(port, 1).map_err(|e| e.to_string())?;
    let c = net
        .a
        .connect(SocketAddrV4::new(IP_B, port))
        .map_err(|e| e.to_string())?;
    let mut server = None;
    net.drive(Duration::from_secs(600), |a, b, _| {
        if server.is_none() {
            server = b.accept(l).map_err(|e| e.to_string())?;
        }
        let established = a.state(c).map_err(|e| e.to_string())? == ConnState::Established;
        Ok(match server {
            Some(s) if established => Step::Done((s, c)),
            _ => Step::Idle,
        })
    })
}

/// A deterministic byte stream: byte `i` depends only on the seed and `i`, so any slice of it can
/// be generated or checked on its own.
#[derive(Copy, Clone)]
pub struct Pattern {
    seed: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern { seed }
    }

    fn word(&self, w: u64) -> u64 {
        SplitMix64::mix(self.seed ^ w.wrapping_mul(SplitMix64::GAMMA))
    }

    /// Fills `buf` with stream bytes starting at `offset`.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            let pos = offset + i as u64;
            let bytes = self.word(pos / 8).to_le_bytes();
            let start = (pos % 8) as usize;
            let n = (8 - start).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&bytes[start..start + n]);
            i += n;
        }
    }

    /// Index of the first byte of `data` that differs from the stream at `offset`.
    pub fn mismatch(&self, offset: u64, data: &[u8], scratch: &mut [u8]) -> Option<usize> {
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min(scratch.len());
            self.fill(offset + done as u64, &mut scratch[..n]);
            if let Some(j) = (0..n).find(|&j| scratch[j] != data[done + j]) {
                return Some(done + j);
            }
            done += n;
        }
        None
    }
}

/// FNV-1a, 64 bit: the stream hash both ends compare.
#[derive(Copy, Clone)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A small seeded generator for test decisions: ustack's [`SplitMix64`], with the seed mixed
/// with a constant of the tests' own.
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed ^ 0x5DEE_CE66_D1CE_4E5B))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// `next_u64() % n`: what the tests' seeds were chosen with.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A TAP interface whose kernel side lives, with `kernel_ip`/24, in a new namespace (named from
/// `prefix`); ustack runs on the descriptor in this process. `None` (after saying why) where
/// namespaces or /dev/net/tun are not available.
pub fn tap_in_netns(
    prefix: &str,
    kernel_ip: Ipv4Addr,
    tap: &ustack::dev::tap::TapConfig,
) -> Option<(ustack::host::netns::NetNs, ustack::dev::tap::TapDevice)> {
    if let Err(e) = ustack::host::netns::can_create_netns() {
        skip(&e.to_string());
        return None;
    }
    let ns = ustack::host::netns::NetNs::create(prefix).expect("create netns");
    let tap = match ustack::dev::tap::TapDevice::open(tap) {
        Ok(t) => t,
        Err(e) => {
            skip(&e.to_string());
            return None;
        }
    };
    let name = tap.name().to_string();
    ns.move_link(&name)
        .expect("move the TAP into the namespace");
    ns.ip(["addr", "add", &format!("{kernel_ip}/24"), "dev", &name])
        .expect("address");
    ns.ip(["link", "set", &name, "up"]).expect("link up");
    Some((ns, tap))
}

/// The example program `name` (`fileserver`, `chunkctl`, `faultwire`), built for this test's
/// profile: `cargo test` builds the examples with the tests; when it did not (a single `--test`
/// run), it is built here.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir.join("examples").join(name);
    if !bin.exists() {
        let target = profile_dir.parent().unwrap();
        // The object server needs the `s3` feature.
        let features: &[&str] = if name == "objectserver" {
            &["--features", "s3"]
        } else {
            &[]
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .args(features)
            .arg("--target-dir")
            .arg(target)
            .status()
            .unwrap_or_else(|e| panic!("run cargo to build the {name} example: {e}"));
        assert!(status.success(), "building the {name} example failed");
    }
    bin
}

/// A directory of the test's own, removed (with everything in it) when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh, empty directory `<temp>/<prefix>-<pid>-<random>`.
    pub fn fresh(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{:x}",
            std::process::id(),
            Rng::new(u64::from(std::process::id()) ^ prefix.len() as u64).next_u64()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two namespaces joined by a veth pair as `cfg` asks, with every offload off on A's end, so
/// the kernel there sends frames as a wire carries them (whole checksums, no GSO); `None`
/// (after saying why) where this process may not create namespaces.
pub fn veth_plain_at_a(
    cfg: &ustack::host::netns::VethConfig,
) -> Option<ustack::host::netns::VethPair> {
    use ustack::host::iface::{set_offload, Offload};
    if let Err(e) = ustack::host::netns::can_create_netns() {
        skip(&e.to_string());
        return None;
    }
    let pair = ustack::host::netns::VethPair::create(cfg).expect("veth pair");
    let iface = pair.iface_a().to_string();
    pair.a()
        .run(move || {
            for o in Offload::ALL {
                set_offload(&iface, o, false).expect("offload off");
            }
        })
        .expect("enter A");
    Some(pair)
}

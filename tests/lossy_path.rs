//! TCP through a real lossy path: namespaces A and B joined through M, where the `faultwire`
//! relay forwards every frame with seeded loss, duplication, reordering and corruption
//! (`ustack::host::lossy::LossyPath`, `examples/faultwire.rs`).
//!
//! For each fault setting, through the same path and with the same seed (a fresh relay per
//! transfer, so each sees the same decisions from its first frame), the example programs move
//! the same data three ways:
//!
//! 1. a kernel-TCP client (`chunkctl --backend kernel`) in A against the `fileserver` on AF_XDP
//!    in B (ustack server);
//! 2. a ustack client (`chunkctl --backend af-xdp`) in A against the `fileserver` on kernel TCP
//!    in B;
//! 3. kernel against kernel.
//!
//! `chunkctl verify` writes chunks, reads every one back and compares every byte, checks every
//! STAT checksum and deletes them. The tests assert completion and integrity only, never time.
//! The transfer is small by default, because ustack recovers from loss slowly today (1 s
//! minimum RTO, issue 11): `USTACK_LOSSY_TOTAL` sets it (default 2MiB).
//!
//! A third test checks the relay itself with kernel UDP: the datagrams B receives are exactly
//! those the seed's decisions let through (duplicates included, corrupted ones caught by the
//! checksums), twice in a row.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::{example_binary, skip, Watched};
use ustack::dev::faults::{FaultDice, Faults, Mac, WireReport};
use ustack::host::lossy::{LossyConfig, LossyPath};
use ustack::host::netns::can_create_netns;

/// The transfers run one at a time: each has two busy-polling programs and the relay on the
/// machine's two cores.
static SERIAL: Mutex<()> = Mutex::new(());

const PORT: u16 = 7000;
const SEED: u64 = 11;
/// How long one transfer may take before the test gives up on it: a bound so a stuck run fails
/// rather than hangs, far above what any run needs (not a timing assertion).
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// Bytes each transfer writes and reads back.
const TOTAL_DEFAULT: &str = "2MiB";

fn total() -> String {
    std::env::var("USTACK_LOSSY_TOTAL").unwrap_or_else(|_| TOTAL_DEFAULT.to_string())
}

fn addr(subnet: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 208, subnet, host)
}

/// The path on subnet 10.208.`subnet`.0/24: kernel addresses .1 (A) and .2 (B); ustack uses
/// .3 (A) and .4 (B) on the same interfaces. `None` (after saying why) where this process may
/// not create namespaces.
fn topology(subnet: u8) -> Option<LossyPath> {
    if let Err(e) = can_create_netns() {
        skip(&e.to_string());
        return None;
    }
    let path = LossyPath::create(&LossyConfig {
        prefix: "ust-lossy".into(),
        addr_a: addr(subnet, 1),
        addr_b: addr(subnet, 2),
        prefix_len: 24,
        mtu: None,
    })
    .expect("lossy path");
    Some(path)
}

/// The relay's arguments for `faults` and `seed`.
fn relay_args(faults: &Faults, seed: u64) -> Vec<String> {
    vec![
        "--seed".into(),
        seed.to_string(),
        "--loss".into(),
        faults.loss.to_string(),
        "--duplicate".into(),
        faults.duplicate.to_string(),
        "--reorder".into(),
        faults.reorder.to_string(),
        "--corrupt".into(),
        faults.corrupt.to_string(),
    ]
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum End {
    /// Kernel TCP.
    Kernel,
    /// ustack on AF_XDP.
    Ustack,
}

/// One transfer: its relay report, the time chunkctl reported, for the summary.
struct Outcome {
    report: WireReport,
    elapsed_s: String,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Runs one `chunkctl verify` from A to B through a fresh relay with `faults`.
fn transfer(path: &LossyPath, subnet: u8, client: End, server: End, faults: &Faults) -> Outcome {
    let what = format!("{client:?} client -> {server:?} server");
    let relay = path
        .start_relay(&example_binary("faultwire"), &relay_args(faults, SEED))
        .expect("start the relay");

    let fileserver: PathBuf = example_binary("fileserver");
    let mut cmd = path.b().command(&fileserver);
    let server_addr = match server {
        End::Kernel => {
            let a = SocketAddrV4::new(path.addr_b(), PORT);
            cmd.args(["--backend", "kernel", "--listen", &a.to_string()]);
            a
        }
        End::Ustack => {
            let ip = addr(subnet, 4);
            cmd.args(["--backend", "af-xdp", "--iface", path.iface_b()])
                .args(["--ip", &format!("{ip}/24"), "--port", &PORT.to_string()]);
            SocketAddrV4::new(ip, PORT)
        }
    };
    cmd.args(["--store", "mem", "--mem-budget", "1GiB", "--grace-s", "5"])
        .env("RUST_LOG", "warn");
    let mut srv = Watched::spawn(&mut cmd, &format!("fileserver ({server:?}) in B"));
    srv.wait_for_line("fileserver: listening on", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{what}: {e}"));

    let mut cmd = path.a().command(example_binary("chunkctl"));
    match client {
        End::Kernel => {
            cmd.args(["--backend", "kernel"]);
        }
        End::Ustack => {
            cmd.args(["--backend", "af-xdp", "--iface", path.iface_a()])
                .args(["--ip", &format!("{}/24", addr(subnet, 3))]);
        }
    }
    cmd.args(["--server", &server_addr.to_string(), "--timeout-s", "120"])
        .args(["verify", "--total", &total(), "--seed", "7"])
        .env("RUST_LOG", "warn");
    let cli = Watched::spawn(&mut cmd, &format!("chunkctl ({client:?}) in A"));
    let (status, out) = cli
        .wait(RUN_LIMIT)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        status.success(),
        "{what}: chunkctl failed ({status}):\n{out}"
    );
    assert!(out.contains("result         OK"), "{what}:\n{out}");
    let result = out
        .lines()
        .find(|l| l.starts_with("RESULT cmd=verify"))
        .unwrap_or_else(|| panic!("{what}: no RESULT line:\n{out}"));
    assert_eq!(
        field(result, "verified"),
        field(result, "total_bytes"),
        "{what}: every byte written was read back identical: {result}"
    );

    let (status, killed, out) = srv.terminate(Duration::from_secs(15));
    assert!(
        !killed && status.success(),
        "{what}: the server did not stop cleanly ({status}):\n{out}"
    );
    let final_line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{what}: no {prefix:?} line:\n{out}"))
    };
    let server = final_line("fileserver: final: server");
    assert!(
        server.contains(", 0 for protocol errors)"),
        "{what}: {server}"
    );
    let errors = final_line("fileserver: final: errors:");
    assert!(errors.contains("errors: 0;"), "{what}: {errors}");

    let text = relay.stop().expect("stop the relay");
    let report = WireReport::parse(&text).expect("relay report");
    check_report(&what, path, &report, faults);
    Outcome {
        report,
        elapsed_s: field(result, "elapsed_s").unwrap_or("?").to_string(),
    }
}

/// What every relay report must say: both ends sent frames, every frame came from one of
/// them, none was too long (offloads off: no super-frames), and the faults were applied.
fn check_report(what: &str, path: &LossyPath, r: &WireReport, faults: &Faults) {
    let (a, b) = (
        r.frames_from(Mac(path.mac_a())),
        r.frames_from(Mac(path.mac_b())),
    );
    assert!(a > 0 && b > 0, "{what}: frames from A {a}, from B {b}");
    assert_eq!(a + b, r.total("seen"), "{what}: frames from elsewhere");
    assert_eq!(
        r.total("truncated"),
        0,
        "{what}: frames longer than the MTU"
    );
    if faults.loss > 0.0 {
        assert!(r.total("dropped") > 0, "{what}: nothing lost");
    }
    if faults.duplicate > 0.0 {
        assert!(r.total("duplicated") > 0, "{what}: nothing duplicated");
    }
    if faults.reorder > 0.0 {
        assert!(r.total("reordered") > 0, "{what}: nothing reordered");
    }
}

/// The three transfers of one fault setting, each with a fresh relay and the same seed.
fn three_ways(subnet: u8, name: &str, faults: Faults) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(path) = topology(subnet) else {
        return;
    };
    let mut lines = Vec::new();
    for (client, server) in [
        (End::Kernel, End::Ustack),
        (End::Ustack, End::Kernel),
        (End::Kernel, End::Kernel),
    ] {
        let o = transfer(&path, subnet, client, server, &faults);
        let r = &o.report;
        lines.push(format!(
            "{name}: {client:?} client -> {server:?} server, {}: {} s; frames from A {} and B {}; \
             dropped {}, duplicated {}, reordered {}, corrupted {}, kernel drops {}",
            total(),
            o.elapsed_s,
            r.frames_from(Mac(path.mac_a())),
            r.frames_from(Mac(path.mac_b())),
            r.total("dropped"),
            r.total("duplicated"),
            r.total("reordered"),
            r.total("corrupted"),
            r.total("kernel_drops"),
        ));
    }
    for l in lines {
        println!("{l}");
    }
}

/// The standard mix: 1% loss, 1% duplication, 5% reordering, 0.1% corruption.
#[test]
fn standard_mix_three_ways() {
    three_ways(
        1,
        "mix",
        Faults {
            loss: 0.01,
            duplicate: 0.01,
            reorder: 0.05,
            corrupt: 0.001,
        },
    );
}

#[test]
fn one_percent_loss_three_ways() {
    three_ways(2, "1% loss", Faults::none().with_loss(0.01));
}

/// Kernel UDP from A to B through the relay: the datagrams that arrive are exactly those the
/// seed's decisions for the direction left to right let through, in the same numbers, on two
/// runs with the same seed.
#[test]
fn relay_decisions_follow_the_seed() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(path) = topology(3) else {
        return;
    };
    const N: u64 = 2000;
    const UDP_PORT: u16 = 9000;
    let faults = Faults {
        loss: 0.1,
        duplicate: 0.05,
        reorder: 0.1,
        corrupt: 0.05,
    };
    let seed = 0x5eed;
    // A knows B's MAC without asking: only the datagrams cross the path from A.
    let mac_b = Mac(path.mac_b()).to_string();
    path.a()
        .ip([
            "neigh",
            "replace",
            &path.addr_b().to_string(),
            "lladdr",
            &mac_b,
            "dev",
            path.iface_a(),
            "nud",
            "permanent",
        ])
        .expect("static neighbour");
    // What the relay's left-to-right dice decide for datagram i: how many copies arrive
    // (none if lost; a corrupted original is dropped by B's checksums, its clean copy is not).
    let mut dice = FaultDice::pair(seed)[0].clone();
    let mut expected: BTreeMap<u64, u32> = BTreeMap::new();
    let mut corrupted = 0;
    for i in 0..N {
        let fate = dice.roll(&faults, 0);
        let copies = if fate.lost {
            0
        } else {
            u32::from(fate.duplicate) + u32::from(fate.corrupt_bit.is_none())
        };
        corrupted += u64::from(fate.corrupt_bit.is_some());
        if copies > 0 {
            expected.insert(i, copies);
        }
    }
    let want: u32 = expected.values().sum();
    assert!(corrupted > 0);

    for run in 0..2 {
        let addr_b = path.addr_b();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let receiver = path
            .b()
            .spawn(move || {
                let s = UdpSocket::bind((addr_b, UDP_PORT)).expect("bind in B");
                // Room for every datagram, however long this thread is descheduled.
                ustack::host::socket::set_buffer_len(s.as_fd(), true, 8 << 20).expect("SO_RCVBUF");
                let _ = bound_tx.send(());
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                let mut got: BTreeMap<u64, u32> = BTreeMap::new();
                let mut order = Vec::new();
                let mut buf = [0u8; 256];
                // Until every datagram the seed lets through is in (or a generous bound
                // passes), then a little longer to catch any that should not come.
                let give_up = std::time::Instant::now() + Duration::from_secs(20);
                let mut drain_until = None;
                loop {
                    let now = std::time::Instant::now();
                    if drain_until.is_some_and(|d| now >= d) || now >= give_up {
                        break;
                    }
                    if let Ok((n, _)) = s.recv_from(&mut buf) {
                        if n >= 8 {
                            let i = u64::from_le_bytes(buf[..8].try_into().unwrap());
                            *got.entry(i).or_default() += 1;
                            order.push(i);
                        }
                    }
                    if drain_until.is_none() && order.len() as u32 >= want {
                        drain_until = Some(now + Duration::from_millis(200));
                    }
                }
                (got, order)
            })
            .expect("receiver in B");
        bound_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the receiver bound its socket");
        let relay = path
            .start_relay(&example_binary("faultwire"), &relay_args(&faults, seed))
            .expect("start the relay");
        let addr_a = path.addr_a();
        path.a()
            .run(move || {
                let s = UdpSocket::bind((addr_a, 0)).expect("bind in A");
                let mut buf = [0u8; 100];
                for i in 0..N {
                    buf[..8].copy_from_slice(&i.to_le_bytes());
                    s.send_to(&buf, (addr_b, UDP_PORT)).expect("send");
                    // Bursts of 50, paced so no socket buffer on the way overflows.
                    if i % 50 == 49 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            })
            .expect("sender in A");
        let (got, order) = receiver.join().expect("receiver");
        let text = relay.stop().expect("stop the relay");
        let r = WireReport::parse(&text).expect("report");
        let inversions = order.windows(2).filter(|w| w[1] < w[0]).count();
        println!(
            "run {run}: {} datagrams received ({} distinct) of {N} sent, {inversions} out of order; relay: dropped {}, duplicated {}, reordered {}, corrupted {}, kernel drops {}",
            order.len(),
            got.len(),
            r.count("l2r.dropped"),
            r.count("l2r.duplicated"),
            r.count("l2r.reordered"),
            r.count("l2r.corrupted"),
            r.count("l2r.kernel_drops"),
        );
        assert_eq!(r.count("l2r.seen"), N, "only the datagrams crossed from A");
        assert_eq!(r.frames_from(Mac(path.mac_a())), N);
        assert_eq!(r.count("l2r.kernel_drops"), 0, "the relay fell behind");
        assert_eq!(r.count("l2r.corrupted"), corrupted);
        assert_eq!(order.len() as u32, want, "datagrams received");
        assert!(
            got == expected,
            "run {run}: the datagrams received are not the ones the seed lets through"
        );
    }
}

/// The relay's errors say what is missing: an interface, a privilege, a sane probability.
#[test]
fn faultwire_says_what_is_missing() {
    let bin = example_binary("faultwire");
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("run faultwire");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(Command::new(&bin).args(["--left", "ust-nope0", "--right", "ust-nope1"]));
    assert!(err.contains("no such interface \"ust-nope0\""), "{err}");
    let err = run(Command::new(&bin).args(["--left", "lo", "--right", "x", "--loss", "150%"]));
    assert!(err.contains("not between 0 and 1"), "{err}");
    // Without CAP_NET_RAW: as root, drop to the unprivileged user `nobody` first.
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    let mut cmd = if root {
        if Command::new("setpriv").arg("--version").output().is_err() {
            skip("setpriv (util-linux) is not installed");
            return;
        }
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let err = run(cmd.args(["--left", "lo", "--right", "ust-nope1"]));
    assert!(err.contains("needs CAP_NET_RAW"), "{err}");
}

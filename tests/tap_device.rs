//! The TAP backend against the real kernel, and the network-namespace helpers it is tested with.
//!
//! These tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN), `ip` from iproute2 and
//! `/dev/net/tun`; without them each test prints why it skips. Every address used lives in a
//! namespace the test creates (10.201.x.y, 10.202.x.y).

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::child::{self, ChildCommand};
use ustack::dev::tap::{TapConfig, TapDevice, TapError};
use ustack::host::netns::{self, NetNs, NetNsError, VethConfig, VethPair};
use ustack::{Batch, Frame, Instant, PacketDevice, PoolBuf};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
/// The MAC address the tests answer ARP with (locally administered).
const FAKE_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];

/// Why this machine cannot run the test, if it cannot.
fn skip_reason(needs_tun: bool) -> Option<String> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    if let Err(e) = netns::can_create_netns() {
        return Some(e.to_string());
    }
    if needs_tun && !Path::new("/dev/net/tun").exists() {
        return Some(
            "/dev/net/tun is missing: `modprobe tun`, or pass the device into the container".into(),
        );
    }
    None
}

macro_rules! skip_unless_able {
    ($needs_tun:expr) => {
        if let Some(reason) = skip_reason($needs_tun) {
            common::skip(&reason);
            return;
        }
    };
}

fn mac_str(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn ethertype(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[12], frame[13]])
}

/// A received ARP request: (sender MAC, sender IP, target IP).
fn parse_arp_request(frame: &[u8]) -> Option<([u8; 6], Ipv4Addr, Ipv4Addr)> {
    // Ethernet (14) + ARP for IPv4 over Ethernet (28).
    if frame.len() < 42 || ethertype(frame) != ETHERTYPE_ARP {
        return None;
    }
    let arp = &frame[14..42];
    let htype = u16::from_be_bytes([arp[0], arp[1]]);
    let ptype = u16::from_be_bytes([arp[2], arp[3]]);
    let oper = u16::from_be_bytes([arp[6], arp[7]]);
    if htype != 1 || ptype != ETHERTYPE_IPV4 || arp[4] != 6 || arp[5] != 4 || oper != 1 {
        return None;
    }
    let sha: [u8; 6] = arp[8..14].try_into().unwrap();
    let spa = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
    let tpa = Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]);
    Some((sha, spa, tpa))
}

/// An ARP reply "`sender_ip` is at `sender_mac`" to `target`.
fn arp_reply(
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&target_mac); // Ethernet destination
    f[6..12].copy_from_slice(&sender_mac); // Ethernet source
    f[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    f[16..18].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes()); // protocol type: IPv4
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&2u16.to_be_bytes()); // operation: reply
    f[22..28].copy_from_slice(&sender_mac);
    f[28..32].copy_from_slice(&sender_ip.octets());
    f[32..38].copy_from_slice(&target_mac);
    f[38..42].copy_from_slice(&target_ip.octets());
    f
}

/// A received IPv4/UDP frame to `dst`: (destination MAC, UDP payload).
fn parse_udp_to(frame: &[u8], dst: Ipv4Addr) -> Option<([u8; 6], &[u8])> {
    if frame.len() < 14 + 20 + 8 || ethertype(frame) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ip[9] != 17 || ip[16..20] != dst.octets() || ip.len() < ihl + 8 {
        return None;
    }
    let udp = &ip[ihl..];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let payload = udp.get(8..udp_len)?;
    Some((frame[0..6].try_into().unwrap(), payload))
}

/// Receives frames until one satisfies `pick` (returns it) or `timeout` passes (`None`).
/// Frames not picked are dropped.
fn recv_until(
    dev: &mut TapDevice,
    timeout: Duration,
    mut pick: impl FnMut(&[u8]) -> bool,
) -> Option<PoolBuf> {
    let deadline = std::time::Instant::now() + timeout;
    let mut batch = Batch::with_capacity(32);
    while std::time::Instant::now() < deadline {
        dev.rx_burst(Instant::now(), &mut batch);
        while let Some(frame) = batch.pop() {
            if pick(frame.data()) {
                return Some(frame);
            }
        }
        dev.wait(Duration::from_millis(50));
    }
    None
}

/// Sends one frame through the device.
fn send(dev: &mut TapDevice, bytes: &[u8]) {
    let mut frame = dev.tx_alloc().expect("a free TX buffer");
    assert!(frame.set_len(bytes.len()));
    frame.data_mut().copy_from_slice(bytes);
    let mut batch = Batch::with_capacity(1);
    assert!(batch.push(frame).is_ok());
    assert_eq!(dev.tx_burst(Instant::now(), &mut batch), 1);
    assert!(batch.is_empty());
}

/// A TAP moved into a fresh namespace, given `addr/24` there, and up.
fn tap_in_netns(prefix: &str, addr: Ipv4Addr) -> (NetNs, TapDevice) {
    let ns = NetNs::create(prefix).expect("create netns");
    let dev = TapDevice::open(&TapConfig::default()).expect("open TAP");
    ns.move_link(dev.name()).expect("move TAP into netns");
    let cidr = format!("{addr}/24");
    ns.ip(["addr", "add", cidr.as_str(), "dev", dev.name()])
        .expect("address TAP");
    ns.ip(["link", "set", dev.name(), "up"]).expect("TAP up");
    (ns, dev)
}

#[test]
fn kernel_resolves_us_with_arp_through_the_tap() {
    skip_unless_able!(true);
    let kernel_ip = Ipv4Addr::new(10, 201, 1, 1);
    let our_ip = Ipv4Addr::new(10, 201, 1, 2);
    let (ns, mut dev) = tap_in_netns("ust-tap-arp", kernel_ip);
    assert_eq!(dev.caps().checksum, ustack::ChecksumCaps::default());

    // The kernel, asked to send to our address, first asks who has it.
    let payload = b"hello ustack";
    ns.run(|| {
        let sock = UdpSocket::bind((kernel_ip, 0)).unwrap();
        sock.send_to(payload, (our_ip, 9)).unwrap();
    })
    .unwrap();
    let mut request = None;
    let arp = recv_until(&mut dev, Duration::from_secs(5), |f| {
        request = parse_arp_request(f).filter(|&(_, _, tpa)| tpa == our_ip);
        request.is_some()
    });
    assert!(arp.is_some(), "no ARP request for {our_ip} within 5 s");
    let (kernel_mac, spa, _) = request.unwrap();
    assert_eq!(spa, kernel_ip);
    assert_eq!(
        arp.unwrap().data()[0..6],
        [0xff; 6],
        "ARP request is broadcast"
    );

    // Answer it by hand; the kernel must learn our made-up MAC.
    send(
        &mut dev,
        &arp_reply(FAKE_MAC, our_ip, kernel_mac, kernel_ip),
    );
    let want = format!("lladdr {}", mac_str(&FAKE_MAC));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let neigh = loop {
        let out = ns
            .ip(["neigh", "show", &our_ip.to_string(), "dev", dev.name()])
            .unwrap();
        let learned = out.contains(&want) && (out.contains("REACHABLE") || out.contains("STALE"));
        if learned || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        neigh.contains(&want) && (neigh.contains("REACHABLE") || neigh.contains("STALE")),
        "kernel neighbour entry: {neigh:?}"
    );

    // The datagram queued behind the ARP lookup now goes to that MAC.
    let mut seen = None;
    let udp = recv_until(&mut dev, Duration::from_secs(5), |f| {
        seen = parse_udp_to(f, our_ip).map(|(mac, p)| (mac, p.to_vec()));
        seen.is_some()
    });
    assert!(udp.is_some(), "the queued UDP datagram never came");
    let (dst_mac, got) = seen.unwrap();
    assert_eq!(dst_mac, FAKE_MAC);
    assert_eq!(got, payload);

    let stats = dev.stats();
    assert!(stats.rx_packets >= 2, "{stats:?}");
    assert_eq!((stats.tx_packets, stats.tx_bytes), (1, 42));
    assert_eq!((stats.rx_errors, stats.tx_errors), (0, 0));
    // All frame buffers were given back.
    drop(udp);
    assert_eq!(dev.pool().stats().in_use, 0);
}

#[test]
fn frames_longer_than_the_mtu_are_dropped_and_counted() {
    skip_unless_able!(true);
    let kernel_ip = Ipv4Addr::new(10, 201, 2, 1);
    let our_ip = Ipv4Addr::new(10, 201, 2, 2);
    let (ns, mut dev) = tap_in_netns("ust-tap-big", kernel_ip);
    assert_eq!(dev.caps().mtu, 1500);
    // The kernel side may now send frames of 3014 bytes; ours takes 1514 at most.
    ns.ip(["link", "set", dev.name(), "mtu", "3000"]).unwrap();
    let lladdr = mac_str(&FAKE_MAC);
    ns.ip([
        "neigh",
        "replace",
        &our_ip.to_string(),
        "lladdr",
        &lladdr,
        "dev",
        dev.name(),
        "nud",
        "permanent",
    ])
    .unwrap();

    ns.run(|| {
        let sock = UdpSocket::bind((kernel_ip, 0)).unwrap();
        sock.send_to(&[0xab; 2500], (our_ip, 9)).unwrap();
        sock.send_to(b"small", (our_ip, 9)).unwrap();
    })
    .unwrap();
    let mut longest = 0;
    let small = recv_until(&mut dev, Duration::from_secs(5), |f| {
        longest = longest.max(f.len());
        parse_udp_to(f, our_ip).is_some_and(|(_, p)| p == b"small")
    });
    assert!(
        small.is_some(),
        "the small datagram after the big one never came"
    );
    assert!(longest <= 1514, "a frame of {longest} bytes was handed out");
    let stats = dev.stats();
    assert_eq!(stats.rx_errors, 1, "{stats:?}");
    assert_eq!(stats.rx_dropped, 0, "{stats:?}");
}

#[test]
fn a_named_tap_is_created_and_a_second_open_is_busy() {
    skip_unless_able!(true);
    let name = format!("ustb{}", std::process::id());
    let config = TapConfig {
        name: Some(name.clone()),
        ..TapConfig::default()
    };
    let dev = TapDevice::open(&config).unwrap();
    assert_eq!(dev.name(), name);
    assert!(Path::new("/sys/class/net").join(&name).exists());
    match TapDevice::open(&config) {
        Err(e @ TapError::Busy { .. }) => assert!(e.to_string().contains(&name), "{e}"),
        other => panic!("second open of {name}: expected Busy, got {other:?}"),
    }
    // A template gives kernel-numbered names.
    let auto = TapDevice::open(&TapConfig::default()).unwrap();
    assert!(auto.name().starts_with("ust"), "{}", auto.name());
    // Closing the descriptor deletes the interface (the kernel unregisters it asynchronously:
    // under load /sys may show it for a moment longer).
    drop(dev);
    let gone_by = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Path::new("/sys/class/net").join(&name).exists() {
        assert!(
            std::time::Instant::now() < gone_by,
            "{name} still exists 5 s after its descriptor was closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn sending_while_the_interface_is_down_drops_and_counts() {
    skip_unless_able!(true);
    // A fresh TAP is down: the kernel refuses frames (EIO).
    let mut dev = TapDevice::open(&TapConfig::default()).unwrap();
    let mut batch = Batch::with_capacity(4);
    for _ in 0..2 {
        let mut frame = dev.tx_alloc().unwrap();
        assert!(frame.set_len(42));
        frame.data_mut().copy_from_slice(&arp_reply(
            FAKE_MAC,
            Ipv4Addr::new(10, 201, 3, 2),
            [0xff; 6],
            Ipv4Addr::new(10, 201, 3, 1),
        ));
        assert!(batch.push(frame).is_ok());
    }
    // A frame longer than the MTU allows is refused before it reaches the kernel.
    let mut big = dev.tx_alloc().unwrap();
    assert!(big.set_len(dev.caps().frame_len_max() + 1));
    assert!(batch.push(big).is_ok());
    assert_eq!(dev.tx_burst(Instant::now(), &mut batch), 3);
    assert!(batch.is_empty());
    let stats = dev.stats();
    assert_eq!(
        (stats.tx_packets, stats.tx_dropped, stats.tx_errors),
        (0, 2, 1)
    );
    assert_eq!(dev.pool().stats().in_use, 0);
}

const CHILD_MARK: &str = "CHILD-RESULT:";

/// Child entry point (`tests/common/child.rs`): the unprivileged child that
/// `unprivileged_open_is_permission_denied` runs as uid 65534.
#[test]
#[ignore = "child process of unprivileged_open_is_permission_denied, run by it"]
fn unprivileged_child_entry() {
    if child::role().is_none() {
        return;
    }
    match TapDevice::open(&TapConfig::default()) {
        Err(e @ TapError::PermissionDenied { .. }) => {
            println!("{CHILD_MARK} PermissionDenied: {e}")
        }
        Err(e) => {
            println!("{CHILD_MARK} unexpected error: {e:?}");
            std::process::exit(2);
        }
        Ok(dev) => {
            println!("{CHILD_MARK} unexpectedly opened {}", dev.name());
            std::process::exit(3);
        }
    }
}

#[test]
fn unprivileged_open_is_permission_denied() {
    skip_unless_able!(true);
    if !common::root_or_skip("drop privileges to uid 65534") {
        return;
    }
    let out = ChildCommand::new("unprivileged_child_entry", "unprivileged")
        .run_as(65534)
        .output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed ({}): {stdout}\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .find_map(|l| l.find(CHILD_MARK).map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("child printed no result: {stdout}\n{stderr}"));
    assert!(line.contains("PermissionDenied"), "{line}");
    assert!(line.contains("CAP_NET_ADMIN"), "{line}");
}

/// Runs `ip ARGS` and panics with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the named namespaces when dropped, whatever happened.
struct DelOnDrop(Vec<String>);

impl Drop for DelOnDrop {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

#[test]
fn netns_names_are_unique_and_drop_deletes() {
    skip_unless_able!(false);
    let a = NetNs::create("ust-tt-uniq").unwrap();
    let b = NetNs::create("ust-tt-uniq").unwrap();
    assert_ne!(a.name(), b.name());
    assert!(a
        .name()
        .starts_with(&format!("ust-tt-uniq-{}-", std::process::id())));
    let names = netns::list_netns().unwrap();
    assert!(names.iter().any(|n| n == a.name()) && names.iter().any(|n| n == b.name()));
    let a_name = a.name().to_string();
    drop(a);
    let names = netns::list_netns().unwrap();
    assert!(!names.contains(&a_name), "{a_name} still in {names:?}");
    assert!(names.iter().any(|n| n == b.name()));
}

#[test]
fn stale_namespaces_of_dead_processes_are_swept() {
    skip_unless_able!(false);
    let prefix = "ust-tt-sweep";
    // A pid that surely belonged to a process that is gone now.
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    assert!(!Path::new(&format!("/proc/{dead_pid}")).exists());

    let dead = format!("{prefix}-{dead_pid}-0");
    let dead2 = format!("{prefix}-{dead_pid}-1");
    let alive = format!("{prefix}-1-0"); // pid 1 always exists
    let not_ours = format!("{prefix}-{dead_pid}-x");
    let _guard = DelOnDrop(vec![
        dead.clone(),
        dead2.clone(),
        alive.clone(),
        not_ours.clone(),
    ]);
    for name in [&dead, &alive, &not_ours] {
        ip(&["netns", "add", name]);
    }

    assert_eq!(NetNs::sweep_stale(prefix).unwrap(), 1);
    let names = netns::list_netns().unwrap();
    assert!(!names.contains(&dead), "{names:?}");
    assert!(
        names.contains(&alive) && names.contains(&not_ours),
        "{names:?}"
    );

    // Creating a namespace sweeps too.
    ip(&["netns", "add", &dead2]);
    let fresh = NetNs::create(prefix).unwrap();
    let names = netns::list_netns().unwrap();
    assert!(!names.contains(&dead2), "{names:?}");
    assert!(names.iter().any(|n| n == fresh.name()));
    assert!(names.contains(&alive));
}

fn netns_id() -> String {
    std::fs::read_link("/proc/thread-self/ns/net")
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn run_enters_the_namespace_on_its_own_thread_only() {
    skip_unless_able!(false);
    let ns = NetNs::create("ust-tt-run").unwrap();
    let outside = netns_id();
    let inside = ns.run(netns_id).unwrap();
    assert_ne!(inside, outside);
    assert_eq!(netns_id(), outside, "the calling thread must not move");
    // Borrowing from the caller works, and panics come back to the caller.
    let local = String::from("borrowed");
    assert_eq!(ns.run(|| local.len()).unwrap(), 8);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.run(|| panic!("inside")).unwrap();
    }));
    assert!(panicked.is_err());
}

#[test]
fn spawn_runs_a_kernel_peer_beside_the_caller() {
    skip_unless_able!(false);
    let ns = NetNs::create("ust-tt-spawn").unwrap();
    ns.ip(["link", "set", "lo", "up"]).unwrap();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    // An echo peer inside the namespace, running while this thread carries on.
    let peer = ns
        .spawn(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            port_tx.send(sock.local_addr().unwrap()).unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = sock.recv_from(&mut buf).unwrap();
            sock.send_to(&buf[..n], from).unwrap();
            netns_id()
        })
        .unwrap();
    let peer_addr = port_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let reply = ns
        .run(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            sock.send_to(b"ping", peer_addr).unwrap();
            let mut buf = [0u8; 64];
            let n = sock.recv(&mut buf).unwrap();
            buf[..n].to_vec()
        })
        .unwrap();
    assert_eq!(reply, b"ping");
    let peer_ns = peer.join().unwrap();
    assert_ne!(peer_ns, netns_id());
}

#[test]
fn failed_ip_commands_say_what_ran_and_why() {
    skip_unless_able!(false);
    let ns = NetNs::create("ust-tt-err").unwrap();
    let err = ns.ip(["link", "set", "nosuchif0", "up"]).unwrap_err();
    assert!(matches!(err, NetNsError::CommandFailed { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("ip -n {} link set nosuchif0 up", ns.name())),
        "{text}"
    );
    assert!(text.contains("nosuchif0"), "{text}");
}

#[test]
fn veth_pair_joins_two_namespaces() {
    skip_unless_able!(false);
    let config = VethConfig {
        prefix: "ust-tt-veth".into(),
        addr_a: Ipv4Addr::new(10, 202, 7, 1),
        addr_b: Ipv4Addr::new(10, 202, 7, 2),
        ..VethConfig::default()
    };
    let pair = VethPair::create(&config).unwrap();
    assert!(pair.iface_a().len() <= 15 && pair.iface_b().len() <= 15);
    assert_ne!(pair.a().name(), pair.b().name());

    // TX checksum offload is off on both ends.
    for (ns, iface) in [(pair.a(), pair.iface_a()), (pair.b(), pair.iface_b())] {
        let on = ns
            .run(|| ustack::host::iface::tx_checksum_offload(iface))
            .unwrap()
            .unwrap();
        assert!(!on, "tx checksum offload still on for {iface}");
    }

    // A datagram from A reaches B.
    let receiver = pair
        .b()
        .run(|| UdpSocket::bind((pair.addr_b(), 0)).unwrap())
        .unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let to = receiver.local_addr().unwrap();
    pair.a()
        .run(|| {
            let s = UdpSocket::bind((pair.addr_a(), 0)).unwrap();
            s.send_to(b"over veth", to).unwrap();
        })
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = receiver.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"over veth");
    assert_eq!(from.ip(), pair.addr_a());

    let names = (pair.a().name().to_string(), pair.b().name().to_string());
    drop(receiver);
    drop(pair);
    let left = netns::list_netns().unwrap();
    assert!(
        !left.contains(&names.0) && !left.contains(&names.1),
        "{left:?}"
    );
}

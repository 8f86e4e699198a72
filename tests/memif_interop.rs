//! ustack's native memif against DPDK's net_memif PMD: a DPDK application that echoes every
//! frame (`pmd/memif_echo_peer.c`, built by the test with the system's DPDK, or taken from
//! `USTACK_MEMIF_DPDK_PEER`), in either role, over a socket file or an abstract socket, with
//! DPDK's client in copy or zero-copy mode; and a ustack server building frames in place in the
//! mbufs a DPDK client posts. Without DPDK's development files the tests skip (a failure
//! under `scripts/test.sh` as root).
//!
//! (`memif_dpdk_interop` is the other way round: ustack on DPDK's PMD against ustack's native
//! memif, with `--features dpdk`.)

mod common;
mod memif_support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant as WallInstant};

use common::Watched;
use memif_support::dpdk_peer::{dpdk_peer, echo_through};
use memif_support::{memif_cfg, TestDir};
use ustack::dev::memif::{MemifDevice, MemifRole};
use ustack::{Batch, Instant, PacketDevice};

/// Polls `dev` until it notices its peer is gone (at most 5 s).
fn wait_link_down<F>(dev: &mut MemifDevice<F>, scratch: &mut Batch<F>)
where
    MemifDevice<F>: PacketDevice<Frame = F>,
{
    let start = WallInstant::now();
    while dev.link_up() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "DPDK's death not noticed"
        );
        dev.rx_burst(Instant::now(), scratch);
    }
}

#[test]
fn interop_with_dpdk_net_memif_both_roles() {
    let dir = TestDir::new("dpdk");
    let peer = match dpdk_peer(&dir.0) {
        Ok(p) => p,
        Err(e) => {
            common::skip(&e);
            return;
        }
    };
    // (our role, abstract socket name, DPDK client in zero-copy mode)
    for (ours, socket_abstract, zero_copy) in [
        (MemifRole::Client, false, false),
        (MemifRole::Server, false, false),
        (MemifRole::Client, true, false),
        (MemifRole::Server, true, true),
    ] {
        let path = if socket_abstract {
            PathBuf::from(format!("ustack-memif-{}", std::process::id()))
        } else {
            dir.socket()
        };
        let theirs = if ours == MemifRole::Client {
            "server"
        } else {
            "client"
        };
        let vdev = format!(
            "net_memif0,role={theirs},id=3,socket={},socket-abstract={},rsize=10,bsize=2048,\
             zero-copy={}",
            path.display(),
            if socket_abstract { "yes" } else { "no" },
            if zero_copy { "yes" } else { "no" }
        );
        let mut cfg = memif_cfg(&path, ours);
        cfg.interface_id = 3;
        cfg.socket_abstract = socket_abstract;
        let mut cmd = Command::new(&peer);
        cmd.args([vdev.as_str(), "60"])
            .args(zero_copy.then_some("--single-file-segments"));
        // DPDK's client connects once, when its port starts: our server goes first.
        let (mut dev, mut dpdk) = if ours == MemifRole::Server {
            let dev = MemifDevice::open(&cfg).unwrap();
            (dev, Watched::spawn(&mut cmd, "dpdk-client"))
        } else {
            let mut dpdk = Watched::spawn(&mut cmd, "dpdk-server");
            dpdk.wait_for_line("peer: started", Duration::from_secs(30))
                .unwrap();
            (MemifDevice::open(&cfg).unwrap(), dpdk)
        };
        let mut scratch = Batch::with_capacity(64);
        let start = WallInstant::now();
        while !dev.link_up() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no link with DPDK ({ours:?}, abstract {socket_abstract}): {:?}",
                dev.last_error()
            );
            dev.rx_burst(Instant::now(), &mut scratch);
        }
        let (peer_name, peer_if) = dev.peer_names().unwrap();
        println!(
            "ustack {ours:?} <-> DPDK {theirs} (abstract socket {socket_abstract}, zero-copy \
             {zero_copy}): peer {peer_name:?} / {peer_if:?}, queues {:?}, regions {}",
            dev.queues(),
            dev.mapped_regions()
        );
        if zero_copy {
            // DPDK's zero-copy client sends its ring region plus its mbuf memory.
            assert!(dev.mapped_regions() >= 2);
        }
        assert!(peer_name.starts_with("DPDK"), "{peer_name}");
        // DPDK announced nothing: it gets complete checksums.
        assert!(!dev.tx_checksums_elided());
        echo_through(&mut dev, 20_000);
        let stats = dev.memif_stats();
        println!("  {stats:?}");
        assert_eq!(stats.rejected_desc, 0);
        assert_eq!(stats.link.rx_errors, 0);
        // The DPDK process dies: we notice, and free the rings.
        dpdk.kill();
        wait_link_down(&mut dev, &mut scratch);
        assert_eq!(dev.mapped_regions(), 0);
        assert_eq!(dev.lent_buffers(), 0);
    }
}

/// A server building frames in place in the mbufs a DPDK net_memif client posts (2048-byte
/// buffers, 1514-byte frames), copy and zero-copy client modes.
#[test]
fn in_place_server_with_a_dpdk_client() {
    let dir = TestDir::new("dpdk-inplace");
    let peer = match dpdk_peer(&dir.0) {
        Ok(p) => p,
        Err(e) => {
            common::skip(&e);
            return;
        }
    };
    for zero_copy in [false, true] {
        let path = dir.socket();
        let vdev = format!(
            "net_memif0,role=client,id=3,socket={},socket-abstract=no,rsize=10,bsize=2048,\
             zero-copy={}",
            path.display(),
            if zero_copy { "yes" } else { "no" }
        );
        let mut cfg = memif_cfg(&path, MemifRole::Server);
        cfg.interface_id = 3;
        let mut dev = MemifDevice::open_in_place(&cfg).unwrap();
        let mut cmd = Command::new(&peer);
        cmd.args([vdev.as_str(), "60"])
            .args(zero_copy.then_some("--single-file-segments"));
        let mut dpdk = Watched::spawn(&mut cmd, "dpdk-client");
        let mut scratch = Batch::with_capacity(64);
        let start = WallInstant::now();
        while !dev.link_up() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no link with DPDK: {:?}",
                dev.last_error()
            );
            dev.rx_burst(Instant::now(), &mut scratch);
        }
        echo_through(&mut dev, 20_000);
        let stats = dev.memif_stats();
        println!("in place, DPDK client zero-copy {zero_copy}: {stats:?}");
        assert_eq!(stats.rejected_desc, 0);
        assert_eq!(stats.link.rx_errors, 0);
        assert!(
            stats.tx_in_place * 10 >= stats.link.tx_packets * 9,
            "frames built in DPDK's buffers: {stats:?}"
        );
        dpdk.kill();
        wait_link_down(&mut dev, &mut scratch);
        assert_eq!(dev.mapped_regions(), 0);
    }
}

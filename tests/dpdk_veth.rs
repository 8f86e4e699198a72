//! ustack on DPDK ports facing the kernel's own TCP (`net::KernelClient`), in network
//! namespaces the tests create:
//!
//! - `af_packet_on_veth_serves_a_kernel_tcp_client`: a `ChunkServer` on DPDK's `net_af_packet`
//!   PMD bound to one end of a veth pair (`host::netns::VethPair`), the kernel client on the other
//!   end: 500 chunks, sizes log-uniform from 1 B to 4 MiB, written and read back, every byte
//!   compared. The DPDK side is a process of its own inside namespace A (`ip netns exec A <this
//!   test binary>` running the ignored `dpdk::server_child`, `tests/common/child.rs`): its EAL,
//!   its AF_PACKET socket and its threads all live there. The kernel in namespace A has its address removed from the veth
//!   end, so only ustack answers for it.
//! - `tap_pmd_with_tx_checksum_offload_serves_a_kernel_tcp_client`: the same server on DPDK's
//!   `net_tap` PMD, which offers IPv4/TCP transmit checksum offload: smoltcp leaves both
//!   checksums out, ustack marks the mbufs for offload, the PMD computes the checksums, and the
//!   kernel (which verifies what it receives from a TAP) accepts 100 chunks both ways; without
//!   the offload flags the connection never comes up (tried). net_tap derives the pseudo-header
//!   sum itself; the value ustack writes for NICs is checked against DPDK's
//!   `rte_ipv4_phdr_cksum` by a unit test in `dev::dpdk`.
//!
//! Needs root; under `scripts/test.sh` as root a skip is a failure.

mod common;
#[cfg(feature = "dpdk")]
mod dpdk_support;

#[cfg(not(feature = "dpdk"))]
#[test]
fn dpdk_veth_needs_the_dpdk_feature() {
    common::skip("built without the `dpdk` feature (cargo test --features dpdk)");
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::{Duration, Instant as WallInstant};

    use super::common::child::{self, ChildCommand};
    use super::common::{is_root, skip, Watched};
    use super::dpdk_support::{chunk_content, first_difference, ChunkPlan, CHUNKS, CHUNK_LEN_MAX};
    use ustack::chunk::{
        ChunkOp, ChunkServer, ClientConfig, MemStore, ServerConfig, StagingConfig,
    };
    use ustack::dev::dpdk::{DpdkConfig, DpdkDevice};
    use ustack::host::netns::{self, NetNs, VethConfig, VethPair};
    use ustack::net::KernelClient;
    use ustack::proto::{ChunkId, Reply};
    use ustack::stack::{MacAddr, Stack, StackConfig};
    use ustack::{Instant, PacketDevice, PageSize};

    const VDEV_ENV: &str = "USTACK_DPDK_TEST_VDEV";
    const IP_ENV: &str = "USTACK_DPDK_TEST_IP";
    const OFFLOAD_ENV: &str = "USTACK_DPDK_TEST_EXPECT_OFFLOAD";
    const PORT: u16 = 7000;

    fn staging() -> StagingConfig {
        StagingConfig {
            small_len: 64 << 10,
            small_count: 32,
            large_count: 2,
            large_per_connection_max: 2,
            page_size: PageSize::Base4K,
        }
    }

    /// Root and namespaces available (else says why it skips).
    fn can_run() -> bool {
        if !is_root() {
            skip("needs root (network namespaces, DPDK)");
            return false;
        }
        if let Err(e) = netns::can_create_netns() {
            skip(&e.to_string());
            return false;
        }
        true
    }

    /// Starts the DPDK server process inside `ns` on `vdev` with address `ip`, and waits until
    /// it serves.
    fn spawn_server(ns: &NetNs, vdev: &str, ip: Ipv4Addr, offload: bool) -> Watched {
        let mut server = ChildCommand::wrapped(
            &["ip", "netns", "exec", ns.name()],
            "dpdk::server_child",
            "server",
        )
        .env(VDEV_ENV, vdev)
        .env(IP_ENV, ip.to_string())
        .env(OFFLOAD_ENV, if offload { "1" } else { "0" })
        .spawn();
        server
            .wait_for_line(child::READY, Duration::from_secs(60))
            .expect("the DPDK server process did not come up");
        server
    }

    /// Child entry point: the DPDK server of both tests, in its namespace.
    #[test]
    #[ignore = "child process of the dpdk_veth tests, run by them"]
    fn server_child() {
        if child::role().is_some() {
            dpdk_server();
        }
    }

    /// Stops the server process and checks it reported and exited cleanly.
    fn finish(mut server: Watched, result: Result<String, String>) {
        let status = server.stop(Duration::from_secs(30));
        let lines = server.lines();
        let summary = result.expect("kernel client round trip");
        println!("kernel client: {summary}");
        assert!(
            status.is_some_and(|s| s.success()),
            "DPDK server process: {status:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("served")),
            "the server did not report"
        );
    }

    #[test]
    fn af_packet_on_veth_serves_a_kernel_tcp_client() {
        if !can_run() {
            return;
        }
        let pair = VethPair::create(&VethConfig {
            prefix: "ust-dpdk".into(),
            addr_a: Ipv4Addr::new(10, 205, 0, 1),
            addr_b: Ipv4Addr::new(10, 205, 0, 2),
            ..VethConfig::default()
        })
        .expect("veth pair in two namespaces");
        // ustack answers for A's address; the kernel in A must not.
        pair.a()
            .ip(["addr", "flush", "dev", pair.iface_a()])
            .expect("remove the kernel's address in A");
        let vdev = format!("net_af_packet0,iface={},framecnt=4096", pair.iface_a());
        let server = spawn_server(pair.a(), &vdev, pair.addr_a(), false);
        let addr = SocketAddr::V4(SocketAddrV4::new(pair.addr_a(), PORT));
        let result = pair
            .b()
            .run(move || kernel_client(addr, CHUNKS))
            .expect("run in namespace B");
        finish(server, result);
    }

    #[test]
    fn tap_pmd_with_tx_checksum_offload_serves_a_kernel_tcp_client() {
        if !can_run() {
            return;
        }
        let ns = NetNs::create("ust-dpdktap").expect("namespace");
        ns.ip(["link", "set", "lo", "up"]).expect("lo up");
        // The PMD creates the TAP interface in the server process's namespace (this one).
        let iface = format!("dtap{:x}", std::process::id());
        let ustack_ip = Ipv4Addr::new(10, 206, 0, 2);
        let vdev = format!("net_tap0,iface={iface}");
        let server = spawn_server(&ns, &vdev, ustack_ip, true);
        ns.ip(["addr", "add", "10.206.0.1/24", "dev", &iface])
            .expect("kernel address on the TAP");
        ns.ip(["link", "set", &iface, "up"]).expect("TAP up");
        let addr = SocketAddr::V4(SocketAddrV4::new(ustack_ip, PORT));
        let result = ns
            .run(move || kernel_client(addr, 100))
            .expect("run in the namespace");
        finish(server, result);
    }

    /// The kernel side: `chunks` chunks written and read back.
    fn kernel_client(addr: SocketAddr, chunks: u32) -> Result<String, String> {
        let cfg = ClientConfig {
            staging: staging(),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        };
        let mut c = KernelClient::connect(addr, &cfg).map_err(|e| format!("connect: {e}"))?;
        let mut plan = ChunkPlan::new(0x7665_7468);
        let mut buf = vec![0u8; CHUNK_LEN_MAX];
        let mut bytes = 0u64;
        let start = WallInstant::now();
        for i in 0..chunks {
            let len = plan.next_len();
            chunk_content(i, &mut buf[..len]);
            let id = ChunkId(0x7e70_0000 + u128::from(i));
            let w = c
                .call(ChunkOp::Write {
                    id,
                    offset: 0,
                    data: &buf[..len],
                })
                .map_err(|e| format!("WRITE {i}: {e}"))?;
            if w.result
                != Ok(Reply::Write {
                    chunk_size: len as u64,
                })
            {
                return Err(format!("WRITE of chunk {i} ({len} B): {:?}", w.result));
            }
            let r = c
                .call(ChunkOp::Read {
                    id,
                    offset: 0,
                    len: len as u32,
                })
                .map_err(|e| format!("READ {i}: {e}"))?;
            if let Err(e) = &r.result {
                return Err(format!("READ of chunk {i} ({len} B): {e}"));
            }
            if let Some(at) = first_difference(r.data(), &buf[..len]) {
                return Err(format!(
                    "chunk {i} ({len} B) read back {} B, differing from byte {at}",
                    r.data().len()
                ));
            }
            bytes += len as u64;
        }
        let secs = start.elapsed().as_secs_f64();
        c.close();
        Ok(format!(
            "verified {chunks} chunks, {bytes} bytes each way in {secs:.2} s ({:.0} MB/s written + read)",
            2.0 * bytes as f64 / secs / 1e6
        ))
    }

    /// The DPDK side, in its namespace: a chunk server on the parent's vdev until stdin
    /// closes.
    fn dpdk_server() {
        let vdev = std::env::var(VDEV_ENV).expect("vdev from the parent");
        let ip: Ipv4Addr = std::env::var(IP_ENV)
            .expect("address from the parent")
            .parse()
            .expect("an IPv4 address");
        let offload = std::env::var(OFFLOAD_ENV).as_deref() == Ok("1");
        let stop = child::stdin_closed();
        let dev = DpdkDevice::open(&DpdkConfig::from_vdev(&vdev)).expect("DPDK port");
        println!(
            "port {} ({}) from {vdev}, mac {:02x?}, tx checksum offload {}",
            dev.info().name,
            dev.info().driver,
            dev.mac(),
            dev.tx_checksum_offload()
        );
        assert_eq!(
            dev.tx_checksum_offload(),
            offload,
            "TX checksum offload in use (the port offers 0x{:x})",
            dev.info().tx_offload_capa
        );
        let caps = dev.caps();
        assert_eq!(
            (caps.checksum.tx_ipv4, caps.checksum.tx_l4),
            (offload, offload)
        );
        let mut cfg = StackConfig::new(ip, 24);
        cfg.mac = Some(MacAddr(dev.mac()));
        cfg.sockets_max = 8;
        let mut stack = Stack::new(dev, cfg).expect("stack");
        let mut server = ChunkServer::bind(
            &mut stack,
            PORT,
            Arc::new(MemStore::new(1 << 30)),
            ServerConfig {
                connections_max: 2,
                backlog: 2,
                staging: staging(),
                ..ServerConfig::default()
            },
        )
        .expect("chunk server");
        child::report(child::READY);
        let start = WallInstant::now();
        let mut idle = 0u32;
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if stack.poll(now) | server.poll(&mut stack) {
                idle = 0;
            } else {
                idle += 1;
                if idle > 256 {
                    stack.wait(now, Duration::from_millis(1));
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "not stopped after 10 minutes"
            );
        }
        println!(
            "served: {:?}; stack {:?}; link {:?}",
            server.stats(),
            stack.stats(),
            stack.device().stats()
        );
    }
}

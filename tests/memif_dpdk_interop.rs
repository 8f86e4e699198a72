//! ustack's native memif against ustack on DPDK's net_memif PMD, in two processes, both ways
//! round: 500 chunks (sizes log-uniform 1 B .. 4 MiB) written and read back, every byte compared.
//!
//! - `native_server_dpdk_client`: this process serves with a native memif *server*; a child
//!   process runs the chunk client on DPDK's net_memif in the *client* role.
//! - `dpdk_server_native_client`: a child serves on DPDK's net_memif in the *server* role (a
//!   DPDK memif client connects once, at start, so the DPDK side goes first here too); this
//!   process runs the chunk client on a native memif *client*.
//!
//! The child is this test binary again, running the test's ignored `..._child` entry point
//! (`tests/common/child.rs`); each process starts at most one DPDK EAL. Needs root (DPDK); under
//! `scripts/test.sh` a skip is a failure.

mod common;
#[cfg(feature = "dpdk")]
mod dpdk_support;

#[cfg(not(feature = "dpdk"))]
#[test]
fn memif_dpdk_interop_needs_the_dpdk_feature() {
    common::skip("built without the `dpdk` feature (cargo test --features dpdk)");
}

#[cfg(feature = "dpdk")]
mod interop {
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::{Duration, Instant as WallInstant};

    use super::common::child::{self, ChildCommand};
    use super::common::{is_root, skip};
    use super::dpdk_support::{chunk_content, first_difference, ChunkPlan, CHUNKS, CHUNK_LEN_MAX};
    use ustack::chunk::{ChunkClient, ChunkOp, ChunkServer, ClientConfig, MemStore, ServerConfig};
    use ustack::dev::dpdk::{DpdkConfig, DpdkDevice};
    use ustack::dev::memif::{MemifConfig, MemifDevice, MemifRole};
    use ustack::proto::{ChunkId, Reply};
    use ustack::stack::{Stack, StackConfig};
    use ustack::{Instant, PacketDevice};

    const SOCKET_ENV: &str = "USTACK_INTEROP_SOCKET";
    const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 216, 0, 1);
    const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 216, 0, 2);
    const PORT: u16 = 7000;
    const LIMIT: Duration = Duration::from_secs(300);

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("ustack-interop-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }

    fn dpdk_memif(role: &str, socket: &Path) -> DpdkConfig {
        DpdkConfig::from_vdev(&format!(
            "net_memif0,role={role},socket={},socket-abstract=no",
            socket.display()
        ))
    }

    fn stack<D: PacketDevice>(dev: D, ip: Ipv4Addr, mac: Option<[u8; 6]>) -> Stack<D> {
        let mut cfg = StackConfig::new(ip, 24);
        if let Some(m) = mac {
            cfg.mac = Some(ustack::stack::MacAddr(m));
        }
        cfg.sockets_max = 16;
        Stack::new(dev, cfg).expect("stack")
    }

    /// Serves until `done()`.
    fn serve<D: PacketDevice>(
        stack: &mut Stack<D>,
        mut done: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let cfg = ServerConfig {
            connections_max: 4,
            backlog: 4,
            ..ServerConfig::default()
        };
        let mut server = ChunkServer::bind(stack, PORT, Arc::new(MemStore::new(4 << 30)), cfg)
            .map_err(|e| e.to_string())?;
        let start = WallInstant::now();
        let mut idle = 0u32;
        let mut polls = 0u64;
        loop {
            let now = Instant::now();
            if stack.poll(now) | server.poll(stack) {
                idle = 0;
            } else {
                idle += 1;
                if idle > 256 {
                    stack.wait(now, Duration::from_millis(1));
                }
            }
            polls += 1;
            if (polls.is_multiple_of(1024) || idle > 256) && done() {
                println!("server: {:?}", server.stats());
                return Ok(());
            }
            if start.elapsed() > LIMIT {
                return Err(format!(
                    "server not done in {LIMIT:?}: {:?}",
                    server.stats()
                ));
            }
        }
    }

    /// Connects, writes the 500 chunks, reads each back and compares; returns bytes verified.
    fn round_trip<D: PacketDevice>(stack: &mut Stack<D>) -> Result<u64, String> {
        let cfg = ClientConfig {
            request_timeout: Duration::from_secs(60),
            ..ClientConfig::default()
        };
        let mut c = ChunkClient::connect(
            stack,
            SocketAddrV4::new(SERVER_IP, PORT),
            &cfg,
            Instant::now(),
        )
        .map_err(|e| e.to_string())?;
        let start = WallInstant::now();
        let mut call = |stack: &mut Stack<D>, op: ChunkOp<'_>| {
            let id = c.submit(op, Instant::now()).map_err(|e| e.to_string())?;
            loop {
                let now = Instant::now();
                let busy = stack.poll(now) | c.poll(stack, now);
                if let Some(done) = c.next_completion() {
                    if done.request_id != id {
                        return Err("completion of another request".to_string());
                    }
                    return Ok(done);
                }
                if c.is_broken() || start.elapsed() > LIMIT {
                    return Err(format!("connection broken or too slow: {:?}", c.stats()));
                }
                if !busy {
                    stack.wait(now, Duration::from_micros(200));
                }
            }
        };
        let mut plan = ChunkPlan::new(0x1be);
        let mut buf = vec![0u8; CHUNK_LEN_MAX];
        let lens: Vec<usize> = (0..CHUNKS).map(|_| plan.next_len()).collect();
        for (i, &len) in lens.iter().enumerate() {
            chunk_content(i as u32, &mut buf[..len]);
            let id = ChunkId(0x1000 + i as u128);
            match call(
                stack,
                ChunkOp::Write {
                    id,
                    offset: 0,
                    data: &buf[..len],
                },
            )?
            .result
            {
                Ok(Reply::Write { chunk_size }) if chunk_size == len as u64 => {}
                r => return Err(format!("write {i}: {r:?}")),
            }
        }
        let mut verified = 0;
        for (i, &len) in lens.iter().enumerate() {
            chunk_content(i as u32, &mut buf[..len]);
            let id = ChunkId(0x1000 + i as u128);
            let done = call(
                stack,
                ChunkOp::Read {
                    id,
                    offset: 0,
                    len: len as u32,
                },
            )?;
            if let Some(at) = first_difference(done.data(), &buf[..len]) {
                return Err(format!(
                    "chunk {i}: read back differs at byte {at} ({:?})",
                    done.result
                ));
            }
            verified += len as u64;
        }
        Ok(verified)
    }

    /// Polls the stack (a native memif device runs its handshake when polled) until the link
    /// is up.
    fn wait_link<D: PacketDevice>(st: &mut Stack<D>) -> Result<(), String> {
        let start = WallInstant::now();
        while !st.device().link_up() {
            if start.elapsed() > Duration::from_secs(20) {
                return Err("memif link did not come up".into());
            }
            let now = Instant::now();
            st.poll(now);
            st.wait(now, Duration::from_millis(5));
        }
        Ok(())
    }

    /// Child entry point: the DPDK client of `native_server_dpdk_client`.
    #[test]
    #[ignore = "child process of native_server_dpdk_client, run by it"]
    fn native_server_dpdk_client_child() {
        if child::role().is_none() {
            return;
        }
        let socket = PathBuf::from(std::env::var(SOCKET_ENV).expect("socket"));
        let dev = DpdkDevice::open(&dpdk_memif("client", &socket)).expect("DPDK memif client");
        let mac = dev.mac();
        let mut st = stack(dev, CLIENT_IP, Some(mac));
        wait_link(&mut st).expect("link");
        let verified = round_trip(&mut st).expect("round trip over DPDK net_memif");
        println!("VERIFIED {verified}");
    }

    #[test]
    fn native_server_dpdk_client() {
        if !is_root() {
            skip("DPDK needs root (hugepages)");
            return;
        }
        let dir = temp_dir("ns");
        let socket = dir.0.join("memif.sock");
        let dev = MemifDevice::open(&MemifConfig::new(&socket, MemifRole::Server))
            .expect("native memif server");
        let mut st = stack(dev, SERVER_IP, None);
        let sock = socket.display().to_string();
        let mut child =
            ChildCommand::new("interop::native_server_dpdk_client_child", "dpdk-client")
                .env(SOCKET_ENV, &sock)
                .spawn();
        serve(&mut st, || child.try_wait().is_some()).expect("serve");
        let status = child.try_wait().expect("child ended");
        let lines = child.lines();
        assert!(status.success(), "DPDK client failed: {status}");
        let v = lines
            .iter()
            .find_map(|l| l.strip_prefix("VERIFIED "))
            .expect("client reported");
        assert!(
            v.trim().parse::<u64>().unwrap() > 100 << 20,
            "verified {v} bytes"
        );
        println!("memif: {:?}", st.device().memif_stats());
    }

    /// Child entry point: the DPDK server of `dpdk_server_native_client`.
    #[test]
    #[ignore = "child process of dpdk_server_native_client, run by it"]
    fn dpdk_server_native_client_child() {
        if child::role().is_none() {
            return;
        }
        let socket = PathBuf::from(std::env::var(SOCKET_ENV).expect("socket"));
        let dev = DpdkDevice::open(&dpdk_memif("server", &socket)).expect("DPDK memif server");
        let mac = dev.mac();
        let mut st = stack(dev, SERVER_IP, Some(mac));
        child::report(child::READY);
        // Serve until the parent closes our stdin.
        let stop = child::stdin_closed();
        serve(&mut st, || stop.load(std::sync::atomic::Ordering::Acquire)).expect("serve");
    }

    #[test]
    fn dpdk_server_native_client() {
        if !is_root() {
            skip("DPDK needs root (hugepages)");
            return;
        }
        let dir = temp_dir("dn");
        let socket = dir.0.join("memif.sock");
        let sock = socket.display().to_string();
        let mut child =
            ChildCommand::new("interop::dpdk_server_native_client_child", "dpdk-server")
                .env(SOCKET_ENV, &sock)
                .spawn();
        child
            .wait_for_line(child::READY, Duration::from_secs(60))
            .expect("DPDK server ready");
        let dev = MemifDevice::open(&MemifConfig::new(&socket, MemifRole::Client))
            .expect("native memif client");
        let mut st = stack(dev, CLIENT_IP, None);
        wait_link(&mut st).expect("link");
        let verified = round_trip(&mut st).expect("round trip against DPDK net_memif");
        println!(
            "verified {verified} bytes; memif {:?}",
            st.device().memif_stats()
        );
        let status = child
            .stop(Duration::from_secs(30))
            .expect("DPDK server stopped");
        assert!(status.success(), "DPDK server failed: {status}");
        assert!(verified > 100 << 20);
    }
}

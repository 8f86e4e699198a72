//! A ustack chunk server on a TAP interface, kernel-TCP clients (the project's kernel transport)
//! in a network namespace the test creates: garbage, cut frames, lying lengths and bad CRCs; and
//! 10,000 connections against a limit of 1,024 while a well-behaved client keeps being served.
//! (Round trips between the same pair are in tests/net_interop.rs.) Needs root; under
//! `scripts/test.sh` as root a skip is a failure.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant as WallInstant};

use ustack::chunk::{ChunkOp, ChunkServer, ClientConfig, MemStore, ServerConfig, ServerStats};
use ustack::dev::tap::{TapConfig, TapDevice};
use ustack::host::netns::NetNs;
use ustack::net::KernelClient;
use ustack::proto::{
    crc32c, ChunkId, Limits, Reply, Request, RequestHeader, ResponseHeader, Status,
};
use ustack::stack::{Stack, StackConfig};
use ustack::Instant;

const KERNEL_IP: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 1);
const USTACK_IP: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 2);
const PORT: u16 = 7000;

fn server_addr() -> SocketAddr {
    SocketAddrV4::new(USTACK_IP, PORT).into()
}

/// A namespace with the kernel side of a TAP, and a ustack chunk server on the TAP's descriptor.
fn topology(
    cfg: ServerConfig,
    sockets: usize,
    buf_len: usize,
) -> Option<(NetNs, Stack<TapDevice>, ChunkServer<Arc<MemStore>>)> {
    let tap_cfg = TapConfig {
        pool_frames: 4096,
        ..TapConfig::default()
    };
    let (ns, tap) = common::tap_in_netns("ustchunk", KERNEL_IP, &tap_cfg)?;
    let mut scfg = StackConfig::new(USTACK_IP, 24);
    scfg.sockets_max = sockets;
    scfg.tcp.rx_buf_len = buf_len;
    scfg.tcp.tx_buf_len = buf_len;
    let mut stack = Stack::new(tap, scfg).expect("stack");
    let server =
        ChunkServer::bind(&mut stack, PORT, Arc::new(MemStore::new(1 << 30)), cfg).expect("bind");
    Some((ns, stack, server))
}

/// Serves until the kernel-side thread is done; returns its result.
fn serve<T>(
    stack: &mut Stack<TapDevice>,
    server: &mut ChunkServer<Arc<MemStore>>,
    client: JoinHandle<T>,
    limit: Duration,
) -> T {
    let start = WallInstant::now();
    let mut idle = 0u32;
    while !client.is_finished() {
        let now = Instant::now();
        if stack.poll(now) | server.poll(stack) {
            idle = 0;
        } else {
            idle += 1;
            if idle > 100 {
                stack.wait(now, Duration::from_millis(1));
            }
        }
        assert!(
            start.elapsed() < limit,
            "kernel side not done in {limit:?}; server {:?}",
            server.stats()
        );
    }
    // Let the last segments and FINs out.
    for _ in 0..1000 {
        stack.poll(Instant::now());
        server.poll(stack);
    }
    client.join().expect("kernel-side thread panicked")
}

fn client_cfg() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    }
}

fn call(c: &mut KernelClient, op: ChunkOp<'_>) -> Result<Reply, String> {
    let comp = c.call(op).map_err(|e| e.to_string())?;
    comp.result.map_err(|e| e.to_string())
}

/// Reads one response header from a raw stream.
fn read_response(s: &mut TcpStream) -> Result<ResponseHeader, String> {
    let mut h = [0u8; ResponseHeader::HEADER_LEN];
    s.read_exact(&mut h)
        .map_err(|e| format!("reading a response: {e}"))?;
    ResponseHeader::parse(&h, &Limits::default()).map_err(|e| format!("{e:?}"))
}

fn expect_error(s: &mut TcpStream, status: Status, closing: bool) -> Result<(), String> {
    let r = read_response(s)?;
    match r.reply {
        Reply::Error { status: got, .. } if got == status && r.closing == closing => {}
        other => {
            return Err(format!(
                "expected {status:?} (closing {closing}), got {other:?} closing {}",
                r.closing
            ))
        }
    }
    if closing {
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => {}
            other => return Err(format!("connection not closed after {status:?}: {other:?}")),
        }
    }
    Ok(())
}

fn raw(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn raise_fd_limit(want: u64) -> Result<(), String> {
    let out = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={want}:{want}"),
        ])
        .output()
        .map_err(|e| format!("prlimit: {e} (install util-linux)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("prlimit: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Connections the flood opens.
const FLOOD: usize = 10_000;

/// Bad input, each on a connection of its own: garbage, a header whose CRC does not match and
/// a lying length (each answered with an error, then closed); a bad payload CRC (answered, the
/// connection lives on); a frame cut short by the client.
fn send_bad_input() -> Result<(), String> {
    // Garbage: not our magic. Error, then the server closes.
    let mut s = raw(server_addr())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .map_err(|e| e.to_string())?;
    expect_error(&mut s, Status::Malformed, true)?;
    // A header whose CRC does not match.
    drop(s);
    let mut s = raw(server_addr())?;
    let mut h = RequestHeader::new(1, Request::Ping).to_bytes();
    h[20] ^= 0x40;
    s.write_all(&h).map_err(|e| e.to_string())?;
    expect_error(&mut s, Status::BadHeaderChecksum, true)?;
    // A lying length: a WRITE announcing more than the payload limit (CRC fixed up).
    drop(s);
    let mut s = raw(server_addr())?;
    let mut h = RequestHeader::new(
        2,
        Request::Write {
            chunk_id: ChunkId(1),
            offset: 0,
            len: 1 << 20,
            crc: 0,
        },
    )
    .to_bytes();
    let huge = (64u32 << 20).to_le_bytes();
    h[4..8].copy_from_slice(&huge);
    h[40..44].copy_from_slice(&huge);
    let crc = crc32c(&h[..52]).to_le_bytes();
    h[52..56].copy_from_slice(&crc);
    s.write_all(&h).map_err(|e| e.to_string())?;
    expect_error(&mut s, Status::TooLarge, true)?;
    // A bad payload CRC: BadChecksum, nothing written, and the connection lives on.
    drop(s);
    let mut s = raw(server_addr())?;
    let payload = vec![7u8; 1000];
    let h = RequestHeader::new(
        3,
        Request::Write {
            chunk_id: ChunkId(0xbad),
            offset: 0,
            len: 1000,
            crc: crc32c(&payload) ^ 1,
        },
    )
    .to_bytes();
    s.write_all(&h).map_err(|e| e.to_string())?;
    s.write_all(&payload).map_err(|e| e.to_string())?;
    expect_error(&mut s, Status::BadChecksum, false)?;
    s.write_all(
        &RequestHeader::new(
            4,
            Request::Stat {
                chunk_id: ChunkId(0xbad),
            },
        )
        .to_bytes(),
    )
    .map_err(|e| e.to_string())?;
    expect_error(&mut s, Status::NotFound, false)?;
    // A frame cut short: half a header, then the client closes.
    drop(s);
    let mut s = raw(server_addr())?;
    s.write_all(&RequestHeader::new(5, Request::Ping).to_bytes()[..30])
        .map_err(|e| e.to_string())?;
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    drop(s);
    Ok(())
}

/// `FLOOD` connections opened and held: returns them, how many still stand after the server
/// reset those over its limit, and how many were refused at connect.
fn flood() -> Result<(Vec<TcpStream>, usize, usize), String> {
    let mut held = Vec::with_capacity(FLOOD);
    let mut refused = 0;
    for _ in 0..FLOOD {
        match TcpStream::connect_timeout(&server_addr(), Duration::from_secs(5)) {
            Ok(s) => held.push(s),
            Err(_) => refused += 1,
        }
    }
    // Those over the limit are reset by the server: see which still stand.
    std::thread::sleep(Duration::from_millis(500));
    let mut alive = 0;
    for s in &mut held {
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => alive += 1,
            _ => {}
        }
    }
    Ok((held, alive, refused))
}

/// The good client's round `round`: 64 KiB written at `round * 64 KiB`, read back, compared.
fn good_round(good: &mut KernelClient, data: &[u8], round: u32) -> Result<(), String> {
    let id = ChunkId(0x900d);
    call(
        good,
        ChunkOp::Write {
            id,
            offset: u64::from(round) * 65536,
            data,
        },
    )?;
    let comp = good
        .call(ChunkOp::Read {
            id,
            offset: u64::from(round) * 65536,
            len: 65536,
        })
        .map_err(|e| e.to_string())?;
    if comp.data() != data {
        return Err(format!("good client round {round}: data differs"));
    }
    Ok(())
}

#[test]
fn bad_input_and_a_connection_flood_leave_a_good_client_served() {
    const LIMIT: usize = 1024;
    let cfg = ServerConfig {
        connections_max: LIMIT,
        backlog: 16,
        ..ServerConfig::default()
    };
    // Small socket buffers: 1,040 sockets x 32 KiB of socket memory.
    let Some((ns, mut stack, mut server)) = topology(cfg, LIMIT + 16 + 8, 16 << 10) else {
        return;
    };
    raise_fd_limit(FLOOD as u64 + 1024).expect("raise the descriptor limit");
    let rss_before = vm_rss_kib();
    let client = ns
        .spawn(move || -> Result<(usize, usize), String> {
            let mut good =
                KernelClient::connect(server_addr(), &client_cfg()).map_err(|e| e.to_string())?;
            let data = vec![0x5au8; 64 << 10];
            good_round(&mut good, &data, 0)?;
            send_bad_input()?;
            good_round(&mut good, &data, 1)?;
            // The flood: 10,000 connections held open.
            let (held, alive, refused) = flood()?;
            // The good client is still served while the flood holds every other slot.
            for round in 2..6 {
                good_round(&mut good, &data, round)?;
            }
            drop(held);
            Ok((alive, refused))
        })
        .expect("spawn client");
    let (alive, refused_at_connect) =
        serve(&mut stack, &mut server, client, Duration::from_secs(300)).expect("kernel side");
    let st: ServerStats = server.stats();
    let rss_after = vm_rss_kib();
    println!(
        "flood: {alive} connections held open, {refused_at_connect} refused at connect; server {st:?}; stack {:?}; RSS {rss_before} -> {rss_after} KiB",
        stack.stats()
    );
    assert_eq!(
        alive,
        LIMIT - 1,
        "exactly the limit (minus the good client) is held open"
    );
    assert!(
        st.connections_refused as usize + refused_at_connect >= FLOOD - (LIMIT - 1),
        "every refusal counted: {st:?}"
    );
    assert_eq!(
        st.rejected_frames, 3,
        "garbage, bad header CRC, lying length: {st:?}"
    );
    assert_eq!(st.bad_checksums, 1);
    assert_eq!(
        st.connections_closed_for_errors, 4,
        "three rejected frames and one cut frame: {st:?}"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "server memory grew from {rss_before} to {rss_after} KiB"
    );
}

//! ustack against the real Linux TCP stack, over a TAP interface inside a network namespace the
//! test creates: a kernel `std::net` client has 32 MiB echoed back by ustack, and ustack has
//! 32 MiB echoed back by a kernel server. Needs root (netns, /dev/net/tun); under
//! `scripts/test.sh` as root a skip is a failure.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant as WallInstant};

use common::Pattern;
use ustack::dev::tap::{TapConfig, TapDevice};
use ustack::host::netns::NetNs;
use ustack::stack::{ConnError, ConnId, Stack, StackConfig};
use ustack::Instant;

const TOTAL: u64 = 32 << 20;
const KERNEL_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 1);
const USTACK_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 2);
const WALL_LIMIT: Duration = Duration::from_secs(120);

/// A namespace holding the kernel side of a TAP whose descriptor ustack runs on.
fn topology() -> Option<(NetNs, Stack<TapDevice>)> {
    let (ns, tap) = common::tap_in_netns("ustcp", KERNEL_IP, &TapConfig::default())?;
    let mut cfg = StackConfig::new(USTACK_IP, 24);
    cfg.sockets_max = 4;
    let stack = Stack::new(tap, cfg).expect("stack on tap");
    Some((ns, stack))
}

/// Polls the stack in real time, waiting on the TAP fd when idle, until `step` says done.
fn run(
    stack: &mut Stack<TapDevice>,
    what: &str,
    mut step: impl FnMut(&mut Stack<TapDevice>) -> Result<bool, String>,
) {
    let start = WallInstant::now();
    loop {
        let now = Instant::now();
        let busy = stack.poll(now);
        match step(stack) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => panic!(
                "{what}: {e}\nstack {:?}\nlink {:?}",
                stack.stats(),
                stack.link_stats()
            ),
        }
        assert!(
            start.elapsed() < WALL_LIMIT,
            "{what}: not done in {WALL_LIMIT:?}\nstack {:?}\nlink {:?}",
            stack.stats(),
            stack.link_stats()
        );
        if !busy {
            stack.wait(now, Duration::from_millis(1));
        }
    }
}

/// Writes the pattern and reads the echo on a kernel socket; returns an error text on mismatch.
fn kernel_echo_client(stream: TcpStream, seed: u64) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let w = thread::spawn(move || -> Result<(), String> {
        let pat = Pattern::new(seed);
        let mut buf = vec![0u8; 64 << 10];
        let mut off = 0u64;
        while off < TOTAL {
            let n = buf.len().min((TOTAL - off) as usize);
            pat.fill(off, &mut buf[..n]);
            writer
                .write_all(&buf[..n])
                .map_err(|e| format!("kernel write at {off}: {e}"))?;
            off += n as u64;
        }
        writer.shutdown(Shutdown::Write).map_err(|e| e.to_string())
    });
    let pat = Pattern::new(seed);
    let (mut reader, mut buf, mut scratch) = (stream, vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    let mut off = 0u64;
    while off < TOTAL {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("kernel read at {off}: {e}"))?;
        if n == 0 {
            return Err(format!("echo ended after {off} of {TOTAL} bytes"));
        }
        if let Some(i) = pat.mismatch(off, &buf[..n], &mut scratch) {
            return Err(format!("echoed byte {} differs", off + i as u64));
        }
        off += n as u64;
    }
    let mut tail = [0u8; 1];
    if reader.read(&mut tail).map_err(|e| e.to_string())? != 0 {
        return Err("bytes after the echoed stream".into());
    }
    w.join().map_err(|_| "writer panicked".to_string())?
}

/// Echoes everything on `c` back, bounded by a 64 KiB staging buffer; true once the peer has
/// closed and everything went back.
fn echo_step(
    stack: &mut Stack<TapDevice>,
    c: ConnId,
    pending: &mut Vec<u8>,
    eof: &mut bool,
) -> Result<bool, String> {
    if !*eof && pending.len() < (64 << 10) {
        let mut buf = [0u8; 16 << 10];
        match stack.recv(c, &mut buf) {
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(ConnError::Eof) => *eof = true,
            Err(e) => return Err(format!("ustack recv: {e}")),
        }
    }
    if !pending.is_empty() {
        let n = stack
            .send(c, pending)
            .map_err(|e| format!("ustack send: {e}"))?;
        pending.drain(..n);
    }
    if *eof && pending.is_empty() {
        stack.close(c).map_err(|e| e.to_string())?;
        return Ok(true);
    }
    Ok(false)
}

#[test]
fn kernel_client_has_32mib_echoed_by_ustack() {
    let Some((ns, mut stack)) = topology() else {
        return;
    };
    let listener = stack.listen(7, 4).expect("listen");
    let client = ns
        .spawn(|| {
            let stream = TcpStream::connect_timeout(
                &SocketAddrV4::new(USTACK_IP, 7).into(),
                Duration::from_secs(10),
            )
            .map_err(|e| format!("kernel connect: {e}"))?;
            kernel_echo_client(stream, 7)
        })
        .expect("spawn kernel client");
    let mut conn = None;
    let (mut pending, mut eof) = (Vec::new(), false);
    run(&mut stack, "echo server", |s| {
        if conn.is_none() {
            conn = s.accept(listener).map_err(|e| e.to_string())?;
        }
        match conn {
            Some(c) => echo_step(s, c, &mut pending, &mut eof),
            None => Ok(client.is_finished()),
        }
    });
    // Let the FIN and the last ACKs out, then check what the client saw.
    run(&mut stack, "close", |_| Ok(client.is_finished()));
    client
        .join()
        .expect("client thread")
        .expect("kernel client");
    let st = stack.stats();
    assert_eq!(
        st.rx_bad_checksum + st.rx_bad_ipv4 + st.rx_runt,
        0,
        "{st:?}"
    );
    println!("echo server: stack {st:?}, link {:?}", stack.link_stats());
}

#[test]
fn ustack_client_has_32mib_echoed_by_the_kernel() {
    let Some((ns, mut stack)) = topology() else {
        return;
    };
    let listener = ns
        .run(|| TcpListener::bind(SocketAddrV4::new(KERNEL_IP, 7007)))
        .expect("enter netns")
        .expect("kernel listen");
    let server = thread::spawn(move || -> Result<u64, String> {
        let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 64 << 10];
        let mut echoed = 0;
        loop {
            let n = s.read(&mut buf).map_err(|e| format!("kernel read: {e}"))?;
            if n == 0 {
                s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
                return Ok(echoed);
            }
            s.write_all(&buf[..n])
                .map_err(|e| format!("kernel write: {e}"))?;
            echoed += n as u64;
        }
    });
    let c = stack
        .connect(SocketAddrV4::new(KERNEL_IP, 7007))
        .expect("connect");
    let pat = Pattern::new(11);
    let (mut sent, mut got) = (0u64, 0u64);
    let mut scratch = vec![0u8; 16 << 10];
    let mut closed = false;
    run(&mut stack, "client", |s| {
        if sent < TOTAL {
            let n = s
                .send_with(c, |buf| {
                    let n = buf.len().min((TOTAL - sent) as usize);
                    pat.fill(sent, &mut buf[..n]);
                    (n, n)
                })
                .map_err(|e| format!("send at {sent}: {e}"))?;
            sent += n as u64;
        } else if !closed {
            s.close(c).map_err(|e| e.to_string())?;
            closed = true;
        }
        loop {
            let r = s.recv_with(c, |data| match pat.mismatch(got, data, &mut scratch) {
                Some(i) => (0, Err(format!("echoed byte {} differs", got + i as u64))),
                None => (data.len(), Ok(data.len())),
            });
            match r {
                Ok(Ok(0)) => return Ok(false),
                Ok(Ok(n)) => got += n as u64,
                Ok(Err(e)) => return Err(e),
                Err(ConnError::Eof) if got == TOTAL => return Ok(true),
                Err(e) => return Err(format!("recv after {got} bytes: {e}")),
            }
        }
    });
    assert_eq!(
        server
            .join()
            .expect("server thread")
            .expect("kernel server"),
        TOTAL
    );
    stack.release(c).unwrap();
    println!(
        "client: stack {:?}, link {:?}",
        stack.stats(),
        stack.link_stats()
    );
}

//! The operator surface on a real chunk server and client (two ustack stacks on the simulated
//! link): the Prometheus endpoint over kernel TCP, the admin socket (its commands, the
//! connection view, and what it does with bad input), and the counters in words.
//!
//! The serving loop runs on the test's main thread, as in a server; operator clients run on
//! other threads and reach it only through the hub.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::{SimNet, Step, IP_A, IP_B};
use ustack::chunk::{
    ChunkClient, ChunkOp, ChunkServer, ClientConfig, ClientError, MemStore, ServerConfig,
};
use ustack::dev::sim::{SimConfig, SimPort};
use ustack::metrics::{
    admin_request, human_lines, AdminError, AdminServer, Hub, MetricsEndpoint, StackServerView,
};
use ustack::proto::{ChunkId, Status};

const PORT: u16 = 7000;
const WRITES: usize = 5;
const LEN: usize = 4096;

struct Rig {
    net: SimNet<SimPort>,
    server: ChunkServer<Arc<MemStore>>,
    client: ChunkClient,
    hub: Hub,
}

impl Rig {
    /// A server and a client that wrote [`WRITES`] chunks of [`LEN`] bytes, read 3 back and
    /// STATed one that does not exist.
    fn new(seed: u64) -> Rig {
        let mut net = SimNet::new(SimConfig::default().with_seed(seed), seed);
        let cfg = ServerConfig {
            connections_max: 4,
            backlog: 2,
            ..ServerConfig::default()
        };
        let server = ChunkServer::bind(&mut net.b, PORT, Arc::new(MemStore::new(1 << 26)), cfg)
            .expect("bind");
        let client = ChunkClient::connect(
            &mut net.a,
            SocketAddrV4::new(IP_B, PORT),
            &ClientConfig::default(),
            net.now,
        )
        .expect("connect");
        let mut rig = Rig {
            net,
            server,
            client,
            hub: Hub::new(),
        };
        let data = vec![7u8; LEN];
        for i in 0..WRITES {
            rig.one(ChunkOp::Write {
                id: ChunkId(i as u128 + 1),
                offset: 0,
                data: &data,
            });
        }
        for i in 0..3 {
            rig.one(ChunkOp::Read {
                id: ChunkId(i + 1),
                offset: 0,
                len: LEN as u32,
            });
        }
        let c = rig.one(ChunkOp::Stat { id: ChunkId(999) });
        assert!(
            matches!(c.result, Err(ClientError::Status(Status::NotFound))),
            "{:?}",
            c.result
        );
        rig
    }

    fn one(&mut self, op: ChunkOp<'_>) -> ustack::chunk::Completion {
        let Rig {
            net,
            server,
            client,
            ..
        } = self;
        client.submit(op, net.now).expect("submit");
        net.drive(Duration::from_secs(60), |a, b, now| {
            let busy = server.poll(b) | client.poll(a, now);
            Ok(match client.next_completion() {
                Some(c) => Step::Done(c),
                None if busy => Step::Busy,
                None => Step::Idle,
            })
        })
        .expect("request")
    }

    /// Serves operator questions (the loop's part) until every thread in `clients` has ended;
    /// returns their results. Virtual time stands still meanwhile.
    fn serve_until<T>(&mut self, clients: Vec<JoinHandle<T>>) -> Vec<T> {
        let Rig {
            net, server, hub, ..
        } = self;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        net.drive(Duration::from_secs(60), |_a, b, now| {
            hub.serve(
                now,
                &mut StackServerView {
                    stack: b,
                    server: &*server,
                },
            );
            assert!(
                std::time::Instant::now() < deadline,
                "operator clients did not finish"
            );
            Ok(if clients.iter().all(|t| t.is_finished()) {
                Step::Done(())
            } else {
                std::thread::yield_now();
                Step::Busy
            })
        })
        .expect("serving");
        clients
            .into_iter()
            .map(|t| t.join().expect("client thread"))
            .collect()
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0,text/plain;q=0.5";

fn http_get(addr: std::net::SocketAddr, path: &str, accept: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the answer");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.to_string(), body.to_string())
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[test]
fn prometheus_endpoint_counts_what_the_client_did() {
    let mut rig = Rig::new(1);
    let ep = MetricsEndpoint::start("127.0.0.1:0".parse().unwrap(), rig.hub.clone())
        .expect("metrics endpoint");
    let addr = ep.local_addr();
    let get = std::thread::spawn(move || {
        // A scraper that connects, sends half a request and is never heard from again: the
        // other serving thread answers meanwhile, and the loop is not involved.
        let mut stuck = TcpStream::connect(addr).unwrap();
        stuck.write_all(b"GET /metr").unwrap();
        let metrics = http_get(addr, "/metrics", OPENMETRICS);
        // Oversized heads are refused.
        let mut big = TcpStream::connect(addr).unwrap();
        big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = big.write_all(
            format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000)).as_bytes(),
        );
        let mut answer = String::new();
        let _ = big.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        drop(stuck);
        let classic = http_get(addr, "/metrics", "*/*");
        let missing = http_get(addr, "/nope", "*/*");
        (metrics, classic, missing)
    });
    let ((head, body), (classic_head, classic), (missing_head, _)) =
        rig.serve_until(vec![get]).pop().unwrap();
    // Without OpenMetrics in Accept: the classic text format, counters named with _total.
    assert!(
        classic_head.contains("text/plain; version=0.0.4"),
        "{classic_head}"
    );
    assert!(classic.contains("# TYPE ustack_chunk_requests_total counter"));
    assert!(classic.contains("# HELP ustack_chunk_requests_total "));
    assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(missing_head.starts_with("HTTP/1.1 404"), "{missing_head}");
    let s =
        |series: &str| sample(&body, series).unwrap_or_else(|| panic!("no {series} in\n{body}"));
    assert_eq!(
        s(r#"ustack_chunk_requests_total{op="write",status="ok"}"#),
        WRITES as f64
    );
    assert_eq!(
        s(r#"ustack_chunk_requests_total{op="read",status="ok"}"#),
        3.0
    );
    assert_eq!(
        s(r#"ustack_chunk_requests_total{op="stat",status="not_found"}"#),
        1.0
    );
    assert_eq!(
        s(r#"ustack_chunk_payload_bytes_total{op="write"}"#),
        (WRITES * LEN) as f64
    );
    assert_eq!(
        s(r#"ustack_chunk_payload_bytes_total{op="read"}"#),
        (3 * LEN) as f64
    );
    assert_eq!(
        s(r#"ustack_chunk_service_seconds_count{op="write"}"#),
        WRITES as f64
    );
    assert_eq!(
        s(r#"ustack_chunk_service_seconds_bucket{le="+Inf",op="write"}"#),
        WRITES as f64
    );
    assert_eq!(s(r#"ustack_chunk_connections{kind="open"}"#), 1.0);
    assert_eq!(s(r#"ustack_tcp_connections{state="ESTAB"}"#), 1.0);
    assert!(s(r#"ustack_device_frames_total{direction="rx"}"#) > 0.0);
    assert!(s(r#"ustack_stack_rx_frames_total"#) > 0.0);
    assert_eq!(s("ustack_snapshot_age_seconds"), 0.0);
    assert!(body.ends_with("# EOF\n"), "no EOF marker");
    // Every series the Grafana dashboard in docs/ queries is exposed.
    let dash = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring/grafana-dashboard.json"),
    )
    .expect("the dashboard");
    let mut names: Vec<&str> = dash
        .match_indices("ustack_")
        .map(|(i, _)| {
            let rest = &dash[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for n in names {
        assert!(
            body.lines()
                .any(|l| l.starts_with(n) && l[n.len()..].starts_with(['{', ' '])),
            "the dashboard queries {n}, which the server does not expose"
        );
    }
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        assert!(l.starts_with("ustack_"), "a sample without the prefix: {l}");
    }
    drop(ep);
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ustack-metrics-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Sends raw bytes and returns the whole answer.
fn raw(path: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn admin_socket_answers_commands_and_refuses_bad_input() {
    let mut rig = Rig::new(2);
    let dir = tmp_dir("admin");
    let path = dir.join("admin.sock");
    let admin = AdminServer::start(&path, rig.hub.clone()).expect("admin socket");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the admin socket must be owner-only");
    // A second server on the same path is refused while this one lives.
    let again = AdminServer::start(&path, Hub::new()).unwrap_err();
    assert!(matches!(again, AdminError::InUse { .. }), "{again}");

    let p = path.clone();
    let client = std::thread::spawn(move || {
        let wait = Duration::from_secs(10);
        // A client that connects, sends half a line and never reads: others still get served.
        let mut idle = UnixStream::connect(&p).unwrap();
        idle.write_all(b"sta").unwrap();
        let help = admin_request(&p, "help", wait).unwrap();
        let stats = admin_request(&p, "stats", wait).unwrap();
        let conns = admin_request(&p, "connections", wait).unwrap();
        let unknown = admin_request(&p, "frobnicate", wait)
            .unwrap_err()
            .to_string();
        let capture = admin_request(&p, "capture start relative.pcap --packets 1", wait)
            .unwrap_err()
            .to_string();
        let long = raw(&p, &vec![b'x'; 5000]);
        let cut = raw(&p, b"stats");
        // Many at once.
        let many: Vec<_> = (0..12)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || admin_request(&p, "stats", wait))
            })
            .collect();
        let many_ok = many
            .into_iter()
            .map(|t| t.join().unwrap().is_ok())
            .filter(|ok| *ok)
            .count();
        drop(idle);
        (help, stats, conns, unknown, capture, long, cut, many_ok)
    });
    let (help, stats, conns, unknown, capture, long, cut, many_ok) =
        rig.serve_until(vec![client]).pop().unwrap();
    assert!(help.contains("capture start"), "{help}");
    assert!(
        stats.contains("requests answered: ping 0 write 5 read 3 delete 0 stat 1 list 0;"),
        "{stats}"
    );
    assert!(stats.contains("errors: 1 (not found 1)"), "{stats}");
    // The connection view: the client's connection, with the client's address and the bytes
    // the server received (5 WRITE payloads and every request header).
    let line = conns
        .lines()
        .find(|l| l.contains("ESTAB"))
        .unwrap_or_else(|| panic!("no established connection in\n{conns}"));
    assert!(line.contains(&format!("{IP_B}:{PORT}")), "{line}");
    assert!(line.contains(&format!("{IP_A}:")), "{line}");
    let received: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bytes_received:"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no bytes_received in {line}"));
    assert!(received > (WRITES * LEN) as u64, "{line}");
    assert!(conns.contains("LISTEN"), "{conns}");
    assert!(
        unknown.contains("unknown command `frobnicate`"),
        "{unknown}"
    );
    assert!(capture.contains("absolute"), "{capture}");
    assert!(long.starts_with("error: request longer than"), "{long}");
    assert!(
        cut.starts_with("error: the request line was cut short"),
        "{cut}"
    );
    assert_eq!(many_ok, 12, "every one of many clients at once is answered");

    // The file goes with the server; a stale one is replaced, another file is not.
    drop(admin);
    assert!(!path.exists());
    std::fs::write(&path, b"not a socket").unwrap();
    let e = AdminServer::start(&path, Hub::new()).unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
    std::fs::remove_file(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn counters_read_in_words() {
    let mut rig = Rig::new(3);
    let Rig {
        net, server, hub, ..
    } = &mut rig;
    let now = net.now;
    let snap = hub.publish(
        now,
        &mut StackServerView {
            stack: &mut net.b,
            server: &*server,
        },
    );
    let lines = human_lines(&snap);
    let all = lines.join("\n");
    assert!(
        all.contains("server (sim): connections 1 open of 4"),
        "{all}"
    );
    assert!(all.contains("errors: 1 (not found 1)"), "{all}");
    assert!(all.contains("service time: write p50 <="), "{all}");
    assert!(all.contains("stack: sockets"), "{all}");
    assert!(all.contains("device sim: link up"), "{all}");
    for l in &lines {
        assert!(!l.contains("{ "), "a Debug struct in a human line: {l}");
    }
}

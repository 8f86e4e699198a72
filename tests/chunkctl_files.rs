//! `chunkctl put` and `get` with real files against the example file server (kernel TCP on
//! loopback; the file commands do not depend on the backend): ids that do not collide across PID
//! namespaces, manifests that must cover the file, a failed get that leaves nothing under the
//! output name, an interrupted put that leaves no chunk behind, and `ls` and `gc` finding and
//! removing the chunks a killed put left.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{example_binary, Rng, TempDir, Watched};

/// The example file server on 127.0.0.1 (a free port), `store` as given.
struct Server {
    proc: Option<Watched>,
    addr: String,
}

impl Server {
    fn start(store: &str) -> Server {
        let mut proc = Watched::spawn(
            Command::new(example_binary("fileserver"))
                .args(["--backend", "kernel", "--listen", "127.0.0.1:0"])
                .args(["--connections-max", "128", "--create", "--store", store])
                .env("RUST_LOG", "warn"),
            "fileserver",
        );
        let line = proc
            .wait_for_line("fileserver: listening on ", Duration::from_secs(30))
            .unwrap();
        let addr = line["fileserver: listening on ".len()..].trim().to_string();
        Server {
            proc: Some(proc),
            addr,
        }
    }

    fn chunkctl(&self) -> Command {
        let mut c = Command::new(example_binary("chunkctl"));
        c.args(["--backend", "kernel", "--server", &self.addr])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        c
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.terminate(Duration::from_secs(5));
        }
    }
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("run chunkctl")
}

/// Runs the example `name` with `args` to its end (no input, warnings only in its log).
fn run_example(name: &str, args: &[&str]) -> Output {
    let mut c = Command::new(example_binary(name));
    c.args(args).env("RUST_LOG", "warn").stdin(Stdio::null());
    run(c)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A file of `len` pseudo-random bytes from `seed`.
fn random_file(path: &Path, len: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
    std::fs::write(path, data).unwrap();
}

/// Puts `file` (chunks of `chunk`) and returns the manifest's text.
fn put(s: &Server, file: &Path, chunk: &str) -> String {
    let mut c = s.chunkctl();
    c.args(["put", "--chunk-size", chunk]).arg(file);
    let out = run(c);
    assert!(out.status.success(), "put failed: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Runs `get` of `manifest` into `out`; returns whether it succeeded and its standard error.
fn get(s: &Server, manifest: &Path, out: &Path) -> (bool, String) {
    let mut c = s.chunkctl();
    c.arg("get").arg(manifest).arg("--out").arg(out);
    let o = run(c);
    (o.status.success(), text(&o.stderr))
}

/// Names in `dir` other than those given.
fn other_files(dir: &Path, known: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !known.contains(&n.as_str()))
        .collect();
    v.sort();
    v
}

/// Chunk files in a DirStore directory (`<dir>/<ff>/<32 hex digits>`).
fn stored_chunks(store: &Path) -> usize {
    let mut n = 0;
    for sub in std::fs::read_dir(store).unwrap() {
        let sub = sub.unwrap().path();
        if !sub.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&sub).unwrap() {
            let name = f.unwrap().file_name();
            let name = name.to_string_lossy();
            if name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                n += 1;
            }
        }
    }
    n
}

/// Fifty puts at once, each chunkctl PID 1 of a PID namespace of its own (as in containers),
/// then every file back: fifty distinct manifests and fifty intact files. Chunk ids built
/// from the pid and the time collided here (3 of 15 in the run).
#[test]
fn puts_in_fifty_pid_namespaces_do_not_collide() {
    if !common::is_root() {
        common::skip("PID namespaces (unshare --pid) need root");
        return;
    }
    let dir = TempDir::fresh("ustack-chunkctl-pidns");
    let s = Server::start("mem");
    const N: usize = 50;
    let files: Vec<PathBuf> = (0..N)
        .map(|i| {
            let f = dir.0.join(format!("file{i}"));
            random_file(&f, 40_000 + i * 997, 1000 + i as u64);
            f
        })
        .collect();
    let children: Vec<_> = files
        .iter()
        .map(|f| {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--kill-child"])
                .arg(example_binary("chunkctl"))
                .args(["--backend", "kernel", "--server", &s.addr])
                .args(["put", "--chunk-size", "8KiB"])
                .arg(f)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c.spawn().expect("unshare (util-linux)")
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "put {i} in its PID namespace: {}",
            text(&out.stderr)
        );
        let manifest = text(&out.stdout);
        for line in manifest.lines().skip(1) {
            let id = line.split_whitespace().next().unwrap().to_string();
            assert!(ids.insert(id.clone()), "chunk id {id} chosen twice");
        }
        std::fs::write(dir.0.join(format!("file{i}.manifest")), manifest).unwrap();
    }
    for (i, f) in files.iter().enumerate() {
        let back = dir.0.join(format!("file{i}.back"));
        let (ok, err) = get(&s, &dir.0.join(format!("file{i}.manifest")), &back);
        assert!(ok, "get {i}: {err}");
        assert!(
            std::fs::read(f).unwrap() == std::fs::read(&back).unwrap(),
            "file {i} came back different"
        );
    }
    println!(
        "{N} puts in PID namespaces: {} distinct chunk ids, every file intact",
        ids.len()
    );
}

/// A manifest that does not describe the whole file is refused, naming the line, and nothing
/// is written under the output name (nor left beside it).
#[test]
fn get_refuses_a_manifest_that_does_not_cover_the_file() {
    let dir = TempDir::fresh("ustack-chunkctl-manifest");
    let s = Server::start("mem");
    let file = dir.0.join("data");
    random_file(&file, 100_000, 7);
    let manifest = put(&s, &file, "16KiB");
    let lines: Vec<&str> = manifest.lines().collect();
    assert_eq!(lines.len(), 1 + 7, "{manifest}");
    assert!(lines[0].starts_with("ustack-manifest 1 length=100000 chunks=7"));

    let with = |lines: &[&str]| lines.join("\n") + "\n";
    let mut dup = lines.clone();
    dup.insert(3, lines[2]);
    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    let mut no_header = lines.clone();
    no_header.remove(0);
    let mut wrong_version = lines.clone();
    let v2 = lines[0].replace("ustack-manifest 1", "ustack-manifest 2");
    wrong_version[0] = &v2;
    let mut garbage = lines.clone();
    garbage[4] = "this is not a chunk";
    let mut long_len = lines.clone();
    let l = lines[0].replace("length=100000", "length=100001");
    long_len[0] = &l;
    let mut bad_crc = lines.clone();
    let crc = format!("{} zz", lines[5].rsplit_once(' ').unwrap().0);
    bad_crc[5] = &crc;
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty", String::new(), "empty"),
        (
            "line deleted",
            with(&[&lines[..3], &lines[4..]].concat()),
            "line 4",
        ),
        ("line repeated", with(&dup), "line 4"),
        ("lines swapped", with(&swapped), "line 3"),
        ("no header", with(&no_header), "line 1"),
        ("version 2", with(&wrong_version), "version"),
        ("garbage", with(&garbage), "line 5"),
        ("length too long", with(&long_len), "100001"),
        ("bad CRC", with(&bad_crc), "line 6"),
        ("trailing line", manifest.clone() + "extra\n", "line 9"),
    ];
    for (what, m, says) in cases {
        let mpath = dir.0.join("m");
        std::fs::write(&mpath, m).unwrap();
        let out = dir.0.join("out");
        let (ok, err) = get(&s, &mpath, &out);
        assert!(!ok, "{what}: get accepted it");
        assert!(
            err.contains(says),
            "{what}: the error should say {says:?}: {err}"
        );
        assert_eq!(
            other_files(&dir.0, &["data", "m"]),
            Vec::<String>::new(),
            "{what}: get left a file"
        );
    }
    // The manifest as put wrote it still works.
    std::fs::write(dir.0.join("m"), &manifest).unwrap();
    let (ok, err) = get(&s, &dir.0.join("m"), &dir.0.join("out"));
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(dir.0.join("out")).unwrap()
    );
}

/// A chunk missing on the server: get says which one and that it was not found, and leaves no
/// file under the output name. Bad chunk sizes are refused before anything is written.
#[test]
fn a_failed_get_leaves_no_file_and_says_why() {
    let dir = TempDir::fresh("ustack-chunkctl-failed-get");
    let s = Server::start("mem");
    let file = dir.0.join("data");
    random_file(&file, 50_000, 9);
    let manifest = put(&s, &file, "16KiB");
    let mpath = dir.0.join("m");
    std::fs::write(&mpath, &manifest).unwrap();
    let victim = manifest
        .lines()
        .nth(2)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let mut c = s.chunkctl();
    c.args(["delete", victim]);
    assert!(run(c).status.success());
    let out = dir.0.join("out");
    std::fs::write(&out, b"an older file of the same name").unwrap();
    let (ok, err) = get(&s, &mpath, &out);
    assert!(!ok);
    assert!(err.contains(victim) && err.contains("not found"), "{err}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        b"an older file of the same name",
        "the old file under the output name is left as it was"
    );
    assert_eq!(
        other_files(&dir.0, &["data", "m", "out"]),
        Vec::<String>::new()
    );

    for size in ["0", "8MiB"] {
        let mut c = s.chunkctl();
        c.args(["put", "--chunk-size", size]).arg(&file);
        let o = run(c);
        assert!(!o.status.success(), "--chunk-size {size} accepted");
        assert!(
            text(&o.stderr).contains("--chunk-size"),
            "{}",
            text(&o.stderr)
        );
        assert!(o.stdout.is_empty(), "no manifest for a refused put");
    }
}

/// SIGINT in the middle of a put: it deletes what it wrote, prints no manifest and fails; the
/// store holds no chunk afterwards.
#[test]
fn an_interrupted_put_leaves_no_chunk_behind() {
    let dir = TempDir::fresh("ustack-chunkctl-interrupt");
    let store = dir.0.join("store");
    let s = Server::start(&format!("dir:{}", store.display()));
    let file = dir.0.join("data");
    random_file(&file, 64 << 20, 11);
    let child = s
        .chunkctl()
        .args(["put", "--chunk-size", "64KiB"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while stored_chunks(&store) < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the put wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    ustack::host::signal::send(child.id(), libc::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "an interrupted put succeeded: {err}");
    assert!(err.contains("deleted"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "a manifest for an interrupted put: {}",
        text(&out.stdout)
    );
    assert_eq!(stored_chunks(&store), 0, "chunks left behind: {err}");
}

/// A store directory that does not exist is an error unless --create says to make it (a
/// mistyped path used to open a new, empty store); the memory store says at start that it
/// keeps nothing.
#[test]
fn a_missing_store_directory_is_an_error_without_create() {
    let dir = TempDir::fresh("ustack-chunkctl-nostore");
    let missing = dir.0.join("chunsk");
    let store = format!("dir:{}", missing.display());
    let out = run_example(
        "fileserver",
        &[
            "--backend",
            "kernel",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &store,
        ],
    );
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not exist") && err.contains("--create"),
        "{err}"
    );
    assert!(!missing.exists(), "the directory was created anyway");

    let mut mem = Server::start("mem");
    let p = mem.proc.take().unwrap();
    let (_, _, printed) = p.terminate(Duration::from_secs(5));
    assert!(printed.contains("lost when the server exits"), "{printed}");
}

/// A ustack client whose --ip is on another subnet than --server is refused at once, saying
/// so (it used to wait 10 s and report that it could not connect).
#[test]
fn a_server_off_the_clients_subnet_is_refused_at_once() {
    let out = run_example(
        "chunkctl",
        &[
            "--backend",
            "memif",
            "--memif-socket",
            "/nonexistent/ustack.sock",
            "--ip",
            "10.215.0.2/24",
            "--server",
            "10.214.0.1:7000",
            "ping",
        ],
    );
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("not on --ip") && err.contains("subnet"),
        "{err}"
    );
}

/// The kernel backend takes host names and IPv6 addresses: `localhost:PORT` against a server
/// on 127.0.0.1, and a server listening on `[::1]` reached as `[::1]:PORT`.
#[test]
fn host_names_and_ipv6_with_the_kernel_backend() {
    let s = Server::start("mem");
    let port = s.addr.rsplit_once(':').unwrap().1.to_string();
    let out = run_example(
        "chunkctl",
        &["--server", &format!("localhost:{port}"), "ping"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("answered PING"));

    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("no IPv6 loopback here: the IPv6 half is not run");
        return;
    }
    let mut v6 = Watched::spawn(
        Command::new(example_binary("fileserver"))
            .args([
                "--backend",
                "kernel",
                "--listen",
                "[::1]:0",
                "--store",
                "mem",
            ])
            .env("RUST_LOG", "warn"),
        "fileserver on [::1]",
    );
    let line = v6
        .wait_for_line("fileserver: listening on ", Duration::from_secs(30))
        .unwrap();
    let addr = line["fileserver: listening on ".len()..].trim().to_string();
    assert!(addr.starts_with("[::1]:"), "{addr}");
    let out = run_example("chunkctl", &["--server", &addr, "ping"]);
    v6.terminate(Duration::from_secs(5));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `bench` deletes the chunks it wrote when it ends, reads and writes alike.
#[test]
fn bench_leaves_no_chunk_behind() {
    let dir = TempDir::fresh("ustack-chunkctl-bench");
    let store = dir.0.join("store");
    let s = Server::start(&format!("dir:{}", store.display()));
    for op in ["read", "write"] {
        let mut c = s.chunkctl();
        c.args(["--connections", "2", "bench", "--op", op, "--size", "16KiB"])
            .args(["--duration-s", "1", "--chunks", "8"]);
        let out = run(c);
        assert!(out.status.success(), "bench {op}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("RESULT"));
        assert_eq!(stored_chunks(&store), 0, "bench {op} left chunks");
    }
}

/// `chunkctl ls`: the `ID SIZE` lines, as (id, size).
fn ls(s: &Server) -> Vec<(String, u64)> {
    let mut c = s.chunkctl();
    c.arg("ls");
    let out = run(c);
    assert!(out.status.success(), "ls failed: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| {
            let (id, size) = l.split_once(' ').expect("ID SIZE");
            assert_eq!(id.len(), 32, "{l}");
            (id.to_string(), size.parse().expect("a size"))
        })
        .collect()
}

/// The (id, length) of each chunk a manifest names.
fn manifest_chunks(manifest: &str) -> Vec<(String, u64)> {
    manifest
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[2].parse().unwrap())
        })
        .collect()
}

fn sorted(mut v: Vec<(String, u64)>) -> Vec<(String, u64)> {
    v.sort();
    v
}

/// A put SIGKILLed part way leaves chunks no manifest names: `ls` lists them with the chunks of
/// a completed put; `gc` with a malformed manifest deletes nothing; `gc --dry-run` names exactly
/// the orphans and deletes nothing; `gc --keep` deletes exactly the orphans, and the kept file
/// still comes back byte for byte. Against the directory store and the memory store.
#[test]
fn gc_removes_exactly_the_chunks_a_killed_put_left() {
    for store in ["dir", "mem"] {
        let dir = TempDir::fresh(&format!("ustack-chunkctl-gc-{store}"));
        let spec = match store {
            "dir" => format!("dir:{}", dir.0.join("store").display()),
            _ => "mem".to_string(),
        };
        let s = Server::start(&spec);
        let kept_file = dir.0.join("kept");
        random_file(&kept_file, 200_000, 13);
        let manifest = put(&s, &kept_file, "16KiB");
        let mpath = dir.0.join("kept.manifest");
        std::fs::write(&mpath, &manifest).unwrap();
        let kept = sorted(manifest_chunks(&manifest));
        assert_eq!(kept.len(), 13);
        assert_eq!(sorted(ls(&s)), kept, "{store}: ls lists the completed put");

        // A put of many small chunks (the file is sparse: its bytes do not matter), killed
        // with SIGKILL once it has written a few: it cannot clean up.
        let big = dir.0.join("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        let mut child = s
            .chunkctl()
            .args(["put", "--chunk-size", "4KiB"])
            .arg(&big)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while ls(&s).len() < kept.len() + 4 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{store}: the put wrote nothing"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "{store}: the put ended before it was killed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        assert!(out.stdout.is_empty(), "a killed put printed a manifest");
        // The WRITE the server was running when the client died lands, or not, now.
        std::thread::sleep(Duration::from_millis(300));

        let all = sorted(ls(&s));
        let orphans: Vec<(String, u64)> =
            all.iter().filter(|c| !kept.contains(c)).cloned().collect();
        assert!(orphans.len() >= 4, "{store}: {} orphans", orphans.len());
        assert!(kept.iter().all(|c| all.contains(c)));
        assert!(orphans.iter().all(|(_, size)| *size == 4096));
        if store == "dir" {
            assert_eq!(stored_chunks(&dir.0.join("store")), all.len());
        }
        let mut c = s.chunkctl();
        c.args(["ls", "--orphans"]).arg(&mpath);
        let o = run(c);
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert_eq!(
            text(&o.stdout).lines().count(),
            orphans.len(),
            "{store}: ls --orphans"
        );

        // A manifest that does not parse: gc refuses, naming the file and line, and deletes
        // nothing.
        let bad = dir.0.join("bad.manifest");
        let mut broken: Vec<&str> = manifest.lines().collect();
        broken[3] = "not a chunk line";
        std::fs::write(&bad, broken.join("\n") + "\n").unwrap();
        let mut c = s.chunkctl();
        c.args(["gc", "--keep"]).arg(&mpath).arg(&bad);
        let o = run(c);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{store}: gc accepted a bad manifest");
        assert!(
            err.contains("bad.manifest") && err.contains("line 4") && err.contains("nothing"),
            "{err}"
        );
        assert_eq!(
            sorted(ls(&s)),
            all,
            "{store}: gc deleted with a bad manifest"
        );

        // A dry run names exactly the orphans and deletes nothing.
        let mut c = s.chunkctl();
        c.args(["gc", "--dry-run", "--keep"]).arg(&mpath);
        let o = run(c);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let said = text(&o.stdout);
        let would: Vec<(String, u64)> = said
            .lines()
            .filter_map(|l| l.strip_prefix("would delete "))
            .map(|l| {
                let (id, size) = l.split_once(' ').unwrap();
                (id.to_string(), size.parse().unwrap())
            })
            .collect();
        assert_eq!(sorted(would), orphans, "{store}: {said}");
        assert!(
            said.contains(&format!("kept {} chunks", kept.len())),
            "{said}"
        );
        assert_eq!(sorted(ls(&s)), all, "{store}: a dry run deleted");

        // The real thing.
        let mut c = s.chunkctl();
        c.args(["gc", "--keep"]).arg(&mpath);
        let o = run(c);
        let said = text(&o.stdout);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let freed: u64 = orphans.iter().map(|(_, size)| size).sum();
        assert!(
            said.contains(&format!(
                "kept {} chunks, deleted {} chunks, {freed} bytes freed",
                kept.len(),
                orphans.len()
            )),
            "{said}"
        );
        assert_eq!(sorted(ls(&s)), kept, "{store}: after gc");
        if store == "dir" {
            assert_eq!(stored_chunks(&dir.0.join("store")), kept.len());
        }
        let back = dir.0.join("kept.back");
        let (ok, err) = get(&s, &mpath, &back);
        assert!(ok, "{err}");
        assert!(
            std::fs::read(&kept_file).unwrap() == std::fs::read(&back).unwrap(),
            "{store}: the kept file came back different"
        );
    }
}

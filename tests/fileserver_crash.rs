//! DirStore durability with real processes: the example file server (kernel-TCP backend, directory
//! store, sync always) is killed with SIGKILL in the middle of a pipelined write load (creates and
//! overwrites), restarted on the same directory, and every chunk is read back: each acknowledged
//! WRITE is intact; a WRITE in flight at the kill is either absent or fully applied, never torn.
//! Every block read back passes the store's checksum check (no `Corrupt`), and after each round
//! `fileserver --scrub` finds every chunk file and its checksum trailer intact.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Rng, TempDir};
use ustack::chunk::{ChunkOp, ClientConfig, ClientError, SubmitError};
use ustack::net::KernelClient;
use ustack::proto::{ChunkId, Reply, Status};
use ustack::Instant;

/// A running server process and the address it listens on.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(bin: &Path, dir: &Path) -> Server {
        let mut child = Command::new(bin)
            .args([
                "--backend",
                "kernel",
                "--listen",
                "127.0.0.1:0",
                "--sync",
                "always",
                "--create",
                "--store",
            ])
            .arg(format!("dir:{}", dir.display()))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start fileserver");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("fileserver exited before listening")
                .unwrap();
            if let Some(a) = line.strip_prefix("fileserver: listening on ") {
                break a.trim().parse().expect("listen address");
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, addr }
    }

    fn kill(mut self) {
        // SIGKILL, to this child only (by its PID).
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn content(id: u128, version: u32, len: usize) -> Vec<u8> {
    let mut rng = Rng::new((id as u64) ^ (u64::from(version) << 40));
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

#[derive(Default, Clone)]
struct ChunkModel {
    /// Content after the last acknowledged WRITE (None: never acknowledged).
    acked: Option<Vec<u8>>,
    /// Content if the WRITE in flight was applied.
    pending: Option<Vec<u8>>,
}

fn apply(base: Option<&Vec<u8>>, offset: usize, data: &[u8]) -> Vec<u8> {
    let mut c = base.cloned().unwrap_or_default();
    if c.len() < offset + data.len() {
        c.resize(offset + data.len(), 0);
    }
    c[offset..offset + data.len()].copy_from_slice(data);
    c
}

/// Judges a WRITE completion: acknowledged means the in-flight content is now the acknowledged
/// one; a lost connection leaves it in flight (absent or applied after the restart).
fn settle(
    model: &mut HashMap<u128, ChunkModel>,
    id: u128,
    result: &Result<Reply, ClientError>,
    killed: bool,
) -> bool {
    let m = model.get_mut(&id).unwrap();
    match result {
        Ok(Reply::Write { chunk_size }) => {
            let new = m.pending.take().unwrap();
            assert_eq!(*chunk_size, new.len() as u64);
            m.acked = Some(new);
            true
        }
        Err(ClientError::ConnectionLost) if killed => false,
        r => panic!("write to {id:x} ended with {r:?} (server killed: {killed})"),
    }
}

/// Writes until `acks` WRITEs were acknowledged, keeping up to `depth` in flight (one per chunk),
/// then returns with requests still in flight (request id -> chunk).
fn load(
    client: &mut KernelClient,
    model: &mut HashMap<u128, ChunkModel>,
    rng: &mut Rng,
    acks: usize,
    version: &mut u32,
) -> HashMap<u64, u128> {
    let depth = 16;
    let mut in_flight: HashMap<u64, u128> = HashMap::new();
    let mut acked = 0;
    while acked < acks {
        while in_flight.len() < depth {
            // A new chunk, or an overwrite/extension of one with nothing in flight.
            let id = if model.is_empty() || rng.below(3) == 0 {
                0xc0de_0000_0000u128 + model.len() as u128
            } else {
                let k = rng.below(model.len() as u64) as u128;
                0xc0de_0000_0000u128 + k
            };
            if in_flight.values().any(|&v| v == id) {
                break;
            }
            let m = model.entry(id).or_default();
            let len = 1 + rng.below(4 << 20) as usize;
            let offset = match &m.acked {
                Some(c) if !c.is_empty() => rng.below(c.len() as u64) as usize,
                _ => 0,
            };
            *version += 1;
            let data = content(id, *version, len);
            let op = ChunkOp::Write {
                id: ChunkId(id),
                offset: offset as u64,
                data: &data,
            };
            match client.submit(op, Instant::now()) {
                Ok(rid) => {
                    m.pending = Some(apply(m.acked.as_ref(), offset, &data));
                    in_flight.insert(rid, id);
                }
                // Staging buffers all busy with big writes: wait for completions.
                Err(SubmitError::NoBuffer) => break,
                Err(e) => panic!("submit: {e}"),
            }
        }
        client.poll(Instant::now(), Duration::from_millis(10));
        while let Some(c) = client.next_completion() {
            let id = in_flight.remove(&c.request_id).expect("known request");
            if settle(model, id, &c.result, false) {
                acked += 1;
            }
        }
        assert!(!client.is_broken(), "connection failed before the kill");
    }
    in_flight
}

#[test]
fn sigkilled_server_keeps_every_acknowledged_write() {
    let bin = common::example_binary("fileserver");
    let dir = TempDir(std::env::temp_dir().join(format!("ustack-crash-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let cfg = ClientConfig {
        request_timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    };
    let mut model: HashMap<u128, ChunkModel> = HashMap::new();
    let mut rng = Rng::new(2026);
    let mut version = 0;
    let mut lost_in_flight = 0;
    for round in 0..3 {
        let server = Server::start(&bin, &dir.0);
        let mut client = KernelClient::connect(server.addr, &cfg).expect("connect");
        let mut in_flight = load(
            &mut client,
            &mut model,
            &mut rng,
            20 + round * 10,
            &mut version,
        );
        // Kill it with writes in flight.
        let pending = in_flight.len();
        server.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !in_flight.is_empty() && Instant::now() < deadline {
            client.poll(Instant::now(), Duration::from_millis(10));
            while let Some(c) = client.next_completion() {
                // Nothing is silently lost: every request in flight fails with ConnectionLost,
                // or was answered just before the kill (then it is acknowledged).
                let id = in_flight.remove(&c.request_id).expect("known request");
                if !settle(&mut model, id, &c.result, true) {
                    lost_in_flight += 1;
                }
            }
        }
        assert!(
            in_flight.is_empty(),
            "every request in flight at the kill completed"
        );
        println!("round {round}: killed with {pending} writes in flight");

        // Restart on the same directory and check every chunk.
        let server = Server::start(&bin, &dir.0);
        let mut client = KernelClient::connect(server.addr, &cfg).expect("reconnect");
        let (mut intact, mut applied, mut absent) = (0, 0, 0);
        for (&id, m) in model.iter_mut() {
            let stat = client
                .call(ChunkOp::Stat { id: ChunkId(id) })
                .expect("stat")
                .result;
            assert!(
                !matches!(stat, Err(ClientError::Status(Status::Corrupt))),
                "round {round}: chunk {id:x}: STAT says Corrupt after the restart"
            );
            let now = match stat {
                Err(ClientError::Status(Status::NotFound)) => None,
                Ok(Reply::Stat { chunk_size, .. }) => {
                    let mut data = Vec::with_capacity(chunk_size as usize);
                    while (data.len() as u64) < chunk_size {
                        let len = (chunk_size - data.len() as u64).min(4 << 20) as u32;
                        let c = client
                            .call(ChunkOp::Read {
                                id: ChunkId(id),
                                offset: data.len() as u64,
                                len,
                            })
                            .expect("read");
                        assert!(
                            c.result.is_ok(),
                            "round {round}: read {id:x} at {}: {:?} (Corrupt: the checksums do not match the data after recovery)",
                            data.len(),
                            c.result
                        );
                        data.extend_from_slice(c.data());
                    }
                    Some(data)
                }
                r => panic!("stat {id:x}: {r:?}"),
            };
            let acked_ok = now == m.acked;
            let pending_ok = m.pending.is_some() && now == m.pending;
            assert!(
                acked_ok || pending_ok,
                "chunk {id:x} is torn or lost: {} bytes on disk, acknowledged {:?} bytes, in-flight {:?} bytes",
                now.as_ref().map_or(0, Vec::len),
                m.acked.as_ref().map(Vec::len),
                m.pending.as_ref().map(Vec::len)
            );
            if pending_ok && !acked_ok {
                applied += 1;
            } else if now.is_none() {
                absent += 1;
            } else {
                intact += 1;
            }
            // What is on disk now is the truth for the next round.
            m.acked = now;
            m.pending = None;
        }
        println!("round {round}: {intact} chunks as acknowledged, {applied} in-flight writes fully applied, {absent} in-flight creates absent");
        server.kill();
        // Every chunk file on disk, block by block, with its checksum trailer.
        let out = Command::new(&bin)
            .arg("--scrub")
            .arg("--store")
            .arg(format!("dir:{}", dir.0.display()))
            .env("RUST_LOG", "warn")
            .output()
            .expect("run fileserver --scrub");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: the scrub after the restart found damage:\n{text}"
        );
        assert!(text.contains("damaged=0"), "{text}");
    }
    assert!(
        lost_in_flight > 0,
        "the kills landed while writes were in flight"
    );
}

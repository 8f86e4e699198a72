use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

// ---- a real crash: SIGKILL in the middle of writes ------------------------------------------

const CRASH_CHILD_ENV: &str = "USTACK_DIRSTORE_CRASH_DIR";
const CRASH_CHUNKS: u64 = 12;
const SEGMENT_HEADER_LEN: usize = 32;

fn crash_chunk_id(k: u64) -> ChunkId {
    ChunkId(0xfeed_0000_0000_0000_0000_0000_0000_0000 | u128::from(k) << 64 | u128::from(k))
}

/// The payload of segment `idx` of generation `gen` of a chunk: bytes nobody else writes.
fn segment(id: ChunkId, gen: u32, idx: u32, payload_len: usize) -> Vec<u8> {
    // Cheap to generate (the child spends its time in the store, not here), and different
    // at every position for every (chunk, gen, idx).
    let seed = (id.0 as u64) ^ u64::from(gen) << 32 ^ u64::from(idx) ^ 0x5E6;
    let mut payload = vec![0u8; payload_len.next_multiple_of(8)];
    for (i, word) in payload.chunks_exact_mut(8).enumerate() {
        let v = (seed ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        word.copy_from_slice(&(v ^ v >> 32).to_le_bytes());
    }
    payload.truncate(payload_len);
    let mut seg = Vec::with_capacity(SEGMENT_HEADER_LEN + payload_len);
    seg.extend_from_slice(b"SEG1");
    seg.extend_from_slice(&gen.to_le_bytes());
    seg.extend_from_slice(&idx.to_le_bytes());
    seg.extend_from_slice(&(payload_len as u32).to_le_bytes());
    seg.extend_from_slice(&(id.0 as u64).to_le_bytes());
    seg.extend_from_slice(&crc32c(&payload).to_le_bytes());
    let crc = crc32c(&seg);
    seg.extend_from_slice(&crc.to_le_bytes());
    seg.extend_from_slice(&payload);
    seg
}

/// A chunk's state if its content is intact: (generation, segments), or why it is not.
fn parse_chunk(id: ChunkId, content: &[u8]) -> Result<(u32, u32), String> {
    let mut at = 0;
    let mut gen = None;
    let mut idx = 0u32;
    while at < content.len() {
        let rest = &content[at..];
        if rest.len() < SEGMENT_HEADER_LEN {
            return Err(format!("{} stray bytes at {at}", rest.len()));
        }
        let u32_at = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().unwrap());
        let (g, i, len) = (u32_at(4), u32_at(8), u32_at(12) as usize);
        if &rest[..4] != b"SEG1" || u32_at(28) != crc32c(&rest[..28]) {
            return Err(format!("no segment header at {at}"));
        }
        if *gen.get_or_insert(g) != g || i != idx {
            return Err(format!("segment {i} of gen {g} at {at}: a mix of writes"));
        }
        let expect = segment(id, g, i, len);
        if rest.len() < expect.len() || rest[..expect.len()] != expect[..] {
            return Err(format!("segment {i} of gen {g} at {at} is torn"));
        }
        at += expect.len();
        idx += 1;
    }
    gen.map(|g| (g, idx)).ok_or_else(|| "empty".to_string())
}

/// The child: loops writing, overwriting, appending and deleting chunks, printing a line
/// after each acknowledged operation, until it is killed.
fn crash_child(dir: &Path) {
    let sync = match std::env::var("USTACK_DIRSTORE_CRASH_SYNC").as_deref() {
        Ok("always") => SyncPolicy::Always,
        _ => SyncPolicy::Never,
    };
    let seed: u64 = std::env::var("USTACK_DIRSTORE_CRASH_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let cfg = DirStoreConfig {
        sync,
        ..DirStoreConfig::default()
    };
    let store = DirStore::open(dir, cfg).unwrap();
    let mut rng = Rng::new(seed);
    // (gen, segments, size) of each chunk, from what recovery left.
    let mut state: Vec<Option<(u32, u32, usize)>> = (0..CRASH_CHUNKS)
        .map(|k| {
            let id = crash_chunk_id(k);
            read_all(&store, id).map(|content| {
                let (gen, segs) = parse_chunk(id, &content).unwrap();
                (gen, segs, content.len())
            })
        })
        .collect();
    let mut next_gen = state.iter().flatten().map(|s| s.0).max().unwrap_or(0) + 1;
    println!("ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let k = rng.range(0, CRASH_CHUNKS - 1);
        let id = crash_chunk_id(k);
        let seg_len = |rng: &mut Rng| rng.range(0, 2 << 20) as usize;
        match state[k as usize] {
            Some((_, _, size)) if size > 5 << 20 && rng.range(0, 1) == 0 => {
                store.delete(id).unwrap();
                state[k as usize] = None;
                println!("acked {k} deleted end");
                continue;
            }
            Some((gen, segs, size)) if size < 5 << 20 && rng.range(0, 1) == 0 => {
                // Append one segment.
                let seg = segment(id, gen, segs, seg_len(&mut rng));
                store.write(id, size as u64, &seg).unwrap();
                state[k as usize] = Some((gen, segs + 1, size + seg.len()));
                println!("acked {k} {gen} {} end", segs + 1);
                continue;
            }
            _ => {}
        }
        // Create, or rewrite the whole chunk (at least as long as it is) with a new generation.
        let old_size = state[k as usize].map_or(1, |s| s.2);
        let gen = next_gen;
        next_gen += 1;
        let mut image = Vec::new();
        let mut segs = 0;
        while image.len() < old_size {
            image.extend_from_slice(&segment(id, gen, segs, seg_len(&mut rng)));
            segs += 1;
        }
        store.write(id, 0, &image).unwrap();
        state[k as usize] = Some((gen, segs, image.len()));
        println!("acked {k} {gen} {segs} end");
    }
    std::process::exit(0);
}

/// Kills the child on every exit path of the parent.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkill_mid_write_keeps_acknowledged_chunks_and_tears_none() {
    if let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) {
        crash_child(Path::new(&dir));
        return;
    }
    const ROUNDS: u64 = 12;
    let dir = TempDir::new("sigkill");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new(0x5EED_4000);
    // What each chunk must hold: (gen, segments), None when absent.
    let mut expected: Vec<Option<(u32, u32)>> = vec![None; CRASH_CHUNKS as usize];
    let mut recovered = RecoveryReport::default();
    let mut acks_total = 0;
    for round in 0..ROUNDS {
        let sync = if round % 2 == 0 { "never" } else { "always" };
        let mut child = KillOnDrop(
            Command::new(&exe)
                .args([
                    "--exact",
                    "chunk::dir_store::tests::sigkill::sigkill_mid_write_keeps_acknowledged_chunks_and_tears_none",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CRASH_CHILD_ENV, &dir.0)
                .env("USTACK_DIRSTORE_CRASH_SYNC", sync)
                .env("USTACK_DIRSTORE_CRASH_SEED", (1000 + round).to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Let it run a random while after it has opened the store, then SIGKILL it.
        let mut acks = Vec::new();
        let started = Instant::now();
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(20))
                .expect("the child printed nothing for 20 s");
            if line.ends_with("ready") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20));
        }
        std::thread::sleep(Duration::from_millis(rng.range(100, 400)));
        child.0.kill().unwrap();
        let status = child.0.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "the child ended by itself: {status}"
        );
        reader.join().unwrap();
        acks.extend(lines.try_iter().filter(|l| l.starts_with("acked ")));
        // Only whole lines count: a line cut by the kill lacks its "end".
        for ack in &acks {
            let words: Vec<&str> = ack.split(' ').collect();
            if words.last() != Some(&"end") {
                continue;
            }
            let k: usize = words[1].parse().unwrap();
            expected[k] = match words[2] {
                "deleted" => None,
                gen => Some((gen.parse().unwrap(), words[3].parse().unwrap())),
            };
        }
        assert!(!acks.is_empty(), "round {round}: no write was acknowledged");
        acks_total += acks.len();

        let store = DirStore::open(&dir.0, DirStoreConfig::default()).unwrap();
        let r = *store.recovery();
        recovered.temp_files_removed += r.temp_files_removed;
        recovered.overwrites_replayed += r.overwrites_replayed;
        recovered.extends_complete += r.extends_complete;
        recovered.extends_rolled_back += r.extends_rolled_back;
        recovered.logs_discarded += r.logs_discarded;
        let mut differing = Vec::new();
        for k in 0..CRASH_CHUNKS {
            let id = crash_chunk_id(k);
            let actual = read_all(&store, id).map(|content| {
                parse_chunk(id, &content).unwrap_or_else(|why| {
                    panic!("round {round} ({sync}): chunk {k} is torn: {why}; recovery {r:?}")
                })
            });
            if actual != expected[k as usize] {
                differing.push((k, expected[k as usize], actual));
            }
            expected[k as usize] = actual;
        }
        // Only the one operation in flight at the kill may differ from the last ack.
        assert!(
            differing.len() <= 1,
            "round {round} ({sync}): acknowledged state lost: {differing:?}"
        );
        eprintln!(
            "round {round} ({sync}): {} acks, recovery {r:?}, in-flight op visible: {differing:?}",
            acks.len()
        );
    }
    eprintln!("sigkill test: {acks_total} acknowledged ops in {ROUNDS} rounds; recovery totals {recovered:?}");
}

//! `examples/embed.rs`, the README's embedding example, serves for real: chunkctl (a second
//! process, over memif) writes, reads back, verifies and deletes chunks through it, and its
//! store of its own saw the calls. With `--features testing`, its store (`CountingStore`) also
//! passes the `ChunkStore` contract suite, as a third-party store runs it.

mod common;

/// The example itself, for its store.
#[cfg(feature = "testing")]
#[allow(dead_code)]
#[path = "../examples/embed.rs"]
mod embed;

#[cfg(feature = "testing")]
mod counting_store_contract {
    use std::sync::atomic::AtomicU64;

    use super::embed::CountingStore;
    use ustack::chunk::{ChunkStore, MemStore};

    fn with_store(test: &mut dyn FnMut(&dyn ChunkStore, u64)) {
        let chunks = MemStore::new(1 << 30);
        let limit = chunks.chunk_len_max();
        let store = CountingStore {
            chunks,
            calls: AtomicU64::new(0),
        };
        test(&store, limit);
    }

    ustack::testing::store_contract::contract_tests!(with_store);
}

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{example_binary, Watched};

#[test]
fn the_embedding_example_serves_chunkctl_over_memif() {
    let dir = std::env::temp_dir().join(format!("ustack-embed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("memif.sock");
    let server = Watched::spawn(
        Command::new(example_binary("embed"))
            .arg(&sock)
            .env("RUST_LOG", "warn"),
        "embed",
    );
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < end,
            "embed made no memif socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(example_binary("chunkctl"))
        .args(["--backend", "memif", "--memif-socket"])
        .arg(&sock)
        .args(["--ip", "10.216.0.2/24", "--server", "10.216.0.1:7000"])
        .args(["verify", "--total", "8MiB"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run chunkctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("result         OK"),
        "chunkctl verify through the embedding example failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, killed, printed) = server.terminate(Duration::from_secs(10));
    assert!(
        status.success() && !killed,
        "embed ended badly: {status}\n{printed}"
    );
    let calls: u64 = printed
        .lines()
        .find_map(|l| l.strip_prefix("embed: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no call count:\n{printed}"));
    assert!(calls > 10, "the store of its own saw {calls} calls");
    let _ = std::fs::remove_dir_all(&dir);
}

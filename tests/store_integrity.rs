//! Damage on disk, end to end: the example file server (kernel TCP, directory store) is asked
//! for a chunk whose file had a byte flipped behind its back. The client gets status `Corrupt`
//! (never the damaged bytes), the rest of the chunk still reads, the server counts it
//! (`corrupt=1` in its final stats line), and `fileserver --scrub` names the chunk and exits 1
//! (0 once `--scrub-quarantine` has moved it aside).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{TempDir, Watched};
use ustack::chunk::{ChunkOp, ClientConfig, ClientError};
use ustack::net::KernelClient;
use ustack::proto::{crc32c, ChunkId, Reply, Status};

fn start_server(bin: &Path, dir: &Path) -> (Watched, SocketAddr) {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--backend",
        "kernel",
        "--listen",
        "127.0.0.1:0",
        "--sync",
        "never",
        "--create",
        "--store",
    ])
    .arg(format!("dir:{}", dir.display()))
    .env("RUST_LOG", "warn");
    let mut server = Watched::spawn(&mut cmd, "fileserver");
    let line = server
        .wait_for_line("fileserver: listening on ", Duration::from_secs(30))
        .unwrap();
    let addr = line
        .trim_start_matches("fileserver: listening on ")
        .trim()
        .parse()
        .unwrap();
    (server, addr)
}

/// Runs `fileserver --store dir:DIR` with `flag`; returns its exit code and output.
fn scrub(bin: &Path, dir: &Path, flag: &str) -> (i32, String) {
    let out = Command::new(bin)
        .arg(flag)
        .arg("--store")
        .arg(format!("dir:{}", dir.display()))
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

/// The chunk's file in a DirStore directory (`<dir>/<ff>/<32 hex digits>`).
fn chunk_file(dir: &Path, id: ChunkId) -> PathBuf {
    let ff = id.0.to_le_bytes().iter().fold(0u8, |a, b| a ^ b);
    dir.join(format!("{ff:02x}")).join(format!("{id}"))
}

#[test]
fn a_flipped_byte_on_disk_is_answered_corrupt_and_found_by_scrub() {
    let bin = common::example_binary("fileserver");
    let dir =
        TempDir(std::env::temp_dir().join(format!("ustack-integrity-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let (server, addr) = start_server(&bin, &dir.0);
    let mut client = KernelClient::connect(addr, &ClientConfig::default()).expect("connect");

    let id = ChunkId(0x1_2e91_d000);
    let intact = ChunkId(0x1_2e91_d001);
    let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i * 7 + i / 5) as u8).collect();
    for chunk in [id, intact] {
        let c = client
            .call(ChunkOp::Write {
                id: chunk,
                offset: 0,
                data: &data,
            })
            .unwrap();
        assert!(
            matches!(c.result, Ok(Reply::Write { .. })),
            "{:?}",
            c.result
        );
    }
    let read = |client: &mut KernelClient, chunk: ChunkId, offset: u64, len: u32| {
        client.call(ChunkOp::Read {
            id: chunk,
            offset,
            len,
        })
    };
    let c = read(&mut client, id, 0, data.len() as u32).unwrap();
    assert!(c.result.is_ok(), "{:?}", c.result);
    assert_eq!(c.data(), &data[..]);

    // Flip one byte of block 1 in the file on disk.
    let path = chunk_file(&dir.0, id);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096 + 1000] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let c = read(&mut client, id, 0, data.len() as u32).unwrap();
    assert!(
        matches!(c.result, Err(ClientError::Status(Status::Corrupt))),
        "{:?}",
        c.result
    );
    // Block 0 and the last blocks are intact and still read (with their CRC checked by the
    // client).
    let c = read(&mut client, id, 0, 4096).unwrap();
    assert!(c.result.is_ok(), "{:?}", c.result);
    assert_eq!(c.data(), &data[..4096]);
    let c = read(&mut client, id, 2 * 4096 + 3, 50).unwrap();
    assert!(c.result.is_ok(), "{:?}", c.result);
    assert_eq!(c.data(), &data[2 * 4096 + 3..2 * 4096 + 53]);
    // STAT answers from the stored sums: the size and the CRC the chunk should have.
    let c = client.call(ChunkOp::Stat { id }).unwrap();
    match c.result {
        Ok(Reply::Stat {
            chunk_size,
            chunk_crc,
        }) => {
            assert_eq!((chunk_size, chunk_crc), (data.len() as u64, crc32c(&data)));
        }
        r => panic!("stat: {r:?}"),
    }
    drop(client);

    let (status, killed, out) = server.terminate(Duration::from_secs(10));
    assert!(!killed && status.success(), "{status}:\n{out}");
    let last = out
        .lines()
        .find(|l| l.starts_with("FILESERVER final "))
        .unwrap_or_else(|| panic!("no final stats line:\n{out}"));
    assert!(last.split(' ').any(|kv| kv == "corrupt=1"), "{last}");

    // The offline scrub names the chunk, and only it.
    let (code, out) = scrub(&bin, &dir.0, "--scrub");
    assert_eq!(code, 1, "{out}");
    let damaged: Vec<&str> = out.lines().filter(|l| l.contains("DAMAGED")).collect();
    assert_eq!(damaged.len(), 1, "{out}");
    assert!(damaged[0].contains(&id.to_string()), "{out}");
    assert!(damaged[0].contains("block 1 "), "{out}");
    assert!(out.contains("FILESERVER scrub chunks=2 "), "{out}");
    assert!(path.exists());
    // Quarantine moves it aside; then the store scrubs clean.
    let (code, out) = scrub(&bin, &dir.0, "--scrub-quarantine");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("quarantined=1"), "{out}");
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(dir.0.join("quarantine")).unwrap().count(),
        1
    );
    let (code, out) = scrub(&bin, &dir.0, "--scrub");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("damaged=0"), "{out}");
}

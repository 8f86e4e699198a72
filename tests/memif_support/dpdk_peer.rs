//! DPDK's net_memif as the peer: an application that echoes every frame
//! (`pmd/memif_echo_peer.c`), built with the system's DPDK when a test needs it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant as WallInstant};

use super::frame_with;
use ustack::{Batch, Frame, Instant, PacketDevice};

/// The peer's source, from the repository root.
pub const PEER_SOURCE: &str = "pmd/memif_echo_peer.c";

/// The DPDK echo peer's binary: built into `dir` from [`PEER_SOURCE`] with the system's DPDK
/// (`libdpdk-dev`), or taken from `USTACK_MEMIF_DPDK_PEER`. `Err` says why it cannot be had.
pub fn dpdk_peer(dir: &Path) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("USTACK_MEMIF_DPDK_PEER") {
        return Ok(PathBuf::from(p));
    }
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "libdpdk"])
        .output()
        .map_err(|e| format!("pkg-config: {e}"))?;
    if !flags.status.success() {
        return Err(
            "DPDK development files not found (apt-get install libdpdk-dev pkg-config)".into(),
        );
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(PEER_SOURCE);
    let bin = dir.join("peer");
    let flags = String::from_utf8_lossy(&flags.stdout).to_string();
    let out = Command::new("cc")
        .arg("-O2")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .args(flags.split_whitespace())
        .output()
        .map_err(|e| format!("cc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the DPDK peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(bin)
}

/// Sends frames of every length from 60 to 1514 bytes through a DPDK echo peer and checks what
/// comes back, byte for byte and in order.
pub fn echo_through<D: PacketDevice>(dev: &mut D, frames: usize) {
    let len_of = |i: usize| 60 + (i * 37) % (1514 - 60 + 1);
    let (mut sent, mut back) = (0usize, 0usize);
    let mut out: Batch<D::Frame> = Batch::with_capacity(64);
    let mut rx: Batch<D::Frame> = Batch::with_capacity(64);
    let start = WallInstant::now();
    while back < frames {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{back} of {frames} frames came back; {:?}",
            dev.stats()
        );
        while sent < frames && sent - back < 256 && !out.is_full() {
            let f = frame_with(dev, sent as u8, len_of(sent));
            out.push(f).ok().unwrap();
            sent += 1;
        }
        dev.tx_burst(Instant::now(), &mut out);
        dev.rx_burst(Instant::now(), &mut rx);
        while let Some(f) = rx.pop() {
            let i = back;
            assert_eq!(f.data().len(), len_of(i), "frame {i}");
            assert!(
                f.data()
                    .iter()
                    .enumerate()
                    .all(|(k, &b)| b == (i as u8) ^ (k as u8)),
                "frame {i} corrupted"
            );
            back += 1;
        }
    }
}

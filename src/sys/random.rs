//! Random bytes from the kernel (getrandom(2)), for identifiers that must not collide across
//! processes, hosts or restarts.

use crate::proto::ChunkId;

/// Fills `buf` from the kernel's random source. Blocks only early in boot, before the kernel's
/// pool is seeded.
pub fn fill(buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let tail = &mut buf[got..];
        // SAFETY: the pointer and length describe `tail`, which the call may write.
        let n = unsafe { libc::getrandom(tail.as_mut_ptr().cast(), tail.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(())
}

/// A fresh chunk id of 128 random bits: n ids collide with probability about n^2 / 2^129,
/// whichever processes, hosts or PID namespaces pick them. Random rather than a hash of the
/// content: two files with an identical chunk must not share it, or deleting one file's
/// chunks would delete the other's data.
pub fn chunk_id() -> std::io::Result<ChunkId> {
    let mut b = [0u8; 16];
    fill(&mut b)?;
    Ok(ChunkId(u128::from_ne_bytes(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(chunk_id().unwrap()));
        }
        let mut big = vec![0u8; 1 << 20];
        fill(&mut big).unwrap();
        assert!(
            big.iter().filter(|&&b| b == 0).count() < 8192,
            "random, not zeros"
        );
    }
}

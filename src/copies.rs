//! Payload passes, counted per layer on the current thread: how many bytes each layer copied
//! (read and wrote) or only read (a CRC, a check). The copy budget in `docs/DATAPATH.md` is
//! written in these terms, and `tests/copy_budget.rs` holds the code to it.
//!
//! Counting is compiled in only with the `copy-count` feature (the tests enable it); without
//! it [`count`] is an empty inline function and nothing is kept. Counts are per thread, so a
//! test that runs a server and a client on its own thread sees only its own bytes, whatever
//! other tests run beside it.

/// Where a pass over payload bytes happens. Each is counted in bytes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Pass {
    /// A chunk store copies between its memory (or file) and a buffer of the server's (a
    /// staging buffer or a socket's send ring).
    Store = 0,
    /// The application side of a socket: bytes copied between a caller's or staging buffer and
    /// a TCP socket's ring (smoltcp's `send`/`recv`, or a kernel socket's buffers).
    Socket = 1,
    /// The TCP stack copies between a socket's ring and a packet frame (building a segment,
    /// or taking one in).
    Frame = 2,
    /// The device copies a frame between its own buffer and device memory (a memif shared
    /// buffer, a UMEM frame, an mbuf).
    Device = 3,
    /// A pass that only reads: a CRC32C over a payload, a verification.
    Read = 4,
}

impl Pass {
    /// Every pass, in index order.
    pub const ALL: [Pass; 5] = [
        Pass::Store,
        Pass::Socket,
        Pass::Frame,
        Pass::Device,
        Pass::Read,
    ];

    /// A short lower-case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Store => "store",
            Pass::Socket => "socket",
            Pass::Frame => "frame",
            Pass::Device => "device",
            Pass::Read => "read",
        }
    }
}

/// Bytes counted per [`Pass`] on one thread since it started (take two snapshots and subtract).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts([u64; 5]);

impl Counts {
    /// Bytes counted for `pass`.
    pub fn get(&self, pass: Pass) -> u64 {
        self.0[pass as usize]
    }

    /// The counts accumulated since `earlier` (a snapshot taken before).
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut out = Counts::default();
        for (i, o) in out.0.iter_mut().enumerate() {
            *o = self.0[i].saturating_sub(earlier.0[i]);
        }
        out
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in Pass::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", p.name(), self.0[i])?;
        }
        Ok(())
    }
}

#[cfg(feature = "copy-count")]
thread_local! {
    static COUNTS: std::cell::Cell<[u64; 5]> = const { std::cell::Cell::new([0; 5]) };
}

/// Counts `bytes` for `pass` on this thread (nothing without the `copy-count` feature).
#[inline(always)]
pub fn count(pass: Pass, bytes: usize) {
    #[cfg(feature = "copy-count")]
    COUNTS.with(|c| {
        let mut v = c.get();
        v[pass as usize] += bytes as u64;
        c.set(v);
    });
    #[cfg(not(feature = "copy-count"))]
    let _ = (pass, bytes);
}

/// This thread's counts (all zero without the `copy-count` feature).
pub fn snapshot() -> Counts {
    #[cfg(feature = "copy-count")]
    {
        Counts(COUNTS.with(std::cell::Cell::get))
    }
    #[cfg(not(feature = "copy-count"))]
    Counts::default()
}

/// Whether counting is compiled in.
pub const ENABLED: bool = cfg!(feature = "copy-count");

#[cfg(all(test, feature = "copy-count"))]
mod tests {
    use super::*;

    #[test]
    fn counts_per_pass_and_thread() {
        let before = snapshot();
        count(Pass::Device, 100);
        count(Pass::Read, 7);
        count(Pass::Device, 1);
        let d = snapshot().since(&before);
        assert_eq!(d.get(Pass::Device), 101);
        assert_eq!(d.get(Pass::Read), 7);
        assert_eq!(d.get(Pass::Store), 0);
        let other = std::thread::spawn(|| snapshot()).join().unwrap();
        assert_eq!(other, Counts::default());
        assert_eq!(d.to_string(), "store=0 socket=0 frame=0 device=101 read=7");
    }
}

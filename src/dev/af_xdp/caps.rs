//! Which capabilities AF_XDP needs, and which of them this process lacks.
//!
//! - `CAP_NET_RAW`: creating the AF_XDP socket.
//! - `CAP_NET_ADMIN`: the XSKMAP and attaching the program to an interface.
//! - `CAP_BPF` (or `CAP_SYS_ADMIN`, which covers it): creating the map and loading the program.
//! - `CAP_IPC_LOCK`, or a locked-memory limit (`ulimit -l`) as large as the UMEM: registering
//!   the UMEM locks its pages. Optional: without it the limit decides.

use std::io;

/// Capability bits (`linux/capability.h`).
pub(crate) const CAP_NET_ADMIN: u32 = 12;
pub(crate) const CAP_NET_RAW: u32 = 13;
pub(crate) const CAP_IPC_LOCK: u32 = 14;
pub(crate) const CAP_SYS_ADMIN: u32 = 21;
pub(crate) const CAP_BPF: u32 = 39;

/// The effective capability set of this process (`CapEff` in `/proc/self/status`).
pub(crate) fn effective() -> io::Result<u64> {
    parse_cap_eff(&std::fs::read_to_string("/proc/self/status")?)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapEff line"))
}

/// `CapEff` from the text of a `/proc/PID/status` file.
pub(crate) fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Whether capability `bit` is in `set`.
pub(crate) fn has(set: u64, bit: u32) -> bool {
    set & (1u64 << bit) != 0
}

/// The capabilities AF_XDP needs that `set` lacks, by name (empty when all are there).
pub(crate) fn missing_for_xdp(set: u64) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !has(set, CAP_NET_RAW) {
        missing.push("CAP_NET_RAW");
    }
    if !has(set, CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(set, CAP_BPF) && !has(set, CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cap_eff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
        assert!(effective().is_ok());
    }

    #[test]
    fn names_what_is_missing() {
        assert_eq!(
            missing_for_xdp(0),
            vec!["CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_BPF"]
        );
        let root = u64::MAX >> 23;
        assert!(missing_for_xdp(root).is_empty());
        // CAP_SYS_ADMIN stands in for CAP_BPF (kernels before 5.8 only know that one).
        let old = (1 << CAP_NET_RAW) | (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN);
        assert!(missing_for_xdp(old).is_empty());
        assert_eq!(
            missing_for_xdp(1 << CAP_NET_RAW),
            vec!["CAP_NET_ADMIN", "CAP_BPF"]
        );
    }
}

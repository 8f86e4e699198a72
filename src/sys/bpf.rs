//! Raw `bpf(2)` system calls: just what the AF_XDP backend needs, without libbpf.
//!
//! - [`create_xskmap`] / [`map_update_u32`]: the `BPF_MAP_TYPE_XSKMAP` that sends frames of a
//!   queue to an AF_XDP socket.
//! - [`load_xdp_program`]: `BPF_PROG_LOAD` of a `BPF_PROG_TYPE_XDP` program from an array of
//!   [`Insn`]s (built by the caller, see `dev::af_xdp::program`); when the verifier refuses it,
//!   the load is repeated with the verifier log switched on and the log comes back in the error.
//! - [`link_xdp`]: `BPF_LINK_CREATE` with attach type `BPF_XDP`, which attaches the program to
//!   an interface through a *link*: the attachment lives exactly as long as the link's file
//!   descriptor, so a process that dies (even by `SIGKILL`) detaches its program and never
//!   leaves the interface black-holed. (Attaching through netlink, the older way, outlives the
//!   process.)
//!
//! Every function returns the plain OS error so the caller can tell `EPERM` (capabilities),
//! `EOPNOTSUPP` (driver), `EBUSY` (another program attached) apart and turn them into advice.
//!
//! The `bpf_attr` layouts below are prefixes of the kernel's union: the kernel accepts a shorter
//! attribute block and treats the missing tail as zero.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `BPF_MAP_CREATE`.
const BPF_MAP_CREATE: libc::c_int = 0;
/// `BPF_MAP_UPDATE_ELEM`.
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
/// `BPF_PROG_LOAD`.
const BPF_PROG_LOAD: libc::c_int = 5;
/// `BPF_LINK_CREATE`.
const BPF_LINK_CREATE: libc::c_int = 28;

/// `BPF_MAP_TYPE_XSKMAP`.
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
/// `BPF_PROG_TYPE_XDP`.
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `BPF_XDP`: the attach type of an XDP link.
const BPF_XDP: u32 = 37;
/// `BPF_ANY`: create or replace a map element.
const BPF_ANY: u64 = 0;

/// `BPF_F_XDP_HAS_FRAGS` (`prog_flags` of `BPF_PROG_LOAD`, what libbpf sets for a program in
/// section `xdp.frags`): the program copes with multi-buffer packets, whose `data..data_end` is
/// only the first buffer. Drivers then hand it packets larger than one page (veth lifts its
/// MTU limit for such programs), and the kernel may pass them to an AF_XDP socket bound with
/// `XDP_USE_SG` as several descriptors. Kernels before 5.18 refuse the flag (`EINVAL`).
pub const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;

/// `XDP_FLAGS_SKB_MODE`: generic XDP, run by the kernel on socket buffers (any driver).
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native XDP, run by the driver before any socket buffer exists.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Size of the verifier log buffer used when a load fails (the tail of the log is kept).
pub const VERIFIER_LOG_LEN: usize = 64 << 10;

/// One eBPF instruction, as the kernel reads it (`struct bpf_insn`).
#[repr(C)]
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub struct Insn {
    /// Opcode: class, size or operation, source bits.
    pub code: u8,
    /// Destination register in the low nibble, source register in the high nibble.
    pub regs: u8,
    /// Signed offset: memory offset for loads, jump distance (in instructions) for jumps.
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

impl Insn {
    /// An instruction from its fields; `dst` and `src` are register numbers 0..=10.
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (src << 4) | (dst & 0x0f),
            off,
            imm,
        }
    }

    /// The destination register.
    #[cfg(test)]
    pub const fn dst(&self) -> u8 {
        self.regs & 0x0f
    }

    /// The source register.
    #[cfg(test)]
    pub const fn src(&self) -> u8 {
        self.regs >> 4
    }
}

/// Opcodes and constants used to build programs (the subset ustack's program uses).
pub mod op {
    /// `BPF_LDX | BPF_MEM | BPF_W`: `dst = *(u32 *)(src + off)`.
    pub const LDX_W: u8 = 0x61;
    /// `BPF_LDX | BPF_MEM | BPF_H`: `dst = *(u16 *)(src + off)`.
    pub const LDX_H: u8 = 0x69;
    /// `BPF_ALU64 | BPF_MOV | BPF_X`: `dst = src`.
    pub const MOV64_X: u8 = 0xbf;
    /// `BPF_ALU64 | BPF_MOV | BPF_K`: `dst = imm`.
    pub const MOV64_K: u8 = 0xb7;
    /// `BPF_ALU64 | BPF_ADD | BPF_K`: `dst += imm`.
    pub const ADD64_K: u8 = 0x07;
    /// `BPF_JMP | BPF_JA`: `goto +off`.
    pub const JA: u8 = 0x05;
    /// `BPF_JMP | BPF_JGT | BPF_X`: `if dst > src goto +off` (unsigned, 64 bit).
    pub const JGT_X: u8 = 0x2d;
    /// `BPF_JMP32 | BPF_JEQ | BPF_K`: `if (u32)dst == (u32)imm goto +off`.
    pub const JEQ32_K: u8 = 0x16;
    /// `BPF_JMP32 | BPF_JNE | BPF_K`: `if (u32)dst != (u32)imm goto +off`.
    pub const JNE32_K: u8 = 0x56;
    /// `BPF_LD | BPF_IMM | BPF_DW`: 64-bit immediate load, two instruction slots.
    pub const LD_IMM64: u8 = 0x18;
    /// `BPF_JMP | BPF_CALL`: call helper `imm`.
    pub const CALL: u8 = 0x85;
    /// `BPF_JMP | BPF_EXIT`: return `r0`.
    pub const EXIT: u8 = 0x95;
    /// Source register of an `LD_IMM64` whose immediate is a map's file descriptor.
    pub const PSEUDO_MAP_FD: u8 = 1;
    /// Helper `bpf_redirect_map(map, key, flags)`.
    pub const HELPER_REDIRECT_MAP: i32 = 51;
    /// XDP verdict: hand the frame to the kernel's network stack.
    pub const XDP_PASS: i32 = 2;
}

/// `union bpf_attr` for `BPF_MAP_CREATE` (prefix).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `union bpf_attr` for `BPF_MAP_*_ELEM`.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for `BPF_PROG_LOAD` (prefix, up to `expected_attach_type`).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_LINK_CREATE` (prefix).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// Object names the kernel shows (`bpftool prog`): up to 15 bytes of `[A-Za-z0-9_.]`, the rest
/// dropped.
fn object_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (dst, b) in out[..15].iter_mut().zip(
        name.bytes()
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.'),
    ) {
        *dst = b;
    }
    out
}

/// Runs `bpf(cmd, attr, size_of::<T>())` and returns the file descriptor it created.
///
/// # Safety
///
/// `attr` must be the attribute layout the kernel expects for `cmd`, and every pointer stored in
/// it (as a `u64`) must be valid for the access the kernel makes for that command (reads of
/// instructions, a license string, keys and values; writes of a log buffer) for the duration of
/// the call.
unsafe fn bpf_fd<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: the caller vouches for the layout and the pointers inside; `attr` itself is valid
    // for reads and writes of size_of::<T>() bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: these commands return a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) })
}

/// Creates an `XSKMAP` with `entries` slots (keys are queue ids, values AF_XDP socket fds).
///
/// Typical errors: `EPERM` without `CAP_BPF`/`CAP_NET_ADMIN` (or `CAP_SYS_ADMIN`), `EINVAL` for
/// zero entries.
pub fn create_xskmap(entries: u32, name: &str) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_XSKMAP,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
        map_name: object_name(name),
        ..MapCreateAttr::default()
    };
    // SAFETY: MapCreateAttr is the BPF_MAP_CREATE layout and holds no pointers.
    unsafe { bpf_fd(BPF_MAP_CREATE, &mut attr) }
}

/// Sets `map[key] = value` for a map with 4-byte keys and values (for an XSKMAP, `value` is the
/// AF_XDP socket's file descriptor).
///
/// Typical errors: `E2BIG` for a key past the map's size, `EOPNOTSUPP` for a socket that is not
/// bound yet, `EBUSY` for a socket already in another map slot.
pub fn map_update_u32(map: BorrowedFd<'_>, key: u32, value: u32) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        flags: BPF_ANY,
        ..MapElemAttr::default()
    };
    // SAFETY: MapElemAttr is the BPF_MAP_UPDATE_ELEM layout; key and value point at 4-byte
    // locals (the map's key and value size) that live until the call returns. `map` is a live
    // descriptor borrowed for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            &mut attr as *mut MapElemAttr as *mut libc::c_void,
            std::mem::size_of::<MapElemAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A refused `BPF_PROG_LOAD`: the OS error and, when the verifier said why, its log.
#[derive(Debug)]
pub struct LoadError {
    /// The error of the first load.
    pub source: io::Error,
    /// The tail of the verifier log of a second load with logging on (empty if the kernel gave
    /// none, e.g. for `EPERM`).
    pub log: String,
}

/// Loads an XDP program (`BPF_PROG_TYPE_XDP`, expected attach type `BPF_XDP`) and returns its
/// file descriptor. Map references must already be patched in as `LD_IMM64` with
/// [`op::PSEUDO_MAP_FD`]. `prog_flags` is 0 or [`BPF_F_XDP_HAS_FRAGS`].
///
/// On failure the load is repeated once with the verifier log on (level 1, [`VERIFIER_LOG_LEN`]
/// bytes), and the log's last few KiB come back in [`LoadError::log`].
pub fn load_xdp_program(
    insns: &[Insn],
    license: &CStr,
    name: &str,
    prog_flags: u32,
) -> Result<OwnedFd, LoadError> {
    let attempt = |log: Option<&mut [u8]>| {
        let (log_level, log_size, log_buf) = match log {
            Some(buf) => (1, buf.len() as u32, buf.as_mut_ptr() as u64),
            None => (0, 0, 0),
        };
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level,
            log_size,
            log_buf,
            prog_flags,
            prog_name: object_name(name),
            expected_attach_type: BPF_XDP,
            ..ProgLoadAttr::default()
        };
        // SAFETY: ProgLoadAttr is the BPF_PROG_LOAD layout. `insns` points at insn_cnt
        // instructions of the kernel's layout (Insn is repr(C) struct bpf_insn), `license` at a
        // NUL-terminated string, and `log_buf` (if set) at log_size writable bytes; all of them
        // are borrowed for the duration of the call.
        unsafe { bpf_fd(BPF_PROG_LOAD, &mut attr) }
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(source) => {
            let mut buf = vec![0u8; VERIFIER_LOG_LEN];
            // The second attempt may even succeed (it should not); either way the first error
            // is reported, with whatever the verifier wrote.
            let _ = attempt(Some(&mut buf));
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            let text = String::from_utf8_lossy(&buf[..end]);
            let tail_start = text
                .char_indices()
                .rev()
                .nth(4095)
                .map(|(i, _)| i)
                .unwrap_or(0);
            Err(LoadError {
                source,
                log: text[tail_start..].trim().to_string(),
            })
        }
    }
}

/// Attaches XDP program `prog` to interface `ifindex` through a BPF link and returns the link's
/// descriptor: the program stays attached while the descriptor is open (in this process or any
/// it was passed to), and is detached when it closes, also when the process dies.
///
/// `flags` is [`XDP_FLAGS_DRV_MODE`] (native) or [`XDP_FLAGS_SKB_MODE`] (generic).
///
/// Typical errors: `EOPNOTSUPP` or `EINVAL` when the driver has no native XDP (or the MTU is too
/// large for it), `EBUSY` when a program is already attached to the interface (by a link or by
/// netlink), `EPERM` without `CAP_NET_ADMIN`, `ENODEV` for a vanished interface.
pub fn link_xdp(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags,
    };
    // SAFETY: LinkCreateAttr is the BPF_LINK_CREATE layout and holds no pointers; `prog` is a
    // live descriptor borrowed for the call.
    unsafe { bpf_fd(BPF_LINK_CREATE, &mut attr) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insn_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let i = Insn::new(op::LDX_W, 2, 1, 4, 0);
        assert_eq!((i.dst(), i.src()), (2, 1));
        assert_eq!(i.regs, 0x12);
        // The byte image is code, regs, off (LE), imm (LE).
        let i = Insn::new(op::MOV64_K, 0, 0, -2, 0x0102_0304);
        // SAFETY: Insn is repr(C), 8 bytes, no padding (checked above), all fields plain ints.
        let bytes: [u8; 8] = unsafe { std::mem::transmute(i) };
        assert_eq!(bytes, [0xb7, 0x00, 0xfe, 0xff, 0x04, 0x03, 0x02, 0x01]);
    }

    #[test]
    fn attr_sizes_are_the_kernel_prefixes() {
        assert_eq!(std::mem::size_of::<MapCreateAttr>(), 44);
        assert_eq!(std::mem::size_of::<MapElemAttr>(), 32);
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 72);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::size_of::<LinkCreateAttr>(), 16);
    }

    #[test]
    fn object_names_are_cut_and_cleaned() {
        assert_eq!(&object_name("ustack_xdp")[..11], b"ustack_xdp\0");
        let n = object_name("a-very-long-name-with-dashes");
        assert_eq!(&n[..15], b"averylongnamewi");
        assert_eq!(n[15], 0);
    }
}

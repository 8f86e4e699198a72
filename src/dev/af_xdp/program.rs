//! The XDP program that steers frames to the AF_XDP socket, as an eBPF instruction array.
//!
//! The readable source is `pmd/xdp_redirect.c`; this is its hand translation, built at load
//! time with two values patched in: the XSKMAP's file descriptor (an `LD_IMM64` with
//! `PSEUDO_MAP_FD`) and, when filtering, ustack's IPv4 address as a 32-bit immediate. No clang,
//! libbpf or object file is needed on the user's machine. Keep the two in step: the C file
//! names the instruction indices each statement became.
//!
//! With an address (`filter_ipv4 = Some(a)`), the program (24 instructions) is:
//!
//! ```text
//!  0  r2 = *(u32 *)(r1 + 0)        data
//!  1  r3 = *(u32 *)(r1 + 4)        data_end
//!  2  r4 = r2
//!  3  r4 += 34                     Ethernet + minimal IPv4 header
//!  4  if r4 > r3 goto PASS
//!  5  r5 = *(u16 *)(r2 + 12)       EtherType
//!  6  if w5 == 0x0608 goto ARP     (ARP, as a little-endian load sees 08 06)
//!  7  if w5 != 0x0008 goto PASS    (IPv4)
//!  8  r5 = *(u32 *)(r2 + 30)       IPv4 destination
//!  9  if w5 != a goto PASS
//! 10  goto REDIRECT
//! 11  ARP: r4 = r2
//! 12  r4 += 42                     Ethernet + 28-byte ARP body
//! 13  if r4 > r3 goto PASS
//! 14  r5 = *(u32 *)(r2 + 38)       ARP target protocol address
//! 15  if w5 != a goto PASS
//! 16  REDIRECT: r2 = *(u32 *)(r1 + 16)   ctx->rx_queue_index
//! 17  r1 = map xsks                (LD_IMM64, two slots: 17-18)
//! 19  r3 = XDP_PASS                what bpf_redirect_map returns when the slot is empty
//! 20  call bpf_redirect_map
//! 21  exit
//! 22  PASS: r0 = XDP_PASS
//! 23  exit
//! ```
//!
//! The comparisons of the address use 32-bit jumps (`JMP32`), so an address whose last byte is
//! 128 or more (a negative `i32` immediate) compares right. Without an address only instructions
//! 16-21 are loaded (the 6-instruction "redirect everything" program).

use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use crate::sys::bpf::{op, Insn};

/// A jump target inside the program.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Label {
    Arp,
    Redirect,
    Pass,
}

/// A tiny assembler: instructions plus jumps to labels, resolved at the end.
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<(Label, usize)>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    fn new() -> Asm {
        Asm {
            insns: Vec::with_capacity(24),
            labels: Vec::new(),
            fixups: Vec::new(),
        }
    }

    fn emit(&mut self, insn: Insn) {
        self.insns.push(insn);
    }

    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.insns.push(Insn::new(code, dst, src, 0, imm));
    }

    fn label(&mut self, l: Label) {
        self.labels.push((l, self.insns.len()));
    }

    fn finish(mut self) -> Vec<Insn> {
        for &(at, to) in &self.fixups {
            let target = self
                .labels
                .iter()
                .find(|(l, _)| *l == to)
                .map(|&(_, i)| i)
                .expect("jump to an undefined label");
            // A jump's offset counts from the instruction after it.
            self.insns[at].off = (target as isize - at as isize - 1) as i16;
        }
        self.insns
    }
}

/// Register numbers.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

/// Offsets into `struct xdp_md`.
const CTX_DATA: i16 = 0;
const CTX_DATA_END: i16 = 4;
const CTX_RX_QUEUE_INDEX: i16 = 16;

/// The address as the 32-bit word its four bytes form in memory, read little-endian (what a
/// `LDX_W` of the packet bytes yields on the little-endian eBPF targets), as the immediate.
fn addr_imm(a: Ipv4Addr) -> i32 {
    u32::from_le_bytes(a.octets()) as i32
}

/// The program for XSKMAP `map_fd`; see the module docs for the listing.
pub(crate) fn instructions(map_fd: RawFd, filter_ipv4: Option<Ipv4Addr>) -> Vec<Insn> {
    let mut a = Asm::new();
    if let Some(addr) = filter_ipv4 {
        let ip = addr_imm(addr);
        a.emit(Insn::new(op::LDX_W, R2, R1, CTX_DATA, 0)); // 0
        a.emit(Insn::new(op::LDX_W, R3, R1, CTX_DATA_END, 0)); // 1
        a.emit(Insn::new(op::MOV64_X, R4, R2, 0, 0)); // 2
        a.emit(Insn::new(op::ADD64_K, R4, 0, 0, 14 + 20)); // 3
        a.jump(op::JGT_X, R4, R3, 0, Label::Pass); // 4
        a.emit(Insn::new(op::LDX_H, R5, R2, 12, 0)); // 5
        a.jump(op::JEQ32_K, R5, 0, 0x0608, Label::Arp); // 6
        a.jump(op::JNE32_K, R5, 0, 0x0008, Label::Pass); // 7
        a.emit(Insn::new(op::LDX_W, R5, R2, 14 + 16, 0)); // 8
        a.jump(op::JNE32_K, R5, 0, ip, Label::Pass); // 9
        a.jump(op::JA, 0, 0, 0, Label::Redirect); // 10
        a.label(Label::Arp);
        a.emit(Insn::new(op::MOV64_X, R4, R2, 0, 0)); // 11
        a.emit(Insn::new(op::ADD64_K, R4, 0, 0, 14 + 28)); // 12
        a.jump(op::JGT_X, R4, R3, 0, Label::Pass); // 13
        a.emit(Insn::new(op::LDX_W, R5, R2, 14 + 24, 0)); // 14
        a.jump(op::JNE32_K, R5, 0, ip, Label::Pass); // 15
    }
    a.label(Label::Redirect);
    a.emit(Insn::new(op::LDX_W, R2, R1, CTX_RX_QUEUE_INDEX, 0)); // 16
    a.emit(Insn::new(op::LD_IMM64, R1, op::PSEUDO_MAP_FD, 0, map_fd)); // 17
    a.emit(Insn::new(0, 0, 0, 0, 0)); // 18: upper half of the immediate
    a.emit(Insn::new(op::MOV64_K, R3, 0, 0, op::XDP_PASS)); // 19
    a.emit(Insn::new(op::CALL, 0, 0, 0, op::HELPER_REDIRECT_MAP)); // 20
    a.emit(Insn::new(op::EXIT, 0, 0, 0, 0)); // 21
    if filter_ipv4.is_some() {
        a.label(Label::Pass);
        a.emit(Insn::new(op::MOV64_K, R0, 0, 0, op::XDP_PASS)); // 22
        a.emit(Insn::new(op::EXIT, 0, 0, 0, 0)); // 23
    }
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const XDP_REDIRECT: u64 = 4;

    /// Runs `prog` on `frame` received on queue `queue`, with the map holding a socket for
    /// the queues in `bound`. Understands exactly the instructions `instructions` emits; panics
    /// on anything else, on a read outside the frame (what the verifier would refuse) and on a
    /// jump out of the program.
    fn run(prog: &[Insn], frame: &[u8], queue: u32, bound: &[u32]) -> u64 {
        const CTX: u64 = 0x1000_0000;
        const PKT: u64 = 0x2000_0000;
        let mut r = [0u64; 11];
        r[1] = CTX;
        let mut pc = 0usize;
        let load = |addr: u64, size: usize| -> u64 {
            if (CTX..CTX + 24).contains(&addr) {
                return match addr - CTX {
                    0 => PKT,
                    4 => PKT + frame.len() as u64,
                    16 => u64::from(queue),
                    other => panic!("ctx read at {other}"),
                };
            }
            let off = (addr - PKT) as usize;
            let bytes = &frame[off..off + size];
            let mut v = [0u8; 8];
            v[..size].copy_from_slice(bytes);
            u64::from_le_bytes(v)
        };
        for _ in 0..1000 {
            let i = prog[pc];
            let (d, s) = (i.dst() as usize, i.src() as usize);
            let mut next = pc + 1;
            let jump = |cond: bool| {
                if cond {
                    (pc as isize + 1 + i.off as isize) as usize
                } else {
                    pc + 1
                }
            };
            match i.code {
                op::LDX_W => r[d] = load(r[s].wrapping_add(i.off as u64), 4),
                op::LDX_H => r[d] = load(r[s].wrapping_add(i.off as u64), 2),
                op::MOV64_X => r[d] = r[s],
                op::MOV64_K => r[d] = i.imm as i64 as u64,
                op::ADD64_K => r[d] = r[d].wrapping_add(i.imm as i64 as u64),
                op::JA => next = jump(true),
                op::JGT_X => next = jump(r[d] > r[s]),
                op::JEQ32_K => next = jump(r[d] as u32 == i.imm as u32),
                op::JNE32_K => next = jump(r[d] as u32 != i.imm as u32),
                op::LD_IMM64 => {
                    assert_eq!(s, op::PSEUDO_MAP_FD as usize);
                    r[d] = 0xfeed;
                    next = pc + 2;
                }
                op::CALL => {
                    assert_eq!(i.imm, op::HELPER_REDIRECT_MAP);
                    assert_eq!(r[1], 0xfeed, "map argument");
                    r[0] = if bound.contains(&(r[2] as u32)) {
                        XDP_REDIRECT
                    } else {
                        r[3]
                    };
                }
                op::EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x} at {pc}"),
            }
            assert!(next < prog.len(), "jump out of the program at {pc}");
            pc = next;
        }
        panic!("program did not finish");
    }

    fn eth(ethertype: u16, body: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    fn ipv4_to(dst: Ipv4Addr, payload: usize) -> Vec<u8> {
        let mut ip = vec![0u8; 20 + payload];
        ip[0] = 0x45;
        ip[12..16].copy_from_slice(&[10, 1, 1, 1]);
        ip[16..20].copy_from_slice(&dst.octets());
        eth(0x0800, &ip)
    }

    fn arp_for(target: Ipv4Addr) -> Vec<u8> {
        let mut arp = vec![0u8; 28];
        arp[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp[24..28].copy_from_slice(&target.octets());
        eth(0x0806, &arp)
    }

    const PASS: u64 = op::XDP_PASS as u64;

    #[test]
    fn listing_matches_the_documented_indices() {
        let p = instructions(7, Some(Ipv4Addr::new(10, 205, 0, 3)));
        assert_eq!(p.len(), 24);
        // Jumps land where the listing (and pmd/xdp_redirect.c) says.
        let target = |at: usize| (at as isize + 1 + p[at].off as isize) as usize;
        assert_eq!(target(4), 22);
        assert_eq!(target(6), 11);
        assert_eq!(target(7), 22);
        assert_eq!(target(9), 22);
        assert_eq!(target(10), 16);
        assert_eq!(target(13), 22);
        assert_eq!(target(15), 22);
        assert_eq!((p[17].code, p[17].src(), p[17].imm), (op::LD_IMM64, 1, 7));
        assert_eq!(p[20].imm, op::HELPER_REDIRECT_MAP);
        let all = instructions(7, None);
        assert_eq!(all.len(), 6);
        assert_eq!(all[..], p[16..22]);
    }

    #[test]
    fn filter_sends_only_our_traffic_to_the_socket() {
        // Last byte >= 128: the immediate is negative, which 64-bit compares would get wrong.
        for ours in [Ipv4Addr::new(10, 205, 0, 3), Ipv4Addr::new(10, 205, 0, 200)] {
            let other = Ipv4Addr::new(10, 205, 0, 1);
            let p = instructions(3, Some(ours));
            assert_eq!(run(&p, &ipv4_to(ours, 20), 0, &[0]), XDP_REDIRECT);
            assert_eq!(run(&p, &ipv4_to(ours, 0), 0, &[0]), XDP_REDIRECT);
            assert_eq!(run(&p, &ipv4_to(other, 20), 0, &[0]), PASS);
            assert_eq!(run(&p, &arp_for(ours), 0, &[0]), XDP_REDIRECT);
            assert_eq!(run(&p, &arp_for(other), 0, &[0]), PASS);
            // IPv6, VLAN-tagged and cut frames go to the kernel.
            assert_eq!(run(&p, &eth(0x86dd, &[0; 40]), 0, &[0]), PASS);
            assert_eq!(run(&p, &eth(0x8100, &[0; 40]), 0, &[0]), PASS);
            assert_eq!(run(&p, &ipv4_to(ours, 0)[..33], 0, &[0]), PASS);
            assert_eq!(run(&p, &arp_for(ours)[..41], 0, &[0]), PASS);
            assert_eq!(run(&p, &[0u8; 10], 0, &[0]), PASS);
            // A frame of another queue, or with no socket bound yet, goes to the kernel.
            assert_eq!(run(&p, &ipv4_to(ours, 20), 1, &[0]), PASS);
            assert_eq!(run(&p, &ipv4_to(ours, 20), 0, &[]), PASS);
        }
    }

    #[test]
    fn without_filter_everything_is_redirected() {
        let p = instructions(3, None);
        let ip = Ipv4Addr::new(192, 168, 1, 1);
        assert_eq!(run(&p, &ipv4_to(ip, 0), 2, &[2]), XDP_REDIRECT);
        assert_eq!(run(&p, &eth(0x86dd, &[0; 40]), 2, &[2]), XDP_REDIRECT);
        assert_eq!(run(&p, &eth(0x86dd, &[0; 40]), 0, &[2]), PASS);
    }
}

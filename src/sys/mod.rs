//! Every FFI call and raw syscall: the only place with `unsafe`, besides `mem`.
//!
//! The lowest floor: it imports nothing of the crate's other floors (only the `proto` leaf, for
//! a chunk id type). Crate-private: what tests, examples and tools need of it (namespaces,
//! processes, signals, raw sockets, the lossy path) is re-exported by the public facade
//! [`crate::host`]; the data path's own pieces (AF_XDP, BPF, DPDK, TAP) are reached through
//! `crate::dev`.
#![allow(unsafe_code)]

pub mod bpf;
pub mod cpu;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod lossy;
pub mod netns;
pub mod packet;
#[cfg(test)]
pub(crate) mod privileged;
pub mod proc;
pub mod random;
pub mod signal;
pub mod socket;
pub mod tap;
pub mod unix_ipc;
pub mod xdp;
pub mod xsk_ring;

//! Every FFI call and raw syscall: the only place with `unsafe`, besides `mem`.
#![allow(unsafe_code)]

pub mod bpf;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod lossy;
pub mod netns;
pub mod packet;
pub mod proc;
pub mod random;
pub mod signal;
pub mod socket;
pub mod tap;
pub mod unix_ipc;
pub mod xdp;
pub mod xsk_ring;

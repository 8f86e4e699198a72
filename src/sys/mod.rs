//! Every FFI call and raw syscall: the only place with `unsafe`, besides `mem`.
#![allow(unsafe_code)]

#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod netns;
pub mod signal;
pub mod socket;
pub mod tap;

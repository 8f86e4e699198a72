//! The host around the stack: network namespaces, veth pairs, processes, signals, kernel and
//! raw sockets, interface settings, the lossy path. Not the data path.
//!
//! Tests, examples, fuzz targets and benchmarks use these to build the machine a stack runs on
//! and to watch it: a throw-away topology in namespaces, a child process stopped by its PID, a
//! relay that reads every frame of an interface, a hostile memif peer. A file server that
//! embeds the stack needs none of it but [`signal`] (stopping its loop on SIGINT or SIGTERM).
//!
//! Everything here is implemented in the crate's private system layer (`sys`: each FFI call and
//! raw system call, and with `mem` the only `unsafe` code); this module re-exports the parts
//! that are useful outside the crate: whole modules where all of a module is for the host
//! ([`cpu`], [`netns`], [`lossy`], [`packet`], [`process`], [`signal`], [`random`]), chosen items where a
//! module also serves the data path ([`socket`], [`iface`], [`unix_ipc`]). The stack's own
//! data path (AF_XDP sockets and rings, BPF, DPDK, TAP descriptors) stays private and is
//! reached through [`crate::dev`].

pub use crate::sys::cpu;
pub use crate::sys::lossy;
pub use crate::sys::netns;
pub use crate::sys::packet;
pub use crate::sys::proc as process;
pub use crate::sys::random;
pub use crate::sys::signal;

/// Kernel sockets: `poll(2)` on many descriptors, and the socket options `std::net` does not
/// offer (buffer sizes, closing with a reset).
pub mod socket {
    pub use crate::sys::socket::{
        poll, set_buffer_len, set_linger_zero, PollFd, POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT,
    };
}

/// Interface settings: offloads (`ethtool -K`), MAC address, MTU, up or down.
pub mod iface {
    pub use crate::sys::tap::{
        mtu, offload, set_offload, set_tx_checksum_offload, set_up, tx_checksum_offload, Offload,
    };
    pub use crate::sys::xdp::hw_addr;
}

/// Local inter-process communication: unix `SOCK_SEQPACKET` sockets that carry a descriptor,
/// memory files and eventfds, the pieces a memif peer is made of (for tests and fuzz targets
/// that play a hostile one).
pub mod unix_ipc {
    pub use crate::sys::unix_ipc::{
        add_seals, eventfd, eventfd_drain, eventfd_signal, file_size, memfd_create, seals,
        Received, SeqPacket, SeqPacketListener, UnixAddr, SEAL_GROW, SEAL_SHRINK,
        SOCKET_NAME_LEN_MAX,
    };
}

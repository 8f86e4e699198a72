//! The chunk protocol over kernel TCP (`std::net`): for machines without kernel bypass, for
//! talking to a ustack chunk server from an ordinary host (and the reverse), and as the baseline
//! every benchmark measures against.
//!
//! [`KernelServer`] and [`KernelClient`] drive the very same sans-IO cores as the ustack
//! transport ([`ServerConn`](crate::chunk::ServerConn), [`ClientConn`](crate::chunk::ClientConn))
//! against the same [`ChunkStore`](crate::chunk::ChunkStore); only the byte moving differs:
//!
//! ```text
//! socket --read--> receive buffer (256 KiB, per connection) --handle_input--> core --> store
//! store --> core --next_output--> short pieces gathered (64 KiB) + long payload --sendmsg--> socket
//! ```
//!
//! Sockets are non-blocking with `TCP_NODELAY`. The server's thread waits on all of them with
//! `epoll(7)`, each registered once and edge-triggered, so a wait costs the same with one or a
//! thousand connections and only connections the kernel reports are looked at; the client waits
//! on its one socket with `ppoll(2)` (`sys::socket`). Store calls of a store that
//! may block run on storage workers, which wake the server through an eventfd. A core that pushes back (all its answers queued, or no staging
//! buffer free) keeps its unread bytes in the receive buffer, and the socket is not read until
//! the core has taken them: the kernel's receive window closes and the peer slows down.
//! Everything is allocated when a server binds or a client connects: connection slots with their
//! buffers (320 KiB of address space each, touched as used), staging pools, the poll set.
//!
//! Choices worth knowing:
//!
//! * Short pieces (up to 16 KiB: headers, small READ data) are copied into the send buffer and
//!   leave together; a long payload goes out from its staging buffer in the same `sendmsg`,
//!   behind them. A pipeline of small answers costs one syscall, not two per answer.
//! * A read that leaves room in the buffer is taken to have emptied the socket; the next read
//!   waits for epoll (or `ppoll`) to report input instead of trying and getting `EAGAIN`. After doing
//!   anything the server passes over its connections again (without a syscall) until nothing
//!   changes, since one connection's progress may free the staging buffer another waits for.
//!   One 4 KiB request at a time costs the same as blocking `std::net` sockets.
//! * Connections over `connections_max` are accepted, told why (an answer with request id 0,
//!   status `TooManyConnections`) and closed; reset at once when 16 such are still closing.
//! * When the server closes a connection itself (a closing protocol error, shutdown) it sends its
//!   last answer, shuts its sending side, and reads and discards what the peer still sends
//!   for up to 2 s: closing with unread input would reset the connection and could destroy
//!   that last answer before the peer reads it.
//! * A connection reported hung up (`EPOLLHUP`/`EPOLLERR`) whose core cannot move is reset at
//!   once.
//! * The peer's end of stream reaches the core only when no READ can be waiting for a staging
//!   buffer (`ServerConn::handle_eof` would drop it unanswered).
//! * The client reads the server's last answers before it fails what is left with
//!   `ConnectionLost`, even when a send found the connection gone first.

mod client;
mod pipe;
mod server;

use std::io;
use std::net::SocketAddr;

use crate::mem::MemError;
use crate::proto::LimitsError;

pub use client::KernelClient;
pub use pipe::{RECV_BUFFER_LEN, SEND_BUFFER_LEN};
pub use server::{KernelServer, ServerHandle};

/// Errors setting up a kernel-TCP server or client.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The listening socket could not be created or bound.
    #[error("cannot listen on {addr}: {source} ({hint})")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// The connection could not be made within the connect timeout.
    #[error("cannot connect to {addr}: {source} ({hint})")]
    Connect {
        /// The server's address.
        addr: SocketAddr,
        /// The OS error (`TimedOut` when the connect timeout passed).
        #[source]
        source: io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// A socket option could not be set (non-blocking mode, `TCP_NODELAY`, backlog).
    #[error("cannot set {option} on the socket for {addr}: {source}")]
    SocketOption {
        /// The local or peer address of the socket.
        addr: SocketAddr,
        /// The option.
        option: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The protocol limits are inconsistent.
    #[error("bad protocol limits: {0}")]
    Limits(#[from] LimitsError),
    /// Staging memory could not be reserved.
    #[error("cannot reserve staging buffers: {0}")]
    Memory(#[from] MemError),
    /// A configuration value that cannot work.
    #[error("invalid configuration: {field} = {value}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Why it cannot work.
        reason: &'static str,
    },
    /// The server thread could not be started.
    #[error("cannot start the server thread: {0}")]
    Thread(#[source] io::Error),
    /// The storage workers (threads, and the eventfd they wake the server with) could not be
    /// started.
    #[error("cannot start the storage workers: {0}")]
    Workers(#[source] io::Error),
}

/// What to check when binding fails with `e`.
fn bind_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            "another socket is bound to this port: stop it, pick another port, or use port 0"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "ports below 1024 need root or CAP_NET_BIND_SERVICE"
        }
        Some(libc::EADDRNOTAVAIL) => {
            "the IP address is not assigned to any local interface: check `ip addr`, or bind 0.0.0.0"
        }
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            "out of file descriptors: raise `ulimit -n` or close sockets"
        }
        _ => "check the address and the process's permissions",
    }
}

/// What to check when connecting fails with `e`.
fn connect_hint(e: &io::Error) -> &'static str {
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::ConnectionRefused, _) => {
            "nothing listens there: is the chunk server running and bound to this address and port?"
        }
        (io::ErrorKind::ConnectionReset, _) => {
            "the server reset the connection at once: it may be at its connections_max or shutting down"
        }
        (io::ErrorKind::TimedOut, _) | (io::ErrorKind::WouldBlock, _) => {
            "no answer within the connect timeout: check the address, routes (`ip route`) and firewalls"
        }
        (_, Some(libc::ENETUNREACH)) | (_, Some(libc::EHOSTUNREACH)) => {
            "no route to the server: check `ip route` and the interface's address"
        }
        (_, Some(libc::EADDRNOTAVAIL)) => {
            "no local address or port left to connect from: check `ip addr` and net.ipv4.ip_local_port_range"
        }
        (_, Some(libc::EMFILE)) | (_, Some(libc::ENFILE)) => {
            "out of file descriptors: raise `ulimit -n` or close sockets"
        }
        _ => "check the server address and that the server is up",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_address_and_what_to_check() {
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let e = NetError::Bind {
            addr,
            source: io::Error::from_raw_os_error(libc::EADDRINUSE),
            hint: bind_hint(&io::Error::from_raw_os_error(libc::EADDRINUSE)),
        };
        let msg = e.to_string();
        assert!(msg.contains("127.0.0.1:7000"), "{msg}");
        assert!(msg.contains("port 0"), "{msg}");
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(connect_hint(&refused).contains("nothing listens"));
        let timeout = io::Error::from(io::ErrorKind::TimedOut);
        assert!(connect_hint(&timeout).contains("connect timeout"));
        let unreach = io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert!(connect_hint(&unreach).contains("route"));
    }
}

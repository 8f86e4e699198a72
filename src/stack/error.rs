//! [`StackError`]: why a stack could not be built, or a connection or listener not made.

use std::net::SocketAddrV4;

use crate::mem::MemError;

/// Errors from building a stack and from connection management.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A configuration value that cannot work.
    #[error("invalid stack configuration: {field}: {reason}")]
    Config {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Socket memory could not be mapped.
    #[error("cannot reserve socket memory: {0}")]
    Memory(#[from] MemError),
    /// Every TCP socket is in use.
    #[error(
        "all {max} TCP sockets are in use (raise StackConfig::sockets_max, or release connections)"
    )]
    NoSockets {
        /// The configured maximum.
        max: usize,
    },
    /// Every listener slot is in use.
    #[error("all {max} listeners are in use (raise StackConfig::listeners_max)")]
    NoListeners {
        /// The configured maximum.
        max: usize,
    },
    /// The port is already listened on.
    #[error("port {0} is already being listened on")]
    PortInUse(u16),
    /// Port 0, an unspecified address, or no route to the address.
    #[error("cannot connect to {0}: address is not reachable from this stack (check the address, prefix and gateway)")]
    Unaddressable(SocketAddrV4),
    /// No ephemeral port is free.
    #[error("no free ephemeral port")]
    NoPorts,
    /// The handle belongs to a connection or listener that is gone.
    #[error("stale handle: the connection or listener was released")]
    Stale,
}

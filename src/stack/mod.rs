//! The user-space TCP/IP stack: the only module that imports smoltcp.

//! An S3-compatible object service on ustack (feature `s3`): what a distributed file system that
//! keeps its data as objects (JuiceFS first among them) needs from a data node.
//!
//! The parts, lowest first:
//! - [`http`]: HTTP/1.1 request heads, sans-IO (httparse), with bounded sizes; response heads.
//! - [`sigv4`]: AWS Signature Version 4, verified against configured access keys.
//! - [`index`] and [`objects`]: objects as chunks of a [`ChunkStore`](crate::chunk::ChunkStore)
//!   and a durable key index (redb) that survives SIGKILL consistently with the chunks.
//! - [`xml`]: the XML bodies S3 clients expect.
//! - the connection and service layers that put them on a transport (a [`Stack`](crate::stack::Stack)
//!   or kernel TCP) under the [`ServeLoop`](crate::serve::ServeLoop).

pub mod config;
pub mod conn;
pub mod date;
pub mod error;
pub mod http;
pub mod index;
pub mod objects;
pub mod sigv4;
pub mod transport;
pub mod xml;

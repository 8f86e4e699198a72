//! An S3-compatible object service on ustack (feature `s3`): what a distributed file system that
//! keeps its data as objects (JuiceFS first among them) needs from a data node.
//! `examples/objectserver.rs` is the server; `tests/juicefs.rs` drives it with the real JuiceFS.
//!
//! The parts, lowest first:
//! - [`http`]: HTTP/1.1 request heads, sans-IO (httparse), bounded ([`http::HEAD_MAX`] bytes,
//!   [`http::HEADERS_MAX`] headers), with the request-smuggling rules (one `Content-Length`, no
//!   `Transfer-Encoding`: S3 answers a PUT without a length `411 MissingContentLength`).
//! - [`sigv4`]: AWS Signature Version 4, header-signed and presigned, verified against
//!   configured access keys with S3's 15-minute clock skew; a signer for clients and tests.
//! - [`objects`] on [`index`]: an object is `ceil(size / chunk_bytes)` chunks of a
//!   [`ChunkStore`](crate::chunk::ChunkStore) (a multipart object references its parts'
//!   chunks), and a key index in redb (a pure-Rust embedded store with ACID transactions and a
//!   durable commit; chosen over SQLite for no C build and one typed B-tree per table, which is
//!   all the index needs). The order of every change is: chunks written, then one index
//!   commit, then the chunks that commit made unreachable deleted. A SIGKILL at any instant
//!   leaves no object whose bytes are not all stored; the chunks of unfinished writes are
//!   swept when the store is next opened ([`objects::Recovered`]). Power loss is covered as
//!   far as the chunk store syncs (a `DirStore` with `SyncPolicy::Always`).
//! - [`xml`]: the XML bodies (errors, listings, multipart) and the `CompleteMultipartUpload`
//!   parser, bounded ([`xml::BODY_MAX`]).
//! - [`conn`]: one connection, sans-IO: bounded receive and send buffers, requests answered in
//!   order, head and body timeouts, `Expect: 100-continue`; the [`conn::Engine`] runs the S3
//!   operations.
//! - [`transport`]: [`transport::S3OnStack`] (ustack's TCP on any backend) and
//!   [`transport::S3OnKernel`] (kernel TCP with epoll, the baseline), both
//!   [`Service`](crate::serve::Service)s of the [`ServeLoop`](crate::serve::ServeLoop).
//!
//! The operations: buckets (create, head, delete, list, location), PUT, GET with one `Range`,
//! HEAD, DELETE, ListObjectsV2 (prefix, delimiter, start-after, continuation token, max-keys,
//! `encoding-type=url`), CopyObject, multipart uploads (create, upload part, list parts,
//! complete, abort, list uploads). Not served (answered `501 NotImplemented`): ListObjects
//! version 1, DeleteObjects, versioning, ACLs and policies, tagging, UploadPartCopy, chunked
//! (`aws-chunked`) bodies.
//!
//! Where the bytes go, server side: a PUT's body is copied from the socket into the
//! connection's receive buffer, then into the store (MD5 for the ETag in the same pass as the
//! store's write; SHA-256 too when the client signed the payload); a GET's bytes are read from
//! the store into the connection's send buffer, then copied into the socket. The store is
//! called on the serving loop (a disk-backed store's write blocks it meanwhile): moving these
//! calls to the storage workers the chunk server uses is the next step.

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

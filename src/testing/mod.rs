//! Test support for ustack's own tests and for embedders' (the `testing` Cargo feature).
//!
//! - [`store_contract`]: the [`ChunkStore`](crate::chunk::ChunkStore) contract as test
//!   functions. ustack runs it against `MemStore` and `DirStore`; a file server runs it against
//!   its own store with one macro call (example in the module docs).
//! - [`decoder`]: the properties every input must keep through the chunk protocol's
//!   [`FrameDecoder`](crate::proto::FrameDecoder) and header parsers: one oracle, checked by the
//!   crate's proptests on generated frames and by the fuzz targets on arbitrary bytes.
//!
//! Only built with `--features testing` (and in the crate's own unit tests): nothing here is in
//! a default build. As a dev-dependency:
//!
//! ```toml
//! [dev-dependencies]
//! ustack = { version = "0.1", features = ["testing"] }
//! ```
//!
//! The crate's unit tests also find here the rule for tests that need privileges (root,
//! namespaces, hugepages); the integration tests in `tests/` share the same file.

pub mod decoder;
#[cfg(test)]
pub(crate) mod privileged;
pub mod store_contract;

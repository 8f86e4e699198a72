//! Test support for embedders and for the fuzz targets (the `testing` Cargo feature): a facade,
//! like [`host`](crate::host), over what the crate's own tests use.
//!
//! - [`store_contract`]: the [`ChunkStore`](crate::chunk::ChunkStore) contract as test
//!   functions. ustack runs it against `MemStore` and `DirStore`; a file server runs it against
//!   its own store with one macro call (example in the module docs).
//! - [`decoder`]: the properties every input must keep through the chunk protocol's
//!   [`FrameDecoder`](crate::proto::FrameDecoder) and header parsers: one oracle, checked by the
//!   crate's proptests on generated frames and by the fuzz targets on arbitrary bytes.
//!
//! Only built with `--features testing`: nothing here is in a default build. As a
//! dev-dependency:
//!
//! ```toml
//! [dev-dependencies]
//! ustack = { version = "0.1", features = ["testing"] }
//! ```

pub use crate::chunk::store_contract;
pub use crate::proto::oracle as decoder;

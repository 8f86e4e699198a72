//! Every FFI call and raw syscall: the only place with `unsafe`, besides `mem`.
#![allow(unsafe_code)]

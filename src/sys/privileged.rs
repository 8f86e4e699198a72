//! The rule for tests that need privileges (root, network namespaces, hugepages, a program
//! that may be missing): one is-root check and one way to skip.
//!
//! Under `scripts/test.sh` as root (`USTACK_REQUIRE_PRIVILEGED_TESTS=1`) such a test must run,
//! so a skip is a failure; elsewhere (a developer's `cargo test` as a user) it prints
//! `SKIPPED: <reason>` and passes.
//!
//! One file for both kinds of test: the crate's unit tests use it as `crate::sys::privileged`
//! and the integration tests include it into `tests/common` by path. So it uses `std` alone.

/// Set by `scripts/test.sh` as root: a test that cannot run fails instead of skipping.
pub const REQUIRE_ENV: &str = "USTACK_REQUIRE_PRIVILEGED_TESTS";

/// Whether the effective user is root (`Uid:` of `/proc/self/status`: real, effective, ...).
pub fn is_root() -> bool {
    effective_uid() == Some(0)
}

/// The effective user id, from `/proc/self/status`.
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let ids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    ids.split_whitespace().nth(1)?.parse().ok()
}

/// A test that cannot run here calls this (and returns): it prints `SKIPPED: <reason>`, or,
/// when [`REQUIRE_ENV`] is set, fails the test with the reason.
pub fn skip(reason: &str) {
    if std::env::var_os(REQUIRE_ENV).is_some() {
        panic!("this test must run here but cannot: {reason}");
    }
    println!("SKIPPED: {reason}");
}

/// `true` when running as root; otherwise [`skip`]s with `needs root to <what>` and returns
/// `false`.
pub fn root_or_skip(what: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(&format!("needs root to {what}"));
    false
}

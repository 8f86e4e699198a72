#!/usr/bin/env bash
# Runs the crate's Miri-able tests under Miri (undefined-behaviour checker) on the nightly toolchain.
#
#   scripts/miri.sh            the memory layer (`--lib mem::`), the clock (`--lib time::`) and the
#                              AF_XDP rings on heap memory (`--lib sys::xsk_ring::`)
#   scripts/miri.sh FILTER..   `cargo +nightly miri test --lib FILTER` for each FILTER instead
#
# Not Miri-able: tests/ binaries that map hugepages or touch /proc and /sys (Miri has no mmap of
# hugepages and isolates the file system), and anything that does real device I/O.
#
# What it needs, and installs when missing (it says so): the nightly toolchain with the miri and
# rust-src components (`rustup toolchain install nightly --profile minimal --component
# miri,rust-src`, or `rustup component add` on an installed nightly), then Miri's own sysroot
# (`cargo +nightly miri setup`).
#
# When that cannot be had (no rustup, offline, no miri for this nightly) it skips, with the same
# rule as the tests that need privileges: under `scripts/test.sh` as root
# (USTACK_REQUIRE_PRIVILEGED_TESTS set) a skip is a failure (exit 1); run by hand elsewhere it
# prints "SKIPPED: <reason>" and exits 0.
#
# Environment: USTACK_MIRI_TOOLCHAIN (default nightly) names the toolchain; MIRIFLAGS is passed
# through (default: -Zmiri-strict-provenance).
set -euo pipefail

cd "$(dirname "$0")/.."

toolchain="${USTACK_MIRI_TOOLCHAIN:-nightly}"

skip() {
    if [ -n "${USTACK_REQUIRE_PRIVILEGED_TESTS:-}" ]; then
        echo "miri.sh: FAILED: Miri must run here but cannot: $*" >&2
        exit 1
    fi
    echo "SKIPPED: $*"
    exit 0
}

command -v cargo >/dev/null 2>&1 || skip "cargo is not installed"
command -v rustup >/dev/null 2>&1 || skip "rustup is not installed (needed for the $toolchain toolchain with miri)"

have_toolchain() {
    rustup run "$toolchain" rustc --version >/dev/null 2>&1
}

have_components() {
    local installed
    installed=$(rustup component list --toolchain "$toolchain" --installed 2>/dev/null) || return 1
    grep -q '^miri' <<<"$installed" && grep -q '^rust-src' <<<"$installed"
}

if ! have_toolchain; then
    echo "miri.sh: no $toolchain toolchain; installing it: rustup toolchain install $toolchain --profile minimal --component miri,rust-src"
    rustup toolchain install "$toolchain" --profile minimal --component miri,rust-src \
        || skip "could not install the $toolchain toolchain with miri and rust-src (offline, or no such toolchain)"
    have_toolchain || skip "the $toolchain toolchain does not run after rustup toolchain install"
fi

if ! have_components; then
    echo "miri.sh: $toolchain lacks miri or rust-src; installing them: rustup component add --toolchain $toolchain miri rust-src"
    rustup component add --toolchain "$toolchain" miri rust-src \
        || skip "could not add the miri and rust-src components to the $toolchain toolchain (offline, or not available for it)"
    have_components || skip "miri or rust-src still missing from the $toolchain toolchain after rustup component add"
fi

# Build Miri's own sysroot once (prints nothing useful on success).
if ! cargo "+$toolchain" miri setup >/dev/null 2>&1; then
    skip "\`cargo +$toolchain miri setup\` failed (it needs rust-src); run it by hand to see why"
fi

export MIRIFLAGS="${MIRIFLAGS:--Zmiri-strict-provenance}"
echo "miri.sh: $(cargo "+$toolchain" miri --version 2>/dev/null), MIRIFLAGS=$MIRIFLAGS"

filters=("$@")
if [ ${#filters[@]} -eq 0 ]; then
    filters=(mem:: time:: sys::xsk_ring::)
fi

status=0
for f in "${filters[@]}"; do
    echo "miri.sh: cargo +$toolchain miri test --lib $f"
    if ! cargo "+$toolchain" miri test --lib "$f"; then
        echo "miri.sh: FAILED under Miri: --lib $f"
        status=1
    fi
done
exit $status

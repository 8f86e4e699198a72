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
# When nightly or its miri / rust-src components are missing, it tries
# `rustup component add --toolchain nightly miri rust-src`; if that fails it prints
# "SKIPPED: <reason>" and exits 0 (CI decides whether a skip is acceptable).
# Environment: MIRIFLAGS is passed through (default: -Zmiri-strict-provenance).
set -euo pipefail

cd "$(dirname "$0")/.."

skip() {
    echo "SKIPPED: $*"
    exit 0
}

command -v cargo >/dev/null 2>&1 || skip "cargo is not installed"
command -v rustup >/dev/null 2>&1 || skip "rustup is not installed (needed for the nightly toolchain with miri)"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    skip "no nightly toolchain; install it with: rustup toolchain install nightly --component miri,rust-src"
fi

have_components() {
    local installed
    installed=$(rustup component list --toolchain nightly --installed 2>/dev/null) || return 1
    grep -q '^miri' <<<"$installed" && grep -q '^rust-src' <<<"$installed"
}

if ! have_components; then
    echo "miri.sh: nightly lacks miri or rust-src; trying: rustup component add --toolchain nightly miri rust-src"
    if ! rustup component add --toolchain nightly miri rust-src; then
        skip "could not add the miri and rust-src components to the nightly toolchain (offline, or not available for this nightly)"
    fi
    have_components || skip "miri or rust-src still missing from the nightly toolchain after rustup component add"
fi

# Build Miri's own sysroot once (prints nothing useful on success).
if ! cargo +nightly miri setup >/dev/null 2>&1; then
    skip "\`cargo +nightly miri setup\` failed (it needs rust-src); run it by hand to see why"
fi

export MIRIFLAGS="${MIRIFLAGS:--Zmiri-strict-provenance}"
echo "miri.sh: $(cargo +nightly miri --version 2>/dev/null), MIRIFLAGS=$MIRIFLAGS"

filters=("$@")
if [ ${#filters[@]} -eq 0 ]; then
    filters=(mem:: time:: sys::xsk_ring::)
fi

status=0
for f in "${filters[@]}"; do
    echo "miri.sh: cargo +nightly miri test --lib $f"
    if ! cargo +nightly miri test --lib "$f"; then
        echo "miri.sh: FAILED under Miri: --lib $f"
        status=1
    fi
done
exit $status

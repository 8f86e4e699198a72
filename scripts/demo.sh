#!/usr/bin/env bash
# The main job, in one command: the chunk file server and a client as two processes; the client
# writes a few hundred MiB of chunks (sizes log-uniform from 1 B to 4 MiB), reads every one back,
# checks every byte and every STAT checksum, and prints a result table.
#
#   scripts/demo.sh              ustack <-> ustack over shared memory (memif): no root, no NIC;
#                                then the same over kernel TCP, as the baseline
#   sudo scripts/demo.sh --af-xdp   ustack on AF_XDP at both ends of a veth pair between two
#                                network namespaces the script creates (and removes)
#   scripts/demo.sh --dpdk       ustack on DPDK's net_memif PMD at both ends (builds with
#                                --features dpdk; needs libdpdk-dev; hugepages if reserved)
#
# USTACK_DEMO_TOTAL (default 256MiB) sets how much is written.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

mode=memif
case "${1:-}" in
    "") ;;
    --af-xdp) mode=af-xdp ;;
    --dpdk) mode=dpdk ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (try --help)" >&2; exit 64 ;;
esac
total="${USTACK_DEMO_TOTAL:-256MiB}"

ensure_rust
ensure_linker
features=()
if [ "$mode" = dpdk ]; then
    ensure_packages libdpdk-dev pkg-config || { echo "--dpdk needs libdpdk-dev" >&2; exit 1; }
    features=(--features dpdk)
fi
if [ "$mode" = af-xdp ] && ! is_root; then
    echo "--af-xdp needs root (network namespaces, CAP_NET_RAW/CAP_BPF/CAP_NET_ADMIN); run it with sudo" >&2
    exit 1
fi
echo "==> building the examples (release)"
cargo build --release --examples -q "${features[@]}"
bin=$PWD/target/release/examples

work=$(mktemp -d "${TMPDIR:-/tmp}/ustack-demo.XXXXXX")
chmod 755 "$work"
server_pid=""
netns=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    [ -n "$netns" ] && scripts/netns.sh down "$netns" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Starts the file server ($@ are its arguments) and waits for its "listening on" line.
start_server() {
    "$@" > "$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 200); do
        grep -q "listening on" "$work/server.log" 2>/dev/null && { grep "^fileserver: backend" "$work/server.log"; return 0; }
        kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; return 1; }
        sleep 0.05
    done
    echo "the file server did not come up:" >&2
    cat "$work/server.log" >&2
    return 1
}

stop_server() {
    kill -TERM "$server_pid"
    wait "$server_pid"
    server_pid=""
    grep -E "^fileserver: final" "$work/server.log" || true
}

run_pair() {
    local title=$1
    shift
    echo
    echo "==> $title"
}

case "$mode" in
memif)
    run_pair "1. fileserver and chunkctl as two processes over shared memory (memif): ustack at both ends, no root"
    sock="$work/memif.sock"
    start_server "$bin/fileserver" --backend memif --memif-socket "$sock" --ip 10.214.0.1/24 \
        --store "dir:$work/store-memif" --sync never --create
    "$bin/chunkctl" --backend memif --memif-socket "$sock" --ip 10.214.0.2/24 \
        --server 10.214.0.1:7000 verify --total "$total"
    stop_server

    run_pair "2. the same two processes over kernel TCP on loopback (baseline)"
    port=$((20000 + RANDOM % 20000))
    start_server "$bin/fileserver" --backend kernel --listen "127.0.0.1:$port" \
        --store "dir:$work/store-kernel" --sync never --create
    "$bin/chunkctl" --backend kernel --server "127.0.0.1:$port" verify --total "$total"
    stop_server
    ;;
af-xdp)
    netns="demo$$"
    netns=${netns:0:13}
    scripts/netns.sh up "$netns" >/dev/null
    run_pair "ustack on AF_XDP at both ends of a veth pair (namespaces $netns-a and $netns-b)"
    start_server ip netns exec "$netns-a" "$bin/fileserver" --backend auto --iface "$netns-a" \
        --ip 10.99.0.1/24 --store "dir:$work/store-afxdp" --sync never --create
    ip netns exec "$netns-b" "$bin/chunkctl" --backend auto --iface "$netns-b" --ip 10.99.0.2/24 \
        --server 10.99.0.1:7000 verify --total "$total"
    stop_server
    ;;
dpdk)
    sock="$work/dpdk-memif.sock"
    run_pair "ustack on DPDK's net_memif PMD at both ends (two processes, two EALs)"
    start_server "$bin/fileserver" --backend dpdk \
        --dpdk-vdev "net_memif0,role=server,socket=$sock,socket-abstract=no" --ip 10.215.0.1/24 \
        --store "dir:$work/store-dpdk" --sync never --create
    "$bin/chunkctl" --backend dpdk --dpdk-vdev "net_memif0,role=client,socket=$sock,socket-abstract=no" \
        --ip 10.215.0.2/24 --server 10.215.0.1:7000 verify --total "$total"
    stop_server
    ;;
esac
echo
echo "demo: OK ($mode: every byte verified)"

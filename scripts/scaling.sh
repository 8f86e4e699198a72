#!/usr/bin/env bash
# Per-core shards (issue 17): how the file server scales with the number of shards.
#
# For each shard count n = 1..--max-shards, the file server serves over memif with
# `--cores 0..n-1` (one pinned shard per core, each on its own queue pair), and one chunkctl
# client proposing n queue pairs runs `bench` against it: 4 KiB READs (or --op/--size) over
# --connections connections at --depth. Per run it records the client's ops/s, the server's CPU
# seconds (utime + stime of the whole process over the measured run, from /proc) and the
# client's (chunkctl's own cpu_s), and prints CPU microseconds per operation on each side.
#
# The client is one thread on the last core; with n equal to the machine's core count it shares
# a core with a shard, so on a small machine the figures show the cost per shard more than the
# gain (say so when quoting them). A poll-mode server spins while it serves, so its CPU per
# operation is the cost of a shard at that load. The last lines model a 16-core host from the
# one-shard figures: ops/s per shard core times 16, as if the NIC and the clients kept up.
#
#   scripts/scaling.sh                       1..(cores) shards, 3 repetitions of 5 s
#   scripts/scaling.sh --max-shards 2 --reps 1 --duration-s 2
#   scripts/scaling.sh --op write --size 1MiB --connections 4 --depth 4
#
# Results: target/scaling/results.tsv (appended), one line per run. No root needed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ncpu=$(nproc)
max_shards=$ncpu
reps=3
duration=5
connections=32
depth=4
op=read
size=4KiB
out=target/scaling
while [ $# -gt 0 ]; do
    case "$1" in
    --max-shards) max_shards=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --duration-s) duration=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --depth) depth=$2; shift 2 ;;
    --op) op=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "scaling.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ "$max_shards" -gt "$ncpu" ]; then
    echo "scaling.sh: --max-shards $max_shards is more than the $ncpu cores here (one shard per core)" >&2
    exit 2
fi

ensure_rust
cargo build --release --examples >/dev/null
bin=target/release/examples
mkdir -p "$out"
tsv=$out/results.tsv
[ -s "$tsv" ] || printf 'date\tcpu\tshards\trep\top\tsize\tconnections\tdepth\tops_s\tserver_cpu_s\tclient_cpu_s\tserver_us_per_op\tclient_us_per_op\n' >"$tsv"
cpu_model=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
client_core=$((ncpu - 1))
tmp=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# utime + stime of process $1, in seconds.
cpu_seconds() {
    local s
    read -r -a s <"/proc/$1/stat"
    # Fields 14 and 15 (1-based), after a command name without spaces.
    awk -v t="$(getconf CLK_TCK)" -v u="${s[13]}" -v k="${s[14]}" 'BEGIN {printf "%.3f", (u + k) / t}' 
}

echo "scaling: $cpu_model, $ncpu cores; client on core $client_core; $op $size, $connections x $depth"
printf '%-7s %-4s %12s %14s %14s\n' shards rep ops/s "server us/op" "client us/op"
for rep in $(seq 1 "$reps"); do
    for n in $(seq 1 "$max_shards"); do
        cores=$(seq -s, 0 $((n - 1)))
        sock=$tmp/memif-$n-$rep.sock
        "$bin/fileserver" --backend memif --memif-socket "$sock" --cores "$cores" \
            --ip 10.218.0.1/24 --store mem --mem-budget 1GiB >"$tmp/server.log" 2>&1 &
        server_pid=$!
        for _ in $(seq 1 100); do
            grep -q "fileserver: listening on" "$tmp/server.log" && break
            kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/server.log" >&2; exit 1; }
            sleep 0.1
        done
        # The client's warm-up second comes first; the server's CPU is read around the whole
        # client run and the warm-up subtracted by scaling to the measured seconds.
        before=$(cpu_seconds "$server_pid")
        start=$(date +%s.%N)
        taskset -c "$client_core" "$bin/chunkctl" --backend memif --memif-socket "$sock" \
            --memif-queues "$n" --ip 10.218.0.2/24 --server 10.218.0.1:7000 \
            --connections "$connections" bench --op "$op" --size "$size" --depth "$depth" \
            --duration-s "$duration" >"$tmp/client.log" 2>&1 || { cat "$tmp/client.log" >&2; exit 1; }
        end=$(date +%s.%N)
        after=$(cpu_seconds "$server_pid")
        kill -TERM "$server_pid"
        wait "$server_pid" || true
        server_pid=
        line=$(grep '^RESULT' "$tmp/client.log")
        ops=$(sed 's/.* ops_s=\([0-9.]*\).*/\1/' <<<"$line")
        # chunkctl's cpu_s covers its whole run (warm-up included): scaled like the server's.
        ccpu=$(sed 's/.* cpu_s=\([0-9.]*\).*/\1/' <<<"$line")
        ccpu=$(awk -v c="$ccpu" -v d="$duration" -v s="$start" -v e="$end" 'BEGIN {printf "%.3f", c * d / (e - s)}')
        scpu=$(awk -v a="$after" -v b="$before" -v d="$duration" -v s="$start" -v e="$end" \
            'BEGIN {printf "%.3f", (a - b) * d / (e - s)}')
        sus=$(awk -v c="$scpu" -v o="$ops" -v d="$duration" 'BEGIN {printf "%.2f", c * 1e6 / (o * d)}')
        cus=$(awk -v c="$ccpu" -v o="$ops" -v d="$duration" 'BEGIN {printf "%.2f", c * 1e6 / (o * d)}')
        printf '%-7s %-4s %12s %14s %14s\n' "$n" "$rep" "$ops" "$sus" "$cus"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" \
            "$cpu_model" "$n" "$rep" "$op" "$size" "$connections" "$depth" "$ops" "$scpu" \
            "$ccpu" "$sus" "$cus" >>"$tsv"
    done
done
one=$(awk -F'\t' -v c="$cpu_model" -v o="$op" -v s="$size" -v n="$connections" -v d="$depth" \
    '$2 == c && $3 == 1 && $5 == o && $6 == s && $7 == n && $8 == d {print $12}' "$tsv" |
    sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
if [ -n "$one" ]; then
    echo "model: one shard costs $one us of server CPU per $op of $size (median of such runs in $tsv);"
    awk -v u="$one" 'BEGIN {printf "       a core serves %d ops/s, 16 shard cores %d ops/s\n", 1e6 / u, 16e6 / u}'
    echo "       if the NIC's queues and the clients keep up (no shared state on the packet path)"
fi

#!/usr/bin/env bash
# Reserves hugepages for ustack's packet memory (HugeRegion / BufPool).
#
#   scripts/hugepages.sh            print the current hugepage state and this usage
#   scripts/hugepages.sh N          reserve N 2 MiB pages   (echo N > /proc/sys/vm/nr_hugepages)
#   scripts/hugepages.sh N 1G       reserve N 1 GiB pages   (needs 1 GiB pages in the kernel)
#   scripts/hugepages.sh 0          release the reserved pages again
#
# Needs root. The kernel may give fewer pages than asked when physical memory is fragmented:
# the script then says so and exits 1 (try a smaller N, or reserve early after boot).
# The reservation lasts until reboot; for a permanent one set vm.nr_hugepages in /etc/sysctl.d/.
set -euo pipefail

SYSFS=/sys/kernel/mm/hugepages

usage() {
    cat <<USAGE
usage: $0 [N [2M|1G]]
  no arguments   print the current hugepage state
  N              reserve N 2 MiB hugepages (as root); 0 releases them
  N 1G           reserve N 1 GiB hugepages instead
USAGE
}

# Prints total and free pages of one size directory, e.g. hugepages-2048kB.
state_of() {
    local dir=$SYSFS/$1
    printf '  %-20s total %s, free %s, reserved %s, surplus %s\n' "$1" \
        "$(cat "$dir/nr_hugepages")" "$(cat "$dir/free_hugepages")" \
        "$(cat "$dir/resv_hugepages")" "$(cat "$dir/surplus_hugepages")"
}

print_state() {
    echo "hugepages (from /proc/meminfo):"
    grep -E '^(HugePages_Total|HugePages_Free|HugePages_Rsvd|HugePages_Surp|Hugepagesize):' /proc/meminfo |
        sed 's/^/  /'
    if [ -d "$SYSFS" ]; then
        echo "per page size (from $SYSFS):"
        for d in "$SYSFS"/hugepages-*; do
            [ -d "$d" ] && state_of "$(basename "$d")"
        done
    fi
}

if [ $# -eq 0 ]; then
    print_state
    echo
    usage
    exit 0
fi

case "${1:-}" in
-h | --help)
    usage
    exit 0
    ;;
esac

if [ $# -gt 2 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
    echo "error: N must be a non-negative whole number of pages" >&2
    usage >&2
    exit 2
fi
want=$((10#$1))

case "${2:-2M}" in
2M | 2m | 2048k | 2048kB) size_kb=2048 ;;
1G | 1g | 1048576k | 1048576kB) size_kb=1048576 ;;
*)
    echo "error: page size must be 2M or 1G, not '$2'" >&2
    usage >&2
    exit 2
    ;;
esac

dir=$SYSFS/hugepages-${size_kb}kB
if [ ! -d "$dir" ]; then
    echo "error: this kernel has no ${size_kb} kB hugepages ($dir does not exist)" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "error: reserving hugepages needs root: run 'sudo $0 $*'" >&2
    exit 1
fi

# The 2 MiB pool is the default size: write it where the task asked for (the sysctl); other
# sizes only have their sysfs file.
if [ "$size_kb" -eq 2048 ] && [ "$(awk '/^Hugepagesize:/ {print $2}' /proc/meminfo)" = 2048 ]; then
    target=/proc/sys/vm/nr_hugepages
else
    target=$dir/nr_hugepages
fi

if ! echo "$want" >"$target" 2>/dev/null; then
    echo "error: writing $want to $target failed (read-only /proc/sys in a container?)" >&2
    exit 1
fi

got=$(cat "$dir/nr_hugepages")
free=$(cat "$dir/free_hugepages")
echo "asked for $want pages of ${size_kb} kB: HugePages_Total $got, HugePages_Free $free (${size_kb} kB pages)"
if [ "$got" -lt "$want" ]; then
    echo "error: the kernel reserved only $got of $want pages (physical memory too fragmented or too small);" \
        "try a smaller N, or reserve at boot (hugepages=$want on the kernel command line)" >&2
    exit 1
fi
if [ "$got" -gt "$want" ]; then
    echo "note: $got pages remain because $((got - want)) are still in use by running programs"
fi

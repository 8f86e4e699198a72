#!/usr/bin/env bash
# Test topology: two network namespaces joined by a veth pair.
#
#   scripts/netns.sh up NAME            create NAME-a and NAME-b, joined by veth NAME-a <-> NAME-b
#   scripts/netns.sh down NAME          delete them (the veth pair goes with them)
#   scripts/netns.sh run NAME -- CMD... up, run CMD, and down on every exit (also on error, ^C, TERM)
#
# Namespace NAME-a holds interface NAME-a with ADDR_A; namespace NAME-b holds interface NAME-b
# with ADDR_B. NAME: letters, digits, '_' and '-', at most 13 characters (interface names take at
# most 15). Loopback and both ends are up. If ethtool is installed, TX checksum offload is turned
# off on both ends: otherwise the kernel sends TCP/UDP over veth with only a partial checksum,
# which user-space receivers (AF_XDP, AF_PACKET) see as corrupt.
#
# CMD runs in the caller's namespace with these set, to enter either side:
#   NETNS_A NETNS_B (namespace names), IFACE_A IFACE_B, ADDR_A ADDR_B (without prefix length)
# e.g.  scripts/netns.sh run t1 -- sh -c 'ip netns exec "$NETNS_A" ping -c1 "$ADDR_B"'
#
# Environment (optional):
#   NETNS_ADDR_A  address/prefix of side A (default 10.99.0.1/24)
#   NETNS_ADDR_B  address/prefix of side B (default 10.99.0.2/24)
#   NETNS_MTU     MTU of both ends (default: the kernel's, 1500)
#
# Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2.
set -Eeuo pipefail

prog=${0##*/}

die() {
	echo "$prog: error: $*" >&2
	exit 1
}

warn() {
	echo "$prog: warning: $*" >&2
}

usage() {
	cat >&2 <<EOF
usage: $prog up NAME
       $prog down NAME
       $prog run NAME -- CMD [ARGS...]
NAME: [A-Za-z0-9_-], at most 13 characters. See the header of $0 for details.
EOF
	exit 2
}

check_tools() {
	command -v ip >/dev/null 2>&1 || die "'ip' not found: install iproute2 (apt-get install iproute2)"
	if [ "$(id -u)" -ne 0 ]; then
		die "needs CAP_SYS_ADMIN/CAP_NET_ADMIN: run as root (e.g. sudo $0 $*)"
	fi
}

check_name() {
	local name=$1
	[[ $name =~ ^[A-Za-z0-9_][A-Za-z0-9_-]{0,12}$ ]] ||
		die "bad NAME '$name': use letters, digits, '_' and '-', at most 13 characters (interface names take at most 15)"
}

ns_exists() {
	ip netns list | awk '{print $1}' | grep -qxF -- "$1"
}

# Deletes both namespaces of NAME if they exist; never fails.
down() {
	local name=$1 ns
	for ns in "$name-a" "$name-b"; do
		if ns_exists "$ns"; then
			ip netns del "$ns" || warn "could not delete namespace $ns"
		fi
	done
}

up() {
	local name=$1
	local addr_a=${NETNS_ADDR_A:-10.99.0.1/24}
	local addr_b=${NETNS_ADDR_B:-10.99.0.2/24}
	local ns_a="$name-a" ns_b="$name-b"
	local ns

	for ns in "$ns_a" "$ns_b"; do
		if ns_exists "$ns"; then
			die "namespace $ns exists already: run '$prog down $name' first"
		fi
	done

	# Undo a half-built topology if any step fails.
	trap 'down "$name"' ERR

	ip netns add "$ns_a"
	ip netns add "$ns_b"
	# Created inside the namespaces, so the names never clash with the host's interfaces.
	ip -n "$ns_a" link add "$ns_a" type veth peer name "$ns_b" netns "$ns_b"
	ip -n "$ns_a" addr add "$addr_a" dev "$ns_a"
	ip -n "$ns_b" addr add "$addr_b" dev "$ns_b"
	for ns in "$ns_a" "$ns_b"; do
		if [ -n "${NETNS_MTU:-}" ]; then
			ip -n "$ns" link set "$ns" mtu "$NETNS_MTU"
		fi
		if command -v ethtool >/dev/null 2>&1; then
			ip netns exec "$ns" ethtool -K "$ns" tx off >/dev/null
		fi
		ip -n "$ns" link set lo up
		ip -n "$ns" link set "$ns" up
	done
	if ! command -v ethtool >/dev/null 2>&1; then
		warn "ethtool not found (apt-get install ethtool): TX checksum offload stays on, so" \
			"TCP/UDP from the kernel carry partial checksums on this veth pair"
	fi

	trap - ERR
	echo "$prog: $ns_a ($ns_a ${addr_a}) <-> $ns_b ($ns_b ${addr_b}) up"
}

child=

# Stops CMD (if running) and exits with $1; the EXIT trap then tears the topology down.
stop() {
	if [ -n "$child" ]; then
		kill -TERM "$child" 2>/dev/null || true
		wait "$child" 2>/dev/null || true
	fi
	exit "$1"
}

run() {
	local name=$1
	shift
	[ "${1:-}" = "--" ] || usage
	shift
	[ $# -gt 0 ] || usage

	# Tear down on every way out: normal exit, error, ^C, TERM.
	trap 'down "$name"' EXIT
	trap 'stop 130' INT
	trap 'stop 143' TERM
	up "$name"

	local addr_a=${NETNS_ADDR_A:-10.99.0.1/24}
	local addr_b=${NETNS_ADDR_B:-10.99.0.2/24}
	local status=0
	# In the background so a signal to this script is handled at once (bash defers traps while
	# a foreground command runs); `<&0` keeps stdin, which a background job would lose.
	NETNS_A="$name-a" NETNS_B="$name-b" IFACE_A="$name-a" IFACE_B="$name-b" \
		ADDR_A="${addr_a%/*}" ADDR_B="${addr_b%/*}" "$@" <&0 &
	child=$!
	wait "$child" || status=$?
	child=
	exit "$status"
}

[ $# -ge 2 ] || usage
cmd=$1
name=$2
shift 2
check_name "$name"
case "$cmd" in
up)
	[ $# -eq 0 ] || usage
	check_tools "$cmd" "$name"
	up "$name"
	;;
down)
	[ $# -eq 0 ] || usage
	check_tools "$cmd" "$name"
	down "$name"
	;;
run)
	check_tools "$cmd" "$name" "$@"
	run "$name" "$@"
	;;
*)
	usage
	;;
esac

#!/usr/bin/env bash
# Test topologies: two network namespaces joined by a veth pair, or joined through a third one
# where a fault relay (examples/faultwire.rs) forwards the frames.
#
#   scripts/netns.sh up NAME            create NAME-a and NAME-b, joined by veth NAME-a <-> NAME-b
#   scripts/netns.sh down NAME          delete them (the veth pairs go with them); also the
#                                       lossy topology's NAME-m
#   scripts/netns.sh run NAME -- CMD... up, run CMD, and down on every exit (also on error, ^C, TERM)
#
#   scripts/netns.sh lossy-up NAME      the lossy path: NAME-a, NAME-m, NAME-b; veth NAME-a (in
#                                       NAME-a) <-> NAME-l (in NAME-m), NAME-r (in NAME-m) <->
#                                       NAME-b (in NAME-b); NAME-l and NAME-r promiscuous and
#                                       without addresses; every end with offloads off
#                                       (ethtool -K tx off tso off gso off gro off) and IPv6 off
#   scripts/netns.sh lossy-run NAME -- CMD...   lossy-up, run CMD, down on every exit
#
# Nothing forwards between NAME-l and NAME-r until a relay runs in NAME-m, e.g.
#   ip netns exec NAME-m target/release/examples/faultwire --left NAME-l --right NAME-r \
#       --seed 1 --loss 1% --stats-file /tmp/fw.report &
# and stop it with SIGTERM to its PID (`ip netns exec` runs it under the same PID): it writes
# its counters to the stats file and exits.
#
# Namespace NAME-a holds interface NAME-a with ADDR_A; namespace NAME-b holds interface NAME-b
# with ADDR_B. NAME: letters, digits, '_' and '-', at most 13 characters (interface names take at
# most 15). Loopback and both ends are up. If ethtool is installed, TX checksum offload is turned
# off on both ends: otherwise the kernel sends TCP/UDP over veth with only a partial checksum,
# which user-space receivers (AF_XDP, AF_PACKET) see as corrupt.
#
# CMD runs in the caller's namespace with these set, to enter either side:
#   NETNS_A NETNS_B (namespace names), IFACE_A IFACE_B, ADDR_A ADDR_B (without prefix length)
#   lossy-run also: NETNS_M, IFACE_L IFACE_R (the relay's --left and --right)
# e.g.  scripts/netns.sh run t1 -- sh -c 'ip netns exec "$NETNS_A" ping -c1 "$ADDR_B"'
#
# Environment (optional):
#   NETNS_ADDR_A  address/prefix of side A (default 10.99.0.1/24)
#   NETNS_ADDR_B  address/prefix of side B (default 10.99.0.2/24)
#   NETNS_MTU     MTU of both ends (default: the kernel's, 1500)
#
# Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2; the lossy path also ethtool.
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
       $prog lossy-up NAME
       $prog lossy-run NAME -- CMD [ARGS...]
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

# Deletes the namespaces of NAME (either topology) if they exist; never fails.
down() {
	local name=$1 ns
	for ns in "$name-a" "$name-m" "$name-b"; do
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

# Turns every offload off that would hand a relay or AF_XDP what a wire would not carry:
# partial checksums (tx), 64 KB super-frames (tso, gso), merged frames (gro).
offloads_off() {
	local ns=$1 dev=$2
	ip netns exec "$ns" ethtool -K "$dev" tx off tso off gso off gro off >/dev/null
	local on
	on=$(ip netns exec "$ns" ethtool -k "$dev" |
		awk -F': ' '/^(tx-checksumming|tcp-segmentation-offload|generic-segmentation-offload|generic-receive-offload):/ && $2 ~ /^on/ {print $1}')
	[ -z "$on" ] || die "offloads still on for $dev in $ns: $on"
}

lossy_up() {
	local name=$1
	local addr_a=${NETNS_ADDR_A:-10.99.0.1/24}
	local addr_b=${NETNS_ADDR_B:-10.99.0.2/24}
	local ns_a="$name-a" ns_m="$name-m" ns_b="$name-b"
	local ns

	command -v ethtool >/dev/null 2>&1 ||
		die "ethtool not found (apt-get install ethtool): the lossy path needs the offloads off"
	for ns in "$ns_a" "$ns_m" "$ns_b"; do
		if ns_exists "$ns"; then
			die "namespace $ns exists already: run '$prog down $name' first"
		fi
	done

	trap 'down "$name"' ERR

	for ns in "$ns_a" "$ns_m" "$ns_b"; do
		ip netns add "$ns"
		# Only the test's frames (and ARP) on the path: no IPv6 router or neighbour discovery.
		ip netns exec "$ns" sh -c 'for k in all default; do
			f=/proc/sys/net/ipv6/conf/$k/disable_ipv6; [ ! -e "$f" ] || echo 1 >"$f"; done'
	done
	ip -n "$ns_a" link add "$name-a" type veth peer name "$name-l" netns "$ns_m"
	ip -n "$ns_m" link add "$name-r" type veth peer name "$name-b" netns "$ns_b"
	ip -n "$ns_a" addr add "$addr_a" dev "$name-a"
	ip -n "$ns_b" addr add "$addr_b" dev "$name-b"
	local end
	for end in "$ns_a:$name-a" "$ns_m:$name-l" "$ns_m:$name-r" "$ns_b:$name-b"; do
		ns=${end%%:*}
		local dev=${end#*:}
		if [ -n "${NETNS_MTU:-}" ]; then
			ip -n "$ns" link set dev "$dev" mtu "$NETNS_MTU"
		fi
		offloads_off "$ns" "$dev"
		if [ "$ns" = "$ns_m" ]; then
			ip -n "$ns" link set dev "$dev" promisc on
		fi
		ip -n "$ns" link set dev lo up
		ip -n "$ns" link set dev "$dev" up
	done

	trap - ERR
	echo "$prog: $ns_a ($name-a ${addr_a}) <-> $ns_m ($name-l | $name-r) <-> $ns_b ($name-b ${addr_b}) up;" \
		"start a relay in $ns_m to forward"
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
	local kind=$1 name=$2
	shift 2
	[ "${1:-}" = "--" ] || usage
	shift
	[ $# -gt 0 ] || usage

	# Tear down on every way out: normal exit, error, ^C, TERM.
	trap 'down "$name"' EXIT
	trap 'stop 130' INT
	trap 'stop 143' TERM
	if [ "$kind" = lossy ]; then
		lossy_up "$name"
	else
		up "$name"
	fi

	local addr_a=${NETNS_ADDR_A:-10.99.0.1/24}
	local addr_b=${NETNS_ADDR_B:-10.99.0.2/24}
	local status=0
	# In the background so a signal to this script is handled at once (bash defers traps while
	# a foreground command runs); `<&0` keeps stdin, which a background job would lose.
	NETNS_A="$name-a" NETNS_B="$name-b" IFACE_A="$name-a" IFACE_B="$name-b" \
		NETNS_M="$name-m" IFACE_L="$name-l" IFACE_R="$name-r" \
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
	run veth "$name" "$@"
	;;
lossy-up)
	[ $# -eq 0 ] || usage
	check_tools "$cmd" "$name"
	lossy_up "$name"
	;;
lossy-run)
	check_tools "$cmd" "$name" "$@"
	run lossy "$name" "$@"
	;;
*)
	usage
	;;
esac

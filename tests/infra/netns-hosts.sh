#!/usr/bin/env bash
# Fake cluster hosts as network namespaces, for tests of what crosses a network.
# Each host PREFIXi has two NICs: eth0 = 10.10.0.i/24 and ib0 = 10.20.0.i/24,
# joined by two bridges in a separate "switch" namespace; the root namespace
# is not touched.
#
#   netns-hosts.sh up N      create PREFIX1..PREFIXN (idempotent: removes old ones first)
#   netns-hosts.sh check N   ping every host from PREFIX1 on both subnets
#   netns-hosts.sh down N    remove everything this script created
#
# PREFIX is $NETNS_PREFIX (default tfh); the switch is ${PREFIX}sw.
# Needs root and iproute2 (and iputils-ping for check).
set -euo pipefail
action=${1:-up}
n=${2:-3}
pfx=${NETNS_PREFIX:-tfh}
sw="${pfx}sw"

down() {
  for i in $(seq 1 "$n"); do ip netns del "$pfx$i" 2> /dev/null || true; done
  ip netns del "$sw" 2> /dev/null || true
}

up() {
  down
  ip netns add "$sw"
  ip -n "$sw" link set lo up
  for br in br-eth br-ib; do
    ip -n "$sw" link add "$br" type bridge
    ip -n "$sw" link set "$br" up
  done
  for i in $(seq 1 "$n"); do
    local h="$pfx$i"
    ip netns add "$h"
    ip -n "$h" link set lo up
    ip link add eth0 netns "$h" type veth peer name "e$i" netns "$sw"
    ip link add ib0 netns "$h" type veth peer name "i$i" netns "$sw"
    ip -n "$sw" link set "e$i" master br-eth up
    ip -n "$sw" link set "i$i" master br-ib up
    ip -n "$h" addr add "10.10.0.$i/24" dev eth0
    ip -n "$h" addr add "10.20.0.$i/24" dev ib0
    ip -n "$h" link set eth0 up
    ip -n "$h" link set ib0 up
  done
}

check() {
  for i in $(seq 1 "$n"); do
    ip netns exec "${pfx}1" ping -c 1 -W 2 "10.10.0.$i" > /dev/null
    ip netns exec "${pfx}1" ping -c 1 -W 2 "10.20.0.$i" > /dev/null
  done
  echo "ok: $n hosts reachable on eth0 and ib0"
}

case "$action" in
  up) up ;;
  down) down ;;
  check) check ;;
  *) echo "usage: $0 up|check|down [N]" >&2; exit 2 ;;
esac

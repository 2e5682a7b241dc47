#!/bin/sh
# Several offices on one machine: S sites, each a LAN of N hosts behind its own router, joined to a
# WAN core by links shaped to SITE_RATE; an origin on the core behind a link shaped to WAN_RATE; and
# one remote endpoint at home behind NAT (nftables masquerade). Everything lives in network
# namespaces: nothing touches the host's interfaces and nothing leaves the machine.
#
#   sites.sh up S N [PREFIX] [SITE_RATE] [WAN_RATE]   (PREFIX default lps, rates default 20mbit)
#   sites.sh down S N [PREFIX]
#
#   PREFIX-sK-I     host I at site K          10.10.K.I   (router PREFIX-sK, 10.10.K.254)
#   PREFIX-origin   the origin                10.20.250.2
#   PREFIX-nat-1    the host behind NAT       192.168.77.1 (router PREFIX-nat, seen outside as 10.20.251.2)
#   PREFIX-core     the WAN core router
#
# Site K's link is the router's `wan` interface (10.20.K.2, core side 10.20.K.1); its byte counters
# tell what crossed the link. Multicast (mDNS) stays on each site's bridge: routers do not forward
# it, so nodes find peers at other sites only through bootstrap peers, peer exchange or Kademlia.
# Nobody outside can open a connection to the host behind NAT. NAT_ONLY=IP (environment) also
# makes its router refuse everything the host sends anywhere but IP (a home firewall that lets
# only the fleet's relay through): that host is then reachable, and reaches others, only through
# a relay at IP.
# Shaping uses tc tbf both ways (netem is not available in this kernel, so no added latency).
set -eu
cmd=${1:?usage: sites.sh up|down S N [PREFIX] [SITE_RATE] [WAN_RATE]}
S=${2:?number of sites}
N=${3:?hosts per site}
P=${4:-lps}
SITE_RATE=${5:-20mbit}
WAN=${6:-20mbit}
core=$P-core

# link NS_A IF_A NS_B IF_B: a veth pair between two namespaces, created under names unique to this
# lab (parallel labs never clash) and renamed inside them.
link() {
  ip link add "$P-x" netns "$1" type veth peer name "$P-y" netns "$3"
  ip -n "$1" link set "$P-x" name "$2"
  ip -n "$3" link set "$P-y" name "$4"
  ip -n "$1" link set "$2" up
  ip -n "$3" link set "$4" up
}
shape() { # shape NS IF RATE
  ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$3" burst 32kb latency 50ms
}
router() {
  ip netns add "$1"
  ip -n "$1" link set lo up
  ip netns exec "$1" sh -c "echo 1 > /proc/sys/net/ipv4/ip_forward"
}
host() { # host NS
  ip netns add "$1"
  ip -n "$1" link set lo up
}

case "$cmd" in
up)
  # One neighbour table serves every namespace (see netns.sh): raise it for S * N hosts.
  need=$(( (S * N + 4) * (N + 4) * 2 ))
  for k in 1 2 3; do
    f=/proc/sys/net/ipv4/neigh/default/gc_thresh$k
    want=$(( need * k / 3 ))
    [ "$(cat "$f")" -ge "$want" ] || echo "$want" > "$f"
  done
  router "$core"
  for k in $(seq 1 "$S"); do
    r=$P-s$k
    router "$r"
    link "$core" "s$k" "$r" wan
    ip -n "$core" addr add "10.20.$k.1/30" dev "s$k"
    ip -n "$r" addr add "10.20.$k.2/30" dev wan
    ip -n "$core" route add "10.10.$k.0/24" via "10.20.$k.2"
    ip -n "$r" route add default via "10.20.$k.1"
    shape "$core" "s$k" "$SITE_RATE"
    shape "$r" wan "$SITE_RATE"
    ip -n "$r" link add br0 type bridge
    ip -n "$r" addr add "10.10.$k.254/24" dev br0
    ip -n "$r" link set br0 up
    for i in $(seq 1 "$N"); do
      h=$P-s$k-$i
      host "$h"
      link "$h" eth0 "$r" "h$i"
      ip -n "$r" link set "h$i" master br0
      ip -n "$h" link set eth0 multicast on
      ip -n "$h" addr add "10.10.$k.$i/24" dev eth0
      ip -n "$h" route add default via "10.10.$k.254"
    done
  done
  # The origin, behind its own shaped link.
  host "$P-origin"
  link "$core" origin "$P-origin" eth0
  ip -n "$core" addr add 10.20.250.1/30 dev origin
  ip -n "$P-origin" addr add 10.20.250.2/30 dev eth0
  ip -n "$P-origin" route add default via 10.20.250.1
  shape "$core" origin "$WAN"
  shape "$P-origin" eth0 "$WAN"
  # Home: one host behind a masquerading router. The core has no route to 192.168.77.0/24.
  router "$P-nat"
  link "$core" nat "$P-nat" wan
  ip -n "$core" addr add 10.20.251.1/30 dev nat
  ip -n "$P-nat" addr add 10.20.251.2/30 dev wan
  ip -n "$P-nat" route add default via 10.20.251.1
  host "$P-nat-1"
  link "$P-nat-1" eth0 "$P-nat" lan
  ip -n "$P-nat" addr add 192.168.77.254/24 dev lan
  ip -n "$P-nat-1" addr add 192.168.77.1/24 dev eth0
  ip -n "$P-nat-1" route add default via 192.168.77.254
  only=""
  if [ -n "${NAT_ONLY:-}" ]; then
    only="iifname \"lan\" ip daddr != ${NAT_ONLY} reject"
  fi
  ip netns exec "$P-nat" nft -f - <<EOF
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" ip saddr 192.168.77.0/24 masquerade
  }
}
table ip filter {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    $only
    iifname "lan" oifname "wan" accept
  }
}
EOF
  ;;
down)
  for k in $(seq 1 "$S"); do
    for i in $(seq 1 "$N"); do ip netns del "$P-s$k-$i" 2>/dev/null || true; done
    ip netns del "$P-s$k" 2>/dev/null || true
  done
  for ns in "$P-origin" "$P-nat-1" "$P-nat" "$core"; do ip netns del "$ns" 2>/dev/null || true; done
  ;;
*) echo "usage: sites.sh up|down S N [PREFIX] [SITE_RATE] [WAN_RATE]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Branch-office fan-out benchmark: N hosts on a LAN behind a WAN link of R Mbit/s to an origin,
# one release of S MiB. In one run it measures lanpatch (origin URLs, mDNS only, no static peers),
# a plain HTTP download by every host (curl), and BitTorrent (aria2c + mktorrent + opentracker,
# the origin seeding). For each: seconds until the last verified copy, that time over S/R (the
# physical limit of the WAN link), and origin egress bytes over S (from the origin's interface
# counters, so TCP/IP headers are included). Also lanpatch's idle RSS, peak RSS and CPU seconds
# per node, how many nodes fetched from the origin and their verified origin bytes over S, and
# when 1/50/90/100 % of S had left the source.
#
# The origin is nginx (Debian's package: static files, range requests, keep-alive), as a vendor
# mirror or the company's download server would be.
#
# MODE=lan (or bench/lan.sh) measures the other bottleneck: every host's port shaped to R Mbit/s
# both ways (lab LAN_RATE), host 1 publishing the release itself (lanpatch `publish`, nginx on host 1
# for HTTP, host 1 seeding for BitTorrent) and N - 1 hosts downloading. The limit is then S/R (each
# downloader's port) and the egress column counts bytes sent by host 1 (the seed upload) over S.
#
# usage: sudo bench/fanout.sh [N=8] [S_MIB=32] [R_MBIT=20]    (KEEP=1 keeps the work directory,
#        ONLY=lanpatch skips the HTTP and BitTorrent runs, LANPATCH_BIN=DIR takes lanpatch-node
#        and lanpatch-signer from DIR instead of building them: to measure a before and an after,
#        NODE_TOML_EXTRA='key = value' appends lines to every node's node.toml, NODE_LOG sets
#        the nodes' log filter, ENROLLMENT=off runs the nodes without membership certificates
#        (as before enrollment existed: the before/after of the door's cost), PAYLOAD=FILE
#        distributes FILE (a real package, say) instead of S_MIB random bytes, IDLE_SECS=T
#        measures the connected nodes' CPU over T seconds with no release before publishing:
#        the idle cost, per node as a share of one core)
set -euo pipefail
N=${1:-8}
S_MIB=${2:-32}
R_MBIT=${3:-20}
MODE=${MODE:-wan}
case "$MODE" in wan | lan) ;; *) echo "MODE must be wan or lan, not $MODE" >&2; exit 2 ;; esac
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
LAB=${LAB_SCRIPT:-$ROOT/lab/netns.sh}
P=lpb
export LAB_NET=${LAB_NET:-10.231.77}
# What differs between the modes, set once: where the bytes come from, which hosts download, how
# lanpatch gets the release, and the name of the egress column.
if [ "$MODE" = lan ]; then
  ORIGIN=$LAB_NET.1 SRC_NS=$P-1 FIRST=2 # host 1 is the seed and the HTTP server
  CREATE_ARGS=() PUBLISH_ARGS=() EGRESS_COL="seed up/S "
else
  ORIGIN=$LAB_NET.250 SRC_NS=$P-origin FIRST=1
  CREATE_ARGS=(--origin "http://$ORIGIN:8000") PUBLISH_ARGS=(--metadata-only) EGRESS_COL="egress/S  "
fi
WORK=$(mktemp -d /tmp/lanpatch-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  sh "$LAB" down "$N" "$P" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 2; }
[ -f "$LAB" ] || { echo "lab script $LAB not found" >&2; exit 2; }
missing=()
for c in aria2c:aria2 mktorrent:mktorrent opentracker:opentracker curl:curl ip:iproute2 tc:iproute2 nginx:nginx; do
  command -v "${c%%:*}" >/dev/null 2>&1 || missing+=("${c##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ -n "${LANPATCH_BIN:-}" ]; then
  BIN=$(cd "$LANPATCH_BIN" && pwd)
else
  (cd "$ROOT" && cargo build --release --locked -q)
  BIN=$ROOT/target/release
fi
SIGNER=$BIN/lanpatch-signer

now() { date +%s.%N; }
egress() { ip netns exec "$SRC_NS" cat /sys/class/net/eth0/statistics/tx_bytes; }

if [ "$MODE" = lan ]; then
  LAN_RATE=${R_MBIT}mbit sh "$LAB" up "$N" "$P" 1000mbit
else
  sh "$LAB" up "$N" "$P" "${R_MBIT}mbit"
fi
mkdir -p "$WORK/www" "$WORK/keys" "$WORK/lp" "$WORK/http" "$WORK/bt" "$WORK/tracker"
if [ -n "${PAYLOAD:-}" ]; then
  cp "$PAYLOAD" "$WORK/www/payload.bin"
else
  head -c $((S_MIB * 1024 * 1024)) /dev/urandom > "$WORK/www/payload.bin"
fi
SIZE=$(stat -c %s "$WORK/www/payload.bin")
SHA=$(sha256sum "$WORK/www/payload.bin" | cut -d' ' -f1)
LIMIT=$(python3 -c "print($SIZE * 8 / ($R_MBIT * 1e6))")
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path $WORK/nginx/tmp;
  server {
    listen $ORIGIN:8000 reuseport;
    root $WORK/www;
  }
}
CONF
ip netns exec "$SRC_NS" nginx -c "$WORK/nginx/nginx.conf" &
PIDS+=($!)
until ip netns exec "$SRC_NS" curl -s -o /dev/null -r 0-0 "http://$ORIGIN:8000/payload.bin"; do
  kill -0 "${PIDS[-1]}" 2>/dev/null || { echo "nginx did not start: $(cat "$WORK/nginx/error.log")" >&2; exit 1; }
  sleep 0.1
done
echo "$MODE: N=$N S=$S_MIB MiB R=$R_MBIT Mbit/s: S/R = $(printf %.1f "$LIMIT") s"
COPIES=$((N - FIRST + 1)) # hosts that download

RESULTS=()
report() { # name seconds egress_bytes verified
  RESULTS+=("$(python3 -c "print(f'{\"$1\":<11} {$2:>8.1f} {$2/$LIMIT:>8.2f} {$3/$SIZE:>9.3f}   $4/$COPIES')")")
  echo "  ${RESULTS[-1]}"
}

# ---- lanpatch -----------------------------------------------------------------------------
cd "$WORK/keys"
for a in alice bob enroll; do "$SIGNER" keygen --out $a.key >/dev/null; done
"$SIGNER" root init --out root.lpr --root-key alice.key.pub --root-key bob.key.pub --root-threshold 2 \
  --release-key alice.key.pub --release-key bob.key.pub --release-threshold 2 \
  --approve-key alice.key.pub --approve-key bob.key.pub --approve-threshold 2 \
  --enroll-key enroll.key.pub --enroll-threshold 1 >/dev/null
"$SIGNER" root sign --key alice.key root.lpr >/dev/null
"$SIGNER" root sign --key bob.key root.lpr >/dev/null
"$SIGNER" release create --product bench --version 1 --dir "$WORK/www" --install "sh -c true" \
  ${CREATE_ARGS[@]+"${CREATE_ARGS[@]}"} --out bundle >/dev/null
"$SIGNER" release sign --key alice.key bundle >/dev/null
"$SIGNER" release sign --key bob.key bundle >/dev/null
NODE_PIDS=()
for i in $(seq 1 "$N"); do
  d=$WORK/lp/h$i
  mkdir -p "$d"
  cat > "$d/node.toml" <<TOML
data_dir = "data"
trust_root = "$WORK/keys/root.lpr"
listen = ["/ip4/0.0.0.0/tcp/4717"]
mdns = true
log = "${NODE_LOG:-info,libp2p_mdns=error,libp2p_gossipsub=error}"
${NODE_TOML_EXTRA:-}
TOML
  if [ "${ENROLLMENT:-on}" = off ]; then
    echo 'enrollment = "off"' >> "$d/node.toml"
  else
    # Enrolled as an admin enrolls a host: its key, a certificate from the enroll key, join.
    key=$("$BIN/lanpatch-node" id --json --config "$d/node.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["node_key"])')
    "$SIGNER" enroll node --root root.lpr --key enroll.key --node-key "$key" --hostname "h$i" --ring broad \
      --expires 1d --out "h$i.cert" >/dev/null
    "$BIN/lanpatch-node" join --config "$d/node.toml" "h$i.cert" >/dev/null
  fi
done
T_START=$(now)
for i in $(seq 1 "$N"); do
  d=$WORK/lp/h$i
  ip netns exec "$P-$i" "$BIN/lanpatch-node" run --config "$d/node.toml" 2> "$d/node.log" &
  NODE_PIDS+=($!)
  PIDS+=($!)
done
# Publish once every node is connected to every other (to 31 others on larger sites: gossip and
# have-maps need a connected swarm, not a full mesh).
want=$((N - 1 < 31 ? N - 1 : 31))
SOCKS=()
for i in $(seq 1 "$N"); do SOCKS+=("$WORK/lp/h$i/data/control.sock"); done
fewest=$(python3 "$HERE/poll.py" peers "$want" 240 "${SOCKS[@]}") \
  || { echo "lanpatch nodes did not find each other by mDNS (want $want peers each)" >&2; exit 1; }
echo "  discovery: every node has >= $fewest peers $(python3 -c "print(f'{$(now) - $T_START:.1f}')") s after the nodes started (enrollment ${ENROLLMENT:-on})"
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sys() { awk '{print $15}' "/proc/$1/stat"; }
rss() { awk "/^$2:/ {print \$2}" "/proc/$1/status"; }
if [ "${IDLE_SECS:-0}" -gt 0 ]; then
  # Idle: connected, no release. CPU ticks of each node over IDLE_SECS.
  I0=(); for p in "${NODE_PIDS[@]}"; do I0+=("$(cpu "$p")"); done
  sleep "$IDLE_SECS"
  I1=(); for p in "${NODE_PIDS[@]}"; do I1+=("$(cpu "$p")"); done
  python3 - "$IDLE_SECS" "$ticks" "${I0[*]}" "${I1[*]}" <<'PY'
import sys
secs, ticks = float(sys.argv[1]), float(sys.argv[2])
a = [float(x) for x in sys.argv[3].split()]
b = [float(x) for x in sys.argv[4].split()]
share = sorted((y - x) / ticks / secs * 100 for x, y in zip(a, b))
print(f"  idle: {len(share)} nodes for {secs:.0f} s: CPU per node mean {sum(share)/len(share):.3f} %, "
      f"median {share[len(share)//2]:.3f} %, max {share[-1]:.3f} % of one core")
PY
fi
IDLE_RSS=(); CPU0=(); SYS0=()
for p in "${NODE_PIDS[@]}"; do IDLE_RSS+=("$(rss "$p" VmRSS)"); CPU0+=("$(cpu "$p")"); SYS0+=("$(sys "$p")"); done
e0=$(egress); t0=$(now)
# The source's tx counter every 0.2 s, for the timeline below: when the release's bytes left it.
( while :; do echo "$(now) $(egress)"; sleep 0.2; done ) > "$WORK/egress.log" 2>/dev/null &
SAMPLER=$!
PIDS+=("$SAMPLER")
"$SIGNER" publish ${PUBLISH_ARGS[@]+"${PUBLISH_ARGS[@]}"} --node "$WORK/lp/h1/data/control.sock" bundle >/dev/null
# The nodes' own completion times (ms), so polling does not count.
FIN=$(python3 "$HERE/poll.py" done 900 "${SOCKS[@]}") || { echo "lanpatch did not finish" >&2; exit 1; }
e1=$(egress)
kill "$SAMPLER" 2>/dev/null || true
t1=$(python3 -c "import sys; print(max(int(x) for x in sys.argv[1:]) / 1000)" $FIN)
# Seconds after publish at which the source had sent 1 %, 50 %, 90 %, 100 % of S (headers
# included, so 100 % is reached just before the last byte of the release).
python3 - "$WORK/egress.log" "$t0" "$e0" "$SIZE" <<'PY'
import sys
log, t0, e0, size = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = [tuple(map(float, l.split())) for l in open(log) if len(l.split()) == 2]
marks = []
for frac in (0.01, 0.5, 0.9, 1.0):
    at = next((t - t0 for t, b in rows if b - e0 >= frac * size), None)
    marks.append(f"{int(frac * 100)} % at {at:.1f} s" if at is not None else f"{int(frac * 100)} %: never")
print("  source sent S: " + ", ".join(marks))
PY
echo "  lanpatch per-node completion (s after publish): $(python3 -c "import sys; print(' '.join(f'{int(x)/1000 - $t0:.1f}' for x in sys.argv[1:]))" $FIN)"
ok=0
for i in $(seq "$FIRST" "$N"); do
  f=$(ls "$WORK/lp/h$i/data/blobs/"* 2>/dev/null | head -1)
  [ -n "$f" ] && [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$SHA" ] && ok=$((ok + 1))
done
report lanpatch "$(python3 -c "print($t1 - $t0)")" $((e1 - e0)) $ok
RES_LINES=()
for k in "${!NODE_PIDS[@]}"; do
  p=${NODE_PIDS[$k]}
  c=$(python3 -c "print(($(cpu "$p") - ${CPU0[$k]}) / $ticks)")
  k_s=$(python3 -c "print(($(sys "$p") - ${SYS0[$k]}) / $ticks)")
  RES_LINES+=("$(printf 'h%-3s idle RSS %6.1f MiB   peak RSS %6.1f MiB   CPU %5.2f s (kernel %5.2f s) = %5.2f s per GiB received' \
    $((k + 1)) "$(python3 -c "print(${IDLE_RSS[$k]}/1024)")" "$(python3 -c "print($(rss "$p" VmHWM)/1024)")" \
    "$c" "$k_s" "$(python3 -c "print($c * 1073741824 / $SIZE)")")")
done
# The downloaders' CPU per GiB received (host 1 seeds in MODE=lan), and the share of the lab's
# cores all lanpatch nodes used over the transfer: a figure taken while the cores were busy says
# more about the lab than about the protocol.
LP_CPU=$(for k in "${!NODE_PIDS[@]}"; do echo "$(cpu "${NODE_PIDS[$k]}") ${CPU0[$k]}"; done | python3 -c "
import sys
rows = [tuple(map(float, l.split())) for l in sys.stdin]
ticks, size, first, secs, cores = $ticks, $SIZE, $FIRST, $t1 - $t0, $(nproc)
used = [(a - b) / ticks for a, b in rows]
down = used[first - 1:]
per_gib = sum(down) / len(down) * 1073741824 / size
print(f'{per_gib:.2f} CPU s per GiB received per downloader (mean of {len(down)}), the nodes used {100 * sum(used) / (cores * secs):.0f} % of the lab\'s {cores} cores')
")
CPU_LINES=("lanpatch:   $LP_CPU")
for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
sleep 1

if [ "${ONLY:-}" = lanpatch ]; then
  printf '%s\n' "${RES_LINES[@]}" "${CPU_LINES[@]}"
  exit 0
fi

# ---- HTTP: every host downloads the file itself -------------------------------------------
e0=$(egress); t0=$(now)
CURLS=()
for i in $(seq "$FIRST" "$N"); do
  ip netns exec "$P-$i" curl -s -o "$WORK/http/h$i.bin" "http://$ORIGIN:8000/payload.bin" &
  CURLS+=($!)
done
for c in "${CURLS[@]}"; do wait "$c"; done
t1=$(now); e1=$(egress)
ok=0
for i in $(seq "$FIRST" "$N"); do [ "$(sha256sum "$WORK/http/h$i.bin" | cut -d' ' -f1)" = "$SHA" ] && ok=$((ok + 1)); done
report http "$(python3 -c "print($t1 - $t0)")" $((e1 - e0)) $ok
rm -f "$WORK"/http/*.bin

# ---- BitTorrent: the origin seeds, every host leeches and keeps seeding -----------------------
mktorrent -l 18 -a "http://$ORIGIN:6969/announce" -o "$WORK/bt/payload.torrent" "$WORK/www/payload.bin" >/dev/null
python3 "$HERE/infohash.py" "$WORK/bt/payload.torrent" > "$WORK/tracker/whitelist.txt"
# opentracker chroots into tracker.rootdir, so the whitelist path is relative to it.
cat > "$WORK/tracker/opentracker.conf" <<CONF
listen.tcp_udp $ORIGIN:6969
access.whitelist /whitelist.txt
tracker.rootdir $WORK/tracker
tracker.user _opentracker
CONF
ip netns exec "$SRC_NS" opentracker -f "$WORK/tracker/opentracker.conf" > "$WORK/tracker/log" 2>&1 &
PIDS+=($!)
sleep 1
ARIA=(--enable-dht=false --enable-dht6=false --bt-enable-lpd=false --seed-ratio=0.0 --file-allocation=none
      --summary-interval=0 --console-log-level=error --listen-port=6881 --bt-stop-timeout=0)
ip netns exec "$SRC_NS" aria2c "${ARIA[@]}" --check-integrity=true --dir="$WORK/www" "$WORK/bt/payload.torrent" > "$WORK/bt/seed.log" 2>&1 &
PIDS+=($!)
sleep 2
e0=$(egress); t0=$(now)
ARIA_PIDS=()
for i in $(seq "$FIRST" "$N"); do
  mkdir -p "$WORK/bt/h$i"
  # `ip netns exec` execs aria2c: the pid is aria2c's, for its CPU below.
  ip netns exec "$P-$i" aria2c "${ARIA[@]}" --dir="$WORK/bt/h$i" "$WORK/bt/payload.torrent" > "$WORK/bt/h$i.log" 2>&1 &
  PIDS+=($!)
  ARIA_PIDS+=($!)
done
deadline=$((SECONDS + 900))
while :; do
  done_n=0
  for i in $(seq "$FIRST" "$N"); do
    f=$WORK/bt/h$i/payload.bin
    [ -f "$f" ] && [ ! -f "$f.aria2" ] && [ "$(stat -c %s "$f")" = "$SIZE" ] && done_n=$((done_n + 1))
  done
  [ $done_n = "$COPIES" ] && break
  [ $SECONDS -lt $deadline ] || { echo "BitTorrent did not finish" >&2; exit 1; }
  sleep 0.2
done
t1=$(now); e1=$(egress)
BT_CPU=$(for p in "${ARIA_PIDS[@]}"; do cpu "$p"; done | python3 -c "
import sys
used = [float(l) / $ticks for l in sys.stdin]
print(f'{sum(used) / len(used) * 1073741824 / $SIZE:.2f} CPU s per GiB received per downloader (mean of {len(used)}), the leechers used {100 * sum(used) / ($(nproc) * ($t1 - $t0)):.0f} % of the lab\'s $(nproc) cores')
")
CPU_LINES+=("bittorrent: $BT_CPU")
ok=0
for i in $(seq "$FIRST" "$N"); do [ "$(sha256sum "$WORK/bt/h$i/payload.bin" | cut -d' ' -f1)" = "$SHA" ] && ok=$((ok + 1)); done
report bittorrent "$(python3 -c "print($t1 - $t0)")" $((e1 - e0)) $ok

echo
echo "method      seconds  x limit  $EGRESS_COL verified copies"
printf '%s\n' "${RESULTS[@]}"
echo
echo "lanpatch per node (idle RSS before publish, peak RSS over the run, CPU seconds during the transfer):"
printf '%s\n' "${RES_LINES[@]}"
echo
echo "CPU (user + kernel, until the last verified copy):"
printf '%s\n' "${CPU_LINES[@]}"

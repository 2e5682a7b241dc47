#!/usr/bin/env bash
# Feed import and exposure matching at real size (issue #12's benchmark; not a timed test).
#
#   bench/feeds.sh [EPSS_ROWS] [OSV_RECORDS] [HOSTS] [PACKAGES]   (defaults 300000 50000 1000 2000)
#
# Generates the files in their real formats (bench/feeds.py), then times with the release build:
# `feeds import` of the EPSS CSV (gzip), of the OSV zip export and of a KEV catalogue, and
# `vulns --inventories` (HOSTS inventories of PACKAGES packages against every OSV range). Prints
# each time against the goal (import 5 s, match 2 s) and the peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
epss=${1:-300000}; osv=${2:-50000}; hosts=${3:-1000}; pkgs=${4:-2000}
work=$(mktemp -d /tmp/lanpatch-feeds-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
cargo build --release --locked -q -p lanpatch-signer
bin="${CARGO_TARGET_DIR:-target}/release/lanpatch-signer"
echo "generating: EPSS $epss rows, OSV $osv records, $hosts hosts x $pkgs packages" >&2
python3 bench/feeds.py "$work" "$epss" "$osv" "$hosts" "$pkgs"
ls -l "$work" | awk 'NR>1 {printf "  %-18s %8.1f MiB\n", $9, $5/1048576}' >&2

run() { # label goal_seconds command...
  local label=$1 goal=$2; shift 2
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$work/rss" "$@" > "$work/out.txt" 2> "$work/err.txt" || { cat "$work/err.txt" >&2; exit 1; }
  t1=$(date +%s.%N)
  python3 -c "import sys; t=$t1-$t0; g=$goal; print(f'{sys.argv[1]:<36} {t:7.2f} s = {t/g:4.2f} x the {g} s goal, peak RSS {int(sys.argv[2])/1024:6.1f} MiB')" "$label" "$(tail -1 "$work/rss")"
}
db="$work/feeds.db"
run "import EPSS ($epss rows, gzip)" 5 "$bin" feeds import --db "$db" --epss "$work/epss.csv.gz"
run "import OSV ($osv records, zip)" 5 "$bin" feeds import --db "$db" --osv "$work/osv.zip"
run "import KEV (1200 entries)" 5 "$bin" feeds import --db "$db" --kev "$work/kev.json"
run "vulns: $hosts hosts x $pkgs pkgs" 2 "$bin" vulns --db "$db" --inventories "$work/inventories.json" --json --timings
grep timings "$work/err.txt"
python3 -c "import json,sys; f=json.load(open(sys.argv[1])); print(f'  {len(f)} findings, {sum(len(x[\"hosts\"]) for x in f)} host exposures')" "$work/out.txt"

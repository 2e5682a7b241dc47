#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, JOBS at a time, starting from the
# committed seed corpora, and prints per target: executions, corpus size, crashes.
#
#   fuzz/run.sh SECONDS [target ...]        e.g. fuzz/run.sh 600     (the recorded 10-minute run)
#   fuzz/run.sh 0                           replays the corpora only (what CI does): every input
#                                           once, so a regression in a decoder fails
#
# cargo-fuzz needs nightly features: the nightly toolchain when rustup has one, else stable with
# RUSTC_BOOTSTRAP=1. Crashes land in fuzz/artifacts/<target>/; make each a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:?usage: fuzz/run.sh SECONDS [target ...]}
shift
JOBS=${JOBS:-2}
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  FUZZ=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  FUZZ=(cargo fuzz)
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <("${FUZZ[@]}" list)
# -s none: the crates are memory-safe Rust (unsafe is denied but for one mallopt at start); coverage guidance is what counts.
# One build, then the target binaries run directly (parallel `cargo fuzz run`s would rebuild).
"${FUZZ[@]}" build -s none -O
# cargo fuzz builds into CARGO_TARGET_DIR when that is set (a shared target dir), else fuzz/target.
BIN=${CARGO_TARGET_DIR:-fuzz/target}/x86_64-unknown-linux-gnu/release
LOGS=fuzz/target/logs
rm -rf "$LOGS"
mkdir -p "$LOGS"
run() {
  local t=$1
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  if [ "$SECS" = 0 ]; then
    "$BIN/$t" -artifact_prefix="fuzz/artifacts/$t/" -runs=0 "fuzz/corpus/$t" >"$LOGS/$t.log" 2>&1
  else
    # New inputs go to a scratch corpus; the committed seeds stay small.
    mkdir -p "fuzz/target/corpus/$t"
    "$BIN/$t" -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$SECS" -print_final_stats=1 \
      "fuzz/target/corpus/$t" "fuzz/corpus/$t" >"$LOGS/$t.log" 2>&1
  fi
}
status=0
pids=()
for t in "${TARGETS[@]}"; do
  run "$t" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$JOBS" ]; then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
printf '%-14s %12s %8s %s\n' target executions corpus result
for t in "${TARGETS[@]}"; do
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$LOGS/$t.log" | grep -o '[0-9]*$' || true)
  [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "$LOGS/$t.log" | tail -1 | tr -d '#' || true)
  # The scratch corpus exists only after a timed run: find's non-zero exit must not end the script.
  corpus=$(find "fuzz/target/corpus/$t" "fuzz/corpus/$t" -type f 2>/dev/null | wc -l || true)
  if grep -qE 'panicked|ERROR: libFuzzer|SUMMARY: |deadly signal' "$LOGS/$t.log"; then
    res=CRASH; status=1; tail -30 "$LOGS/$t.log"
  elif ! grep -qE 'Done [0-9]+ runs|stat::number_of_executed_units' "$LOGS/$t.log"; then
    res=DID-NOT-RUN; status=1; tail -15 "$LOGS/$t.log"
  else
    res=ok
  fi
  printf '%-14s %12s %8s %s\n' "$t" "${execs:-?}" "$corpus" "$res"
done
echo "logs: $LOGS"
exit $status

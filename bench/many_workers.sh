#!/usr/bin/env bash
# Many workers on one scheduler over real sockets (issue 16): the simulated
# workers of runtime/examples/many_workers.rs (real protocol peers that
# finish every task at once) against a release `taskfarm scheduler`.
# For each worker count: the time until all are registered, the scheduler's
# threads and resident memory with them connected, and the rate of a no-op
# graph spread over them through `taskfarm submit`.
#
#   bench/many_workers.sh                  # 10, 100, 1000 workers; 100,000 tasks
#   WORKERS="100 1000 10000" TASKS=1000000 bench/many_workers.sh
#   bench/many_workers.sh --smoke          # 10 and 100 workers, 2,000 tasks
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
source "$here/common.sh"
if [ "${1:-}" = "--smoke" ]; then
  WORKERS=${WORKERS:-"10 100"} TASKS=${TASKS:-2000}
fi
WORKERS=${WORKERS:-"10 100 1000"}
TASKS=${TASKS:-100000}
build_taskfarm
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p taskfarm --example many_workers
sim="$root/target/release/examples/many_workers"
# one descriptor per worker on each side
ulimit -n "$(ulimit -Hn)" 2> /dev/null || true
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2> /dev/null || true; rm -rf "$tmp"' EXIT
noop_graph "$TASKS" "$tmp/graph.json"
machine_line; echo
printf '%-8s %-14s %-18s %-16s %-14s %s\n' workers "registered in" "scheduler threads" "scheduler RSS" "${TASKS} tasks" "tasks/s"
for n in $WORKERS; do
  rm -f "$tmp/s.json"
  "$tf" scheduler --scheduler-file "$tmp/s.json" --host 127.0.0.1 --no-dashboard > "$tmp/scheduler.log" 2>&1 &
  sched=$!
  until [ -s "$tmp/s.json" ]; do sleep 0.05; done
  mkfifo "$tmp/hold"
  "$sim" --scheduler-file "$tmp/s.json" --workers "$n" < "$tmp/hold" > "$tmp/sim.out" &
  simpid=$!
  exec 3> "$tmp/hold"
  until grep -q '^registered' "$tmp/sim.out" 2> /dev/null; do
    kill -0 $simpid 2> /dev/null || { cat "$tmp/sim.out"; echo "the harness ended early" >&2; exit 1; }
    sleep 0.05
  done
  reg=$(sed -n 's/^registered [0-9]* workers in \([0-9.]*\) s.*/\1/p' "$tmp/sim.out")
  threads=$(awk '/^Threads:/ {print $2}' /proc/$sched/status)
  rss=$(awk '/^VmRSS:/ {printf "%.0f MB", $2 / 1024}' /proc/$sched/status)
  start=$(date +%s.%N)
  "$tf" submit "$tmp/graph.json" --scheduler-file "$tmp/s.json" > /dev/null
  end=$(date +%s.%N)
  secs=$(calc "$end - $start")
  printf '%-8s %-14s %-18s %-16s %-14s %s\n' "$n" "${reg} s" "$threads" "$rss" "$(printf '%.3f s' "$secs")" "$(calc "int($TASKS / $secs)")"
  exec 3>&-
  wait $simpid
  kill $sched; wait $sched 2> /dev/null || true
  rm -f "$tmp/hold"
done

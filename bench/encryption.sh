#!/usr/bin/env bash
# What encryption costs: the same workloads with the default (AES-256-GCM on
# every connection) and with --insecure-plaintext, alternating in one run
# (these machines are noisy), medians and ratios; and the 1 GiB
# worker-to-worker transfer of bench/transfer.sh in both modes beside raw TCP.
#
#   bench/encryption.sh                     # 100,000 no-op tasks x 5, 1 GiB x 3
#   N=1000 REPS=1 SIZE=16777216 bench/encryption.sh   # smoke
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/common.sh"
N=${N:-100000}
REPS=${REPS:-5}
SIZE=${SIZE:-1073741824}
build_taskfarm
make_workdir
noop_graph "$N" "$work/graph.json"
printf '%s; %d no-op tasks on 2 workers x 1 thread, median of %d, alternating\n' "$(machine_line)" "$N" "$REPS"
sealed_t=(); plain_t=()
for rep in $(seq 1 "$REPS"); do
  order="sealed plain"; [ $((rep % 2)) = 0 ] && order="plain sealed"
  for mode in $order; do
    if [ $mode = plain ]; then SCHED_ARGS=--insecure-plaintext; else SCHED_ARGS=; fi
    start_cluster 2 1
    t=$(time_submit "$work/graph.json")
    stop_cluster
    if [ $mode = plain ]; then plain_t+=("$t"); else sealed_t+=("$t"); fi
  done
done
s=$(median "${sealed_t[@]}"); p=$(median "${plain_t[@]}")
printf 'no-op: encrypted %.3f s (%.0f tasks/s), plaintext %.3f s (%.0f tasks/s): encrypted/plaintext time %.3f\n' "$s" "$(calc "$N / $s")" "$p" "$(calc "$N / $p")" "$(calc "$s / $p")"
for mode in sealed plain; do
  if [ $mode = plain ]; then args=--insecure-plaintext; else args=; fi
  echo "== transfer, $mode"
  SCHED_ARGS=$args REPS=${TRANSFER_REPS:-3} SIZE=$SIZE "$here/transfer.sh" | grep -E "warm|ratio"
done

#!/usr/bin/env bash
# Benchmark: N command tasks each running `true`, through a taskfarm
# scheduler and one worker with 2 threads, beside `xargs -P2` running the same
# N processes (the physical limit of process spawning here) and, with
# --with-hq, HyperQueue (a LocalCluster with one 2-core worker, from the
# `hyperqueue` PyPI wheel, installed into bench/.venv). Alternating, several
# repetitions; medians and ratios.
#
#   bench/commands.sh              # taskfarm and xargs, 10,000 tasks, 3 repetitions
#   bench/commands.sh --with-hq    # also HyperQueue
#   N=200 REPS=1 bench/commands.sh # smoke run (what CI does)
#
# taskfarm's time is the whole `taskfarm submit` command (the graph read,
# submitted, run, and the 10,000 (empty) outputs fetched and printed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/common.sh"
N=${N:-10000}
REPS=${REPS:-3}
with_hq=0
[ "${1:-}" = "--with-hq" ] && with_hq=1
build_taskfarm
[ $with_hq = 1 ] && ensure_venv hyperqueue
make_workdir

python3 -c "import json, sys; print(json.dumps({f'c{i}': {'cmd': ['true']} for i in range(int(sys.argv[1]))}))" "$N" > "$work/graph.json"
start_cluster 1 2

tf_t=(); xa_t=(); hq_t=()
for rep in $(seq 1 "$REPS"); do
  tf_t+=("$(time_submit "$work/graph.json")")
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert len(d)==$N and set(d.values())=={''}, d" "$work/out.json"
  t0=$(date +%s.%N)
  seq "$N" | xargs -P2 -n1 true
  t1=$(date +%s.%N)
  xa_t+=("$(calc "$t1 - $t0")")
  if [ $with_hq = 1 ]; then
    hq_t+=("$("$here/.venv/bin/python" "$here/hq_commands.py" "$N" 2 2> "$work/hq.log" | tail -n 1)")
  fi
done
stop_cluster

t=$(median "${tf_t[@]}"); x=$(median "${xa_t[@]}")
printf '%s; %d tasks running `true`, median of %d\n' "$(machine_line)" "$N" "$REPS"
printf 'taskfarm (1 worker x 2 threads): %.3f s = %.0f tasks/s\n' "$t" "$(calc "$N / $t")"
printf 'xargs -P2:                       %.3f s = %.0f tasks/s\n' "$x" "$(calc "$N / $x")"
printf 'ratio taskfarm/xargs (throughput): %.2f\n' "$(calc "$x / $t")"
if [ $with_hq = 1 ]; then
  h=$(median "${hq_t[@]}")
  printf 'HyperQueue (1 worker x 2 cores): %.3f s = %.0f tasks/s\n' "$h" "$(calc "$N / $h")"
  printf 'ratio taskfarm/HyperQueue (throughput): %.2f\n' "$(calc "$h / $t")"
fi

#!/usr/bin/env bash
# Benchmark: a binary sum tree over LEAVES leaves (LEAVES tasks inc(i), then
# pairwise `add` up to one root: 2 x LEAVES - 1 tasks, each passing its value
# to the next level), on one worker process with 2 threads; taskfarm and
# (optionally) Dask side by side, alternating, several repetitions; medians.
#
#   bench/sumtree.sh                 # 100,000 leaves, 5 repetitions
#   bench/sumtree.sh --with-dask     # also Dask (bench/.venv, from PyPI)
#   LEAVES=1000 REPS=1 bench/sumtree.sh   # smoke run (what CI does)
#
# taskfarm's time is the whole `taskfarm submit` command. Dask runs the same
# graph with client.get, on the smaller of LEAVES and DASK_LEAVES (default
# 5,000) leaves.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/common.sh"
LEAVES=${LEAVES:-100000}
REPS=${REPS:-5}
DASK_LEAVES=${DASK_LEAVES:-5000}
with_dask=0
[ "${1:-}" = "--with-dask" ] && with_dask=1
build_taskfarm
[ $with_dask = 1 ] && ensure_venv dask distributed
make_workdir
python3 - "$LEAVES" > "$work/graph.json" <<'PY'
import json, sys
n = int(sys.argv[1])
g = {f"l{i}": ["inc", i] for i in range(n)}
level, depth = list(g), 0
while len(level) > 1:
    nxt = []
    for j in range(0, len(level), 2):
        k = f"s{depth}_{j // 2}"
        g[k] = ["add", level[j], level[j + 1]] if j + 1 < len(level) else ["add", level[j], 0]
        nxt.append(k)
    level, depth = nxt, depth + 1
print(json.dumps(g))
PY
tasks=$(( 2 * LEAVES - 1 ))
dl=$(( LEAVES < DASK_LEAVES ? LEAVES : DASK_LEAVES ))
start_cluster 1 2
tf_t=(); dask_t=()
for rep in $(seq 1 "$REPS"); do
  tf_t+=("$(time_submit "$work/graph.json")")
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); v=list(d.values()); assert v==[$LEAVES*($LEAVES+1)//2], v" "$work/out.json"
  if [ $with_dask = 1 ]; then
    dask_t+=("$("$here/.venv/bin/python" "$here/dask_bench.py" sumtree "$dl" 1 2 2> "$work/dask.log")")
  fi
done
stop_cluster
t=$(median "${tf_t[@]}")
printf '%s; median of %d\n' "$(machine_line)" "$REPS"
printf 'taskfarm, 1 worker x 2 threads: sum tree of %d leaves (%d tasks) in %.3f s = %.0f tasks/s\n' "$LEAVES" "$tasks" "$t" "$(calc "$tasks / $t")"
if [ $with_dask = 1 ]; then
  d=$(median "${dask_t[@]}")
  printf 'dask,     1 worker x 2 threads: sum tree of %d leaves (%d tasks) in %.3f s = %.0f tasks/s\n' "$dl" "$(( 2 * dl - 1 ))" "$d" "$(calc "(2 * $dl - 1) / $d")"
  printf 'ratio taskfarm/dask (tasks/s): %.0fx\n' "$(calc "($tasks / $t) / ((2 * $dl - 1) / $d)")"
fi

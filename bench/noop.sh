#!/usr/bin/env bash
# Benchmark: N independent `noop` tasks, on one worker process with 2
# threads and on 2 worker processes with 1 thread each; taskfarm and
# (optionally) Dask distributed side by side in the same run, alternating,
# several repetitions; prints medians and ratios.
#
#   bench/noop.sh                 # taskfarm only, 100,000 tasks, 5 repetitions
#   bench/noop.sh --with-dask     # also Dask (installed into bench/.venv from PyPI)
#   N=1000 REPS=1 bench/noop.sh   # smoke run (what CI does)
#
# taskfarm's time is the whole `taskfarm submit` command: reading and
# validating the graph, submitting, running, fetching all N results and
# printing them. Dask's is client.map + client.gather on a LocalCluster of the
# same shape (Dask is given the smaller of N and DASK_N tasks, default
# 10,000, because it runs at a few hundred tasks/s).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/common.sh"
N=${N:-100000}
REPS=${REPS:-5}
DASK_N=${DASK_N:-10000}
with_dask=0
[ "${1:-}" = "--with-dask" ] && with_dask=1
build_taskfarm
[ $with_dask = 1 ] && ensure_venv dask distributed
make_workdir
noop_graph "$N" "$work/graph.json"
dn=$(( N < DASK_N ? N : DASK_N ))

printf '%s; median of %d\n' "$(machine_line)" "$REPS"
for shape in "1 2" "2 1"; do
  set -- $shape
  start_cluster "$1" "$2"
  tf_t=(); dask_t=()
  for rep in $(seq 1 "$REPS"); do
    tf_t+=("$(time_submit "$work/graph.json")")
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert len(d)==$N, len(d)" "$work/out.json"
    if [ $with_dask = 1 ]; then
      dask_t+=("$("$here/.venv/bin/python" "$here/dask_bench.py" noop "$dn" "$1" "$2" 2> "$work/dask.log")")
    fi
  done
  stop_cluster
  t=$(median "${tf_t[@]}")
  printf 'taskfarm, %s worker(s) x %s thread(s): %d noop tasks in %.3f s = %.0f tasks/s\n' "$1" "$2" "$N" "$t" "$(calc "$N / $t")"
  if [ $with_dask = 1 ]; then
    d=$(median "${dask_t[@]}")
    printf 'dask,     %s worker(s) x %s thread(s): %d noop tasks in %.3f s = %.0f tasks/s\n' "$1" "$2" "$dn" "$d" "$(calc "$dn / $d")"
    printf 'ratio taskfarm/dask (tasks/s): %.0fx\n' "$(calc "($N / $t) / ($dn / $d)")"
  fi
done

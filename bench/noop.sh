#!/usr/bin/env bash
# Benchmark: N independent `noop` tasks through a scheduler and one worker
# process (2 threads), taskfarm and (optionally) Dask distributed side by
# side in the same run, alternating, several repetitions; prints medians.
#
#   bench/noop.sh                 # taskfarm only, 100,000 tasks, 5 repetitions
#   bench/noop.sh --with-dask     # also Dask (installed into bench/.venv from PyPI)
#   N=1000 REPS=1 bench/noop.sh   # smoke run (what CI does)
#
# taskfarm's time is the whole `taskfarm submit` command: reading and
# validating the graph, submitting, running, fetching all 100,000 results and
# printing them. Dask's is client.map + client.gather on a LocalCluster with
# one worker process of 2 threads (Dask is given the smaller of N and
# DASK_N tasks, default 10,000, because it runs at a few hundred tasks/s).
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
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

python3 - "$N" > "$work/graph.json" <<'PY'
import json, sys
n = int(sys.argv[1])
print(json.dumps({f"t{i}": ["noop"] for i in range(n)}))
PY

"$tf" scheduler --scheduler-file "$work/s.json" --host 127.0.0.1 2> "$work/scheduler.log" &
"$tf" worker --scheduler-file "$work/s.json" --nthreads 2 --local-directory "$work" 2> "$work/worker.log" &
wait_workers "$work/s.json" 1

if [ $with_dask = 1 ]; then
  if [ ! -x "$here/.venv/bin/python" ]; then
    python3 -m venv "$here/.venv"
    "$here/.venv/bin/pip" install --quiet dask distributed
  fi
fi

tf_times=(); dask_times=()
for rep in $(seq 1 "$REPS"); do
  t0=$(date +%s.%N)
  "$tf" submit "$work/graph.json" --scheduler-file "$work/s.json" > "$work/out.json"
  t1=$(date +%s.%N)
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert len(d)==$N, len(d)" "$work/out.json"
  tf_times+=("$(awk "BEGIN {print $t1 - $t0}")")
  if [ $with_dask = 1 ]; then
    dask_times+=("$("$here/.venv/bin/python" "$here/dask_noop.py" "$(( N < DASK_N ? N : DASK_N ))" 2> "$work/dask.log")")
  fi
done
"$tf" shutdown --scheduler-file "$work/s.json" 2> /dev/null
wait

tf_med=$(median "${tf_times[@]}")
tf_rate=$(awk "BEGIN {print $N / $tf_med}")
printf 'machine: %s, %s cores; commit %s\n' "$(uname -m)" "$(nproc)" "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
printf 'taskfarm: %d noop tasks, median of %d: %.3f s = %.0f tasks/s\n' "$N" "$REPS" "$tf_med" "$tf_rate"
if [ $with_dask = 1 ]; then
  dn=$(( N < DASK_N ? N : DASK_N ))
  d_med=$(median "${dask_times[@]}")
  d_rate=$(awk "BEGIN {print $dn / $d_med}")
  printf 'dask:     %d noop tasks, median of %d: %.3f s = %.0f tasks/s\n' "$dn" "$REPS" "$d_med" "$d_rate"
  printf 'ratio taskfarm/dask (tasks/s): %.0fx\n' "$(awk "BEGIN {print $tf_rate / $d_rate}")"
fi

#!/usr/bin/env bash
# The journal's cost (issue 14): N no-op tasks through `taskfarm submit` to
# a scheduler and one worker of 2 threads, without and with `--journal`
# (every graph, every finished value and where it is appended and synced in
# batches by the journal's own thread). The two alternate, a fresh cluster
# per run; medians of REPS. The journal lives in $TMPDIR (local disk or
# tmpfs; a parallel file system syncs more slowly).
#
#   bench/journal.sh            # N=100000 REPS=5
#   SMOKE=1 bench/journal.sh    # tiny sizes
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/common.sh"
build_taskfarm
if [ "${SMOKE:-0}" = 1 ]; then N=${N:-2000} REPS=${REPS:-1}; else N=${N:-100000} REPS=${REPS:-5}; fi
make_workdir
noop_graph "$N" "$work/graph.json"

# seconds of one submit on a fresh cluster started with the flags given
one() {
  SCHED_ARGS="$*" start_cluster 1 2
  local t
  t=$(time_submit "$work/graph.json")
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert len(d)==$N, len(d)" "$work/out.json"
  stop_cluster
  echo "$t"
}

declare -a off on
for rep in $(seq "$REPS"); do
  off+=("$(one)")
  rm -f "$work/journal" "$work/journal.lock"
  on+=("$(one --journal "$work/journal")")
  [ -s "$work/journal" ] || { echo "no journal was written" >&2; exit 1; }
done
o=$(median "${off[@]}") j=$(median "${on[@]}")
echo "$(machine_line); N=$N, 1 worker x 2 threads, medians of $REPS"
printf '%s no-op tasks: no journal %.3f s (%.0f tasks/s); journal %.3f s (%.0f tasks/s): %.1f %% of the throughput lost\n' \
  "$N" "$o" "$(calc "$N / $o")" "$j" "$(calc "$N / $j")" "$(calc "(1 - $o / $j) * 100")"

#!/usr/bin/env bash
# The result cache's cost (issue 14): `taskfarm run` of N no-op tasks without
# a cache, with a cold cache (every task runs and stores its value) and with
# a warm one (every task is a load); and M tasks of 1 ms (`sleep 0.001`)
# run against a load of each from a warm cache. Modes alternate, medians of
# REPS. The cache lives in $TMPDIR (tmpfs or local disk; a parallel file
# system costs more per entry).
#
#   bench/cache.sh            # N=100000 M=2000 REPS=5
#   SMOKE=1 bench/cache.sh    # tiny sizes
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/common.sh"
build_taskfarm
if [ "${SMOKE:-0}" = 1 ]; then N=${N:-2000} M=${M:-200} REPS=${REPS:-1}; else N=${N:-100000} M=${M:-2000} REPS=${REPS:-5}; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# distinct arguments: equal tasks would share one cache entry
python3 -c "import json, sys; print(json.dumps({f't{i}': ['noop', i] for i in range(int(sys.argv[1]))}))" "$N" > "$work/noop.json"
python3 -c "import json, sys; print(json.dumps({f's{i}': ['list', ['sleep', 0.001], i] for i in range(int(sys.argv[1]))}))" "$M" > "$work/sleep.json"

# seconds of one `taskfarm run`, results checked by count
run() {
  local t0 t1
  t0=$(date +%s.%N)
  "$tf" run --quiet "$@" > "$work/out.json" 2> "$work/err.txt"
  t1=$(date +%s.%N)
  calc "$t1 - $t0"
}

declare -a off cold warm sleep_run sleep_load
for rep in $(seq "$REPS"); do
  off+=("$(run "$work/noop.json")")
  rm -rf "$work/c"
  cold+=("$(run "$work/noop.json" --cache "$work/c")")
  warm+=("$(run "$work/noop.json" --cache "$work/c")")
  grep -q "$N tasks loaded from it, 0 run" "$work/err.txt" || { echo "the warm run did not load every task:" >&2; cat "$work/err.txt" >&2; exit 1; }
  sleep_run+=("$(run "$work/sleep.json" --workers 1 --nthreads 1)")
  rm -rf "$work/s"
  run "$work/sleep.json" --workers 1 --nthreads 1 --cache "$work/s" > /dev/null
  sleep_load+=("$(run "$work/sleep.json" --workers 1 --nthreads 1 --cache "$work/s")")
done
o=$(median "${off[@]}") c=$(median "${cold[@]}") w=$(median "${warm[@]}")
sr=$(median "${sleep_run[@]}") sl=$(median "${sleep_load[@]}")
echo "$(machine_line); N=$N M=$M, medians of $REPS"
printf '%s no-op tasks: no cache %.3f s (%.0f tasks/s); cold cache (all stored) %.3f s (%.2fx); warm cache (all loaded) %.3f s (%.2fx)\n' \
  "$N" "$o" "$(calc "$N / $o")" "$c" "$(calc "$c / $o")" "$w" "$(calc "$w / $o")"
printf '%s tasks of 1 ms, 1 thread: run %.3f s (%.0f us a task); loaded from the cache %.3f s (%.0f us a task): a hit is %.1fx cheaper\n' \
  "$M" "$sr" "$(calc "$sr / $M * 1e6")" "$sl" "$(calc "$sl / $M * 1e6")" "$(calc "$sr / $sl")"

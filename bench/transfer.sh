#!/usr/bin/env bash
# Benchmark: one value of SIZE bytes (default 1 GiB) moved from one worker to
# another (taskfarm's data server -> peer fetch, real processes, loopback),
# beside raw TCP loopback moving the same bytes, alternating; medians.
#
#   bench/transfer.sh                 # 1 GiB, 5 repetitions
#   SIZE=16777216 REPS=1 bench/transfer.sh   # smoke run
#   COUNT=100 SIZE=1048576 bench/transfer.sh  # 100 values of 1 MiB, fetched
#                                            # by one task (raw TCP: the same
#                                            # 100 MiB in one stream)
#
# taskfarm's time is the receiving worker's fetch time for the value (from
# sending the request until the last byte is in its store, connection set-up
# and authentication included), read from `taskfarm status --json`. The first
# transfer lands in new memory (cold); later ones reuse the receive buffer
# the previous, released value left in the worker's buffer pool (warm).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/common.sh"
SIZE=${SIZE:-1073741824}
REPS=${REPS:-5}
COUNT=${COUNT:-1}
build_taskfarm
make_workdir
S="$work/s.json"
TASKFARM_LOG=warn "$tf" scheduler --scheduler-file "$S" --host 127.0.0.1 ${SCHED_ARGS:-} &
TASKFARM_LOG=warn "$tf" worker --scheduler-file "$S" --name w1 --nthreads 1 --local-directory "$work" &
TASKFARM_LOG=warn "$tf" worker --scheduler-file "$S" --name w2 --nthreads 1 --local-directory "$work" &
wait_workers "$S" 2
# Random bytes from a command: touched memory, like real results.
if [ "$COUNT" = 1 ]; then
  printf '{"a": {"cmd": ["head", "-c", "%d", "/dev/urandom"], "workers": "w1"}, "b": {"task": ["len", "a"], "workers": "w2"}}\n' "$SIZE" > "$work/g.json"
else
  # COUNT values made on w1, all needed by one task on w2
  python3 - "$COUNT" "$SIZE" > "$work/g.json" <<'PY'
import json, sys
count, size = int(sys.argv[1]), int(sys.argv[2])
g = {f"a{i}": {"cmd": ["head", "-c", str(size), "/dev/urandom"], "workers": "w1"} for i in range(count)}
g["b"] = {"task": ["sum", [["len", f"a{i}"] for i in range(count)]], "workers": "w2"}
print(json.dumps(g))
PY
fi
TOTAL=$((COUNT * SIZE))

fetch_seconds() { "$tf" status --scheduler-file "$S" --json | python3 -c 'import json,sys; print([w for w in json.load(sys.stdin)["workers"] if w["name"]=="w2"][0]["fetch_seconds"])'; }
tf_t=(); raw_t=(); fresh_t=()
for rep in $(seq 1 "$REPS"); do
  before=$(fetch_seconds)
  out=$("$tf" submit "$work/g.json" --scheduler-file "$S")
  [ "$out" = "{\"b\": $TOTAL}" ] || { echo "unexpected output: $out" >&2; exit 1; }
  # the fetch counter reaches the scheduler with w2's next report
  after=$(fetch_seconds)
  for _ in $(seq 1 100); do [ "$after" != "$before" ] && break; sleep 0.02; after=$(fetch_seconds); done
  tf_t+=("$(awk "BEGIN {print $after - $before}")")
  raw_t+=("$(python3 "$here/tcp_baseline.py" "$TOTAL" prealloc)")
  fresh_t+=("$(python3 "$here/tcp_baseline.py" "$TOTAL" fresh)")
done
"$tf" shutdown --scheduler-file "$S" 2> /dev/null
wait
# The first transfer receives into new memory (cold); later ones reuse the
# buffer the previous value left in w2's pool (warm). Both are reported.
cold=${tf_t[0]}
t=$(median "${tf_t[@]:1}" "${tf_t[@]:0:$((REPS == 1))}"); r=$(median "${raw_t[@]}"); f=$(median "${fresh_t[@]}")
printf '%s; %d value(s) of %d bytes, median of %d\n' "$(machine_line)" "$COUNT" "$SIZE" "$REPS"
printf 'taskfarm worker-to-worker, warm:  %.3f s = %.2f GB/s (median of the transfers after the first)\n' "$t" "$(calc "$TOTAL / $t / 1e9")"
printf 'taskfarm worker-to-worker, cold:  %.3f s = %.2f GB/s (the first transfer, into new memory)\n' "$cold" "$(calc "$TOTAL / $cold / 1e9")"
printf 'raw TCP, buffer ready:            %.3f s = %.2f GB/s\n' "$r" "$(calc "$TOTAL / $r / 1e9")"
printf 'raw TCP into new memory:          %.3f s = %.2f GB/s\n' "$f" "$(calc "$TOTAL / $f / 1e9")"
printf 'ratio taskfarm/raw (throughput): warm %.2f against a ready buffer; cold %.2f against new memory\n' "$(calc "$r / $t")" "$(calc "$f / $cold")"

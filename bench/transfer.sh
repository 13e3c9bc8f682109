#!/usr/bin/env bash
# Benchmark: one value of SIZE bytes (default 1 GiB) moved from one worker to
# another (taskfarm's data server -> peer fetch, real processes, loopback),
# beside raw TCP loopback moving the same bytes, alternating; medians.
#
#   bench/transfer.sh                 # 1 GiB, 5 repetitions
#   SIZE=16777216 REPS=1 bench/transfer.sh   # smoke run
#
# taskfarm's time is the receiving worker's fetch time for the value (from
# sending the request until the last byte is in its store, connection set-up
# and authentication included), read from `taskfarm status --json`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/common.sh"
SIZE=${SIZE:-1073741824}
REPS=${REPS:-5}
build_taskfarm
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
S="$work/s.json"
TASKFARM_LOG=warn "$tf" scheduler --scheduler-file "$S" --host 127.0.0.1 &
TASKFARM_LOG=warn "$tf" worker --scheduler-file "$S" --name w1 --nthreads 1 --local-directory "$work" &
TASKFARM_LOG=warn "$tf" worker --scheduler-file "$S" --name w2 --nthreads 1 --local-directory "$work" &
wait_workers "$S" 2
# Random bytes from a command: touched memory, like real results.
printf '{"a": {"cmd": ["head", "-c", "%d", "/dev/urandom"], "workers": "w1"}, "b": {"task": ["len", "a"], "workers": "w2"}}\n' "$SIZE" > "$work/g.json"

fetch_seconds() { "$tf" status --scheduler-file "$S" --json | python3 -c 'import json,sys; print([w for w in json.load(sys.stdin)["workers"] if w["name"]=="w2"][0]["fetch_seconds"])'; }
tf_t=(); raw_t=(); fresh_t=()
for rep in $(seq 1 "$REPS"); do
  before=$(fetch_seconds)
  out=$("$tf" submit "$work/g.json" --scheduler-file "$S")
  [ "$out" = "{\"b\": $SIZE}" ] || { echo "unexpected output: $out" >&2; exit 1; }
  # the fetch counter reaches the scheduler with w2's next report
  after=$(fetch_seconds)
  for _ in $(seq 1 100); do [ "$after" != "$before" ] && break; sleep 0.02; after=$(fetch_seconds); done
  tf_t+=("$(awk "BEGIN {print $after - $before}")")
  raw_t+=("$(python3 "$here/tcp_baseline.py" "$SIZE" prealloc)")
  fresh_t+=("$(python3 "$here/tcp_baseline.py" "$SIZE" fresh)")
done
"$tf" shutdown --scheduler-file "$S" 2> /dev/null
wait
t=$(median "${tf_t[@]}"); r=$(median "${raw_t[@]}"); f=$(median "${fresh_t[@]}")
printf 'machine: %s, %s cores; commit %s; %d bytes, median of %d\n' "$(uname -m)" "$(nproc)" "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)" "$SIZE" "$REPS"
printf 'taskfarm worker-to-worker: %.3f s = %.2f GB/s\n' "$t" "$(awk "BEGIN {print $SIZE / $t / 1e9}")"
printf 'raw TCP, buffer ready:     %.3f s = %.2f GB/s\n' "$r" "$(awk "BEGIN {print $SIZE / $r / 1e9}")"
printf 'raw TCP into new memory:   %.3f s = %.2f GB/s\n' "$f" "$(awk "BEGIN {print $SIZE / $f / 1e9}")"
printf 'ratio taskfarm/raw (throughput): %.2f against a ready buffer, %.2f against new memory\n' "$(awk "BEGIN {print $r / $t}")" "$(awk "BEGIN {print $f / $t}")"

#!/usr/bin/env bash
# Benchmark: scheduler memory per waiting task. The scheduler's resident
# memory (RSS, from /proc) with N tasks submitted and waiting (no worker is
# connected, so none can run) minus its RSS before the submission, divided
# by N.
#
#   bench/memory.sh               # 1,000,000 independent no-op tasks
#   N=10000 bench/memory.sh       # smoke run (what CI does)
#   SHAPE=chain bench/memory.sh   # a chain: each task needs the one before
#
# Prints one line: bytes per task. The submitting client is killed after the
# measurement (the scheduler then forgets the tasks).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/common.sh"
N=${N:-1000000}
SHAPE=${SHAPE:-independent}
build_taskfarm
make_workdir

python3 - "$N" "$SHAPE" > "$work/graph.json" <<'PY'
import json, sys
n, shape = int(sys.argv[1]), sys.argv[2]
if shape == "chain":
    g = {"t0": ["noop"], **{f"t{i}": ["inc", f"t{i-1}"] for i in range(1, n)}}
else:
    g = {f"t{i}": ["noop"] for i in range(n)}
print(json.dumps(g))
PY

"$tf" scheduler --scheduler-file "$work/s.json" --host 127.0.0.1 2> "$work/scheduler.log" &
sched=$!
until [ -s "$work/s.json" ]; do sleep 0.02; done
"$tf" status --scheduler-file "$work/s.json" > /dev/null
rss() { awk '/^VmRSS/ {print $2 * 1024}' "/proc/$sched/status"; }
before=$(rss)
"$tf" submit "$work/graph.json" --scheduler-file "$work/s.json" > /dev/null 2>&1 &
submit=$!
waiting() { "$tf" status --scheduler-file "$work/s.json" --json | python3 -c 'import json,sys; t=json.load(sys.stdin)["tasks"]; print(sum(v for k, v in t.items() if k not in ("memory", "erred", "forgotten", "released")))'; }
until [ "$(waiting)" = "$N" ]; do sleep 0.1; done
after=$(rss)
kill $submit 2>/dev/null || true
"$tf" shutdown --scheduler-file "$work/s.json" 2> /dev/null || true
wait 2>/dev/null || true
printf '%s; %d %s tasks waiting\n' "$(machine_line)" "$N" "$SHAPE"
printf 'scheduler RSS: %d bytes idle, %d bytes with the tasks waiting\n' "$before" "$after"
printf 'bytes per waiting task: %.0f\n' "$(calc "($after - $before) / $N")"

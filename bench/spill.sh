#!/usr/bin/env bash
# Benchmark: spill (write values to the worker's local directory) and
# unspill (read them back) throughput, beside dd writing and reading the same
# amount in the same directory; alternating, medians.
#
#   bench/spill.sh                      # 10 x 100 MB values, 3 repetitions
#   COUNT=8 SIZE=10000000 REPS=1 bench/spill.sh   # smoke run
#
# The worker's memory limit is set so that nearly everything must go to disk:
# all values are made before any is used (a gate task), then read back.
# Neither side calls fsync: both measure what the page cache and the disk give
# a process writing and reading files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/common.sh"
COUNT=${COUNT:-10}
SIZE=${SIZE:-100000000}
REPS=${REPS:-3}
DIR=${DIR:-$(mktemp -d)}
build_taskfarm
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"; rm -f "$DIR/dd.bench"' EXIT
S="$work/s.json"
limit=$(( SIZE * 3 + 30000000 ))   # the target (60 %) holds about 2 values
TASKFARM_LOG=warn "$tf" scheduler --scheduler-file "$S" --host 127.0.0.1 &
TASKFARM_LOG=warn "$tf" worker --scheduler-file "$S" --name w --nthreads 1 --memory-limit "$limit" --local-directory "$DIR" &
wait_workers "$S" 1
python3 - "$COUNT" "$SIZE" > "$work/g.json" <<'PY'
import json, sys
n, size = int(sys.argv[1]), int(sys.argv[2])
# Random bytes from a command: touched memory, like real results (zeros()
# would hand back untouched calloc pages, cheaper to make but costlier to read).
g = {f"p{i}": ["cmd", "head", "-c", str(size), "/dev/urandom"] for i in range(n)}
g["gate"] = {"task": ["noop"], "deps": [f"p{i}" for i in range(n)]}
for i in range(n):
    g[f"n{i}"] = {"task": ["len", f"p{i}"], "deps": ["gate"]}
g["total"] = ["sum", ["list"] + [f"n{i}" for i in range(n)]]
print(json.dumps(g))
PY
metric() { "$tf" status --scheduler-file "$S" --json | python3 -c "import json,sys; w=json.load(sys.stdin)['workers'][0]; print(w['$1'])"; }
dd_rate() { LC_ALL=C dd "$@" bs=1M 2>&1 | awk '/copied/ {print $(NF-3)}'; }  # seconds
sp=(); un=(); ddw=(); ddr=()
total_bytes=$(( COUNT * SIZE ))
for rep in $(seq 1 "$REPS"); do
  b_sb=$(metric spilled_bytes_total); b_ss=$(metric spill_seconds); b_ub=$(metric unspilled_bytes_total); b_us=$(metric unspill_seconds)
  out=$("$tf" submit "$work/g.json" --scheduler-file "$S" --keys total)
  [ "$out" = "{\"total\": $total_bytes}" ] || { echo "unexpected: $out" >&2; exit 1; }
  # the counters reach the scheduler with the worker's next report
  ub=$(metric unspilled_bytes_total)
  for _ in $(seq 1 150); do [ "$ub" != "$b_ub" ] && break; sleep 0.02; ub=$(metric unspilled_bytes_total); done
  sb=$(metric spilled_bytes_total); ss=$(metric spill_seconds); us=$(metric unspill_seconds)
  [ "$sb" != "$b_sb" ] && [ "$ub" != "$b_ub" ] || { echo "nothing was spilled and read back: raise COUNT" >&2; exit 1; }
  sp+=("$(awk "BEGIN {print ($sb - $b_sb) / ($ss - $b_ss) / 1e9}")")
  un+=("$(awk "BEGIN {print ($ub - $b_ub) / ($us - $b_us) / 1e9}")")
  mb=$(( total_bytes / 1048576 ))
  w=$(dd_rate if=/dev/zero of="$DIR/dd.bench" count="$mb")
  ddw+=("$(awk "BEGIN {print $mb * 1048576 / $w / 1e9}")")
  r=$(dd_rate if="$DIR/dd.bench" of=/dev/null)
  ddr+=("$(awk "BEGIN {print $mb * 1048576 / $r / 1e9}")")
  rm -f "$DIR/dd.bench"
done
"$tf" shutdown --scheduler-file "$S" 2> /dev/null
wait
printf 'machine: %s, %s cores; commit %s; %d values of %d bytes in %s (%s), median of %d\n' "$(uname -m)" "$(nproc)" "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)" "$COUNT" "$SIZE" "$DIR" "$(df -T "$DIR" | awk 'NR==2 {print $2}')" "$REPS"
printf 'taskfarm spill:   %.2f GB/s   dd write: %.2f GB/s   ratio %.2f\n' "$(median "${sp[@]}")" "$(median "${ddw[@]}")" "$(awk "BEGIN {print $(median "${sp[@]}") / $(median "${ddw[@]}")}")"
printf 'taskfarm unspill: %.2f GB/s   dd read:  %.2f GB/s   ratio %.2f\n' "$(median "${un[@]}")" "$(median "${ddr[@]}")" "$(awk "BEGIN {print $(median "${un[@]}") / $(median "${ddr[@]}")}")"

#!/usr/bin/env bash
# Before/after: the same workloads on two taskfarm binaries in one run,
# alternating repetition by repetition (these machines are noisy), medians
# and the ratio. For checking that a change costs nothing.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY            # 100,000 no-op tasks and a 100,000-leaf sum tree, 7 repetitions
#   N=1000 REPS=1 bench/ab.sh OLD NEW            # smoke
#   GRAPHS=noop bench/ab.sh OLD NEW              # one workload
#   GRAPHS=commands bench/ab.sh OLD NEW          # CMD_N (5,000) command tasks running `true`
#
# Build the old binary from a worktree of the old commit, e.g.
#   git worktree add /tmp/old HEAD~1 && (cd /tmp/old && cargo build --release) && cp /tmp/old/target/release/taskfarm /tmp/taskfarm-old
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/common.sh"
[ $# = 2 ] || { echo "usage: bench/ab.sh OLD_BINARY NEW_BINARY" >&2; exit 2; }
old=$1 new=$2
N=${N:-100000}
REPS=${REPS:-7}
make_workdir
noop_graph "$N" "$work/noop.json"
python3 - "$N" > "$work/sumtree.json" <<'PY'
import json, sys
n = int(sys.argv[1]); g = {}; level = [f"x{i}" for i in range(n)]
for k in level: g[k] = 1
d = 0
while len(level) > 1:
    nxt = []
    for i in range(0, len(level), 2):
        k = f"s{d}-{i}"; g[k] = ["add", *level[i:i + 2]] if i + 1 < len(level) else ["add", level[i], 0]; nxt.append(k)
    level = nxt; d += 1
print(json.dumps(g))
PY
python3 -c "import json, sys; print(json.dumps({f'c{i}': {'cmd': ['true']} for i in range(int(sys.argv[1]))}))" "${CMD_N:-5000}" > "$work/commands.json"
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
printf '%s; %d tasks; median of %d, alternating\n' "$(machine_line)" "$N" "$REPS"
for shape in "1 2" "2 1"; do
  set -- $shape
  for graph in ${GRAPHS:-noop sumtree}; do
    old_t=(); new_t=()
    for rep in $(seq 1 "$REPS"); do
      # Alternate which goes first, so neither always runs on a warmer machine.
      order="old new"; [ $((rep % 2)) = 0 ] && order="new old"
      for which in $order; do
        tf=${!which}
        start_cluster "$1" "$2"
        t=$(time_submit "$work/$graph.json")
        stop_cluster
        if [ $which = old ]; then old_t+=("$t"); else new_t+=("$t"); fi
      done
    done
    mo=$(median "${old_t[@]}"); mn=$(median "${new_t[@]}")
    printf '%-8s %s worker(s) x %s thread(s): old %.3f s  new %.3f s  new/old %.3f\n' "$graph" "$1" "$2" "$mo" "$mn" "$(calc "$mn / $mo")"
  done
done

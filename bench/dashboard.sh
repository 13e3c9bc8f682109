#!/usr/bin/env bash
# What the dashboard costs on the no-op benchmark: the scheduler with
# --no-dashboard, with the dashboard on and nobody looking (the default),
# and with a live page connected (the server-sent events of the dashboard,
# 2 updates a second with the task stream) and /metrics scraped every
# second. Alternating in one run (these machines are noisy), medians, ratios
# to "off" (target: within 5 %).
#
#   bench/dashboard.sh                  # 100,000 no-op tasks x 5
#   N=1000 REPS=1 bench/dashboard.sh    # smoke
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/common.sh"
N=${N:-100000}
REPS=${REPS:-5}
build_taskfarm
make_workdir
noop_graph "$N" "$work/graph.json"
printf '%s; %d no-op tasks on 2 workers x 1 thread, median of %d, alternating\n' "$(machine_line)" "$N" "$REPS"
off_t=(); idle_t=(); watched_t=()
modes=(off idle watched)
for rep in $(seq 1 "$REPS"); do
  for i in 0 1 2; do
    mode=${modes[$(( (i + rep) % 3 ))]}
    if [ $mode = off ]; then SCHED_ARGS=--no-dashboard; else SCHED_ARGS="--dashboard-address 127.0.0.1:0"; fi
    start_cluster 2 1
    watchers=()
    if [ $mode = watched ]; then
      url=$("$tf" status --scheduler-file "$work/s.json" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["dashboard"])')
      base=${url%%/\?token=*}; token=${url##*token=}
      curl -sN "$base/events?token=$token" > /dev/null &
      watchers+=($!)
      (while true; do curl -s -H "Authorization: Bearer $token" "$base/metrics" > /dev/null; sleep 1; done) &
      watchers+=($!)
    fi
    t=$(time_submit "$work/graph.json")
    [ ${#watchers[@]} = 0 ] || kill "${watchers[@]}" 2> /dev/null || true
    stop_cluster
    case $mode in off) off_t+=("$t") ;; idle) idle_t+=("$t") ;; watched) watched_t+=("$t") ;; esac
  done
done
o=$(median "${off_t[@]}"); i=$(median "${idle_t[@]}"); w=$(median "${watched_t[@]}")
printf 'no-op: dashboard off %.3f s (%.0f tasks/s), on %.3f s (%.0f tasks/s), on and watched %.3f s (%.0f tasks/s)\n' \
  "$o" "$(calc "$N / $o")" "$i" "$(calc "$N / $i")" "$w" "$(calc "$N / $w")"
printf 'time ratio to off: on %.3f, watched %.3f\n' "$(calc "$i / $o")" "$(calc "$w / $o")"

#!/usr/bin/env bash
# Benchmark: time from `mpirun -np 4` start until the cluster is ready (a
# scheduler and 3 workers, all registered), for taskfarm and dask-mpi, beside
# bare `mpirun -np 4 true` as the floor; alternating, several repetitions,
# medians. Open MPI's mpirun; as root it needs --allow-run-as-root.
#
#   bench/mpi_ready.sh                # taskfarm and bare mpirun
#   bench/mpi_ready.sh --with-dask    # also dask-mpi (installed into bench/.venv from PyPI)
#   REPS=1 bench/mpi_ready.sh         # smoke run
#
# "Ready" for taskfarm: the moment its batch command starts on rank 1, which
# taskfarm only does once every worker has registered. For dask-mpi: the
# moment client.wait_for_workers(2) returns on rank 1 (dask-mpi makes rank 1
# the client and ranks 2-3 workers, so it gets 2 workers of 4 ranks; taskfarm
# gets 2 as well, since rank 1 runs the command).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/common.sh"
REPS=${REPS:-7}
with_dask=0
[ "${1:-}" = "--with-dask" ] && with_dask=1
mpirun=(mpirun --allow-run-as-root --oversubscribe --bind-to none -np 4)

build_taskfarm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ $with_dask = 1 ]; then
  ensure_venv dask distributed dask-mpi mpi4py
fi

now() { date +%s.%N; }
bare=(); tfr=(); dsk=()
for rep in $(seq 1 "$REPS"); do
  t0=$(now); "${mpirun[@]}" true; t1=$(now)
  bare+=("$(awk "BEGIN {print $t1 - $t0}")")

  rm -f "$work/s.json" "$work/ready"
  t0=$(now)
  TASKFARM_LOG=warn "${mpirun[@]}" "$tf" mpi --scheduler-file "$work/s.json" --local-directory "$work" -- sh -c "date +%s.%N > $work/ready"
  tfr+=("$(awk "BEGIN {print $(cat "$work/ready") - $t0}")")

  if [ $with_dask = 1 ]; then
    rm -f "$work/dask.json" "$work/dready"
    t0=$(now)
    "${mpirun[@]}" "$here/.venv/bin/python" "$here/dask_mpi_ready.py" "$work/dready" > "$work/dask.log" 2>&1 || { cat "$work/dask.log"; exit 1; }
    dsk+=("$(awk "BEGIN {print $(cat "$work/dready") - $t0}")")
  fi
done

b=$(median "${bare[@]}"); t=$(median "${tfr[@]}")
printf 'machine: %s, %s cores; commit %s; %s\n' "$(uname -m)" "$(nproc)" "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)" "$(mpirun --version | head -1)"
printf 'bare mpirun -np 4 true:        %.3f s (median of %d)\n' "$b" "$REPS"
printf 'taskfarm mpi ready:            %.3f s = bare + %.3f s\n' "$t" "$(awk "BEGIN {print $t - $b}")"
if [ $with_dask = 1 ]; then
  d=$(median "${dsk[@]}")
  printf 'dask-mpi ready:                %.3f s = bare + %.3f s\n' "$d" "$(awk "BEGIN {print $d - $b}")"
  printf 'ratio dask-mpi/taskfarm (ready time): %.1fx\n' "$(awk "BEGIN {print $d / $t}")"
fi

#!/usr/bin/env bash
# Every benchmark, taskfarm beside its peers in the same run (each script
# alternates the systems repetition by repetition and prints medians and
# ratios). The peers (dask, distributed, dask-mpi, mpi4py, hyperqueue) are
# installed from PyPI into bench/.venv on first use. Results are printed and
# kept in bench/results/<commit>.txt; docs/benchmarks.md records them.
#
#   bench/run.sh            # full sizes: about 15 minutes on 2 cores
#   bench/run.sh --smoke    # tiny sizes, taskfarm only (CI runs this)
#
# Needs Open MPI's mpirun for the cluster-ready benchmark.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/common.sh"
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
build_taskfarm
mkdir -p "$here/results"
out="$here/results/$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown).txt"
[ $smoke = 1 ] && out=$(mktemp)

section() { printf '\n== %s\n' "$1"; }
# Every workload runs under a time limit, so a hang is a failure with a
# message, not a stalled run (timeout signals the workload's whole process
# group: its scheduler and workers too).
limit=3600
[ $smoke = 1 ] && limit=300
bounded() {
  local rc=0
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  [ $rc != 124 ] || echo "bench: $* did not finish within $limit s: stopped" >&2
  return $rc
}
{
  printf '%s\n' "$(machine_line)"
  if [ $smoke = 1 ]; then
    section "no-op tasks";       N=1000 REPS=1 bounded "$here/noop.sh"
    section "sum tree";          LEAVES=1000 REPS=1 bounded "$here/sumtree.sh"
    section "command tasks";     N=200 REPS=1 bounded "$here/commands.sh"
    section "cluster ready";     REPS=1 bounded "$here/mpi_ready.sh"
    section "memory per task";   N=10000 bounded "$here/memory.sh"
    section "1 GiB transfer";    SIZE=16777216 REPS=2 bounded "$here/transfer.sh"
    section "spill";             COUNT=8 SIZE=10000000 REPS=1 bounded "$here/spill.sh"
    section "encryption";        N=1000 REPS=1 SIZE=16777216 TRANSFER_REPS=2 bounded "$here/encryption.sh"
    section "dashboard";         N=1000 REPS=1 bounded "$here/dashboard.sh"
    section "result cache";      SMOKE=1 bounded "$here/cache.sh"
    section "journal";           SMOKE=1 bounded "$here/journal.sh"
    section "many workers";      bounded "$here/many_workers.sh" --smoke
    section "scheduler only";    bounded cargo bench --quiet --manifest-path "$root/Cargo.toml" -p taskfarm --bench scheduler -- --quick
  else
    section "no-op tasks";       bounded "$here/noop.sh" --with-dask
    section "sum tree";          bounded "$here/sumtree.sh" --with-dask
    section "command tasks";     bounded "$here/commands.sh" --with-hq
    section "cluster ready";     bounded "$here/mpi_ready.sh" --with-dask
    section "memory per task";   bounded "$here/memory.sh"
    section "1 GiB transfer";    bounded "$here/transfer.sh"
    section "spill";             bounded "$here/spill.sh"
    section "encryption";        bounded "$here/encryption.sh"
    section "dashboard";         bounded "$here/dashboard.sh"
    section "result cache";      bounded "$here/cache.sh"
    section "journal";           bounded "$here/journal.sh"
    section "many workers";      bounded "$here/many_workers.sh"
    section "scheduler only";    bounded cargo bench --quiet --manifest-path "$root/Cargo.toml" -p taskfarm --bench scheduler
  fi
} 2>&1 | tee "$out"
[ $smoke = 1 ] && rm -f "$out" || echo "results kept in ${out#$root/}"

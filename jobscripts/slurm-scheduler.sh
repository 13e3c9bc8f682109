#!/bin/bash
# One scheduler in a small, long job; worker jobs come and go as the work
# needs them (taskfarm scheduler --adapt slurm). Usage: sbatch slurm-scheduler.sh graph.json
# See docs/hpc-jobqueue.md. Every setting below can be overridden from the
# environment of sbatch (it exports it), e.g. CORES=4 sbatch slurm-scheduler.sh g.json
#SBATCH --job-name=taskfarm-scheduler
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=12:00:00
#SBATCH --output=taskfarm-scheduler-%j.out

# module load ...           # site-specific
set -euo pipefail
GRAPH=${1:?usage: sbatch slurm-scheduler.sh GRAPH.json}
SCHED=${TASKFARM_SCHEDULER_FILE:-$HOME/.taskfarm/sched-$SLURM_JOB_ID.json}   # shared storage, private
IFACE=${IFACE:-ib0}            # the fast network; `ip addr` on a compute node shows its name
CORES=${CORES:-32}             # per worker job
MEMORY=${MEMORY:-120GB}        # per worker job (GB = 10^9 bytes, GiB = 2^30)
WALLTIME=${WALLTIME:-02:00:00} # per worker job; replacements are submitted ahead of its end
JOBS_MAX=${JOBS_MAX:-20}
mkdir -p "$(dirname "$SCHED")" logs
# A campaign longer than this job (docs/campaigns.md): set TASKFARM_JOURNAL and
# TASKFARM_CACHE to paths on shared storage and TASKFARM_SCHEDULER_FILE to one
# fixed path, and chain jobs with sbatch --dependency=afterany:<previous job>.
# Each job resumes from the journal and the cache what the one before left.
RESUME=()
[ -z "${TASKFARM_JOURNAL:-}" ] || RESUME+=(--journal "$TASKFARM_JOURNAL")
[ -z "${TASKFARM_CACHE:-}" ] || RESUME+=(--cache "$TASKFARM_CACHE")

taskfarm scheduler --scheduler-file "$SCHED" --interface "$IFACE" "${RESUME[@]}" \
    --adapt slurm --minimum-jobs 0 --maximum-jobs "$JOBS_MAX" \
    --cores "$CORES" --memory "$MEMORY" --walltime "$WALLTIME" \
    --local-directory '$TMPDIR' --log-directory "$PWD/logs" &
scheduler=$!
trap 'kill $scheduler 2>/dev/null || true' EXIT
taskfarm submit "$GRAPH" --scheduler-file "$SCHED" > results.json
taskfarm shutdown --scheduler-file "$SCHED"   # cancels the worker jobs still there
wait $scheduler

#!/bin/bash
# One scheduler in a small, long PBS Pro job; worker jobs come and go as the
# work needs them. Usage: qsub -v GRAPH=graph.json pbs-scheduler.sh
# (Torque: --adapt torque). See docs/hpc-jobqueue.md.
#PBS -N taskfarm-scheduler
#PBS -l select=1:ncpus=1
#PBS -l walltime=12:00:00
#PBS -j oe

# module load ...
set -euo pipefail
cd "$PBS_O_WORKDIR"
SCHED=${TASKFARM_SCHEDULER_FILE:-$HOME/.taskfarm/sched-$PBS_JOBID.json}
mkdir -p "$(dirname "$SCHED")" logs
# A campaign longer than this job (docs/campaigns.md): pass TASKFARM_JOURNAL,
# TASKFARM_CACHE (shared storage) and one fixed TASKFARM_SCHEDULER_FILE with
# qsub -v, and chain jobs with -W depend=afterany:<previous job>; each resumes
# from the journal and the cache what the one before left.
RESUME=()
[ -z "${TASKFARM_JOURNAL:-}" ] || RESUME+=(--journal "$TASKFARM_JOURNAL")
[ -z "${TASKFARM_CACHE:-}" ] || RESUME+=(--cache "$TASKFARM_CACHE")
taskfarm scheduler --scheduler-file "$SCHED" --interface ib0 "${RESUME[@]}" \
    --adapt pbs --minimum-jobs 0 --maximum-jobs 20 \
    --cores 32 --memory 120GB --walltime 02:00:00 \
    --local-directory '$TMPDIR' --log-directory "$PWD/logs" &
scheduler=$!
trap 'kill $scheduler 2>/dev/null || true' EXIT
taskfarm submit "${GRAPH:?qsub -v GRAPH=graph.json}" --scheduler-file "$SCHED" > results.json
taskfarm shutdown --scheduler-file "$SCHED"
wait $scheduler

#!/bin/bash
# One scheduler in a small, long LSF job; worker jobs come and go as the
# work needs them. Submit with: bsub < lsf-scheduler.sh
#BSUB -J taskfarm-scheduler
#BSUB -n 1
#BSUB -W 12:00
#BSUB -o taskfarm-scheduler-%J.out

# module load ...
set -euo pipefail
SCHED=$HOME/.taskfarm/sched-$LSB_JOBID.json
mkdir -p "$(dirname "$SCHED")" logs
taskfarm scheduler --scheduler-file "$SCHED" --interface ib0 \
    --adapt lsf --minimum-jobs 0 --maximum-jobs 20 \
    --cores 32 --memory 120GB --walltime 02:00:00 \
    --local-directory '$TMPDIR' --log-directory "$PWD/logs" &
scheduler=$!
trap 'kill $scheduler 2>/dev/null || true' EXIT
taskfarm submit graph.json --scheduler-file "$SCHED" > results.json
taskfarm shutdown --scheduler-file "$SCHED"
wait $scheduler

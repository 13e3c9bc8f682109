#!/bin/bash
# One scheduler in a small, long Grid Engine job; worker jobs come and go as
# the work needs them. qsub sge-scheduler.sh
#$ -N taskfarm-scheduler
#$ -l h_rt=12:00:00
#$ -cwd -j y -S /bin/bash

# module load ...
set -euo pipefail
SCHED=$HOME/.taskfarm/sched-$JOB_ID.json
mkdir -p "$(dirname "$SCHED")" logs
taskfarm scheduler --scheduler-file "$SCHED" --interface ib0 \
    --adapt sge --minimum-jobs 0 --maximum-jobs 20 \
    --cores 32 --memory 120GB --walltime 02:00:00 \
    --local-directory '$TMPDIR' --log-directory "$PWD/logs" &
scheduler=$!
trap 'kill $scheduler 2>/dev/null || true' EXIT
taskfarm submit graph.json --scheduler-file "$SCHED" > results.json
taskfarm shutdown --scheduler-file "$SCHED"
wait $scheduler

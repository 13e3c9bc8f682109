#!/bin/bash
# taskfarm in one Grid Engine job (batch mode). qsub sge-mpi.sh
# The parallel environment's name ("mpi" here) is site-specific: qconf -spl lists them.
#$ -N taskfarm
#$ -pe mpi 32
#$ -l h_rt=01:00:00
#$ -cwd -j y -S /bin/bash

# module load openmpi
set -euo pipefail
SCHED=$HOME/.taskfarm/sched-$JOB_ID.json
mkdir -p "$(dirname "$SCHED")"
mpirun --bind-to none taskfarm mpi --scheduler-file "$SCHED" --interface ib0 \
    --local-directory "${TMPDIR:-/tmp}" \
    -- taskfarm submit graph.json > results.json

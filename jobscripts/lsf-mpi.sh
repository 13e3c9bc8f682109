#!/bin/bash
# taskfarm in one LSF job (batch mode): rank 0 schedules, rank 1 runs the
# client command, the other ranks are workers. Submit with: bsub < lsf-mpi.sh
#BSUB -J taskfarm
#BSUB -n 32
#BSUB -R "span[ptile=8]"
#BSUB -W 1:00
#BSUB -o taskfarm-%J.out

# module load openmpi
set -euo pipefail
SCHED=$HOME/.taskfarm/sched-$LSB_JOBID.json
mkdir -p "$(dirname "$SCHED")"
mpirun --bind-to none taskfarm mpi --scheduler-file "$SCHED" --interface ib0 \
    --local-directory "${TMPDIR:-/tmp}" \
    -- taskfarm submit graph.json > results.json

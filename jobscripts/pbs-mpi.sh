#!/bin/bash
# taskfarm in one PBS Pro / Torque job (batch mode). See docs/hpc-mpi.md.
#PBS -N taskfarm
#PBS -l select=4:ncpus=8:mpiprocs=8
#PBS -l walltime=01:00:00
#PBS -j oe
# Torque: #PBS -l nodes=4:ppn=8

# module load openmpi
set -euo pipefail
cd "$PBS_O_WORKDIR"
SCHED=$HOME/.taskfarm/sched-$PBS_JOBID.json
mkdir -p "$(dirname "$SCHED")"

mpirun --bind-to none taskfarm mpi \
    --scheduler-file "$SCHED" \
    --interface ib0 \
    --local-directory "${TMPDIR:-/tmp}" \
    -- taskfarm submit graph.json > results.json

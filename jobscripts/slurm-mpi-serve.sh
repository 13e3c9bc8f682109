#!/bin/bash
# A taskfarm cluster that serves until told to stop: submit graphs from a
# login node with `taskfarm submit --scheduler-file ...`, end it with
# `taskfarm shutdown --scheduler-file ...` (or let the walltime end it).
#SBATCH --job-name=taskfarm-serve
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=16
#SBATCH --time=04:00:00

set -euo pipefail
mkdir -p "$HOME/.taskfarm"
mpirun --bind-to none taskfarm mpi \
    --scheduler-file "$HOME/.taskfarm/serve.json" \
    --interface ib0 \
    --local-directory "${TMPDIR:-/tmp}"

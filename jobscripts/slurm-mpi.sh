#!/bin/bash
# taskfarm in one SLURM job: rank 0 schedules, rank 1 runs the client command,
# every other rank is a worker; the job ends when the command does, with its
# exit status. See docs/hpc-mpi.md.
#SBATCH --job-name=taskfarm
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --time=01:00:00
#SBATCH --output=taskfarm-%j.out

# module load openmpi        # site-specific: the MPI taskfarm was built for (any, if built without --features mpi)
set -euo pipefail
SCHED=$HOME/.taskfarm/sched-$SLURM_JOB_ID.json      # shared storage, private
mkdir -p "$(dirname "$SCHED")"

# --bind-to none: taskfarm pins each rank's threads itself (--bind cores).
mpirun --bind-to none taskfarm mpi \
    --scheduler-file "$SCHED" \
    --interface ib0 \
    --local-directory "${TMPDIR:-/tmp}" \
    -- taskfarm submit graph.json > results.json
# Alternatively: srun taskfarm mpi ... (same flags).

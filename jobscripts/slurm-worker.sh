#!/bin/bash
# One worker job, submitted by hand (or as an array: sbatch --array=1-20 slurm-worker.sh)
# to join a scheduler that runs elsewhere. `taskfarm jobqueue submit --system slurm`
# writes and submits an equivalent script for you. See docs/hpc-jobqueue.md.
#SBATCH --job-name=taskfarm-worker
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=32
#SBATCH --mem=120G
#SBATCH --time=02:00:00
#SBATCH --output=taskfarm-worker-%j.out
# The worker asks SLURM for the time left and retires (results handed over,
# exit 0) 10% of the walltime (at most 5 min) before the end; SIGTERM or
# SIGUSR1 make it retire at once. To be told by SLURM instead, add:
#   #SBATCH --signal=B:USR1@300   (may arrive up to a minute early)

# module load ...
SCHED=${TASKFARM_SCHEDULER_FILE:-$HOME/.taskfarm/sched.json}
# exec: the worker itself receives SLURM's signals.
exec taskfarm worker --scheduler-file "$SCHED" --interface "${IFACE:-ib0}" \
    --nthreads "$SLURM_CPUS_PER_TASK" --memory-limit 110GiB \
    --local-directory "${TMPDIR:-/tmp}"

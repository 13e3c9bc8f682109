#!/bin/bash
# One PBS Pro worker job joining a scheduler that runs elsewhere
# (`taskfarm jobqueue submit --system pbs` does the same for you).
#PBS -N taskfarm-worker
#PBS -l select=1:ncpus=32:mem=120gb
#PBS -l walltime=02:00:00
#PBS -j oe
# Torque: #PBS -l nodes=1:ppn=32 and #PBS -l mem=120gb

# module load ...
# --walltime: PBS Pro does not tell the job its end; the worker retires
# 10% (at most 5 min) before it. SIGTERM (qdel) also makes it retire.
exec taskfarm worker --scheduler-file "$HOME/.taskfarm/sched.json" --interface ib0 \
    --nthreads 32 --memory-limit 110GiB --walltime 02:00:00 \
    --local-directory "${TMPDIR:-/tmp}"

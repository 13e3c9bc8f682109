#!/bin/bash
# One LSF worker job joining a scheduler that runs elsewhere. bsub < lsf-worker.sh
# (`taskfarm jobqueue submit --system lsf` does the same for you.)
#BSUB -J taskfarm-worker
#BSUB -n 32
#BSUB -R "span[hosts=1]"
#BSUB -M 120GB
#BSUB -W 2:00
#BSUB -o taskfarm-worker-%J.out

# module load ...
exec taskfarm worker --scheduler-file "$HOME/.taskfarm/sched.json" --interface ib0 \
    --nthreads 32 --memory-limit 110GiB --walltime 02:00:00 \
    --local-directory "${TMPDIR:-/tmp}"

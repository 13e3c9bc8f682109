#!/bin/bash
# One Grid Engine worker job joining a scheduler that runs elsewhere. qsub sge-worker.sh
# (`taskfarm jobqueue submit --system sge` does the same for you.)
# h_rt kills with SIGKILL at the limit; s_rt sends SIGUSR1 before it, which
# makes the worker retire (results handed over, exit 0).
#$ -N taskfarm-worker
#$ -pe smp 32
#$ -l h_rt=02:00:00,s_rt=01:55:00
#$ -cwd -j y -S /bin/bash

# module load ...
exec taskfarm worker --scheduler-file "$HOME/.taskfarm/sched.json" --interface ib0 \
    --nthreads "$NSLOTS" --memory-limit 110GiB --local-directory "${TMPDIR:-/tmp}"

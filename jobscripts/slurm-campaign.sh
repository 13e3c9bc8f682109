#!/bin/bash
# One link of a campaign chain (docs/campaigns.md): every job of the chain
# runs the same graph against one result cache; what earlier jobs finished
# is loaded, not run again, so the chain finishes whatever each job's
# walltime. Submit the chain from the directory that holds the graph:
#
#   jid=$(sbatch --parsable slurm-campaign.sh graph.json)
#   for i in 1 2 3; do jid=$(sbatch --parsable --dependency=afterany:$jid slurm-campaign.sh graph.json); done
#
# The job that finishes writes results.json; the ones after it see it and
# end at once (or scancel them).
#SBATCH --job-name=tf-campaign
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --time=02:00:00
#SBATCH --output=tf-campaign-%j.out

# module load openmpi        # site-specific
set -euo pipefail
GRAPH=${1:-graph.json}
CACHE=${TASKFARM_CACHE:-$SCRATCH/tf-cache}                  # shared by every node and job, private
SCHED=${TASKFARM_SCHEDULER_FILE:-$HOME/.taskfarm/campaign-$SLURM_JOB_ID.json}
IFACE=${IFACE:-ib0}
mkdir -p "$(dirname "$SCHED")"
if [ -s results.json ]; then
    echo "the campaign has finished already (results.json): nothing to do"
    exit 0
fi
echo "campaign job $SLURM_JOB_ID: $GRAPH against the cache $CACHE"
# Rank 0 schedules (and plans the graph against the cache), rank 1 submits,
# the other ranks work. At the walltime SLURM stops the job: only the tasks
# running then are lost; everything finished is in the cache.
srun taskfarm mpi --scheduler-file "$SCHED" --interface "$IFACE" --cache "$CACHE" \
    --local-directory "${TMPDIR:-/tmp}" ${TASKFARM_MPI_OPTIONS:-} \
    -- taskfarm submit "$GRAPH" --quiet > results.json.part
mv results.json.part results.json
echo "campaign finished in job $SLURM_JOB_ID"

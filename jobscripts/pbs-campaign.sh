#!/bin/bash
# One link of a campaign chain for PBS Pro / Torque (docs/campaigns.md): the
# same graph against one result cache in every job. Submit the chain:
#
#   jid=$(qsub -F graph.json pbs-campaign.sh)        # Torque: -F; PBS Pro: qsub -v GRAPH=graph.json
#   for i in 1 2 3; do jid=$(qsub -W depend=afterany:$jid -v GRAPH=graph.json pbs-campaign.sh); done
#PBS -N tf-campaign
#PBS -l select=4:ncpus=32:mpiprocs=32
#PBS -l walltime=02:00:00
#PBS -j oe

# module load openmpi        # site-specific
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
GRAPH=${GRAPH:-${1:-graph.json}}
CACHE=${TASKFARM_CACHE:-$SCRATCH/tf-cache}
SCHED=${TASKFARM_SCHEDULER_FILE:-$HOME/.taskfarm/campaign-$PBS_JOBID.json}
IFACE=${IFACE:-ib0}
mkdir -p "$(dirname "$SCHED")"
if [ -s results.json ]; then
    echo "the campaign has finished already (results.json): nothing to do"
    exit 0
fi
mpirun --bind-to none taskfarm mpi --scheduler-file "$SCHED" --interface "$IFACE" --cache "$CACHE" \
    --local-directory "${TMPDIR:-/tmp}" \
    -- taskfarm submit "$GRAPH" --quiet > results.json.part
mv results.json.part results.json

#!/usr/bin/env bash
# standins-up.sh - install the stand-ins for PBS Pro, Torque, LSF and
# HTCondor (tests/infra/batch-standin.py) for the job-queue tests:
#
#   ROOT/pbs/bin/{qsub,qstat,qdel,qsig}          PBS Pro / OpenPBS
#   ROOT/torque/bin/{qsub,qstat,qdel,qsig}       Torque
#   ROOT/lsf/bin/{bsub,bjobs,bkill}              IBM Spectrum LSF
#   ROOT/condor/bin/{condor_submit,condor_q,condor_rm,condor_history}
#
# Put ROOT/SYSTEM/bin first on PATH to use one. ROOT defaults to
# target/batch-standins in this checkout (private to its owner: mode 0700).
# No daemons: each job's runner is started by its submission. Idempotent;
# a changed config (STANDIN_CPUS, STANDIN_KILL_DELAY) is rewritten, and
# STANDIN_CLEAN=1 forgets every job.
#
# Tunables: STANDIN_CPUS=8 (CPUs of the one modelled host, shared by all
# running jobs), STANDIN_KILL_DELAY=10 (seconds from SIGTERM to SIGKILL:
# PBS's kill_delay, LSF's JOB_TERMINATE_INTERVAL, HTCondor's vacate time),
# STANDIN_LSF_RUNLIMIT_GRACE=600 (LSF: SIGUSR2 at the run limit, SIGKILL this
# much later).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${1:-$here/../../target/batch-standins}
mkdir -p "$root"
root=$(cd "$root" && pwd)
chmod 0700 "$root"
command -v python3 > /dev/null || { echo "standins-up: python3 is needed" >&2; exit 1; }
declare -A cmds=(
  [pbs]="qsub qstat qdel qsig"
  [torque]="qsub qstat qdel qsig"
  [lsf]="bsub bjobs bkill"
  [condor]="condor_submit condor_q condor_rm condor_history"
)
for flavour in pbs torque lsf condor; do
  d=$root/$flavour
  [ "${STANDIN_CLEAN:-0}" = 1 ] && rm -rf "$d/spool"
  mkdir -p "$d/bin" "$d/spool/jobs" "$d/spool/scripts" "$d/spool/output" "$d/spool/tmp"
  for c in ${cmds[$flavour]}; do
    ln -sfn "$here/batch-standin.py" "$d/bin/$c"
  done
  printf '{"cpus": %s, "kill_delay": %s, "lsf_runlimit_grace": %s}\n' \
    "${STANDIN_CPUS:-8}" "${STANDIN_KILL_DELAY:-10}" "${STANDIN_LSF_RUNLIMIT_GRACE:-600}" > "$d/config.json"
done
chmod +x "$here/batch-standin.py"
echo "batch stand-ins ready in $root (pbs torque lsf condor; PATH=$root/SYSTEM/bin:\$PATH)"

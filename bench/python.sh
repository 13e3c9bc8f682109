#!/usr/bin/env bash
# The Python client against Dask distributed, ProcessPoolExecutor and joblib's
# loky and dask backends (bench/python_bench.py), in the venv that
# tests/python-env.sh makes (taskfarm built in release there).
#
#   bench/python.sh            # full sizes (N=10000 SIDE=4000 JOBS=20000 REPS=3)
#   bench/python.sh --smoke    # taskfarm only, tiny sizes
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=$(bash "$here/../tests/python-env.sh" | tail -n 1)
[ "${1:-}" = "--smoke" ] && export SMOKE=1
cd "$(mktemp -d)"
exec "$venv/bin/python" "$here/python_bench.py"

#!/usr/bin/env bash
# The Python client against Dask distributed, Ray, ProcessPoolExecutor and
# joblib's loky and dask backends (bench/python_bench.py), in the venv that
# tests/python-env.sh makes (taskfarm built in release there; Ray from PyPI
# is added to it for the full run).
#
#   bench/python.sh            # full sizes (N=10000 ARRAYS=20 MB=50 SIDE=8000 CHUNK=500 JOBS=10000 REPS=3)
#   bench/python.sh --smoke    # taskfarm only, tiny sizes
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=$(bash "$here/../tests/python-env.sh" | tail -n 1)
if [ "${1:-}" = "--smoke" ]; then
  export SMOKE=1
else
  "$venv/bin/python" -m pip install -q "ray>=2.9" pandas pyarrow  # for ray.util.dask
fi
cd "$(mktemp -d)"
exec "$venv/bin/python" "$here/python_bench.py"

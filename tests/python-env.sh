#!/usr/bin/env bash
# Makes the Python environment the Python tests and benchmarks use: a venv
# (default target/pyvenv; TASKFARM_PYVENV overrides) with the test tools and
# the packages taskfarm must work with (dask, joblib, numpy; distributed for
# the side-by-side benchmarks; tqdm and a real Jupyter kernel with nbclient
# for the progress bar; selenium and prometheus_client for the dashboard
# tests), and the taskfarm package built from ./python
# with maturin and installed into it. Prints the venv's path on the last line.
#
#   tests/python-env.sh            # make or update it
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${TASKFARM_PYVENV:-$root/target/pyvenv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip > /dev/null
"$venv/bin/python" -m pip install -q \
  "maturin>=1.9.4,<2" "pytest>=8" "cloudpickle>=3" "numpy>=1.26" \
  "dask[array,bag]>=2025.1" "distributed>=2025.1" "joblib>=1.4" \
  "tqdm>=4.66" "ipykernel>=6" "ipywidgets>=8" "nbclient>=0.10" "nbformat>=5.10" \
  "selenium>=4.20" "prometheus_client>=0.20"
# Built in release (what users get), sharing the workspace's target directory.
(cd "$root/python" && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" \
  CARGO_TARGET_DIR="$root/target" maturin develop --release -q)
echo "$venv"

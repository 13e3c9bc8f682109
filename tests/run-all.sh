#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs the system
# packages it needs (as root, with apt-get), builds, runs the benchmarks once
# with tiny sizes, then runs every test twice: built without optional
# features (rank from the launcher's environment, topology from sysfs), and
# built with `--features mpi,hwloc` (linked to Open MPI, topology from hwloc).
# The job-queue tests need a real SLURM cluster and Grid Engine cell: this
# script starts both on this machine (tests/infra/slurm-up.sh, sge-up.sh;
# stop them with slurm-down.sh and sge-down.sh) and runs those tests once.
# PBS, LSF and HTCondor cannot run here: their tests run on faithful
# stand-ins (tests/infra/standins-up.sh installs them into target/).
#
#   tests/run-all.sh                        # everything
#   TASKFARM_SKIP_APT=1 tests/run-all.sh    # skip apt-get (packages already there)
#
# Python tests alone (after a cargo build): tests/python-env.sh, then
#   cd python && ../target/pyvenv/bin/python -m pytest
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

packages=(
  build-essential pkg-config python3 python3-venv python3-dev procps ca-certificates curl
  openmpi-bin libopenmpi-dev mpich libmpich-dev libclang-dev   # MPI launchers, rsmpi's bindgen
  libhwloc-dev hwloc libudev-dev                               # hwloc topology
  iproute2 iputils-ping util-linux                             # network namespaces as hosts
  chromium chromium-driver graphviz                            # dashboard/report browser tests, visualize
)
if [ "${TASKFARM_SKIP_APT:-0}" != 1 ] && command -v apt-get > /dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "== installing system packages"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" > /dev/null
fi

echo "== batch systems for the job-queue tests (SLURM with 4 virtual nodes, Grid Engine)"
sudo_root=""
[ "$(id -u)" = 0 ] || sudo_root="sudo"
$sudo_root bash tests/infra/slurm-up.sh | tail -n 1
$sudo_root bash tests/infra/sge-up.sh | tail -n 1
echo "== stand-ins for PBS Pro, Torque, LSF and HTCondor (no daemons; see docs/hpc-jobqueue.md)"
STANDIN_CLEAN=1 bash tests/infra/standins-up.sh | tail -n 1

if ! command -v cargo > /dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs, or Debian's 'cargo' package) and run again" >&2
  exit 2
fi
features=(--features taskfarm-launcher/mpi,taskfarm-launcher/hwloc)

echo "== build (default, and with mpi,hwloc)"
cargo build --workspace --all-targets --locked 2>&1 | tail -n 1
cargo build --workspace --all-targets --locked "${features[@]}" 2>&1 | tail -n 1

echo "== clippy, both builds (warnings are errors; clippy's incompatible_msrv checks std APIs against rust-version)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --workspace --all-targets --locked "${features[@]}" -- -D warnings
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
if command -v rustup > /dev/null && rustup toolchain list 2>/dev/null | grep -q "^$msrv"; then
  echo "== build with the declared minimum Rust ($msrv)"
  cargo "+$msrv" check --workspace --all-targets --locked
else
  echo "== Rust $msrv (rust-version) is not installed here and toolchains cannot be downloaded: the minimum is checked by clippy's incompatible_msrv lint above"
fi

echo "== benchmark smoke runs (tiny sizes; real numbers: docs/benchmarks.md)"
bench/run.sh --smoke

# The venv with cloudpickle, dask, joblib and numpy (tests/python-env.sh),
# made now: the Python executor's unit tests use it too.
echo "== Python venv for the tests (target/pyvenv)"
venv=$(bash tests/python-env.sh | tail -n 1)
export TASKFARM_TEST_PYTHON="$venv/bin/python"

# Tests that need MPI launchers, the batch systems or root are marked
# #[ignore] (so a plain `cargo test` passes and names them); this script has
# all of those, so it runs them too. The one test that needs a cgroup-v1
# cpuset hierarchy is left out, saying so, on machines without one.
nextest_skip="" libtest_skip=()
if [ ! -f /sys/fs/cgroup/cpuset/cpuset.cpus ]; then
  echo "== no cgroup-v1 cpuset hierarchy here: open_mpi_ranks_stay_inside_a_cgroup_v1_cpuset is not run"
  nextest_skip=" and not test(/cgroup_v1/)" libtest_skip=(--skip cgroup_v1)
fi
if cargo nextest --version > /dev/null 2>&1; then
  echo "== tests, built without optional features"
  cargo nextest run --workspace --locked --no-fail-fast --run-ignored all -E "all()$nextest_skip"
  echo "== tests, built with --features mpi,hwloc (linked to Open MPI; the job-queue tests ran above)"
  cargo nextest run --workspace --locked --no-fail-fast --run-ignored all "${features[@]}" -E "not binary(jobqueue) and not binary(observe)$nextest_skip"
else
  echo "== tests, built without optional features"
  cargo test --workspace --locked --no-fail-fast -- --include-ignored "${libtest_skip[@]}"
  echo "== tests, built with --features mpi,hwloc (linked to Open MPI)"
  cargo test --workspace --locked --no-fail-fast "${features[@]}" -- --include-ignored "${libtest_skip[@]}"
fi

# The Python package: built with maturin into a venv with the real dask,
# joblib and numpy (tests/python-env.sh), tested with pytest against the
# taskfarm binary built above (target/debug/taskfarm), real workers and
# real Open MPI.
echo "== Python package and its tests (venv: target/pyvenv)"
(cd python && TASKFARM_BIN="$root/target/debug/taskfarm" "$venv/bin/python" -m pytest -q -p no:cacheprovider)
echo "== Python benchmark smoke run (tiny sizes, taskfarm only; real numbers: docs/benchmarks.md)"
SMOKE=1 "$venv/bin/python" bench/python_bench.py
# What the README tells users: `pip install ./python` into a fresh venv
# (maturin from PyPI as the build backend; the workspace's target directory
# only saves compile time), then the one-liner.
echo "== README install: pip install ./python in a fresh venv, then the one-liner"
fresh=$(mktemp -d)
python3 -m venv "$fresh/venv"
CARGO_TARGET_DIR="$root/target" "$fresh/venv/bin/python" -m pip install -q ./python
got=$(cd "$fresh" && "$fresh/venv/bin/python" -c "import taskfarm; c = taskfarm.Client(); print(c.submit(lambda x: x + 1, 1).result())")
if [ "$got" != 2 ]; then
  echo "the README's Python one-liner printed '$got', not 2" >&2
  exit 1
fi
rm -rf "$fresh"

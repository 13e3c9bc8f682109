#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs the system
# packages it needs (as root, with apt-get), builds, runs every test with real
# processes, then a smoke run of the benchmarks.
#
#   tests/run-all.sh              # everything
#   TASKFARM_SKIP_APT=1 tests/run-all.sh   # skip apt-get (packages already there)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# System packages. Later suites (MPI, SLURM, namespaces) add theirs here.
packages=(build-essential pkg-config python3 procps iproute2 ca-certificates)
if [ "${TASKFARM_SKIP_APT:-0}" != 1 ] && command -v apt-get > /dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "== installing system packages: ${packages[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" > /dev/null
fi

if ! command -v cargo > /dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs, or Debian's 'cargo' package) and run again" >&2
  exit 2
fi

echo "== build"
cargo build --workspace --all-targets --locked 2>&1 | tail -n 3

echo "== benchmark smoke run (tiny sizes; real numbers: docs/benchmarks.md)"
N=2000 REPS=1 bench/noop.sh

echo "== tests"
if cargo nextest --version > /dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

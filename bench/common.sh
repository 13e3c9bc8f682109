# Shared by the bench/*.sh scripts: source it after setting `here` and `root`.

# Median of the arguments (numbers).
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# awk arithmetic: calc '1 / 3'
calc() { awk "BEGIN {print $1}"; }

# Build the release binary once; sets $tf to its path.
build_taskfarm() {
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin taskfarm
  tf="$root/target/release/taskfarm"
}

# Wait until the scheduler of scheduler file $1 has $2 workers.
wait_workers() {
  until [ "$("$tf" status --scheduler-file "$1" --json --timeout 30s | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["workers"]))')" = "$2" ]; do
    sleep 0.05
  done
}

# A graph of $1 independent no-op tasks, written to $2.
noop_graph() {
  python3 -c "import json, sys; print(json.dumps({f't{i}': ['noop'] for i in range(int(sys.argv[1]))}))" "$1" > "$2"
}

# One line naming the machine and the commit, for the record.
machine_line() {
  printf 'machine: %s, %s cores; commit %s' "$(uname -m)" "$(nproc)" "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
}

# Make sure bench/.venv (a private virtualenv) has the given PyPI packages;
# installs only what is missing.
ensure_venv() {
  [ -x "$here/.venv/bin/python" ] || python3 -m venv "$here/.venv"
  local missing=()
  for p in "$@"; do
    "$here/.venv/bin/pip" show --quiet "$p" > /dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} = 0 ] || "$here/.venv/bin/pip" install --quiet "${missing[@]}"
}

# Start a scheduler and WORKERS worker processes of THREADS threads each
# (scheduler file $work/s.json, logs in $work), and wait for them.
start_cluster() {
  # SCHED_ARGS: extra scheduler flags, e.g. --insecure-plaintext (workers follow the file).
  "$tf" scheduler --scheduler-file "$work/s.json" --host 127.0.0.1 ${SCHED_ARGS:-} 2> "$work/scheduler.log" &
  for i in $(seq 1 "$1"); do
    "$tf" worker --scheduler-file "$work/s.json" --nthreads "$2" --local-directory "$work" 2> "$work/worker$i.log" &
  done
  wait_workers "$work/s.json" "$1"
}

stop_cluster() {
  "$tf" shutdown --scheduler-file "$work/s.json" 2> /dev/null
  wait
  rm -f "$work/s.json"
}

# Seconds taken by `taskfarm submit GRAPH` on the running cluster; its output
# goes to $work/out.json.
time_submit() {
  local t0 t1
  t0=$(date +%s.%N)
  "$tf" submit "$1" --scheduler-file "$work/s.json" > "$work/out.json"
  t1=$(date +%s.%N)
  calc "$t1 - $t0"
}

# A scratch directory in $work, removed (and background processes stopped)
# when the script exits.
make_workdir() {
  work=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
}

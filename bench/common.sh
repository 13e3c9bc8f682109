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

# One line naming the machine and the commit, for the record.
machine_line() {
  printf 'machine: %s, %s cores; commit %s' "$(uname -m)" "$(nproc)" "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
}

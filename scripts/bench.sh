#!/usr/bin/env bash
# Runs every benchmark and rewrites BENCHMARKS.md from their output.
# Each benchmark prints its rows as `| name | value | unit | floor | ratio | command |`
# lines on stdout; nothing in BENCHMARKS.md is written by hand.
# BENCH_ONLY=<text> runs only the benchmarks whose command contains <text>
# and keeps the other rows of the current BENCHMARKS.md (the header says so).
set -euo pipefail
cd "$(dirname "$0")/.."

rows=$(mktemp)
trap 'rm -f "$rows" "$rows.out"' EXIT

failed=()
run() {
  echo "== bench: $*" >&2
  # A benchmark that misses its own bound still prints its rows (the ratio
  # shows by how much); the script reports it and fails at the end.
  if ! "$@" >"$rows.out"; then
    failed+=("$*")
  fi
  grep '^| ' "$rows.out" | grep -v '^| name ' >>"$rows" || true
}

# The benchmarks' own set-up: pgBackRest, the peer of pitr_bench (Debian's
# package, as a DBA would install it).
if ! command -v pgbackrest >/dev/null; then
  echo "== bench: installing pgbackrest" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends pgbackrest >&2
fi

# One line per benchmark; each is also the `command` column of its rows.
BENCHES=(
  "cargo run --release -p tools --bin repo_bench"
  "cargo run --release -p tools --bin wal_bench"
  "cargo run --release -p tools --bin ingest_rss_bench"
  "cargo pgrx install --release -p pageserver_ext -c /usr/lib/postgresql/15/bin/pg_config && cargo run --release -p tools --bin redo_bench"
  "cargo pgrx install --release -p pageserver_ext -c /usr/lib/postgresql/15/bin/pg_config && cargo build --release -p tools --bin pagebench && cargo run --release -p tools --bin service_bench"
  "cargo pgrx install --release -p pageserver_ext -c /usr/lib/postgresql/15/bin/pg_config && cargo run --release -p tools --bin pitr_bench"
  "cargo run --release -p tools --bin remote_bench"
  "cargo pgrx install --release -p pageserver_ext -c /usr/lib/postgresql/15/bin/pg_config && cargo run --release -p tools --bin restore_bench"
  "cargo pgrx install --release -p pageserver_ext -c /usr/lib/postgresql/15/bin/pg_config && cargo build --release -p pageserver_clone && cargo run --release -p tools --bin clone_bench"
)

only=${BENCH_ONLY:-}
previous_date=$(grep -m1 '^Measured ' BENCHMARKS.md 2>/dev/null | awk '{print $2}' || true)
for b in "${BENCHES[@]}"; do
  if [ -n "$only" ] && [[ "$b" != *"$only"* ]]; then
    grep -F "| $b |" BENCHMARKS.md >>"$rows" 2>/dev/null || true
    continue
  fi
  run bash -c "$b"
done

{
  echo "# Benchmarks"
  echo
  echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB," \
       "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), by \`bash scripts/bench.sh\`."
  if [ -n "$only" ]; then
    echo "Only the benchmarks whose command contains \`$only\` ran then; the other rows are from the run of ${previous_date:-an earlier date}."
  fi
  echo "Ratios compare each figure with a floor measured in the same run."
  echo
  echo "| name | value | unit | floor | ratio | command |"
  echo "|---|---|---|---|---|---|"
  cat "$rows"
} >BENCHMARKS.md
echo "BENCHMARKS.md written" >&2
if [ ${#failed[@]} -gt 0 ]; then
  printf 'failed (rows kept in BENCHMARKS.md): %s\n' "${failed[@]}" >&2
  exit 1
fi

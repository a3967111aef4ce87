#!/usr/bin/env bash
# Sets up this machine (as root, idempotent) and runs every test:
#   0. the gates: rustfmt and clippy (warnings are errors);
#   1. the pure crates' unit tests and the tests against real PostgreSQL
#      servers they start themselves (primaries, hosts of their own);
#   2. the #[pg_test]s inside a host managed by `cargo pgrx test`;
#   3. the demo, checking it leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

bash scripts/setup.sh

# One build, run once: cargo's incremental caches would only take disk.
export CARGO_INCREMENTAL=0
warn_if_disk_short "${CARGO_TARGET_DIR:-$PWD/target}" 5
warn_if_disk_short /tmp 3

log "gates: cargo fmt --check, cargo clippy -D warnings"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

install_extension

log "workspace tests (pure crates, real primaries, hosts of their own)"
cargo test --workspace --exclude pageserver_ext

log "tests inside a host with the extension preloaded (cargo pgrx test)"
pgdata=/tmp/pageserver-pgrx-test
rm -rf "$pgdata"
cargo pgrx test pg15 -p pageserver_ext --runas postgres --pgdata "$pgdata"

log "the demo"
bash scripts/demo.sh --no-setup
if pgrep -f 'pageserver-demo\.' >/dev/null; then
  echo "the demo left processes running:" >&2
  pgrep -af 'pageserver-demo\.' >&2
  exit 1
fi
echo "demo: passed, nothing left running"
log "all tests passed"

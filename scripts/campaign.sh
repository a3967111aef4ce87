#!/usr/bin/env bash
# The long fault campaigns, with the full counts that CI shortens:
#   - the layers worker stopped with SIGTERM at 50 random points of its
#     passes (compaction, image layers, GC) and once by an injected panic,
#     while pgbench writes and a reader reads (pgrx-tests/tests/layers_worker.rs;
#     CI runs 10 stops);
#   - the host SIGKILLed at 50 random moments of the backup to object
#     storage (uploads, indexes, deletions) while pgbench writes, the bucket
#     checked after each (pgrx-tests/tests/remote_crashes.rs; CI runs 5);
#   - live clones at three LSNs of a pgbench database of scale 20 with
#     pgbench -T 30 on a clone (pgrx-tests/tests/clone_fs.rs; CI runs
#     scale 5 and 10 s).
# Expects the machine set up and the extension installed (scripts/test.sh
# does both); prints each campaign's summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

kills="${LAYERS_KILLS:-50}"
log "layers worker: $kills stops and a panic"
LAYERS_KILLS="$kills" cargo test -p pageserver_harness --test layers_worker -- --nocapture 2>&1 | tee /tmp/pageserver-campaign-layers.log |
  grep -E "stops \(|^last pass|blocks:|test result"

kills="${REMOTE_KILLS:-50}"
log "backup to object storage: the host SIGKILLed $kills times"
REMOTE_KILLS="$kills" cargo test -p pageserver_harness --test remote_crashes -- --nocapture 2>&1 | tee /tmp/pageserver-campaign-remote.log |
  grep -E "kills \(|blocks:|test result"

scale="${CLONE_SCALE:-20}"
log "live clones: pgbench scale $scale, 30 s runs"
E2E_SCALE="$scale" E2E_SECONDS=30 cargo test -p pageserver_harness --test clone_fs -- --nocapture --test-threads=1 2>&1 |
  tee /tmp/pageserver-campaign-clones.log | grep -E "^clone|blocks fetched|pg_dumpall equal|pgbench -S|test result"

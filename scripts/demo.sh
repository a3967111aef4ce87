#!/usr/bin/env bash
# Sets up this machine (as root, idempotent; skip with --no-setup) and runs
# the demo, all in a temporary directory: installs the extension, starts a
# host PostgreSQL 15 with shared_preload_libraries = 'pageserver_ext' and a
# stock primary, creates a tenant and a timeline fed by the primary, runs
# pgbench while showing the page server's lag fall to zero, branches the
# timeline at an LSN before pgbench, starts a stock PostgreSQL from the
# branch's fullbackup and shows that it sees the data as of that LSN, runs
# a stock PostgreSQL on a live clone of the same point (pageserver-clone,
# FUSE: blocks fetched on first read) and shows its counters, shows
# the backup worker's copy in object storage (a local directory unless
# DEMO_REMOTE_STORAGE names another), then stops everything and removes the
# directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

[ "${1:-}" = "--no-setup" ] || bash scripts/setup.sh
install_extension

HOST_PORT=${DEMO_HOST_PORT:-5499}
# Object storage for the backup worker; a directory inside the demo's unless given.
REMOTE_STORAGE=${DEMO_REMOTE_STORAGE:-}
LISTEN_ADDR=${DEMO_LISTEN_ADDR:-127.0.0.1:6400}   # the GUC's default
demo=$(mktemp -d /tmp/pageserver-demo.XXXXXX)
chown postgres: "$demo"
chmod 0755 "$demo"

stop_host() {
  if [ -f "$demo/clone/data/postmaster.pid" ]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$demo/clone/data" stop -m immediate -w >/dev/null 2>&1 || true
  fi
  if grep -qs " $demo/clone/data " /proc/mounts; then
    fusermount3 -u -z "$demo/clone/data" 2>/dev/null || true
  fi
  for dir in branch primary host; do
    if [ -f "$demo/$dir/postmaster.pid" ]; then
      as_postgres "$PG_BIN/pg_ctl" -D "$demo/$dir" stop -m immediate -w >/dev/null 2>&1 || true
    fi
  done
  rm -rf "$demo"
}
trap stop_host EXIT

# Appends the lines every demo cluster gets: its port, loopback only, sockets in the demo directory.
local_conf() {
  cat >>"$demo/$1/postgresql.conf" <<CONF
port = $2
listen_addresses = '127.0.0.1'
unix_socket_directories = '$demo'
CONF
}

log "starting a host PostgreSQL 15 on port $HOST_PORT with pageserver_ext preloaded"
as_postgres "$PG_BIN/initdb" -D "$demo/host" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
local_conf host "$HOST_PORT"
cat >>"$demo/host/postgresql.conf" <<CONF
shared_preload_libraries = 'pageserver_ext'
pageserver.listen_addr = '$LISTEN_ADDR'
# Small layers and frequent passes, so that the layers worker has work to
# show within the demo.
pageserver.checkpoint_distance = '8MB'
pageserver.compaction_threshold = 3
pageserver.compaction_period = '5s'
# The backup worker copies layers and indexes here; primaries keep WAL
# until it is in the bucket.
pageserver.remote_storage = '${REMOTE_STORAGE:-file://$demo/bucket}'
CONF
as_postgres "$PG_BIN/pg_ctl" -D "$demo/host" -l "$demo/host.log" -w start >/dev/null

host_psql() { "$PG_BIN/psql" -X -h 127.0.0.1 -p "$HOST_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
host_psql -q -c "CREATE EXTENSION pageserver_ext"
for _ in $(seq 100); do
  [ "$(host_psql -tA -c "SELECT count(*) FROM pageserver.status() WHERE state <> 'running'")" = 0 ] && break
  sleep 0.1
done

log "SELECT * FROM pageserver.status();"
host_psql -c "SELECT * FROM pageserver.status()"

log "psql connected to the page service at $LISTEN_ADDR, sending a command it does not know"
set +e
"$PG_BIN/psql" -X -w -d "host=${LISTEN_ADDR%:*} port=${LISTEN_ADDR##*:} user=compute dbname=tenant" -c "SELECT 1"
status=$?
set -e
if [ $status -eq 0 ]; then
  echo "the page service accepted an unknown command" >&2
  exit 1
fi

PRIMARY_PORT=${DEMO_PRIMARY_PORT:-5498}
BRANCH_PORT=${DEMO_BRANCH_PORT:-5497}
CLONE_PORT=${DEMO_CLONE_PORT:-5496}
SCALE=${DEMO_SCALE:-5}
SECONDS_OF_PGBENCH=${DEMO_PGBENCH_SECONDS:-15}

log "starting a stock primary PostgreSQL 15 on port $PRIMARY_PORT"
as_postgres "$PG_BIN/initdb" -D "$demo/primary" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
local_conf primary "$PRIMARY_PORT"
cat >>"$demo/primary/postgresql.conf" <<CONF
wal_level = replica
max_wal_senders = 4
max_replication_slots = 4
autovacuum = off
CONF
as_postgres "$PG_BIN/pg_ctl" -D "$demo/primary" -l "$demo/primary.log" -w start >/dev/null
primary_psql() { "$PG_BIN/psql" -X -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
# wait_ingested LSN MESSAGE: waits up to 60 s for $timeline to ingest LSN; fails with MESSAGE.
wait_ingested() {
  local caught_up=f
  for _ in $(seq 600); do
    caught_up=$(host_psql -tA -c "SELECT last_record_lsn::pg_lsn >= '$1'::pg_lsn FROM pageserver.timelines() WHERE timeline_id = '$timeline'")
    [ "$caught_up" = t ] && return 0
    sleep 0.1
  done
  echo "$2" >&2
  exit 1
}
as_postgres "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -i -s "$SCALE" -q postgres 2>&1 | tail -n 1

log "creating a tenant and a timeline fed by the primary (base backup, then streaming)"
tenant=$(host_psql -tA -c "SELECT pageserver.create_tenant()")
timeline=$(host_psql -tA -c "SELECT pageserver.create_timeline('$tenant', 'host=127.0.0.1 port=$PRIMARY_PORT user=postgres')")
echo "tenant $tenant, timeline $timeline"
# A commit after the import dates the history from here on (the base
# backup's own commits carry no time the page server could read).
primary_psql -q -c "SELECT txid_current()" >/dev/null
sleep 1
before_time=$(primary_psql -tA -c "SELECT clock_timestamp()")
before_lsn=$(primary_psql -tA -c "SELECT pg_current_wal_lsn()")
before_sum=$(primary_psql -tA -c "SELECT sum(abalance) FROM pgbench_accounts")
echo "at $before_time (LSN $before_lsn) the primary's sum(abalance) is $before_sum"
sleep 1

log "running pgbench on the primary for ${SECONDS_OF_PGBENCH}s; the page server follows"
as_postgres "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -c 4 -j 2 -T "$SECONDS_OF_PGBENCH" postgres >"$demo/pgbench.out" 2>&1 &
pgbench_pid=$!
lag_sql="SELECT last_record_lsn, disk_consistent_lsn, primary_lsn, lag_bytes FROM pageserver.timelines() WHERE timeline_id = '$timeline'"
while kill -0 "$pgbench_pid" 2>/dev/null; do
  host_psql -tA -F ' ' -c "$lag_sql" | awk '{printf "  ingested %s, durable %s, primary at %s, lag %s bytes\n", $1, $2, $3, $4}'
  sleep 3
done
wait "$pgbench_pid"
grep -E '^(tps|number of transactions actually processed)' "$demo/pgbench.out" || true
target=$(primary_psql -tA -c "SELECT pg_current_wal_lsn()")
wait_ingested "$target" "the page server did not catch up with $target"
host_psql -tA -F ' ' -c "$lag_sql" | awk '{printf "  caught up: ingested %s, primary at %s, lag %s bytes\n", $1, $3, $4}'

log "the layers worker compacts in a process of its own; waiting for its next pass"
passes_sql="SELECT compaction_passes FROM pageserver.timelines() WHERE timeline_id = '$timeline'"
passes_before=$(host_psql -tA -c "$passes_sql")
for _ in $(seq 1200); do
  [ "$(host_psql -tA -c "$passes_sql")" -ge $((passes_before + 2)) ] && break
  sleep 0.1
done
[ "$(host_psql -tA -c "$passes_sql")" -ge $((passes_before + 2)) ] || { echo "the layers worker ran no pass in 120 s" >&2; exit 1; }
host_psql -c "SELECT kind, pid, activity FROM pageserver.status() WHERE kind IN ('main', 'layers')"
host_psql -c "SELECT layer_files, pg_size_pretty(layer_bytes) AS layer_bytes, last_compaction FROM pageserver.timelines() WHERE timeline_id = '$timeline'"

log "the backup worker copies the timeline to ${REMOTE_STORAGE:-file://$demo/bucket}"
remote_sql="SELECT remote_consistent_lsn::pg_lsn >= disk_consistent_lsn::pg_lsn FROM pageserver.timelines() WHERE timeline_id = '$timeline'"
for _ in $(seq 600); do
  [ "$(host_psql -tA -c "$remote_sql")" = t ] && break
  sleep 0.1
done
[ "$(host_psql -tA -c "$remote_sql")" = t ] || { echo "the backup worker did not catch up in 60 s" >&2; exit 1; }
host_psql -c "SELECT remote_consistent_lsn, uploaded_objects, pg_size_pretty(uploaded_bytes) AS uploaded, deleted_objects, last_error FROM pageserver.remote_timelines() WHERE timeline_id = '$timeline'"
primary_psql -c "SELECT slot_name, restart_lsn AS \"restart_lsn (kept until in the bucket)\" FROM pg_replication_slots"
if [ -z "$REMOTE_STORAGE" ]; then
  echo "objects in the bucket: $(find "$demo/bucket" -type f | wc -l) ($(du -sh "$demo/bucket" | cut -f1)), among them $(find "$demo/bucket" -name 'index.json-*' -printf '%P\n')"
fi

log "branching the timeline as of $before_time (before pgbench) and starting a stock PostgreSQL from its fullbackup"
host_psql -c "SELECT * FROM pageserver.lsn_for_time('$tenant', '$timeline', '$before_time')"
branch=$(host_psql -tA -c "SELECT timeline_id FROM pageserver.branch_timeline('$tenant', '$timeline', at_time => '$before_time')")
echo "branch $branch as of $before_time"
mkdir "$demo/branch"
"$PG_BIN/psql" -X -w -d "host=${LISTEN_ADDR%:*} port=${LISTEN_ADDR##*:} user=compute" -c "fullbackup $tenant $branch" \
  | tar -x -C "$demo/branch"
chown -R postgres: "$demo/branch"
chmod 0700 "$demo/branch"
local_conf branch "$BRANCH_PORT"
as_postgres "$PG_BIN/pg_ctl" -D "$demo/branch" -l "$demo/branch.log" -w start >/dev/null
branch_sum=$("$PG_BIN/psql" -X -h 127.0.0.1 -p "$BRANCH_PORT" -U postgres -d postgres -tA -c "SELECT sum(abalance) FROM pgbench_accounts")
now_sum=$(primary_psql -tA -c "SELECT sum(abalance) FROM pgbench_accounts")
echo "SELECT sum(abalance) FROM pgbench_accounts:"
echo "  primary now:                        $now_sum"
echo "  stock PostgreSQL on the branch:     $branch_sum  (the primary had $before_sum at $before_lsn)"
[ "$branch_sum" = "$before_sum" ] || { echo "the branch does not show the data as of $before_lsn" >&2; exit 1; }
[ "$branch_sum" != "$now_sum" ] || { echo "pgbench changed nothing?" >&2; exit 1; }
as_postgres "$PG_BIN/pg_ctl" -D "$demo/branch" stop -m fast -w >/dev/null

log "a live clone at $before_lsn: a stock PostgreSQL on a FUSE view of the timeline, no copy first"
cargo build -q -p pageserver_clone --bin pageserver-clone
clone_tool="${CARGO_TARGET_DIR:-target}/debug/pageserver-clone"
mkdir "$demo/clone"
chown postgres: "$demo/clone"
"$clone_tool" start "$demo/clone" --port "$CLONE_PORT" --tenant "$tenant" --timeline "$timeline" --lsn "$before_lsn" \
  --admin "host=127.0.0.1 port=$HOST_PORT user=postgres dbname=postgres"
clone_sum=$("$PG_BIN/psql" -X -h 127.0.0.1 -p "$CLONE_PORT" -U postgres -d postgres -tA -c "SELECT sum(abalance) FROM pgbench_accounts")
echo "  stock PostgreSQL on the live clone: $clone_sum"
[ "$clone_sum" = "$before_sum" ] || { echo "the clone does not show the data as of $before_lsn" >&2; exit 1; }
"$clone_tool" status "$demo/clone"
as_postgres "$PG_BIN/pg_ctl" -D "$demo/clone/data" stop -m fast -w >/dev/null
"$clone_tool" destroy "$demo/clone"

log "what the page server did: its traffic, the redo behind it, the timelines' sizes"
host_psql -c "SELECT kind, requests, errors, pg_size_pretty(bytes) AS bytes, round(total_ms::numeric, 1) AS total_ms FROM pageserver.stat_page_service() WHERE requests > 0"
host_psql -c "SELECT number, requests, pages, records, failed, round(busy_ms::numeric, 1) AS busy_ms FROM pageserver.stat_redo()"
host_psql -c "SELECT timeline_id, lsn, pg_size_pretty(logical_size) AS logical, pg_size_pretty(physical_size) AS physical FROM pageserver.timeline_sizes() WHERE tenant_id = '$tenant'"

log "dropping the branch: its layer files go, locally and in the bucket"
host_psql -c "SELECT * FROM pageserver.drop_timeline('$tenant', '$branch')"

log "detaching the tenant: everything goes to the bucket, the host keeps nothing of it"
host_psql -c "SELECT * FROM pageserver.detach_tenant('$tenant')"
[ ! -e "$demo/host/pageserver/tenants/$tenant" ] || { echo "the detached tenant is still on disk" >&2; exit 1; }
echo "timelines of the tenant on the host now: $(host_psql -tA -c "SELECT count(*) FROM pageserver.timelines() WHERE tenant_id = '$tenant'")"
primary_psql -q -c "UPDATE pgbench_branches SET bbalance = bbalance + 1"
target=$(primary_psql -tA -c "SELECT pg_current_wal_lsn()")

log "attaching it back from the bucket alone; it streams on through the primary's slot"
host_psql -c "SELECT * FROM pageserver.attach_tenant('$tenant')"
wait_ingested "$target" "the attached timeline did not reach $target"
host_psql -c "SELECT timeline_id, state, last_record_lsn FROM pageserver.timelines() WHERE tenant_id = '$tenant'"

log "stopping everything"
as_postgres "$PG_BIN/pg_ctl" -D "$demo/host" stop -m fast -w >/dev/null
as_postgres "$PG_BIN/pg_ctl" -D "$demo/primary" stop -m fast -w >/dev/null
echo "demo finished; nothing left running"

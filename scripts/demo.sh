#!/usr/bin/env bash
# Sets up this machine (as root, idempotent; skip with --no-setup) and runs
# the demo: installs the extension, starts a host PostgreSQL 15 with
# shared_preload_libraries = 'pageserver_ext' in a temporary directory,
# shows pageserver.status() and a psql session against the page service's
# listener, then stops everything and removes the directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

[ "${1:-}" = "--no-setup" ] || bash scripts/setup.sh
install_extension

HOST_PORT=${DEMO_HOST_PORT:-5499}
LISTEN_ADDR=${DEMO_LISTEN_ADDR:-127.0.0.1:6400}   # the GUC's default
demo=$(mktemp -d /tmp/pageserver-demo.XXXXXX)
chown postgres: "$demo"
chmod 0755 "$demo"

stop_host() {
  if [ -f "$demo/host/postmaster.pid" ]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$demo/host" stop -m fast -w >/dev/null 2>&1 || true
  fi
  rm -rf "$demo"
}
trap stop_host EXIT

log "starting a host PostgreSQL 15 on port $HOST_PORT with pageserver_ext preloaded"
as_postgres "$PG_BIN/initdb" -D "$demo/host" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
cat >>"$demo/host/postgresql.conf" <<CONF
port = $HOST_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$demo'
shared_preload_libraries = 'pageserver_ext'
pageserver.listen_addr = '$LISTEN_ADDR'
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

log "stopping the host"
as_postgres "$PG_BIN/pg_ctl" -D "$demo/host" stop -m fast -w
grep -E 'pageserver (main|layers|backup|redo)' "$demo/host.log" | tail -n 3 || true
echo "demo finished; nothing left running"

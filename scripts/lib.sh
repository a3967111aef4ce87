# Helpers shared by the project's scripts (sourced, not run).

PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BIN/pg_config

# Section headers carry the seconds since the script started.
log() { printf '\n== [%4ds] %s\n' "$SECONDS" "$*"; }

# Warns when the file system holding $1 (or its nearest existing parent) has
# less than $2 GB free: a linker that runs out of disk dies of a Bus error,
# which says nothing about the cause.
warn_if_disk_short() {
  local dir=$1 need_gb=$2 free_kb
  while [ ! -e "$dir" ]; do dir=$(dirname "$dir"); done
  free_kb=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
  if [ "$free_kb" -lt $((need_gb * 1024 * 1024)) ]; then
    echo "warning: $((free_kb / 1024)) MB free under $dir; a test run needs about ${need_gb} GB there" >&2
  else
    echo "disk: $((free_kb / 1024 / 1024)) GB free under $dir (about ${need_gb} GB needed)"
  fi
}

# Runs a command as the postgres OS user (PostgreSQL refuses root).
as_postgres() {
  if [ "$(id -un)" = postgres ]; then
    "$@"
  else
    sudo -u postgres -- "$@"
  fi
}

# Builds the extension and installs it into the host PostgreSQL 15.
install_extension() {
  log "installing pageserver_ext into PostgreSQL 15 ($*)"
  cargo pgrx install -p pageserver_ext -c "$PG_CONFIG" "$@"
}

# Helpers shared by the project's scripts (sourced, not run).

PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BIN/pg_config

# Section headers carry the seconds since the script started.
log() { printf '\n== [%4ds] %s\n' "$SECONDS" "$*"; }

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

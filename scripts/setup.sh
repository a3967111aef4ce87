#!/usr/bin/env bash
# Prepares a bare machine (Debian 12, Rust toolchain present, run as root) to
# build and test pageserver_ext. Idempotent: a second run skips what is there.
set -euo pipefail

PG_MAJOR=15
PGRX_VERSION=0.18.0
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
# The S3-compatible server the tests start on loopback (PyPI moto[server]),
# in a virtualenv of its own; pageserver_harness::s3 looks for it there.
MOTO_VERSION=5.2.1
MOTO_VENV=/opt/pageserver_ext/moto

log() { printf '\n== setup: %s\n' "$*"; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh installs Debian packages: run it as root" >&2
    exit 1
  fi
}

install_debian_packages() {
  local pkgs=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib
              libclang-dev clang pkg-config sudo build-essential libssl-dev
              ca-certificates procps fuse3)
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "Debian packages already installed"
    return
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# The Debian package starts a "main" cluster on port 5432; the project never
# uses it, and leaving it stopped keeps the machine quiet and the port free.
stop_debian_default_cluster() {
  if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
    log "stopping Debian's default PostgreSQL cluster (not used)"
    pg_ctlcluster "$PG_MAJOR" main stop 2>/dev/null || true
  fi
}

python_with_venv() {
  command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null
}

install_moto() {
  if [ -x "$MOTO_VENV/bin/moto_server" ] &&
     "$MOTO_VENV/bin/python" -c "import sys, moto; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    log "moto $MOTO_VERSION (S3 server for tests) already installed"
    return
  fi
  if ! python_with_venv; then
    log "installing Debian's python3 and python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends python3 python3-venv
  fi
  log "installing moto[server] $MOTO_VERSION (S3 server for tests) into $MOTO_VENV"
  rm -rf "$MOTO_VENV"
  mkdir -p "$(dirname "$MOTO_VENV")"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
}

install_cargo_pgrx() {
  if command -v cargo-pgrx >/dev/null && cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION"; then
    log "cargo-pgrx $PGRX_VERSION already installed"
  else
    log "installing cargo-pgrx $PGRX_VERSION (compiles from source, several minutes)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
  fi
}

init_pgrx() {
  local cfg="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
  if [ -f "$cfg" ] && grep -q "pg$PG_MAJOR *= *\"$PG_CONFIG\"" "$cfg"; then
    log "cargo pgrx already initialised for pg$PG_MAJOR"
  else
    log "cargo pgrx init --pg$PG_MAJOR $PG_CONFIG"
    cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG"
  fi
}

# `cargo pgrx install` writes into PostgreSQL's lib and extension directories;
# `cargo pgrx test --runas postgres` needs the postgres user to read the
# checkout and the target directory.
make_postgres_user_able_to_read() {
  local dir=$1
  while [ "$dir" != "/" ]; do
    chmod o+x "$dir" 2>/dev/null || true
    dir=$(dirname "$dir")
  done
}

main() {
  need_root
  install_debian_packages
  stop_debian_default_cluster
  install_moto
  install_cargo_pgrx
  init_pgrx
  make_postgres_user_able_to_read "$(cd "$(dirname "$0")/.." && pwd)"
  log "done"
}

main "$@"

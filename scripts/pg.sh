#!/usr/bin/env bash
# A private PostgreSQL server for tests and local experiments with the
# PostgreSQL store (docs/postgresql.md).
#
#   scripts/pg.sh start   start it (idempotent) and print its URL
#   scripts/pg.sh url     print the URL of the running server
#   scripts/pg.sh stop    stop it and remove its directory (idempotent)
#
# The server is Debian's `postgresql` (installed with apt when no initdb is
# found; the newest /usr/lib/postgresql/<version>/bin wins). It listens on
# 127.0.0.1 at a free port and on a unix socket in its data directory, and
# trusts every local connection without a password: for tests on this machine
# only, never for a store that holds anything. fsync is off for the same
# reason (a crashed test server is thrown away, not recovered).
#
# initdb and postgres refuse to run as root, so as root they run as the
# `postgres` user the package creates, in a directory owned by it.
#
# Environment:
#   MEASURELAB_PG_DIR  the server's directory (default: one per checkout under
#                      $TMPDIR); the Rust test support (measurelab-testbed's
#                      pg module) passes a private temp dir per test process.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "pg: $*" >&2; exit 1; }

checkout_key=$(pwd -P | sha256sum | cut -c1-12)
dir=${MEASURELAB_PG_DIR:-${TMPDIR:-/tmp}/mlab-pg-$checkout_key}
data=$dir/data
start_timeout=60

# Newest installed server's bin directory, or nothing.
pg_bindir() {
    local initdb
    initdb=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null |
        sort -V | tail -n 1)
    [ -n "$initdb" ] && dirname "$initdb"
}

# Run a server tool as the user that owns the data directory.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

url() { echo "postgres://postgres@127.0.0.1:$(cat "$dir/port")/postgres"; }

running() { [ -f "$data/postmaster.pid" ] && as_owner "$bin/pg_ctl" status -D "$data" >/dev/null 2>&1; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    if [ -z "$(pg_bindir)" ]; then
        [ "$(id -u)" -eq 0 ] || die "PostgreSQL is not installed and only root can install it (apt-get install postgresql)"
        # shellcheck source=lib/apt.sh
        . scripts/lib/apt.sh
        apt_install_missing postgresql || die "apt-get could not install postgresql"
        [ -n "$(pg_bindir)" ] || die "postgresql is installed but no /usr/lib/postgresql/*/bin/initdb exists"
    fi
    bin=$(pg_bindir)
    if running; then
        url
        return
    fi
    mkdir -p "$dir"
    # The server user must reach the data directory inside it.
    chmod 0755 "$dir"
    if [ ! -f "$data/PG_VERSION" ]; then
        rm -rf "$data"
        mkdir -m 0700 "$data"
        [ "$(id -u)" -ne 0 ] || chown postgres: "$data"
        as_owner "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 ||
            die "initdb failed: $(tail -n 5 "$dir/initdb.log")"
    fi
    free_port >"$dir/port"
    local port
    port=$(cat "$dir/port")
    as_owner "$bin/pg_ctl" start -D "$data" -w -t "$start_timeout" -l "$data/server.log" \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$data -c fsync=off -c max_connections=200" \
        >/dev/null || die "the server did not start: $(tail -n 5 "$data/server.log" 2>/dev/null)"
    url
}

stop() {
    local bindir
    bindir=$(pg_bindir)
    if [ -n "$bindir" ] && [ -f "$data/postmaster.pid" ]; then
        bin=$bindir
        as_owner "$bin/pg_ctl" stop -D "$data" -m fast -w -t "$start_timeout" >/dev/null ||
            die "the server in $data did not stop"
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    url)
        bin=$(pg_bindir)
        [ -n "$bin" ] && running || die "no server is running in $dir (scripts/pg.sh start)"
        url
        ;;
    stop) stop ;;
    *) die "usage: scripts/pg.sh start|url|stop" ;;
esac

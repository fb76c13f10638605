#!/usr/bin/env bash
# A private PostgreSQL server for tests and local experiments with the
# PostgreSQL store (docs/postgresql.md).
#
#   scripts/pg.sh start [--tls]  start it (idempotent) and print its URL
#   scripts/pg.sh url            print the URL of the running server
#   scripts/pg.sh stop           stop it and remove its directory (idempotent)
#
# The server is Debian's `postgresql` (installed with apt when no initdb is
# found; the newest /usr/lib/postgresql/<version>/bin wins). It listens on
# 127.0.0.1 at a free port and on a unix socket in its data directory, and
# trusts every local connection without a password: for tests on this machine
# only, never for a store that holds anything. fsync is off for the same
# reason (a crashed test server is thrown away, not recovered).
#
# --tls: the server also speaks TLS (ssl=on), with a certificate for
# localhost and 127.0.0.1 signed by a test CA made for it (openssl, in
# <dir>/tls: ca.pem, server.pem/.key, and client.pem/.key for the role
# measurelab_cert, which may log in over TCP only with that certificate).
# The URL printed asks for verify-full against ca.pem. Plaintext sessions are
# still accepted (trust), so tests can show what each sslmode gives. A running
# server keeps the mode it was started with; stop it to change.
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

tls=$dir/tls
# The role a client certificate logs in as (its CN), --tls only.
cert_user=measurelab_cert

url() {
    local url="postgres://postgres@127.0.0.1:$(cat "$dir/port")/postgres"
    if [ -f "$tls/ca.pem" ]; then
        url="$url?sslmode=verify-full&sslrootcert=$tls/ca.pem"
    fi
    echo "$url"
}

running() { [ -f "$data/postmaster.pid" ] && as_owner "$bin/pg_ctl" status -D "$data" >/dev/null 2>&1; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A test CA, the server's certificate (SANs localhost and 127.0.0.1) and a
# client certificate for $cert_user, made once per server directory.
make_tls_files() {
    [ -f "$tls/client.pem" ] && return
    if ! command -v openssl >/dev/null; then
        [ "$(id -u)" -eq 0 ] || die "openssl is not installed and only root can install it (apt-get install openssl)"
        # shellcheck source=lib/apt.sh
        . scripts/lib/apt.sh
        apt_install_missing openssl || die "apt-get could not install openssl"
    fi
    rm -rf "$tls"
    mkdir -m 0755 "$tls"
    cat >"$tls/openssl.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = measurelab test CA
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
CNF
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes) log=$dir/openssl.log
    (
        set -e
        umask 077
        openssl req -x509 -config "$tls/openssl.cnf" -extensions ca "${ec[@]}" -days 365 \
            -keyout "$tls/ca.key" -out "$tls/ca.pem"
        for leaf in server:localhost client:$cert_user; do
            openssl req -new -config "$tls/openssl.cnf" "${ec[@]}" -subj "/CN=${leaf#*:}" \
                -keyout "$tls/${leaf%%:*}.key" -out "$tls/${leaf%%:*}.csr"
            openssl x509 -req -in "$tls/${leaf%%:*}.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
                -set_serial "0x$(openssl rand -hex 8)" -days 365 \
                -extfile "$tls/openssl.cnf" -extensions "${leaf%%:*}" -out "$tls/${leaf%%:*}.pem"
        done
    ) >"$log" 2>&1 || die "openssl could not make the test certificates: $(tail -n 5 "$log")"
    chmod 0644 "$tls/ca.pem" "$tls/server.pem" "$tls/client.pem"
    # The server refuses a key others can read; as root it runs as postgres.
    [ "$(id -u)" -ne 0 ] || chown postgres: "$tls/server.key"
}

# pg_hba.conf lines for --tls, ahead of initdb's trust lines: $cert_user
# logs in over TCP with its certificate only.
hba_cert_lines() {
    local hba=$data/pg_hba.conf
    grep -q "$cert_user" "$hba" && return
    {
        echo "hostssl all $cert_user 127.0.0.1/32 cert"
        echo "host all $cert_user 127.0.0.1/32 reject"
        cat "$hba"
    } >"$hba.new"
    [ "$(id -u)" -ne 0 ] || chown postgres: "$hba.new"
    mv "$hba.new" "$hba"
}

start() {
    local want_tls=0
    case "${1:-}" in
        --tls) want_tls=1 ;;
        "") ;;
        *) die "start: unknown option $1 (expected --tls)" ;;
    esac
    if [ -z "$(pg_bindir)" ]; then
        [ "$(id -u)" -eq 0 ] || die "PostgreSQL is not installed and only root can install it (apt-get install postgresql)"
        # shellcheck source=lib/apt.sh
        . scripts/lib/apt.sh
        apt_install_missing postgresql || die "apt-get could not install postgresql"
        [ -n "$(pg_bindir)" ] || die "postgresql is installed but no /usr/lib/postgresql/*/bin/initdb exists"
    fi
    bin=$(pg_bindir)
    if running; then
        local has_tls=0
        [ -f "$tls/ca.pem" ] && has_tls=1
        [ "$has_tls" = "$want_tls" ] ||
            die "the server in $dir was started $([ "$has_tls" = 1 ] && echo with || echo without) --tls; scripts/pg.sh stop first"
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
    local options="-c fsync=off -c max_connections=200"
    if [ "$want_tls" = 1 ]; then
        make_tls_files
        hba_cert_lines
        options="$options -c ssl=on -c ssl_cert_file=$tls/server.pem -c ssl_key_file=$tls/server.key -c ssl_ca_file=$tls/ca.pem"
    else
        rm -rf "$tls"
    fi
    free_port >"$dir/port"
    local port
    port=$(cat "$dir/port")
    as_owner "$bin/pg_ctl" start -D "$data" -w -t "$start_timeout" -l "$data/server.log" \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$data $options" \
        >/dev/null || die "the server did not start: $(tail -n 5 "$data/server.log" 2>/dev/null)"
    if [ "$want_tls" = 1 ]; then
        # Over the unix socket: trust, no certificate needed.
        as_owner "$bin/psql" -X -q -h "$data" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
            -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$cert_user') THEN CREATE ROLE $cert_user LOGIN; END IF; END \$\$" \
            >/dev/null || die "cannot create the role $cert_user"
    fi
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
    start) start "${2:-}" ;;
    url)
        bin=$(pg_bindir)
        [ -n "$bin" ] && running || die "no server is running in $dir (scripts/pg.sh start)"
        url
        ;;
    stop) stop ;;
    *) die "usage: scripts/pg.sh start|url|stop" ;;
esac

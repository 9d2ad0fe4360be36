#!/usr/bin/env bash
# Starts a throwaway PostgreSQL on loopback for outpost-server's PostgreSQL tests and
# prints its URL (the only line on stdout), for OUTPOST_TEST_POSTGRES_URL:
#
#   export OUTPOST_TEST_POSTGRES_URL="$(bash scripts/postgres.sh)"
#   export OUTPOST_TEST_POSTGRES_TLS_URL="$(bash scripts/postgres.sh --tls-url)"
#
# Why a cluster of its own rather than the distribution's `main` cluster: a fresh
# machine may have none (containers often skip creating it), its port and auth rules
# belong to whoever set it up, and a test cluster wants `fsync=off` for speed. This one
# lives in $OUTPOST_PG_DIR (default /var/tmp/outpost-pg), listens on 127.0.0.1 only,
# on $OUTPOST_PG_PORT (default 54329), and trusts loopback connections of the role
# `outpost`: it holds nothing but test databases. That role may create databases,
# because every PostgreSQL test creates (and drops) a database of its own, and roles,
# because a test runs the server as a role that may not change the audit trail.
#
# TLS is on, with a throwaway CA and server certificate (made with openssl, kept in
# $DIR/tls), so the server's TLS link is tested as production runs it: the role
# `outpost_tls` signs in with a password, by SCRAM-SHA-256, over TLS only (pg_hba:
# hostssl scram-sha-256, hostnossl reject). `--tls-url` prints its URL, with
# `sslmode=verify-full&sslrootcert=<the CA>`; `outpost` may create databases owned by it.
#
# Idempotent: a second run finds the server up and only prints the URL; on a cluster
# of an older version of this script (without TLS) it turns TLS on with a reload, no
# restart. Installs the Debian packages when PostgreSQL is missing (needs root, as on
# CI). Stop it with
#   su postgres -c "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/pg_ctl -D /var/tmp/outpost-pg stop"
set -euo pipefail

PRINT=plain
case "${1:-}" in
    "") ;;
    --tls-url) PRINT=tls ;;
    *)
        echo "usage: postgres.sh [--tls-url]" >&2
        exit 2
        ;;
esac

DIR="${OUTPOST_PG_DIR:-/var/tmp/outpost-pg}"
PORT="${OUTPOST_PG_PORT:-54329}"
URL="postgres://outpost@127.0.0.1:${PORT}/outpost"

log() { echo "postgres.sh: $*" >&2; }

pg_bin() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ] || ! command -v openssl >/dev/null; then
    log "installing PostgreSQL and openssl from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql openssl >&2
fi
BIN="$(pg_bin)"
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
    log "no initdb under /usr/lib/postgresql/*/bin after installing"
    exit 1
fi

# PostgreSQL refuses to run as root; the Debian package creates this user.
if ! id postgres >/dev/null 2>&1; then
    log "no 'postgres' system user"
    exit 1
fi
as_pg() {
    if [ "$(id -un)" = postgres ]; then "$@"; else su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; fi
}

if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    log "already running on 127.0.0.1:$PORT"
else
    if [ ! -f "$DIR/PG_VERSION" ]; then
        log "initdb into $DIR"
        rm -rf "$DIR"
        mkdir -p "$DIR"
        chown postgres:postgres "$DIR"
        chmod 700 "$DIR"
        as_pg "$BIN/initdb" -D "$DIR" -U postgres --auth=trust --encoding=UTF8 \
            --locale=C.UTF-8 >/dev/null 2>&1 ||
            as_pg "$BIN/initdb" -D "$DIR" -U postgres --auth=trust --encoding=UTF8 --locale=C >&2
    fi
    # Stale pid file from a machine restart: pg_ctl handles it, but a server that
    # still runs on another port from this directory must not be started twice.
    log "starting on 127.0.0.1:$PORT"
    as_pg "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k /tmp -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
        start >&2 || {
        log "start failed; its log:"
        tail -n 30 "$DIR/server.log" >&2 || true
        exit 1
    }
fi

psql_pg() { as_pg "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(psql_pg -c "SELECT 1 FROM pg_roles WHERE rolname = 'outpost'")" != 1 ]; then
    psql_pg -c "CREATE ROLE outpost LOGIN CREATEDB CREATEROLE" >&2
elif [ "$(psql_pg -c "SELECT rolcreaterole FROM pg_roles WHERE rolname = 'outpost'")" != t ]; then
    psql_pg -c "ALTER ROLE outpost CREATEROLE" >&2
fi
if [ "$(psql_pg -c "SELECT 1 FROM pg_database WHERE datname = 'outpost'")" != 1 ]; then
    psql_pg -c "CREATE DATABASE outpost OWNER outpost" >&2
fi

# TLS: a CA and a server certificate for 127.0.0.1 and localhost, made once.
TLS="$DIR/tls"
if [ ! -f "$TLS/server.key" ] || [ ! -f "$TLS/ca.crt" ] || [ ! -f "$TLS/password" ]; then
    log "making a throwaway CA and server certificate in $TLS"
    rm -rf "$TLS"
    mkdir -p "$TLS"
    (
        cd "$TLS"
        openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
            -keyout ca.key -out ca.crt -days 3650 -subj "/CN=outpost test CA" >/dev/null 2>&1
        openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
            -keyout server.key -out server.csr -subj "/CN=localhost" >/dev/null 2>&1
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out server.crt -days 3650 -sha256 -extfile server.ext >/dev/null 2>&1
        openssl rand -hex 24 >password
        rm -f server.csr server.ext ca.srl
    )
    chown -R postgres:postgres "$TLS"
    chmod 700 "$TLS"
    chmod 600 "$TLS/server.key" "$TLS/ca.key" "$TLS/password"
    chmod 644 "$TLS/ca.crt" "$TLS/server.crt"
fi
PASSWORD="$(cat "$TLS/password")"

# The password role, TLS only; its rules go before initdb's trust lines (first match
# wins). Reloaded, not restarted, so a running cluster keeps its connections.
HBA="$DIR/pg_hba.conf"
if ! grep -q '^# outpost-tls' "$HBA"; then
    log "TLS-only password rules for outpost_tls in $HBA"
    as_pg sh -c "{ printf '%s\n' '# outpost-tls: the password role signs in by SCRAM over TLS only' \
        'hostssl all outpost_tls 127.0.0.1/32 scram-sha-256' \
        'hostnossl all outpost_tls 127.0.0.1/32 reject'; cat '$HBA'; } > '$HBA.new' && mv '$HBA.new' '$HBA'"
fi
if [ "$(psql_pg -c "SHOW ssl")" != on ] || [ "$(psql_pg -c "SHOW ssl_cert_file")" != "$TLS/server.crt" ]; then
    log "turning TLS on"
fi
psql_pg -c "ALTER SYSTEM SET ssl = on" \
    -c "ALTER SYSTEM SET ssl_cert_file = '$TLS/server.crt'" \
    -c "ALTER SYSTEM SET ssl_key_file = '$TLS/server.key'" \
    -c "ALTER SYSTEM SET password_encryption = 'scram-sha-256'" \
    -c "SELECT pg_reload_conf()" >/dev/null
# The reload is asynchronous: wait until it took effect.
for _ in $(seq 1 50); do
    [ "$(psql_pg -c "SHOW ssl")" = on ] && break
    sleep 0.1
done
if [ "$(psql_pg -c "SHOW ssl")" != on ]; then
    log "TLS did not come on; the server log says:"
    tail -n 20 "$DIR/server.log" >&2 || true
    exit 1
fi
if [ "$(psql_pg -c "SELECT 1 FROM pg_roles WHERE rolname = 'outpost_tls'")" != 1 ]; then
    psql_pg -c "CREATE ROLE outpost_tls LOGIN CREATEDB" >&2
fi
psql_pg -c "SET password_encryption = 'scram-sha-256'" \
    -c "ALTER ROLE outpost_tls PASSWORD '$PASSWORD'" \
    -c "GRANT outpost_tls TO outpost" >/dev/null 2>&1

if [ "$PRINT" = tls ]; then
    echo "postgres://outpost_tls:${PASSWORD}@127.0.0.1:${PORT}/outpost?sslmode=verify-full&sslrootcert=${TLS}/ca.crt"
else
    echo "$URL"
fi

#!/usr/bin/env bash
# Starts a throwaway PostgreSQL on loopback for outpost-server's PostgreSQL tests and
# prints its URL (the only line on stdout), for OUTPOST_TEST_POSTGRES_URL:
#
#   export OUTPOST_TEST_POSTGRES_URL="$(bash scripts/postgres.sh)"
#
# Why a cluster of its own rather than the distribution's `main` cluster: a fresh
# machine may have none (containers often skip creating it), its port and auth rules
# belong to whoever set it up, and a test cluster wants `fsync=off` for speed. This one
# lives in $OUTPOST_PG_DIR (default /var/tmp/outpost-pg), listens on 127.0.0.1 only,
# on $OUTPOST_PG_PORT (default 54329), and trusts loopback connections: it holds
# nothing but test databases. The role `outpost` may create databases, because every
# PostgreSQL test creates (and drops) a database of its own, and roles, because a test
# runs the server as a role that may not change the audit trail.
#
# Idempotent: a second run finds the server up and only prints the URL. Installs the
# Debian packages when PostgreSQL is missing (needs root, as on CI). Stop it with
#   su postgres -c "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/pg_ctl -D /var/tmp/outpost-pg stop"
set -euo pipefail

DIR="${OUTPOST_PG_DIR:-/var/tmp/outpost-pg}"
PORT="${OUTPOST_PG_PORT:-54329}"
URL="postgres://outpost@127.0.0.1:${PORT}/outpost"

log() { echo "postgres.sh: $*" >&2; }

pg_bin() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ]; then
    log "installing PostgreSQL from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
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

echo "$URL"

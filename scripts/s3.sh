#!/usr/bin/env bash
# Starts a throwaway S3-compatible server on loopback for outpost-server's object-store
# tests and prints its URL (the only line on stdout), for OUTPOST_TEST_S3_URL:
#
#   export OUTPOST_TEST_S3_URL="$(bash scripts/s3.sh)"
#
# The server is moto's (PyPI `moto[server]`), installed into a virtualenv in
# $OUTPOST_S3_DIR (default /var/tmp/outpost-s3) on the first run, listening on
# 127.0.0.1:$OUTPOST_S3_PORT (default 54330). It keeps buckets in memory, accepts any
# credentials and does not check request signatures (the signing is checked against
# the documented examples in the server's unit tests). Idempotent: a second run finds
# it up and only prints the URL.
set -euo pipefail

DIR="${OUTPOST_S3_DIR:-/var/tmp/outpost-s3}"
PORT="${OUTPOST_S3_PORT:-54330}"
URL="http://127.0.0.1:${PORT}"

log() { echo "s3.sh: $*" >&2; }

# Bash's own TCP connect: a fresh machine may have no curl.
up() { (exec 3<>"/dev/tcp/127.0.0.1/${PORT}") 2>/dev/null; }

if ! up; then
    if [ ! -x "$DIR/venv/bin/moto_server" ]; then
        log "installing moto[server] into $DIR/venv"
        mkdir -p "$DIR"
        if ! command -v python3 >/dev/null || ! python3 -m venv --clear "$DIR/venv" >&2 2>/dev/null; then
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq >&2
            apt-get install -y -qq python3 python3-venv >&2
            python3 -m venv --clear "$DIR/venv" >&2
        fi
        "$DIR/venv/bin/pip" install -q 'moto[server]' >&2
    fi
    nohup "$DIR/venv/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$DIR/moto.log" 2>&1 &
    for _ in $(seq 1 100); do
        up && break
        sleep 0.1
    done
    if ! up; then
        log "moto_server did not come up; see $DIR/moto.log"
        exit 1
    fi
fi
echo "$URL"

#!/usr/bin/env bash
# Runs every test of the project: the Rust workspace (encryption enabled, the end-to-end
# suite against the real server binary, the fault simulation), then the Kotlin/JVM and
# Python suites over the real native library, and the Swift package's where Swift is.
#
# PostgreSQL tests run when OUTPOST_TEST_POSTGRES_URL is set (.ci/run starts a server);
# without it each one prints that it was skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-features --locked
# The protocol suite again against two server processes on one PostgreSQL, behind a
# proxy that alternates requests between them (testkit's pair): a deployment scaled out.
if [ -n "${OUTPOST_TEST_POSTGRES_URL:-}" ]; then
  echo "== protocol suite against two server processes (OUTPOST_TEST_PAIR=1)"
  OUTPOST_TEST_PAIR=1 cargo test --workspace --all-features --locked -p outpost-server --test protocol
fi
./scripts/bindings-test.sh
# The Swift package needs a Swift toolchain, which not every machine has.
if command -v swift >/dev/null 2>&1; then
  echo "== Swift tests"
  # The library, generator and server bindings-test.sh has just built.
  OUTPOST_FFI_LIB_DIR="$PWD/target/debug" OUTPOST_SERVER_BIN="$PWD/target/debug/outpost-server" \
    ./scripts/swift-test.sh
else
  echo "== Swift tests: skipped, no Swift toolchain on this machine (scripts/swift-test.sh runs them)"
fi
# Benchmarks are not tests: at tiny size this only keeps the command working (no
# thresholds). The documented full run is in the README's performance section.
echo "== benchmark (tiny)"
cargo run -q --locked -p outpost-bench -- --size tiny --no-kotlin

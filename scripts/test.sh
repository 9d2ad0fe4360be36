#!/usr/bin/env bash
# Runs every test of the project: the Rust workspace (encryption enabled, the end-to-end
# suite against the real server binary, the fault simulation), then the Kotlin/JVM and
# Python suites over the real native library.
#
# PostgreSQL tests run when OUTPOST_TEST_POSTGRES_URL is set (.ci/run starts a server);
# without it each one prints that it was skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-features --locked
./scripts/bindings-test.sh
# Benchmarks are not tests: at tiny size this only keeps the command working (no
# thresholds). The documented full run is in the README's performance section.
echo "== benchmark (tiny)"
cargo run -q --locked -p outpost-bench -- --size tiny --no-kotlin

#!/usr/bin/env bash
# Runs every test of the project: the Rust workspace (with encryption enabled).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-features --locked

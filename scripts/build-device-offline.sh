#!/usr/bin/env bash
# Builds the device library (outpost-ffi) and uniffi-bindgen from a vendor set that
# scripts/vendor-device-crates.sh wrote, with no network and no cargo cache: proof that
# the set is complete. Then generates the Swift bindings from the built library.
#
# Usage: scripts/build-device-offline.sh VENDOR_OUT [TARGET_DIR]
#   TARGET_DIR defaults to VENDOR_OUT/target. Prints where the library, the generator
#   and the bindings are.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(cd "${1:?usage: build-device-offline.sh VENDOR_OUT [TARGET_DIR]}" && pwd)"
target_dir=${2:-$out/target}
mkdir -p "$target_dir"
target_dir="$(cd "$target_dir" && pwd)"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
"$root/scripts/device-workspace.sh" "$stage/ws"
cp "$out/Cargo.lock" "$stage/ws/Cargo.lock"
mkdir -p "$stage/ws/.cargo" "$stage/cargo-home"
# The set may have moved since it was written: point at where it is now.
sed "s|^directory = .*|directory = \"$out/vendor\"|" "$out/config.toml" >"$stage/ws/.cargo/config.toml"

# An empty CARGO_HOME: nothing can come from the registry cache of this machine.
# OUTPOST_OFFLINE_CARGO_FLAGS: extra flags for cargo (CI builds without optimisation).
# shellcheck disable=SC2086
(cd "$stage/ws" && CARGO_HOME="$stage/cargo-home" cargo build --offline --locked \
  --target-dir "$target_dir" -p outpost-ffi --features cli --lib --bin uniffi-bindgen \
  ${OUTPOST_OFFLINE_CARGO_FLAGS:-})

case "$(uname -s)" in
  Darwin) lib="$target_dir/debug/liboutpost_ffi.dylib" ;;
  *) lib="$target_dir/debug/liboutpost_ffi.so" ;;
esac
# In the staged workspace, which holds the crate's uniffi.toml; `--metadata-no-deps`
# keeps the generator's `cargo metadata` from resolving anything.
rm -rf "$target_dir/swift"
(cd "$stage/ws" && CARGO_HOME="$stage/cargo-home" CARGO_NET_OFFLINE=true \
  "$target_dir/debug/uniffi-bindgen" generate "$lib" --language swift --no-format \
  --metadata-no-deps --out-dir "$target_dir/swift" >/dev/null)
test -s "$target_dir/swift/OutpostFFI.swift"
echo "built offline: $lib"
echo "generator: $target_dir/debug/uniffi-bindgen"
echo "swift bindings: $target_dir/swift"

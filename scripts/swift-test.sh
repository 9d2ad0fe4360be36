#!/usr/bin/env bash
# Runs the Swift package's tests (ios/, `swift test`) against the real liboutpost_ffi and
# a real outpost-server on loopback, on Linux or macOS.
#
# It builds the library, its uniffi-bindgen and the server with cargo (or takes them from
# OUTPOST_FFI_LIB_DIR, the folder holding liboutpost_ffi and uniffi-bindgen, for example
# the one scripts/build-device-offline.sh prints, and OUTPOST_SERVER_BIN), generates the
# Swift bindings into the package (or takes them from OUTPOST_SWIFT_BINDINGS), writes
# the C module that links the library, and runs `swift test`. Needs a Swift 6 toolchain
# with XCTest.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if ! command -v swift >/dev/null 2>&1; then
  echo "swift-test: no Swift toolchain (swift) on this machine" >&2
  exit 1
fi

if [ -z "${OUTPOST_FFI_LIB_DIR:-}" ]; then
  cargo build --locked -p outpost-ffi --features cli --lib --bin uniffi-bindgen
  OUTPOST_FFI_LIB_DIR="$root/target/debug"
fi
if [ -z "${OUTPOST_SERVER_BIN:-}" ]; then
  cargo build --locked -p outpost-server
  OUTPOST_SERVER_BIN="$root/target/debug/outpost-server"
fi
export OUTPOST_SERVER_BIN
case "$(uname -s)" in
  Darwin) lib="$OUTPOST_FFI_LIB_DIR/liboutpost_ffi.dylib" ;;
  *) lib="$OUTPOST_FFI_LIB_DIR/liboutpost_ffi.so" ;;
esac

# Generated code is never committed or hand-edited: regenerate from the library each run.
gen=ios/build/linux/gen
module=ios/build/linux/OutpostFFIFFI
rm -rf "$gen" "$module"
if [ -n "${OUTPOST_SWIFT_BINDINGS:-}" ]; then
  # Generated elsewhere from this library (build-device-offline.sh prints where).
  mkdir -p "$(dirname "$gen")"
  cp -R "$OUTPOST_SWIFT_BINDINGS" "$gen"
else
  "$OUTPOST_FFI_LIB_DIR/uniffi-bindgen" generate "$lib" --language swift --no-format \
    --metadata-no-deps --out-dir "$gen" >/dev/null
fi
cp "$gen/OutpostFFI.swift" ios/Sources/OutpostFFI/OutpostFFI.swift
mkdir -p "$module"
cp "$gen/OutpostFFIFFI.h" "$module/"
# The generated module map names Darwin; this one names the library to link instead.
cat >"$module/module.modulemap" <<'MAP'
module OutpostFFIFFI {
    header "OutpostFFIFFI.h"
    link "outpost_ffi"
    export *
}
MAP

cd ios
LD_LIBRARY_PATH="$OUTPOST_FFI_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
DYLD_LIBRARY_PATH="$OUTPOST_FFI_LIB_DIR" \
  swift test -Xlinker -L"$OUTPOST_FFI_LIB_DIR" -Xlinker -rpath -Xlinker "$OUTPOST_FFI_LIB_DIR"

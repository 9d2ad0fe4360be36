#!/usr/bin/env bash
# Builds OutpostFFIFFI.xcframework (device, simulator, macOS) and generates the Swift
# bindings into the package. Run on a Mac with Xcode and rustup; not run in CI here.
set -euo pipefail
cd "$(dirname "$0")/.."
out=ios/build
targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin)

rustup target add "${targets[@]}"
for t in "${targets[@]}"; do
  cargo build --release --locked -p outpost-ffi --features encryption --target "$t"
done

# Bindings from the built library, with the workspace's own uniffi-bindgen.
cargo build --locked -p outpost-ffi --features cli --bin uniffi-bindgen
rm -rf "$out/gen" "$out/headers" "$out/OutpostFFIFFI.xcframework"
target/debug/uniffi-bindgen generate target/aarch64-apple-darwin/release/liboutpost_ffi.dylib \
  --language swift --out-dir "$out/gen"
cp "$out/gen/OutpostFFI.swift" ios/Sources/OutpostFFI/
mkdir -p "$out/headers" "$out/ios-sim"
cp "$out/gen/OutpostFFIFFI.h" "$out/headers/"
cp "$out/gen/OutpostFFIFFI.modulemap" "$out/headers/module.modulemap"

lipo -create target/aarch64-apple-ios-sim/release/liboutpost_ffi.a \
  target/x86_64-apple-ios/release/liboutpost_ffi.a -output "$out/ios-sim/liboutpost_ffi.a"
xcodebuild -create-xcframework \
  -library target/aarch64-apple-ios/release/liboutpost_ffi.a -headers "$out/headers" \
  -library "$out/ios-sim/liboutpost_ffi.a" -headers "$out/headers" \
  -library target/aarch64-apple-darwin/release/liboutpost_ffi.a -headers "$out/headers" \
  -output "$out/OutpostFFIFFI.xcframework"
echo "built $out/OutpostFFIFFI.xcframework; open ios/Package.swift in Xcode"

#!/usr/bin/env bash
# Builds the workspace (the FFI library, uniffi-bindgen and outpost-server), generates
# the Kotlin, Python and Swift bindings from the built library, then runs the Kotlin suites
# (Maven) and the Python suite against the real server on loopback.
#
# Needs: Rust, JDK 17, Maven, Python 3 with pytest. Fetches only from crates.io, Maven
# Central and PyPI (through cargo, mvn and pip).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

cargo build --workspace --all-features --locked

case "$(uname -s)" in
  Darwin) lib="$root/target/debug/liboutpost_ffi.dylib" ;;
  *) lib="$root/target/debug/liboutpost_ffi.so" ;;
esac
bindgen="$root/target/debug/uniffi-bindgen"

# Generated code is never committed or hand-edited: regenerate from the library each run.
generate() {
  local language=$1 out=$2
  rm -rf "$out"
  "$bindgen" generate "$lib" --language "$language" --no-format --out-dir "$out" >/dev/null
}
generate kotlin android/generated/uniffi
generate python python/generated
generate swift ios/generated
ln -sf "$lib" "python/generated/$(basename "$lib")"

echo "== Kotlin tests (Maven: JVM suite, then the Android module under Robolectric)"
status=0
rm -rf android/*/target/surefire-reports
(cd android && mvn -q -B -Dstyle.color=never test) || status=$?
# -q hides Surefire's own summary; print one line per test class and the total.
python3 - android <<'PY' || true
import glob, sys, xml.etree.ElementTree as ET
totals = [0, 0, 0, 0]
for path in sorted(glob.glob(sys.argv[1] + "/*/target/surefire-reports/**/TEST-*.xml", recursive=True)):
    s = ET.parse(path).getroot()
    n = [int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")]
    totals = [a + b for a, b in zip(totals, n)]
    print("Tests run: %d, Failures: %d, Errors: %d, Skipped: %d -- in %s" % (*n, s.get("name")))
print("[INFO] Tests run: %d, Failures: %d, Errors: %d, Skipped: %d" % tuple(totals))
PY
[ "$status" -eq 0 ] || exit "$status"

echo "== Python tests (pytest)"
python3 -m pytest -q python/tests

#!/usr/bin/env bash
# Writes OUT: the crates that building outpost-ffi (the device library) and its
# uniffi-bindgen needs on Linux (x86_64 and aarch64), for a machine with no crates.io.
#
#   OUT/vendor/      the crates (cargo vendor), trimmed; crates only other platforms use
#                    (Windows, wasm, Apple) are empty stubs that keep their manifests,
#                    because cargo still resolves them
#   OUT/Cargo.lock   the device workspace's lock file (the same versions as this repo's)
#   OUT/config.toml  the snippet that points cargo at OUT/vendor
#
# What it covers: the default features plus `cli` (the bindings generator). Encryption
# (`--features encryption`, SQLCipher over a vendored OpenSSL) is left out: its C
# sources alone are 48 MB, over the set's budget; its crates are stubs here.
#
# Fails when the set is over its budget (80 MB, 20,000 files), so CI keeps it small.
# Build from it with scripts/build-device-offline.sh OUT.
#
# Usage: scripts/vendor-device-crates.sh OUT
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out=${1:?usage: vendor-device-crates.sh OUT}
mkdir -p "$out"
out="$(cd "$out" && pwd)"
max_bytes=$((80 * 1000 * 1000))
max_files=20000

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
"$root/scripts/device-workspace.sh" "$stage/ws"

rm -rf "$out/vendor"
# Versions come from the repository's lock file; cargo only drops what the device
# workspace does not use.
(cd "$stage/ws" && cargo vendor -q "$out/vendor" >/dev/null)
cp "$stage/ws/Cargo.lock" "$out/Cargo.lock"

# The packages a Linux build of the library and the generator compiles.
for target in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu; do
  (cd "$stage/ws" && cargo metadata -q --offline --format-version 1 \
    --features outpost-ffi/cli --filter-platform "$target") >"$stage/metadata-$target.json"
done

python3 - "$root/Cargo.lock" "$out" "$stage"/metadata-*.json <<'PY'
import json, os, re, shutil, sys, tomllib

repo_lock, out, *metadata = sys.argv[1:]
vendor = os.path.join(out, "vendor")

def locked(path):
    with open(path, "rb") as f:
        return {(p["name"], p["version"]) for p in tomllib.load(f)["package"]}

# The device set must not pick a version the repository does not test.
extra = locked(os.path.join(out, "Cargo.lock")) - locked(repo_lock)
if extra:
    sys.exit(f"vendor: versions not in Cargo.lock: {sorted(extra)}")

needed = set()
for path in metadata:
    m = json.load(open(path))
    ids = {n["id"] for n in m["resolve"]["nodes"]}
    needed |= {(p["name"], p["version"]) for p in m["packages"] if p["id"] in ids and p["source"]}

# Never read by a build of a dependency's library: other targets, tests, history.
TOP_LEVEL_TRIM = {"tests", "benches", "examples", "fuzz", "test-data", "test-macros"}
# Inside crates that are needed: parts only other platforms, or unused features, read.
# Each is behind a cfg or a build-script branch that a Linux build does not take.
KEEP_ARCH = {"x86_64", "aarch64"}
LIBC_OTHER_OS = [
    "src/fuchsia", "src/vxworks", "src/wasi", "src/windows", "src/solid", "src/teeos",
    "src/qurt", "src/unix/aix", "src/unix/bsd", "src/unix/cygwin", "src/unix/haiku",
    "src/unix/hurd", "src/unix/nto", "src/unix/nuttx", "src/unix/newlib", "src/unix/redox",
    "src/unix/solarish", "src/unix/linux_like/android", "src/unix/linux_like/emscripten",
    "src/unix/linux_like/l4re",
]
LIBC_NEW_KEEP = {"mod.rs", "common", "glibc", "musl", "linux_uapi"}

def crate_trims(name, crate_dir):
    for item in os.listdir(crate_dir):
        path = os.path.join(crate_dir, item)
        if item in TOP_LEVEL_TRIM and os.path.isdir(path):
            yield item
        elif item in ("Cargo.lock", "Cargo.toml.orig") or (
            item.startswith(".") and item != ".cargo-checksum.json"
        ) or (item.endswith(".md") and not item.startswith("README")):
            yield item
    for dirpath, dirnames, filenames in os.walk(os.path.join(crate_dir, "src")):
        rel = os.path.relpath(dirpath, crate_dir)
        # `#[cfg(test)] mod tests;`: never loaded outside the crate's own tests.
        if "tests" in dirnames:
            dirnames.remove("tests")
            yield os.path.join(rel, "tests")
        if "tests.rs" in filenames:
            yield os.path.join(rel, "tests.rs")
    if name == "linux-raw-sys":
        src = os.path.join(crate_dir, "src")
        for d in os.listdir(src):
            if os.path.isdir(os.path.join(src, d)) and d not in KEEP_ARCH:
                yield os.path.join("src", d)
    elif name == "libc":
        yield from LIBC_OTHER_OS
        new = os.path.join(crate_dir, "src", "new")
        yield from (os.path.join("src", "new", d) for d in os.listdir(new) if d not in LIBC_NEW_KEEP)
    elif name == "ring":
        # Pregenerated assembly is built; the perlasm it came from is not.
        pre = os.path.join(crate_dir, "pregenerated")
        for f in os.listdir(pre):
            if not re.search(r"-(elf|linux64)\.S$|^ring_core_generated$", f):
                yield os.path.join("pregenerated", f)
        for dirpath, _, filenames in os.walk(os.path.join(crate_dir, "crypto")):
            for f in filenames:
                if f.endswith(".pl"):
                    yield os.path.relpath(os.path.join(dirpath, f), crate_dir)
    elif name == "unicode-width":
        # Its `#[cfg(test)] mod test` and the 1.4 MB of tables only that reads.
        yield os.path.join("src", "test.rs")
        yield os.path.join("src", "gen", "tables_test.rs")
    elif name == "libsqlite3-sys":
        # The system-library bindings and SQLCipher's: the bundled SQLite is built.
        yield "bindgen-bindings"
        yield "sqlcipher"
        yield os.path.join("sqlite3", "wasm32-wasi-vfs.c")
        # For the `loadable_extension` feature.
        yield os.path.join("sqlite3", "bindgen_bundled_version_ext.rs")

INCLUDE = re.compile(r'include(?:_str|_bytes)?!\s*\(\s*"([^"]+)"')

def included_paths(crate_dir, doomed):
    # Files that the crate's code, outside `doomed`, names (`include_str!("../examples/x.rs")`
    # in docs, say), relative to the crate.
    found = set()
    for dirpath, _, filenames in os.walk(crate_dir):
        for f in filenames:
            rel = os.path.relpath(os.path.join(dirpath, f), crate_dir)
            if not f.endswith(".rs") or rel in doomed:
                continue
            text = open(os.path.join(dirpath, f), errors="replace").read()
            for m in INCLUDE.finditer(text):
                path = os.path.normpath(os.path.join(os.path.relpath(dirpath, crate_dir), m.group(1)))
                found.add(path)
    return found

def drop_target_tables(manifest):
    # [[bin]], [[test]], [[bench]], [[example]] name files that trims remove.
    out, skip = [], False
    for line in manifest.splitlines(keepends=True):
        header = re.match(r"\s*\[\[?([^\]]+)\]\]?\s*$", line)
        if header:
            skip = line.strip().startswith("[[") and header.group(1).strip() in {"bin", "test", "bench", "example"}
        if not skip:
            out.append(line)
    return "".join(out)

def files_under(crate_dir, rel):
    path = os.path.join(crate_dir, rel)
    if os.path.isfile(path) or os.path.islink(path):
        return [os.path.normpath(rel)]
    return [
        os.path.relpath(os.path.join(d, f), crate_dir)
        for d, _, fs in os.walk(path) for f in fs
    ]

def remove_empty_dirs(crate_dir):
    for d, subdirs, fs in os.walk(crate_dir, topdown=False):
        if d != crate_dir and not os.listdir(d):
            os.rmdir(d)

def remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)

stubbed = trimmed = 0
for entry in sorted(os.listdir(vendor)):
    crate_dir = os.path.join(vendor, entry)
    with open(os.path.join(crate_dir, "Cargo.toml"), "rb") as f:
        manifest = tomllib.load(f)
    key = (manifest["package"]["name"], manifest["package"]["version"])
    checksum_path = os.path.join(crate_dir, ".cargo-checksum.json")
    checksum = json.load(open(checksum_path))
    text = open(os.path.join(crate_dir, "Cargo.toml")).read()
    if key not in needed:
        # A stub: cargo reads its manifest to resolve, and never compiles it on Linux.
        lib = manifest.get("lib", {}).get("path", "src/lib.rs")
        for item in os.listdir(crate_dir):
            if item not in ("Cargo.toml", ".cargo-checksum.json"):
                remove(os.path.join(crate_dir, item))
        os.makedirs(os.path.dirname(os.path.join(crate_dir, lib)), exist_ok=True)
        open(os.path.join(crate_dir, lib), "w").write("// Stub: not built on Linux.\n")
        open(os.path.join(crate_dir, "Cargo.toml"), "w").write(drop_target_tables(text))
        checksum["files"] = {}
        stubbed += 1
    else:
        doomed = {f for rel in crate_trims(key[0], crate_dir) for f in files_under(crate_dir, rel)}
        # What the remaining code includes stays, even inside a trimmed folder.
        gone = sorted(doomed - included_paths(crate_dir, doomed))
        for f in gone:
            os.remove(os.path.join(crate_dir, f))
        remove_empty_dirs(crate_dir)
        if gone:
            trimmed += 1
            open(os.path.join(crate_dir, "Cargo.toml"), "w").write(drop_target_tables(text))
            checksum["files"] = {
                f: h for f, h in checksum["files"].items()
                if f != "Cargo.toml" and os.path.exists(os.path.join(crate_dir, f))
            }
    json.dump(checksum, open(checksum_path, "w"))

print(f"vendor: {len(os.listdir(vendor))} crates, {len(needed)} built on Linux, "
      f"{stubbed} stubbed, {trimmed} trimmed")
PY

cat >"$out/config.toml" <<EOF
# Point a build at the vendored crates: put this in the .cargo/config.toml of the
# workspace that builds outpost-ffi (scripts/build-device-offline.sh does), with the
# directory where the set now lives.
[source.crates-io]
replace-with = "outpost-vendored"

[source.outpost-vendored]
directory = "$out/vendor"
EOF

bytes=$(du -sb "$out/vendor" | cut -f1)
files=$(find "$out/vendor" -type f | wc -l)
echo "vendor: $out/vendor: $((bytes / 1000000)) MB ($bytes bytes), $files files"
if [ "$bytes" -gt "$max_bytes" ] || [ "$files" -gt "$max_files" ]; then
  echo "vendor: over budget (80 MB, 20,000 files)" >&2
  exit 1
fi

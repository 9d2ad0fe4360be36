#!/usr/bin/env bash
# Writes the device library's own workspace into STAGE: the core and the FFI crate only,
# their manifests without dev-dependencies, under this repository's workspace settings.
#
# Why: cargo resolves a whole workspace, tests included, so building outpost-ffi from a
# vendor set that holds only the device's crates needs a workspace that names nothing
# else. Used by vendor-device-crates.sh and build-device-offline.sh, so both see the
# same dependency graph.
#
# Usage: scripts/device-workspace.sh STAGE
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
stage=${1:?usage: device-workspace.sh STAGE}

rm -rf "$stage"
mkdir -p "$stage/core" "$stage/bindings"
cp -R "$root/core/src" "$root/core/Cargo.toml" "$stage/core/"
cp -R "$root/bindings/src" "$root/bindings/Cargo.toml" "$root/bindings/uniffi.toml" "$stage/bindings/"

python3 - "$root" "$stage" <<'PY'
import re, sys
root, stage = sys.argv[1], sys.argv[2]

def drop_table(text, name):
    # Removes `[name]` and its keys, up to the next table header.
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        header = re.match(r"\s*\[+([^\]]+)\]+\s*$", line)
        if header:
            skipping = header.group(1).strip() == name
        if not skipping:
            out.append(line)
    return "".join(out)

for crate in ("core", "bindings"):
    path = f"{stage}/{crate}/Cargo.toml"
    text = drop_table(open(path).read(), "dev-dependencies")
    open(path, "w").write(text)

manifest = open(f"{root}/Cargo.toml").read()
manifest, n = re.subn(r"(?m)^members = \[.*\]$", 'members = ["core", "bindings"]', manifest)
if n != 1:
    sys.exit("device-workspace: no members line in Cargo.toml")
open(f"{stage}/Cargo.toml", "w").write(manifest)
PY
cp "$root/Cargo.lock" "$stage/Cargo.lock"

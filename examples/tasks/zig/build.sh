#!/usr/bin/env bash
# Builds the Zig task modules into OUT_DIR with the Zig compiler from PyPI's `ziglang` package
# (pip install ziglang==0.17.1; the std API changes between Zig releases, so it is pinned).
#   examples/tasks/zig/build.sh [OUT_DIR]      (default: ../wasm_modules)
# Environment: ZIG (default: `python3 -m ziglang`; any zig 0.17 on PATH works too).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "${1:-$here/../wasm_modules}" && cd "${1:-$here/../wasm_modules}" && pwd)"
read -r -a zig <<<"${ZIG:-python3 -m ziglang}"
cache="${BX3_TASK_TARGET_DIR:-$here/.zig-cache}"
for name in hello_zig top; do
  (cd "$out" && "${zig[@]}" build-exe "$here/$name.zig" -target wasm32-wasi -O ReleaseSmall \
    -fstrip --cache-dir "$cache" --global-cache-dir "$cache" -femit-bin="$out/$name.wasm")
done
rm -f "$out"/*.wasm.o
echo "zig: built hello_zig.wasm top.wasm in $out"

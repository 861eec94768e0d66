#!/usr/bin/env bash
# Builds the AssemblyScript task modules into OUT_DIR with the versions pinned in
# package-lock.json (npm ci: assemblyscript + @assemblyscript/wasi-shim; needs node and npm).
#   examples/tasks/assemblyscript/build.sh [OUT_DIR]      (default: ../wasm_modules)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "${1:-$here/../wasm_modules}" && cd "${1:-$here/../wasm_modules}" && pwd)"
cd "$here"
[ -x node_modules/.bin/asc ] || timeout 300 npm ci --no-audit --no-fund --loglevel=error
for name in hello_as banner; do
  node_modules/.bin/asc "assembly/$name.ts" --config asconfig.json --outFile "$out/$name.wasm"
done
echo "assemblyscript: built hello_as.wasm banner.wasm in $out"

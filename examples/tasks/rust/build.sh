#!/usr/bin/env bash
# Builds the Rust task modules (needs rustup's wasm32-wasip1 target) into OUT_DIR.
#   examples/tasks/rust/build.sh [OUT_DIR]      (default: ../wasm_modules)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "${1:-$here/../wasm_modules}" && cd "${1:-$here/../wasm_modules}" && pwd)"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  rustup target add wasm32-wasip1
fi
cd "$here"
# Paths remapped so the module does not depend on where the checkout or cargo home is.
export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$here=/task --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
CARGO_TARGET_DIR="${BX3_TASK_TARGET_DIR:-$here/target}" \
  cargo build --release --locked --target wasm32-wasip1
for bin in csv_totals hello_rust; do
  cp "${BX3_TASK_TARGET_DIR:-$here/target}/wasm32-wasip1/release/$bin.wasm" "$out/$bin.wasm"
done
echo "rust: built csv_totals.wasm hello_rust.wasm in $out"

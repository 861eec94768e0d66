#!/usr/bin/env bash
# Rebuilds every example task module and copies the results to
# wasm_modules/<name>.wasm (the committed copies that CI and tests use).
#
#   scripts/build-wasm.sh            # from any directory
#
# * Rust modules (wasm_modules/src/bin/*.rs) are built with cargo for
#   wasm32-wasip1; the target is added with rustup when it is missing.
# * Hand-written modules (wasm_modules/wat/*.wat) are assembled with
#   wat2wasm; if it is missing and we are root with apt-get, the Debian
#   package `wabt` is installed.
#
# Environment:
#   BX3_WASM_TARGET_DIR  cargo target dir for the wasm build
#                        (default: wasm_modules/target, git-ignored; kept
#                        apart from the workspace's target/ on purpose)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WASM_DIR="$ROOT/wasm_modules"
TARGET=wasm32-wasip1
TARGET_DIR="${BX3_WASM_TARGET_DIR:-$WASM_DIR/target}"

log() { printf '==> %s\n' "$*" >&2; }

# --- Rust modules ------------------------------------------------------------
cd "$WASM_DIR" # so rustup/cargo pick the toolchain that applies here
if ! rustup target list --installed | grep -qx "$TARGET"; then
    log "installing rust target $TARGET"
    rustup target add "$TARGET"
fi

# Remap absolute source paths (they end up in panic messages) so the
# output does not depend on where the repo or cargo home live.
CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"
export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$WASM_DIR=/bx3/wasm_modules --remap-path-prefix=$CARGO_HOME_DIR=/cargo"

log "cargo build --release --target $TARGET (target dir: $TARGET_DIR)"
CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --locked --target "$TARGET" \
    --manifest-path "$WASM_DIR/Cargo.toml"

# The [[bin]] names in Cargo.toml are the module names.
bins=$(sed -n 's/^name = "\([A-Za-z0-9_]*\)"$/\1/p' "$WASM_DIR/Cargo.toml" | grep -vx 'bx3-wasm-modules' || true)
for name in $bins; do
    cp "$TARGET_DIR/$TARGET/release/$name.wasm" "$WASM_DIR/$name.wasm"
done

# --- WAT modules -------------------------------------------------------------
if ! command -v wat2wasm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing wabt (for wat2wasm)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wabt >/dev/null
    else
        echo "error: wat2wasm not found; install wabt (e.g. apt-get install wabt)" >&2
        exit 1
    fi
fi
for wat in "$WASM_DIR"/wat/*.wat; do
    name="$(basename "$wat" .wat)"
    wat2wasm "$wat" -o "$WASM_DIR/$name.wasm"
done

# --- Summary -----------------------------------------------------------------
log "modules in $WASM_DIR:"
for f in "$WASM_DIR"/*.wasm; do
    printf '  %-20s %8d bytes\n' "$(basename "$f")" "$(wc -c <"$f")" >&2
done

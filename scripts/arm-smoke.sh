#!/usr/bin/env bash
# ARM for real, on an x86 machine: cross-builds bx3-node for aarch64-unknown-linux-gnu, runs a
# node under qemu-user (loopback only, --no-mdns), submits dags/hello_fanout.yaml to it from the
# host's CLI and checks every task's output. The wasm it runs is compiled on the emulated node by
# wasmer's cranelift backend for aarch64.
#
#   scripts/arm-smoke.sh            (installs what it needs when root with apt-get)
#
# Needs: rustup's aarch64-unknown-linux-gnu target, Debian's gcc-aarch64-linux-gnu (linker and
# C compiler for the few C dependencies) and qemu-user-static. Anything that cannot be had is a
# skip with the reason printed (exit 0), never a failure. Environment: BX3_ARM_PROFILE (cargo
# profile, default dev: a debug build compiles in a fraction of a release build's time, and
# the wasm compiler is optimized in dev builds anyway), BX3_ARM_TIMEOUT (seconds for the DAG,
# default 600: everything runs emulated).
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
profile="${BX3_ARM_PROFILE:-dev}"
skip() { echo "arm-smoke: SKIPPED: $*"; exit 0; }
log() { echo "arm-smoke: $*"; }
started=$(date +%s)

if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  timeout 300 rustup target add "$target" >/dev/null 2>&1 || skip "rustup cannot add the $target target"
fi
need_apt() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "$@" >/dev/null 2>&1
}
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt gcc-aarch64-linux-gnu libc6-dev-arm64-cross ||
  skip "no aarch64-linux-gnu-gcc (apt-get install gcc-aarch64-linux-gnu)"
command -v qemu-aarch64-static >/dev/null || need_apt qemu-user-static ||
  skip "no qemu-aarch64-static (apt-get install qemu-user-static)"
qemu=(qemu-aarch64-static -L /usr/aarch64-linux-gnu)

log "cross-building bx3-node for $target (profile $profile)"
build_start=$(date +%s)
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
  cargo build --locked -p bx3-node --target "$target" --profile "$profile"
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
arm_bin="target/$target/$dir/bx3-node"
log "built in $(( $(date +%s) - build_start )) s: $(file -b "$arm_bin" | cut -d, -f1-2)"
"${qemu[@]}" "$arm_bin" --version

# The host's own CLI talks to the emulated node (the API is plain HTTP on 127.0.0.1).
cargo build --locked -p bx3-node >/dev/null 2>&1
host_bin=target/debug/bx3-node

data="$(mktemp -d -t bx3-arm.XXXXXX)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$data"
}
trap cleanup EXIT
log "starting the aarch64 node under qemu-user (data dir $data)"
# No binfmt handler may be registered for aarch64 (containers): the node starts its executor
# processes through qemu too.
RUST_LOG=info "${qemu[@]}" "$arm_bin" run --no-mdns --data-dir "$data" --api 127.0.0.1:0 \
  --listen /ip4/127.0.0.1/tcp/0 --max-executors 1 \
  --executor-wrapper "${qemu[*]}" >"$data/node.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  [ -s "$data/api.addr" ] && break
  kill -0 "$pid" 2>/dev/null || { tail -20 "$data/node.log"; echo "arm-smoke: FAILED: the node exited"; exit 1; }
  sleep 0.5
done
[ -s "$data/api.addr" ] || { tail -20 "$data/node.log"; echo "arm-smoke: FAILED: no API within 300 s"; exit 1; }
api="$(cat "$data/api.addr")"
log "node up at $api after $(( $(date +%s) - started )) s in all; status:"
"$host_bin" status --api "$api" | head -3

dag_start=$(date +%s)
out="$(timeout "${BX3_ARM_TIMEOUT:-600}" "$host_bin" submit dags/hello_fanout.yaml --wait --api "$api" 2>&1)" || {
  echo "$out"; tail -30 "$data/node.log"; echo "arm-smoke: FAILED: the DAG did not succeed"; exit 1; }
echo "$out"
for want in "world" "Hello, world!" "Bonjour, world!" "2 greetings:"; do
  grep -qF "$want" <<<"$out" || { echo "arm-smoke: FAILED: no \"$want\" in the result"; exit 1; }
done
log "hello_fanout succeeded on the emulated aarch64 node in $(( $(date +%s) - dag_start )) s" \
  "(script total $(( $(date +%s) - started )) s)"

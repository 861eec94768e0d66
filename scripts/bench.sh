#!/usr/bin/env bash
# bx3 benchmarks: one command. Builds in release mode, runs the executor microbenchmarks
# (compile / cached load / per-task overhead / wasm vs native compute, same run), the network
# floor (a raw libp2p request-response round trip between two local nodes), then the mesh
# benchmarks on local nodes (127.0.0.1 only, --no-mdns): throughput, latency, convergence,
# failover, executor scaling, idle cost. Prints tables of medians with min/max.
#
#   scripts/bench.sh            full run (several minutes)
#   scripts/bench.sh --smoke    tiny sizes on the debug build (CI: keeps the script from rotting)
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(rustc --version)"

if [ "$smoke" = 1 ]; then
  cargo build --locked -p bx3-node
  bin=target/debug/bx3-node
  echo "--- executor microbenchmarks (smoke, debug profile)"
  BX3_BENCH_SCALE=0.01 cargo bench --locked -p bx3-node --bench executor --profile dev
  echo "--- network floor (smoke)"
  BX3_BENCH_SCALE=0.01 cargo bench --locked -p bx3-node --bench net --profile dev
  echo "--- mesh benchmarks (smoke)"
  python3 scripts/bench.py --bin "$bin" --smoke
else
  cargo build --release --locked -p bx3-node
  bin=target/release/bx3-node
  echo "--- executor microbenchmarks"
  cargo bench --locked -p bx3-node --bench executor
  echo "--- network floor: raw libp2p request-response between two local nodes"
  cargo bench --locked -p bx3-node --bench net
  echo "--- mesh benchmarks"
  python3 scripts/bench.py --bin "$bin" --json target/bench.json
fi

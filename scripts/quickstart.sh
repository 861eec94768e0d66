#!/usr/bin/env bash
# Builds bx3 in release mode, starts a node on this machine (loopback only, no mDNS), runs the
# example DAG dags/hello_fanout.yaml on it, prints every task's output, and stops the node.
# Usage: scripts/quickstart.sh [DAG_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
dag="${1:-dags/hello_fanout.yaml}"

cargo build --release --locked -p bx3-node
bin="$PWD/target/release/bx3-node"
dir="$(mktemp -d -t bx3-quickstart.XXXXXX)"

"$bin" run --data-dir "$dir" --api 127.0.0.1:0 --no-mdns --listen /ip4/127.0.0.1/tcp/0 \
  >"$dir/node.log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
trap cleanup EXIT

for _ in $(seq 1 300); do
  [ -s "$dir/api.addr" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/node.log" >&2; exit 3; }
  sleep 0.1
done
[ -s "$dir/api.addr" ] || { echo "node did not start; log: $dir/node.log" >&2; exit 3; }

echo "node up at $(cat "$dir/api.addr") (data dir $dir)"
"$bin" status --data-dir "$dir"
echo
"$bin" submit "$dag" --wait --data-dir "$dir"

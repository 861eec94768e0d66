#!/usr/bin/env bash
# Builds bx3 in release mode, starts a 3-node mesh on this machine (loopback only, --no-mdns,
# explicit peers), submits dags/hello_fanout.yaml at a follower, prints every task's output and
# which node ran it, shows the mesh, and stops every node.
# Usage: scripts/quickstart.sh [DAG_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
dag="${1:-dags/hello_fanout.yaml}"

cargo build --release --locked -p bx3-node
export BX3_TESTNET_DIR="${BX3_TESTNET_DIR:-$(mktemp -d -t bx3-quickstart.XXXXXX)}"
trap 'testnet/testnet.sh down --purge >/dev/null 2>&1 || true' EXIT

testnet/testnet.sh up 3
echo
# Submit at the last node: whichever node is the controller, the DAG reaches it.
testnet/testnet.sh submit "$dag" --wait --node 2
echo
testnet/testnet.sh status

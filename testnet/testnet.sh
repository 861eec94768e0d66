#!/usr/bin/env bash
# A local bx3 testnet: N nodes on this machine, each with its own data dir, API port and log.
#
#   testnet/testnet.sh up N [--netns] [-- EXTRA NODE FLAGS]
#   testnet/testnet.sh status
#   testnet/testnet.sh submit FILE [--wait] [--node I]
#   testnet/testnet.sh kill-leader | kill I | restart I
#   testnet/testnet.sh partition I | heal I          (--netns mode only)
#   testnet/testnet.sh logs I
#   testnet/testnet.sh down
#
# Default mode: loopback only (127.0.0.1), --no-mdns and explicit --peer addresses; no root.
# --netns mode (root): every node in its own network namespace, joined by a bridge that lives in
# a namespace of its own, with mDNS and no --peer at all, as real devices on a LAN. Nothing
# touches the host's interfaces. Processes are tracked and stopped by pid.
#
# Environment: BX3_TESTNET_DIR (state, default testnet/.run), BX3_PROFILE (release|debug,
# default release), BX3_TESTNET_EXECUTORS (per node, default 2), BX3_TESTNET_API_PORT (first API
# port, default 7500), BX3_TESTNET_P2P_PORT (first libp2p port, default 7600), BX3_BIN (the
# bx3-node binary to run), BX3_NETNS_PREFIX (namespace names, default bx3: bx3-sw, bx3-n0, ...).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
state="${BX3_TESTNET_DIR:-$here/.run}"
profile="${BX3_PROFILE:-release}"
executors="${BX3_TESTNET_EXECUTORS:-2}"
api_base="${BX3_TESTNET_API_PORT:-7500}"
p2p_base="${BX3_TESTNET_P2P_PORT:-7600}"
bin="${BX3_BIN:-$repo/target/$profile/bx3-node}"
prefix="${BX3_NETNS_PREFIX:-bx3}"

die() { echo "testnet: $*" >&2; exit 2; }

build() {
  if [ "$profile" = release ]; then
    (cd "$repo" && cargo build --release --locked -p bx3-node >&2)
  else
    (cd "$repo" && cargo build --locked -p bx3-node >&2)
  fi
}

count() { cat "$state/count" 2>/dev/null || echo 0; }
mode() { cat "$state/mode" 2>/dev/null || echo loopback; }
ns() { echo "$prefix-n$1"; }
sw="$prefix-sw"

# Runs a command in node I's network (the host in loopback mode).
in_node() {
  local i=$1; shift
  if [ "$(mode)" = netns ]; then ip netns exec "$(ns "$i")" "$@"; else "$@"; fi
}

cli() {
  local i=$1; shift
  in_node "$i" "$bin" "$@" --data-dir "$state/node-$i"
}

alive() { local p; p=$(cat "$state/node-$1/pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null; }

start_node() {
  local i=$1 n; n=$(count)
  local dir="$state/node-$i"
  mkdir -p "$dir"
  rm -f "$dir/api.addr"
  local -a flags=(run --data-dir "$dir" --max-executors "$executors")
  if [ "$(mode)" = netns ]; then
    flags+=(--api 127.0.0.1:7420 --listen /ip4/0.0.0.0/tcp/4001)
  else
    flags+=(--no-mdns --api "127.0.0.1:$((api_base + i))" --listen "/ip4/127.0.0.1/tcp/$((p2p_base + i))")
    for ((j = 0; j < n; j++)); do
      [ "$j" = "$i" ] || flags+=(--peer "/ip4/127.0.0.1/tcp/$((p2p_base + j))")
    done
  fi
  local extra=()
  [ -f "$state/extra" ] && mapfile -t extra <"$state/extra"
  if [ "$(mode)" = netns ]; then
    ip netns exec "$(ns "$i")" env RUST_LOG="${RUST_LOG:-info}" "$bin" "${flags[@]}" "${extra[@]}" >>"$dir/node.log" 2>&1 &
  else
    RUST_LOG="${RUST_LOG:-info}" "$bin" "${flags[@]}" "${extra[@]}" >>"$dir/node.log" 2>&1 &
  fi
  echo $! >"$dir/pid"
}

wait_api() {
  local i=$1
  for _ in $(seq 1 300); do
    [ -s "$state/node-$i/api.addr" ] && return 0
    alive "$i" || { tail -20 "$state/node-$i/node.log" >&2; die "node $i exited"; }
    sleep 0.1
  done
  die "node $i did not start in 30 s (log: $state/node-$i/node.log)"
}

# Waits (at most 30 s) until every node sees all the others and names the same controller.
wait_mesh() {
  local n=$1
  for _ in $(seq 1 300); do
    local leaders="" ok=1
    for ((i = 0; i < n; i++)); do
      local line
      line=$(cli "$i" status --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(s.get("leader") or "-", len(s.get("peers", [])))' 2>/dev/null) || { ok=0; break; }
      [ "${line#* }" = "$((n - 1))" ] || { ok=0; break; }
      leaders="$leaders ${line%% *}"
    done
    if [ "$ok" = 1 ] && [ "$(echo "$leaders" | tr ' ' '\n' | sed '/^$/d' | sort -u | wc -l)" = 1 ] && [[ "$leaders" != *" -"* ]]; then
      return 0
    fi
    sleep 0.1
  done
  echo "testnet: warning: the mesh did not agree on a controller within 30 s" >&2
}

netns_up() {
  local n=$1
  [ "$(id -u)" = 0 ] || die "--netns needs root (ip netns)"
  command -v ip >/dev/null || die "--netns needs iproute2"
  ip netns add $sw
  ip -n $sw link add br0 type bridge
  ip -n $sw link set br0 up
  ip -n $sw link set lo up
  for ((i = 0; i < n; i++)); do
    ip netns add "$(ns "$i")"
    ip link add "v$i" netns $sw type veth peer name eth0 netns "$(ns "$i")"
    ip -n $sw link set "v$i" master br0
    ip -n $sw link set "v$i" up
    ip -n "$(ns "$i")" link set lo up
    ip -n "$(ns "$i")" addr add "10.77.0.$((i + 1))/24" dev eth0
    ip -n "$(ns "$i")" link set eth0 up
    ip -n "$(ns "$i")" route add 224.0.0.0/4 dev eth0
  done
}

netns_down() {
  local n=$1
  for ((i = 0; i < n; i++)); do ip netns del "$(ns "$i")" 2>/dev/null || true; done
  ip netns del $sw 2>/dev/null || true
}

peer_id() { cli "$1" status --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["peer_id"])'; }

cmd_up() {
  local n=${1:-3}; shift || true
  local m=loopback
  local extra=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --netns) m=netns ;;
      --) shift; extra=("$@"); break ;;
      *) die "unknown option $1" ;;
    esac
    shift
  done
  [ "$(count)" = 0 ] || die "a testnet is already up ($state); run: $0 down"
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 64 ] || die "N must be 1..64"
  [ -x "$bin" ] || build
  mkdir -p "$state"
  echo "$n" >"$state/count"
  echo "$m" >"$state/mode"
  printf '%s\n' "${extra[@]}" | sed '/^$/d' >"$state/extra"
  [ "$m" = netns ] && netns_up "$n"
  for ((i = 0; i < n; i++)); do start_node "$i"; done
  for ((i = 0; i < n; i++)); do wait_api "$i"; done
  for ((i = 0; i < n; i++)); do peer_id "$i" >"$state/node-$i/peer_id" || true; done
  wait_mesh "$n"
  echo "testnet up: $n nodes ($m); state in $state"
  cmd_status
}

cmd_status() {
  local n; n=$(count)
  [ "$n" -gt 0 ] || die "no testnet is up"
  printf '%-5s %-8s %-10s %-14s %-8s %s\n' NODE PID ALIVE LEADER TERM PEER
  for ((i = 0; i < n; i++)); do
    local pid; pid=$(cat "$state/node-$i/pid" 2>/dev/null || echo -)
    if alive "$i"; then
      cli "$i" status --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
leader = s.get("leader")
me = s["peer_id"]
shown = "-" if not leader else ("self" if leader == me else "…" + leader[-8:])
print("%-5s %-8s %-10s %-14s %-8s %s  peers=%d executors=%d/%d" % (sys.argv[1], sys.argv[2], "yes",
      shown, s.get("term"), "…" + me[-8:], len(s.get("peers", [])),
      s["executors"]["busy"], s["executors"]["total"]))' "$i" "$pid" || printf '%-5s %-8s %s\n' "$i" "$pid" "yes (API not answering)"
    else
      printf '%-5s %-8s %s\n' "$i" "$pid" "no"
    fi
  done
}

first_alive() {
  local n; n=$(count)
  for ((i = 0; i < n; i++)); do alive "$i" && { echo "$i"; return 0; }; done
  die "no node is alive"
}

cmd_submit() {
  local file="" node="" wait=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --wait) wait=(--wait) ;;
      --node) node=$2; shift ;;
      *) file=$1 ;;
    esac
    shift
  done
  [ -n "$file" ] || die "usage: submit FILE [--wait] [--node I]"
  [ -n "$node" ] || node=$(first_alive)
  cli "$node" submit "$file" "${wait[@]}"
}

cmd_kill() {
  local i=$1
  local pid; pid=$(cat "$state/node-$i/pid" 2>/dev/null) || die "no node $i"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "killed node $i (pid $pid)"
}

cmd_kill_leader() {
  local i; i=$(first_alive)
  local leader
  leader=$(cli "$i" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("leader") or "")')
  [ -n "$leader" ] || die "no leader elected"
  local n; n=$(count)
  for ((j = 0; j < n; j++)); do
    if [ "$(cat "$state/node-$j/peer_id" 2>/dev/null)" = "$leader" ]; then
      cmd_kill "$j"
      return 0
    fi
  done
  die "leader $leader is not one of this testnet's nodes"
}

cmd_restart() {
  local i=$1
  alive "$i" && cmd_kill "$i"
  start_node "$i"
  wait_api "$i"
  echo "restarted node $i"
}

cmd_partition() {
  [ "$(mode)" = netns ] || die "partition needs a --netns testnet"
  ip -n $sw link set "v$1" "$2"
  echo "node $1 link $2"
}

cmd_down() {
  local n; n=$(count)
  for ((i = 0; i < n; i++)); do
    local pid; pid=$(cat "$state/node-$i/pid" 2>/dev/null) || continue
    kill "$pid" 2>/dev/null || true
  done
  for ((i = 0; i < n; i++)); do
    local pid; pid=$(cat "$state/node-$i/pid" 2>/dev/null) || continue
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  [ "$(mode)" = netns ] && netns_down "$n"
  rm -rf "$state"
  echo "testnet down"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  status) cmd_status ;;
  submit) shift; cmd_submit "$@" ;;
  kill-leader) cmd_kill_leader ;;
  kill) cmd_kill "${2:?usage: kill I}" ;;
  restart) cmd_restart "${2:?usage: restart I}" ;;
  partition) cmd_partition "${2:?usage: partition I}" down ;;
  heal) cmd_partition "${2:?usage: heal I}" up ;;
  logs) tail -n 50 "$state/node-${2:?usage: logs I}/node.log" ;;
  down) cmd_down ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

#!/usr/bin/env bash
# A local bx3 testnet: N nodes on this machine, each with its own data dir, API port and log.
#
#   testnet/testnet.sh up N [--netns] [-- EXTRA NODE FLAGS]
#   testnet/testnet.sh status
#   testnet/testnet.sh submit FILE [--wait] [--json] [--node I]
#   testnet/testnet.sh kill-leader | kill I | restart I
#   testnet/testnet.sh partition I | heal I
#   testnet/testnet.sh logs I [-f] [-n LINES]
#   testnet/testnet.sh down [--purge]
#
# Default mode: loopback only (127.0.0.1), --no-mdns and explicit --peer addresses; no root.
# Nodes run with --debug-api, so `partition I` cuts node I off from every other node through
# the nodes' own block lists (both sides), and `heal I` reconnects them.
# --netns mode (root): every node in its own network namespace, joined by a bridge that lives in
# a namespace of its own, with mDNS and no --peer at all, as real devices on a LAN; `partition`
# takes node I's link down at the bridge. Nothing touches the host's interfaces. Processes are
# tracked and stopped by pid. `up` and `restart` rebuild the binary first (incremental: a no-op
# when it is up to date) unless BX3_BIN names one. `down` keeps the logs (node-I/node.log)
# unless --purge.
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
usage() { echo "usage: testnet/testnet.sh $*" >&2; exit 2; }

# Incremental: cargo does nothing when the binary is up to date, so a testnet never runs a
# stale binary silently. Skipped when BX3_BIN names a binary.
build() {
  [ -z "${BX3_BIN:-}" ] || return 0
  local flags=(--locked -p bx3-node)
  [ "$profile" = release ] && flags+=(--release)
  (cd "$repo" && cargo build "${flags[@]}" >&2) || die "the build failed"
}

count() { cat "$state/count" 2>/dev/null || echo 0; }

# The node index argument of a command: a number below the node count.
index() {
  local cmd=$1 i=${2:-}
  [ -n "$i" ] || usage "$cmd I"
  local n; n=$(count)
  [ "$n" -gt 0 ] || die "no testnet is up (run: testnet/testnet.sh up N)"
  [[ "$i" =~ ^[0-9]+$ ]] && [ "$i" -lt "$n" ] || die "no node $i (this testnet has nodes 0..$((n - 1)))"
  echo "$i"
}
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

# A node is alive if its pid runs a bx3-node that is not a zombie (a killed node whose parent
# has not reaped it yet still answers `kill -0`), and is not another program that got the pid.
alive() {
  local p stat
  p=$(cat "$state/node-$1/pid" 2>/dev/null) || return 1
  stat=$(cat "/proc/$p/stat" 2>/dev/null) || return 1
  [ "$(echo "${stat##*) }" | cut -d' ' -f1)" != Z ] || return 1
  tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q bx3-node
}

# `status --json` of node I as "LEADER PEERS ROLE TERM BUSY TOTAL PEER_ID" (PEERS: those alive
# now; status also lists peers that went down lately), or nothing (exit 1)
# if it does not answer: a node killed a moment ago must not print a traceback.
status_line() {
  local json
  json=$(cli "$1" status --json 2>/dev/null) || return 1
  printf '%s' "$json" | python3 -c '
import json, sys
try:
    s = json.load(sys.stdin)
    e = s.get("executors", {})
    alive = [p for p in s.get("peers", []) if p.get("alive", True)]
    print(s.get("leader") or "-", len(alive), s.get("role", "-"), s.get("term", "-"),
          e.get("busy", 0), e.get("total", 0), s["peer_id"])
except (ValueError, KeyError, TypeError):
    sys.exit(1)'
}

start_node() {
  local i=$1 n; n=$(count)
  local dir="$state/node-$i"
  mkdir -p "$dir"
  rm -f "$dir/api.addr"
  local -a flags=(run --data-dir "$dir" --max-executors "$executors")
  if [ "$(mode)" = netns ]; then
    flags+=(--api 127.0.0.1:7420 --listen /ip4/0.0.0.0/tcp/4001)
  else
    flags+=(--no-mdns --debug-api --api "127.0.0.1:$((api_base + i))" --listen "/ip4/127.0.0.1/tcp/$((p2p_base + i))")
    for ((j = 0; j < n; j++)); do
      [ "$j" = "$i" ] || flags+=(--peer "/ip4/127.0.0.1/tcp/$((p2p_base + j))")
    done
  fi
  local extra=()
  [ -f "$state/extra" ] && mapfile -t extra <"$state/extra"
  echo "=== node $i started $(date '+%F %T') ===" >>"$dir/node.log"
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
      line=$(status_line "$i") || { ok=0; break; }
      read -r leader peers _ <<<"$line"
      [ "$peers" = "$((n - 1))" ] || { ok=0; break; }
      leaders="$leaders $leader"
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

peer_id() { local l; l=$(status_line "$1") && echo "${l##* }"; }

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
  build
  [ -x "$bin" ] || die "no binary at $bin"
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
  [ "$n" -gt 0 ] || die "no testnet is up (run: testnet/testnet.sh up N)"
  printf '%-5s %-8s %-6s %-11s %-12s %-6s %-10s %-10s %s\n' NODE PID ALIVE ROLE LEADER TERM PEERS EXECUTORS PEER
  for ((i = 0; i < n; i++)); do
    local pid; pid=$(cat "$state/node-$i/pid" 2>/dev/null || echo -)
    if ! alive "$i"; then
      printf '%-5s %-8s %s\n' "$i" "$pid" "no"
      continue
    fi
    local line
    if ! line=$(status_line "$i"); then
      printf '%-5s %-8s %-6s %s\n' "$i" "$pid" "yes" "(API not answering yet)"
      continue
    fi
    local leader peers role term busy total me shown
    read -r leader peers role term busy total me <<<"$line"
    if [ "$leader" = - ]; then shown=-; elif [ "$leader" = "$me" ]; then shown=self; else shown="${leader: -8}"; fi
    printf '%-5s %-8s %-6s %-11s %-12s %-6s %-10s %-10s %s\n' "$i" "$pid" yes "$role" "$shown" "$term" \
      "$peers" "$busy/$total" "${me: -8}"
  done
}

first_alive() {
  local n; n=$(count)
  for ((i = 0; i < n; i++)); do alive "$i" && { echo "$i"; return 0; }; done
  die "no node is alive"
}

cmd_submit() {
  local file="" node="" flags=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --wait|--json) flags+=("$1") ;;
      --node) [ $# -ge 2 ] || usage "submit FILE [--wait] [--json] [--node I]"; node=$(index submit "$2"); shift ;;
      -*) usage "submit FILE [--wait] [--json] [--node I]" ;;
      *) file=$1 ;;
    esac
    shift
  done
  [ -n "$file" ] || usage "submit FILE [--wait] [--json] [--node I]"
  [ -n "$node" ] || node=$(first_alive)
  alive "$node" || die "node $node is not running (testnet/testnet.sh restart $node)"
  cli "$node" submit "$file" "${flags[@]}"
}

cmd_kill() {
  local i=$1
  local pid; pid=$(cat "$state/node-$i/pid" 2>/dev/null) || die "node $i was never started"
  if ! alive "$i"; then
    echo "node $i is not running"
    return 0
  fi
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # Bounded: gone, or a zombie (dead; its parent reaps it).
  for _ in $(seq 1 50); do alive "$i" || break; sleep 0.1; done
  echo "killed node $i (pid $pid)"
}

cmd_kill_leader() {
  local n; n=$(count)
  local leader="" i
  for ((i = 0; i < n; i++)); do
    alive "$i" || continue
    local line; line=$(status_line "$i") || continue
    leader="${line%% *}"
    [ "$leader" != - ] && break
    leader=""
  done
  [ -n "$leader" ] || die "no node names a leader right now (an election may be under way; try again)"
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
  build
  alive "$i" && cmd_kill "$i"
  start_node "$i"
  wait_api "$i"
  echo "restarted node $i"
}

# Cuts node I off from every other node (down) or reconnects it (up). netns: its link at the
# bridge. Loopback: both sides' block lists, through the nodes' debug API (--debug-api).
cmd_partition() {
  local i=$1 how=$2
  if [ "$(mode)" = netns ]; then
    ip -n $sw link set "v$i" "$how"
    echo "node $i link $how"
    return 0
  fi
  local n; n=$(count)
  local me; me=$(cat "$state/node-$i/peer_id" 2>/dev/null) || die "node $i has no known peer id"
  local flag=() failed=0
  [ "$how" = up ] && flag=(--unblock)
  for ((j = 0; j < n; j++)); do
    [ "$j" = "$i" ] && continue
    local other; other=$(cat "$state/node-$j/peer_id" 2>/dev/null) || continue
    if alive "$i"; then cli "$i" debug-block "$other" "${flag[@]}" >/dev/null || failed=1; fi
    if alive "$j"; then cli "$j" debug-block "$me" "${flag[@]}" >/dev/null || failed=1; fi
  done
  [ "$failed" = 0 ] || echo "testnet: warning: some nodes did not answer (are they running?)" >&2
  if [ "$how" = down ]; then echo "node $i partitioned from the others"; else echo "node $i healed"; fi
}

cmd_logs() {
  local i="" follow=0 lines=50
  while [ $# -gt 0 ]; do
    case "$1" in
      -f|--follow) follow=1 ;;
      -n) [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || usage "logs I [-f] [-n LINES]"; lines=$2; shift ;;
      -*) usage "logs I [-f] [-n LINES]" ;;
      *) i=$1 ;;
    esac
    shift
  done
  i=$(index "logs I [-f] [-n LINES]" "$i")
  local log="$state/node-$i/node.log"
  [ -f "$log" ] || die "node $i has no log yet ($log)"
  if [ "$follow" = 1 ]; then exec tail -n "$lines" -F "$log"; else tail -n "$lines" "$log"; fi
}

cmd_down() {
  local purge=0
  case "${1:-}" in
    "") ;;
    --purge) purge=1 ;;
    *) usage "down [--purge]" ;;
  esac
  local n; n=$(count)
  for ((i = 0; i < n; i++)); do
    alive "$i" || continue
    kill "$(cat "$state/node-$i/pid")" 2>/dev/null || true
  done
  for ((i = 0; i < n; i++)); do
    for _ in $(seq 1 50); do alive "$i" || break; sleep 0.1; done
    if alive "$i"; then kill -9 "$(cat "$state/node-$i/pid")" 2>/dev/null || true; fi
  done
  [ "$(mode)" = netns ] && netns_down "$n"
  if [ "$purge" = 1 ]; then
    rm -rf "$state"
    echo "testnet down (state and logs removed)"
    return 0
  fi
  # Keep each node's log; everything else goes (the next `up` starts clean and appends).
  for dir in "$state"/node-*; do
    [ -d "$dir" ] || continue
    find "$dir" -mindepth 1 -maxdepth 1 ! -name node.log -exec rm -rf {} +
  done
  rm -f "$state/count" "$state/mode" "$state/extra"
  echo "testnet down (logs kept in $state/node-*/node.log; down --purge removes them)"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  status) cmd_status ;;
  submit) shift; cmd_submit "$@" ;;
  kill-leader) cmd_kill_leader ;;
  # (`i=$(...)` on its own line: a usage error inside it stops the script under set -e)
  kill) i=$(index kill "${2:-}"); cmd_kill "$i" ;;
  restart) i=$(index restart "${2:-}"); cmd_restart "$i" ;;
  partition) i=$(index partition "${2:-}"); cmd_partition "$i" down ;;
  heal) i=$(index heal "${2:-}"); cmd_partition "$i" up ;;
  logs) shift; cmd_logs "$@" ;;
  down) shift; cmd_down "$@" ;;
  -h|--help|help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

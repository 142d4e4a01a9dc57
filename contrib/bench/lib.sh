# Shared by contrib/bench/*.sh (sourced, not run): starting a local master + node + edge on
# loopback, registering tasks, waiting, small statistics.
#
# Expects: BIN_DIR (where the three binaries are), WORK (a scratch directory), IMAGE (the test
# app's image). Sets: MPORT NPORT EPORT APORT (the edge's admin listener) NODE_ID TOKEN, and the PIDs stop_stack ends.

TOKEN=${TOKEN:-bench-token}
BENCH_PY="$(dirname "${BASH_SOURCE[0]}")/bench.py"
STACK_PIDS=()

now_ms() { date +%s%3N; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Which line of a markdown table the caller writes goes to $OUT_MD; notes go to stderr.
md() { printf '%s\n' "$*" >>"$OUT_MD"; }
log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
# ratio A B: A/B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }
# median/max of numbers given as arguments, "median max".
stats() { python3 "$BENCH_PY" stats "$@"; }

wait_http() { # URL HOST [tries of 50 ms]
  local n=${3:-400}
  until curl -sf -o /dev/null -H "Host: $2" "$1"; do
    n=$((n - 1)); [ "$n" -gt 0 ] || return 1; sleep 0.05
  done
}

# start_stack NAME: master, node and edge with their own data under $WORK/NAME.
start_stack() {
  local dir=$WORK/$1
  mkdir -p "$dir"
  MPORT=$(free_port); NPORT=$(free_port); EPORT=$(free_port); APORT=$(free_port)
  NODE_ID=bench-$1-$$
  export SHADOW_API_TOKEN=$TOKEN SHADOW_LOG=${SHADOW_LOG:-warn}
  "$BIN_DIR/shadow-master" --listen 127.0.0.1:"$MPORT" --data-dir "$dir/master" \
    --heartbeat-interval-ms 200 >>"$dir/master.log" 2>&1 &
  MASTER_PID=$!; STACK_PIDS+=("$MASTER_PID")
  wait_http "http://127.0.0.1:$MPORT/healthz" x || fail "the master did not come up ($dir/master.log)"
  # NODE_WRAP / EDGE_WRAP: a command to run the program under (callgrind-warm.sh uses valgrind).
  # shellcheck disable=SC2086
  ${NODE_WRAP:-} "$BIN_DIR/shadow-nodeproxy" --listen 127.0.0.1:"$NPORT" --master "http://127.0.0.1:$MPORT" \
    --node-id "$NODE_ID" --data-dir "$dir/node" --heartbeat-interval-ms 200 --stop-grace-s 2 \
    --pause-binary "$PAUSE_BIN" \
    >>"$dir/node.log" 2>&1 &
  NODE_PID=$!; STACK_PIDS+=("$NODE_PID")
  # shellcheck disable=SC2086
  ${EDGE_WRAP:-} "$BIN_DIR/shadow-edgeproxy" --listen 127.0.0.1:"$EPORT" --master "http://127.0.0.1:$MPORT" \
    --admin-listen 127.0.0.1:"$APORT" --edge-id "bench-$1" \
    --client-max-per-ip 100000 --client-max-total 100000 >>"$dir/edge.log" 2>&1 &
  # Every benchmark client is 127.0.0.1: the per-address cap would refuse the herd.
  EDGE_PID=$!; STACK_PIDS+=("$EDGE_PID")
  wait_http "http://127.0.0.1:$NPORT/healthz" shadow.invalid || fail "the node did not come up ($dir/node.log)"
  wait_http "http://127.0.0.1:$APORT/healthz" x || fail "the edge did not come up ($dir/edge.log)"
}

# stop_stack: edge, node (it stops and removes its containers), master; then any leftover
# container of this node.
stop_stack() {
  local p i
  for ((i = ${#STACK_PIDS[@]} - 1; i >= 0; i--)); do
    p=${STACK_PIDS[$i]}
    kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null || true
  done
  STACK_PIDS=()
  [ -z "${NODE_ID:-}" ] || docker ps -aq --filter "label=shadow.node=$NODE_ID" | xargs -r docker rm -f >/dev/null
}

# register NAME DOMAIN VOLUME_KIND IDLE_S [FROZEN_S]: prints the new task's id. FROZEN_S defaults
# to 0: the app is stopped when idle, never frozen (the parts that measure stops and cold starts).
register() {
  curl -sf -H "Authorization: Bearer $TOKEN" \
    -d "{\"name\":\"$1\",\"domains\":[\"$2\"],\"image\":\"$IMAGE\",\"volume\":{\"kind\":\"$3\"},\"idle_timeout_s\":$4,\"frozen_timeout_s\":${5:-0}}" \
    "http://127.0.0.1:$MPORT/tasks/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}

# wait_known DOMAIN: until the edge routes DOMAIN (it answers something other than 404 to a
# request that does not start the app: the edge's own 404 for unknown hosts is what we wait out).
# The node and edge follow the master's watch; a short sleep covers both after the master knows.
wait_known() {
  local n=200
  until curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$MPORT/tasks/by-domain/$1"; do
    n=$((n - 1)); [ "$n" -gt 0 ] || fail "the master does not know $1"; sleep 0.05
  done
  sleep 0.5
}

containers_of() { docker ps -aq --filter "label=shadow.task=$1"; }
published_port() { docker port "$1" 8000/tcp | head -1 | sed 's/.*://'; }
# app_port CONTAINER: where an app's port 8000 is published: its own, or, for an app started
# in a sandbox (NetworkMode container:<id>), the sandbox's.
app_port() {
  local mode; mode=$(docker inspect -f '{{.HostConfig.NetworkMode}}' "$1")
  case $mode in container:*) published_port "${mode#container:}" ;; *) published_port "$1" ;; esac
}
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

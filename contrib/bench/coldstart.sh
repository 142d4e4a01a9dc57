#!/usr/bin/env bash
# Cold start: time to first byte of a stopped app through the node proxy, against a bare
# `docker run` + poll-until-200 of the same image, alternated, N pairs (default 10).
# Usage: contrib/bench/coldstart.sh [pairs]   (builds nothing: run `cargo build` first;
# BIN_DIR picks the binaries, default target/debug)
set -euo pipefail
cd "$(dirname "$0")/../.."
PAIRS=${1:-10}
BIN_DIR=${BIN_DIR:-target/debug}
IMAGE=${IMAGE:-shadow-test/counter:latest}
TOKEN=bench-token
WORK=$(mktemp -d)
MPORT=$((17000 + RANDOM % 1000)); NPORT=$((MPORT + 1))
cleanup() {
  # The node first: it stops its apps and releases their leases on the master.
  kill "${NODE_PID:-}" 2>/dev/null && wait "${NODE_PID:-}" 2>/dev/null || true
  kill "${MASTER_PID:-}" 2>/dev/null && wait "${MASTER_PID:-}" 2>/dev/null || true
  docker ps -aq --filter label=shadow.bench=1 | xargs -r docker rm -f >/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
now_ms() { date +%s%3N; }

SHADOW_API_TOKEN=$TOKEN SHADOW_LOG=warn "$BIN_DIR/shadow-master" --listen 127.0.0.1:$MPORT --data-dir "$WORK/m" & MASTER_PID=$!
SHADOW_API_TOKEN=$TOKEN SHADOW_LOG=warn "$BIN_DIR/shadow-nodeproxy" --listen 127.0.0.1:$NPORT --master http://127.0.0.1:$MPORT \
  --node-id bench --data-dir "$WORK/n" --heartbeat-interval-ms 200 & NODE_PID=$!
until curl -sf -H 'Host: x.invalid' http://127.0.0.1:$NPORT/healthz >/dev/null; do sleep 0.05; done

shadow=(); bare=()
for i in $(seq 1 "$PAIRS"); do
  d="bench-$i-$RANDOM.test"
  curl -sf -H "Authorization: Bearer $TOKEN" -d "{\"name\":\"b$i\",\"domains\":[\"$d\"],\"image\":\"$IMAGE\",\"idle_timeout_s\":600}" \
    http://127.0.0.1:$MPORT/tasks/ >/dev/null
  # Let the node's watch learn the task before timing.
  until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: nope.invalid" http://127.0.0.1:$NPORT/healthz)" = 200 ]; do sleep 0.01; done
  sleep 0.2
  t0=$(now_ms); curl -sf -o /dev/null -H "Host: $d" http://127.0.0.1:$NPORT/ ; t1=$(now_ms)
  shadow+=($((t1 - t0)))

  t0=$(now_ms)
  cid=$(docker run -d --label shadow.bench=1 -p 127.0.0.1::8000 "$IMAGE")
  port=$(docker port "$cid" 8000/tcp | head -1 | sed 's/.*://')
  until curl -sf -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.005; done
  t1=$(now_ms)
  bare+=($((t1 - t0)))
  docker rm -f "$cid" >/dev/null
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }
max() { printf '%s\n' "$@" | sort -n | tail -1; }
ms=$(median "${shadow[@]}"); mb=$(median "${bare[@]}")
echo "shadow (node proxy) ms: ${shadow[*]}"
echo "bare docker run ms:     ${bare[*]}"
echo "median shadow=${ms} ms max=$(max "${shadow[@]}") | median bare=${mb} ms max=$(max "${bare[@]}") | ratio=$(awk "BEGIN{printf \"%.2f\", $ms/$mb}")"
curl -s -H 'Host: x.invalid' http://127.0.0.1:$NPORT/metrics | grep 'cold_start_seconds_sum' || true

#!/usr/bin/env bash
# Profiles the warm path through edge + node (release binaries): wrk against the edge while
# `perf record -e cpu-clock` samples the edge and the node; prints each one's top symbols.
#   contrib/bench/profile-warm.sh [seconds]     (run `cargo build --release` of the three first)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_=${1:-10}
BIN_DIR=${CARGO_TARGET_DIR:-$PWD/target}/release IMAGE=${IMAGE:-shadow-test/counter:latest}
PAUSE_BIN=${PAUSE_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/$(rustc -vV | sed -n 's/^host: //p')/release/shadow-pause}
WORK=$(mktemp -d /tmp/shadow-profile.XXXXXX) OUT_MD=/dev/null
# shellcheck source=contrib/bench/lib.sh
source contrib/bench/lib.sh
trap 'stop_stack; rm -rf "$WORK"' EXIT
start_stack profile
register warm warm.bench.test none 3600 >/dev/null
wait_known warm.bench.test
curl -sf -o /dev/null -H 'Host: warm.bench.test' "http://127.0.0.1:$EPORT/"
wrk -t2 -c64 -d2s -H 'Host: warm.bench.test' "http://127.0.0.1:$EPORT/" >/dev/null
perfs=()
for who in edge node; do
  pid=$EDGE_PID; [ $who = edge ] || pid=$NODE_PID
  perf record -q -e cpu-clock -F 999 -g -p "$pid" -o "$WORK/$who.data" -- sleep "$SECONDS_" 2>/dev/null &
  perfs+=($!)
done
wrk -t2 -c64 -d"${SECONDS_}s" -H 'Host: warm.bench.test' "http://127.0.0.1:$EPORT/" | grep -E 'Requests/sec'
wait "${perfs[@]}" 2>/dev/null || true
for who in edge node; do
  echo "== $who: top symbols by self time"
  perf report -q -i "$WORK/$who.data" --no-children -g none --sort symbol 2>/dev/null | grep "%" | head -30 || true
  echo "== $who: by shared object"
  perf report -q -i "$WORK/$who.data" --no-children -g none --sort dso 2>/dev/null | grep "%" | head -8 || true
  [ -z "${CHILDREN:-}" ] || { echo "== $who: inclusive"; perf report -q -i "$WORK/$who.data" --children -g none --sort symbol 2>/dev/null | grep "%" | head -${CHILDREN} | cut -c1-160; }
done

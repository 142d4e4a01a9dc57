#!/usr/bin/env bash
# Shadow on one machine, one command: builds the three programs and the example app's image,
# starts master, one node and the edge on loopback with the local volume backend, registers the
# example app and prints the URL to curl. Ctrl-C stops everything; no container is left behind.
#
#   contrib/local/up.sh            # release build, ports 7070 / 7071 / 8080
#   PROFILE=debug contrib/local/up.sh
#
# Needs: Rust (cargo) and a running Docker Engine. Nothing is pulled from a registry.
set -euo pipefail
cd "$(dirname "$0")/../.."

PROFILE=${PROFILE:-release}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1:7070}
NODE_ADDR=${NODE_ADDR:-127.0.0.1:7071}
EDGE_ADDR=${EDGE_ADDR:-127.0.0.1:8080}
EDGE_ADMIN_ADDR=${EDGE_ADMIN_ADDR:-127.0.0.1:7080}
DATA=${SHADOW_LOCAL_DATA:-$PWD/target/shadow-local}
DOMAIN=${DOMAIN:-counter.localhost}
NODE_ID=${NODE_ID:-local-node}
TOKEN=${SHADOW_API_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
IMAGE=shadow-example/counter:latest

flag=(); [ "$PROFILE" = release ] && flag=(--release)
docker info >/dev/null 2>&1 || { echo "Docker Engine is not reachable: start it (systemctl start docker) and retry." >&2; exit 1; }

echo "== building shadow-master, shadow-nodeproxy, shadow-edgeproxy ($PROFILE)"
cargo build "${flag[@]}" -p shadow-master -p shadow-nodeproxy -p shadow-edgeproxy -p shadow-cli --bins
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/$PROFILE

echo "== building the example app's image $IMAGE (static binary FROM scratch)"
HOST_TRIPLE=$(rustc -vV | sed -n 's/^host: //p')  # x86_64 or aarch64, whatever this machine is
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p shadow-counter --target "$HOST_TRIPLE"
ctx=$(mktemp -d)
cp "$TARGET/$HOST_TRIPLE/release/counter" contrib/apps/counter/Dockerfile "$ctx"
DOCKER_BUILDKIT=0 docker build --quiet -t "$IMAGE" "$ctx" >/dev/null
rm -rf "$ctx"

mkdir -p "$DATA"
export SHADOW_API_TOKEN=$TOKEN SHADOW_MASTER_URL=http://$MASTER_ADDR
pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "== stopping (the node stops its apps first)"
  # Edge, then node (it stops and removes its containers), then master.
  for p in $(printf '%s\n' "${pids[@]}" | tac); do
    kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null || true
  done
  left=$(docker ps -aq --filter label=shadow.node=$NODE_ID)
  [ -z "$left" ] || { echo "removing leftover containers: $left"; docker rm -f $left >/dev/null; }
  echo "stopped."
}
trap stop INT TERM EXIT

"$BIN/shadow-master" --listen "$MASTER_ADDR" --data-dir "$DATA/master" & pids+=($!)
until curl -sf "http://$MASTER_ADDR/healthz" >/dev/null; do sleep 0.1; done
"$BIN/shadow-nodeproxy" --listen "$NODE_ADDR" --node-id "$NODE_ID" --data-dir "$DATA/node" & pids+=($!)
"$BIN/shadow-edgeproxy" --listen "$EDGE_ADDR" --admin-listen "$EDGE_ADMIN_ADDR" --edge-id local-edge & pids+=($!)
until curl -sf -H 'Host: shadow.invalid' "http://$NODE_ADDR/healthz" >/dev/null; do sleep 0.1; done
until curl -sf "http://$EDGE_ADMIN_ADDR/healthz" >/dev/null; do sleep 0.1; done

auth=(-H "Authorization: Bearer $TOKEN")
existing=$(curl -s "${auth[@]}" "http://$MASTER_ADDR/tasks/by-domain/$DOMAIN" | sed -n 's/.*"id":"\([0-9a-f]*\)".*/\1/p')
spec="{\"name\":\"counter\",\"domains\":[\"$DOMAIN\"],\"image\":\"$IMAGE\",\"volume\":{\"kind\":\"local\"},\"idle_timeout_s\":60}"
if [ -n "$existing" ]; then
  curl -sf "${auth[@]}" -X PUT -d "$spec" "http://$MASTER_ADDR/tasks/$existing" >/dev/null
else
  curl -sf "${auth[@]}" -d "$spec" "http://$MASTER_ADDR/tasks/" >/dev/null
fi

cat <<MSG

Shadow is running.
  master  http://$MASTER_ADDR   (token: $TOKEN)
  node    http://$NODE_ADDR
  edge    http://$EDGE_ADDR
  dashboard http://$MASTER_ADDR/ui   (sign in with the token)

Try the example app (it starts on the first request, stops after 60 s idle, keeps its count):
  curl -H 'Host: $DOMAIN' -X POST http://$EDGE_ADDR/count

Or steer it with the command line (target/$PROFILE/shadow):
  SHADOW_MASTER_URL=http://$MASTER_ADDR SHADOW_API_TOKEN=$TOKEN $BIN/shadow apps list

Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true

#!/usr/bin/env bash
# Where the proxies' CPU goes per request: user and system time (from /proc/PID/stat), system
# calls and context switches (perf stat), for Shadow's edge + node, nginx's two hops, and the
# node alone, each under the same wrk load as part 1 of run.sh. A by-hand diagnostic for the
# warm path (docs/benchmarks.md, notes); needs perf (Debian's linux-perf).
#   contrib/bench/cpu-split.sh [seconds]    (BIN_DIR defaults to target/release)
# With SYSCALLS=1 it also prints which system calls each path makes per request (a second
# table), to compare the kernel side call by call.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_=${1:-5}
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/release} IMAGE=${IMAGE:-shadow-test/counter:latest}
PAUSE_BIN=${PAUSE_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/$(rustc -vV | sed -n 's/^host: //p')/release/shadow-pause}
WORK=$(mktemp -d /tmp/shadow-cpu.XXXXXX) OUT_MD=/dev/null
NGINX_PIDS=()
# shellcheck source=contrib/bench/lib.sh
source contrib/bench/lib.sh
# shellcheck source=contrib/bench/warm.sh
source contrib/bench/warm.sh
trap 'for p in "${NGINX_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; stop_stack; rm -rf "$WORK"' EXIT
command -v perf >/dev/null || fail "perf is not installed (apt-get install linux-perf)"

start_stack cpu
id=$(register warm warm.bench.test none 3600)
wait_known warm.bench.test
curl -sf -o /dev/null -H 'Host: warm.bench.test' "http://127.0.0.1:$EPORT/"
cid=$(containers_of "$id"); cport=$(app_port "$cid")
n1=$(free_port); n2=$(free_port)
nginx_conf "$WORK/nginx-node" "$n2" "$cport"; nginx_conf "$WORK/nginx-edge" "$n1" "$n2"
nginx -e stderr -p "$WORK/nginx-node" -c "$WORK/nginx-node/nginx.conf" -g 'daemon off;' 2>/dev/null &
NGINX_PIDS+=($!)
nginx -e stderr -p "$WORK/nginx-edge" -c "$WORK/nginx-edge/nginx.conf" -g 'daemon off;' 2>/dev/null &
NGINX_PIDS+=($!)
wait_http "http://127.0.0.1:$n1/" warm.bench.test || fail "nginx does not answer"
ngx=$(for p in "${NGINX_PIDS[@]}"; do echo "$p"; pgrep -P "$p" || true; done | paste -sd,)

# user_system PIDS (comma-separated): "user_ticks system_ticks" summed.
user_system() {
  local u=0 k=0 p a b
  for p in ${1//,/ }; do
    read -r a b < <(awk '{ print $14, $15 }' "/proc/$p/stat")
    u=$((u + a)); k=$((k + b))
  done
  echo "$u $k"
}

echo "| path | requests | user µs/req | system µs/req | syscalls/req | context switches/req |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
# The calls a proxy's warm path may make, for SYSCALLS=1.
CALLS="read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait epoll_ctl futex sched_yield accept4 close setsockopt getsockopt ioctl mmap munmap madvise brk"
EVENTS=raw_syscalls:sys_enter,context-switches
if [ "${SYSCALLS:-0}" = 1 ]; then
  for c in $CALLS; do EVENTS+=",syscalls:sys_enter_$c"; done
fi
: >"$WORK/calls"
measure() { # NAME URL PIDS
  local u0 k0 u1 k1 out req hz
  hz=$(getconf CLK_TCK)
  perf stat -x, -e "$EVENTS" -p "$3" -o "$WORK/stat" -- sleep "$SECONDS_" &
  local perf_pid=$!
  read -r u0 k0 < <(user_system "$3")
  out=$(wrk -t2 -c64 -d"${SECONDS_}s" -H 'Host: warm.bench.test' "$2")
  read -r u1 k1 < <(user_system "$3")
  wait "$perf_pid" || true
  req=$(echo "$out" | grep -oE '[0-9]+ requests in' | cut -d' ' -f1)
  python3 - "$1" "$req" "$((u1 - u0))" "$((k1 - k0))" "$hz" "$WORK/stat" "$WORK/calls" <<'PY'
import sys
name, req, user, system, hz, stat, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
counts = {}
for line in open(stat):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].replace(".", "").isdigit():
        counts[f[2]] = float(f[0])
us = lambda ticks: ticks * 1e6 / hz / req
print(f"| {name} | {req} | {us(user):.1f} | {us(system):.1f} | "
      f"{counts.get('raw_syscalls:sys_enter', 0) / req:.2f} | {counts.get('context-switches', 0) / req:.2f} |")
per_call = {k.split("sys_enter_")[1]: v / req for k, v in counts.items() if "sys_enter_" in k and v > 0}
with open(calls, "a") as f:
    f.write(name + "\t" + " ".join(f"{k}={v:.3f}" for k, v in sorted(per_call.items(), key=lambda kv: -kv[1])) + "\n")
PY
}
measure "Shadow edge + node" "http://127.0.0.1:$EPORT/" "$EDGE_PID,$NODE_PID"
measure "nginx + nginx" "http://127.0.0.1:$n1/" "$ngx"
measure "Shadow node alone" "http://127.0.0.1:$NPORT/" "$NODE_PID"
if [ "${SYSCALLS:-0}" = 1 ]; then
  echo
  echo "| path | system calls per request, by call |"
  echo "| --- | --- |"
  while IFS=$'\t' read -r name calls; do echo "| $name | ${calls:-none counted} |"; done <"$WORK/calls"
fi

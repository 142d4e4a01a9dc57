# Part 1, warm path (sourced by run.sh, after lib.sh). One running counter container, started by
# Shadow; wrk (fixed connections and duration) against GET / of it: direct to its published
# port, through the node proxy, through edge + node, and through two nginx (edge-like nginx ->
# node-like nginx -> container, worker_processes auto, upstream keep-alive). Besides req/s, the
# CPU time each proxy and the backend (docker-proxy + the app) spent per request, from
# /proc/PID/stat: a figure the machine's noise moves much less than req/s.

# cpu_ticks PID...: user + system clock ticks of the processes (all their threads) so far.
cpu_ticks() {
  local p t=0 v
  for p in "$@"; do
    v=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)
    t=$((t + v))
  done
  echo "$t"
}

# wrk_run NAME URL HOST "PROXY_PIDS": runs wrk, appends "NAME req/s p50_ms p99_ms proxy_us
# backend_us" to $WORK/warm.txt (CPU microseconds per request of the proxies and of
# $BACKEND_PIDS).
wrk_run() {
  local name=$1 url=$2 host=${3:-} proxies=${4:-} out args=() p0 b0 p1 b1
  [ -z "$host" ] || args=(-H "Host: $host")
  # shellcheck disable=SC2086
  p0=$(cpu_ticks $proxies); b0=$(cpu_ticks $BACKEND_PIDS)
  out=$(wrk -t "$WRK_THREADS" -c "$WRK_CONNS" -d "${WARM_SECONDS}s" --latency "${args[@]}" "$url")
  # shellcheck disable=SC2086
  p1=$(cpu_ticks $proxies); b1=$(cpu_ticks $BACKEND_PIDS)
  echo "$out" >>"$WORK/warm-wrk.log"
  python3 - "$name" "$out" "$((p1 - p0))" "$((b1 - b0))" "$(getconf CLK_TCK)" >>"$WORK/warm.txt" <<'PY'
import re, sys
name, out, proxy_ticks, backend_ticks, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
requests = int(re.search(r"(\d+) requests in", out).group(1))
lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
socket_errors = re.search(r"Socket errors: (.*)", out)
if errors or socket_errors:
    sys.exit(f"{name}: wrk saw errors: {errors.group(0) if errors else ''} {socket_errors.group(0) if socket_errors else ''}")
per_req = lambda ticks: ticks * 1e6 / hz / max(requests, 1)
print(name, f"{rps:.0f}", f"{ms(lat['50']):.3f}", f"{ms(lat['99']):.3f}", f"{per_req(proxy_ticks):.1f}", f"{per_req(backend_ticks):.1f}")
PY
}

nginx_conf() { # PREFIX LISTEN_PORT UPSTREAM_PORT
  mkdir -p "$1/logs"
  cat >"$1/nginx.conf" <<CONF
worker_processes auto;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1/body; proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi; uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;
  upstream next { server 127.0.0.1:$3; keepalive 128; }
  server {
    listen 127.0.0.1:$2 reuseport;
    location / {
      proxy_pass http://next;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }
}
CONF
}

part_warm() {
  local domain=warm.bench.test id cid cport n1 n2
  id=$(register warm "$domain" none 3600)
  wait_known "$domain"
  curl -sf -o /dev/null -H "Host: $domain" "http://127.0.0.1:$EPORT/" || fail "warm: the app does not answer through the edge"
  cid=$(containers_of "$id"); [ -n "$cid" ] || fail "warm: no container for the task"
  cport=$(app_port "$cid")
  # The backend every path ends in: the app's process and the docker-proxy of its port.
  BACKEND_PIDS="$(docker inspect -f '{{.State.Pid}}' "$cid") $({ pgrep -f "docker-proxy.*-host-port $cport( |$)" || true; } | tr '\n' ' ')"

  n1=$(free_port); n2=$(free_port)
  nginx_conf "$WORK/nginx-node" "$n2" "$cport"
  nginx_conf "$WORK/nginx-edge" "$n1" "$n2"
  nginx -e stderr -p "$WORK/nginx-node" -c "$WORK/nginx-node/nginx.conf" -g 'daemon off;' 2>>"$WORK/nginx.log" &
  NGINX_PIDS+=($!)
  nginx -e stderr -p "$WORK/nginx-edge" -c "$WORK/nginx-edge/nginx.conf" -g 'daemon off;' 2>>"$WORK/nginx.log" &
  NGINX_PIDS+=($!)
  wait_http "http://127.0.0.1:$n1/" "$domain" || fail "warm: nginx does not answer ($WORK/nginx.log)"
  # Both nginx masters and their workers.
  local nginx_pids
  nginx_pids="${NGINX_PIDS[*]} $(for p in "${NGINX_PIDS[@]}"; do pgrep -P "$p" || true; done | tr '\n' ' ')"

  # A short warm-up, then $WARM_ROUNDS rounds of the four paths in turn (so a burst of load
  # from elsewhere on the machine hits every path alike); per path, the round with the median
  # req/s is reported.
  local saved=$WARM_SECONDS r; WARM_SECONDS=1
  : >"$WORK/warm.txt"
  wrk_run warmup "http://127.0.0.1:$cport/" >/dev/null
  WARM_SECONDS=$saved
  : >"$WORK/warm.txt"
  log "warm: $WARM_ROUNDS rounds of wrk -t$WRK_THREADS -c$WRK_CONNS -d${WARM_SECONDS}s on 4 paths"
  for r in $(seq 1 "$WARM_ROUNDS"); do
    wrk_run direct "http://127.0.0.1:$cport/" "" "" || fail "warm: direct"
    wrk_run node "http://127.0.0.1:$NPORT/" "$domain" "$NODE_PID" || fail "warm: node"
    wrk_run edge+node "http://127.0.0.1:$EPORT/" "$domain" "$EDGE_PID $NODE_PID" || fail "warm: edge+node"
    wrk_run nginx+nginx "http://127.0.0.1:$n1/" "$domain" "$nginx_pids" || fail "warm: nginx"
  done
  cp "$WORK/warm.txt" "$WORK/warm-rounds.txt"
  # The median round per path (by req/s), in the order measured.
  python3 - "$WORK/warm-rounds.txt" >"$WORK/warm.txt" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    name, *vals = line.split()
    rows.setdefault(name, []).append(vals)
for name, runs in rows.items():
    runs.sort(key=lambda v: float(v[0]))
    print(name, *runs[len(runs) // 2])
PY
  for p in "${NGINX_PIDS[@]}"; do kill -QUIT "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
  NGINX_PIDS=()

  local direct node edge ngx
  direct=$(awk '$1=="direct" {print $2}' "$WORK/warm.txt")
  node=$(awk '$1=="node" {print $2}' "$WORK/warm.txt")
  edge=$(awk '$1=="edge+node" {print $2}' "$WORK/warm.txt")
  ngx=$(awk '$1=="nginx+nginx" {print $2}' "$WORK/warm.txt")
  WARM_RATIO_NGINX=$(ratio "$edge" "$ngx")
  WARM_CPU_RATIO=$(ratio "$(awk '$1=="nginx+nginx" {print $5}' "$WORK/warm.txt")" "$(awk '$1=="edge+node" {print $5}' "$WORK/warm.txt")")
  # The same two comparisons paired by round: edge+node and nginx+nginx run one right after the
  # other, so a round's ratio sees the machine in one state; the median of the rounds' ratios is
  # steadier than the ratio of two medians picked from different rounds.
  local paired
  paired=$(python3 - "$WORK/warm-rounds.txt" <<'PY'
import statistics, sys
edge, ngx = [], []
for line in open(sys.argv[1]):
    name, rps, _p50, _p99, pus, _bus = line.split()
    if name == "edge+node":
        edge.append((float(rps), float(pus)))
    elif name == "nginx+nginx":
        ngx.append((float(rps), float(pus)))
rps = [e[0] / n[0] for e, n in zip(edge, ngx)]
cpu = [n[1] / e[1] for e, n in zip(edge, ngx) if e[1] > 0]
fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs)
print(f"{statistics.median(rps):.2f}", f"{statistics.median(cpu):.2f}" if cpu else "-", fmt(rps).replace(" ", ","), fmt(cpu).replace(" ", ","))
PY
)
  read -r WARM_PAIRED_RPS WARM_PAIRED_CPU paired_rps paired_cpu <<<"$paired"

  md "## 1. Warm path"
  md ""
  md "GET / of the counter app (keep-alive), \`wrk -t$WRK_THREADS -c$WRK_CONNS -d${WARM_SECONDS}s --latency\`, all four paths to the same container, in turn, $WARM_ROUNDS rounds; per path the round with the median req/s. Every path, \"direct\" included, reaches the container through its published port on 127.0.0.1 (Docker's docker-proxy)."
  md ""
  md "Req/s of every round (direct, node, edge+node, nginx+nginx): $(awk '{ printf "%s%s %s", (NR > 1 ? "; " : ""), $1, $2 }' "$WORK/warm-rounds.txt")"
  md ""
  md "| path | req/s | p50 ms | p99 ms | req/s vs direct | proxies' CPU µs/request | backend's CPU µs/request |"
  md "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  while read -r name rps p50 p99 pus bus; do
    md "| $name | $rps | $p50 | $p99 | $(ratio "$rps" "$direct") | $pus | $bus |"
  done <"$WORK/warm.txt"
  md ""
  md "- Shadow (node) / direct: **$(ratio "$node" "$direct")**; Shadow (edge+node) / direct: **$(ratio "$edge" "$direct")**"
  md "- CPU per request of the two hops, nginx's / Shadow's: **$WARM_CPU_RATIO** (above 1: Shadow spends less)"
  md "- Shadow's two hops / nginx's two hops: **$WARM_RATIO_NGINX** (target ≥ 1.3: $(awk -v r="$WARM_RATIO_NGINX" 'BEGIN { print (r >= 1.3 ? "met" : "**missed**") }'))"
  md "- Paired by round (each round's edge+node against the nginx+nginx run right after it), median of the $WARM_ROUNDS rounds: nginx's / Shadow's CPU **$WARM_PAIRED_CPU** (rounds ${paired_cpu//,/, }); Shadow / nginx req/s **$WARM_PAIRED_RPS** (rounds ${paired_rps//,/, })"
  md ""
}

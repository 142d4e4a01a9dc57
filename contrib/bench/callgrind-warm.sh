#!/usr/bin/env bash
# User-space instructions per warm request, counted by callgrind (valgrind): the node proxy
# alone, the edge proxy (in front of the node), and one nginx hop with the same upstream
# keep-alive as part 1 of run.sh. Instruction counts hardly move with the machine's load (±1 %), so a
# change to the hot path can be judged from one run (a timed benchmark here moves ±5 % and more).
# Kernel time is not counted: see cpu-split.sh for that side.
#   contrib/bench/callgrind-warm.sh [seconds] [out-dir]   (release binaries, image and
#   static shadow-pause built as run.sh builds them; needs valgrind, wrk, nginx)
# Prints "who instructions-per-request requests"; the out-dir keeps each profile and its
# inclusive top functions (callgrind_annotate) for a closer look (the measured profile is
# WHO.out.1; WHO.out is valgrind's nearly empty dump at exit). CALLGRIND_OPTS adds options,
# e.g. CALLGRIND_OPTS=--cache-sim=yes for simulated cache misses (I1mr, D1mr, LLmr…) per request.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_=${1:-8}
OUT_DIR=${2:-$(mktemp -d /tmp/shadow-callgrind.XXXXXX)}
mkdir -p "$OUT_DIR"
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/release} IMAGE=${IMAGE:-shadow-test/counter:latest}
PAUSE_BIN=${PAUSE_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/$(rustc -vV | sed -n 's/^host: //p')/release/shadow-pause}
WORK=$(mktemp -d /tmp/shadow-cg.XXXXXX) OUT_MD=/dev/null
NGINX_PID=""
# shellcheck source=contrib/bench/lib.sh
source contrib/bench/lib.sh
# shellcheck source=contrib/bench/warm.sh
source contrib/bench/warm.sh
trap '[ -z "$NGINX_PID" ] || kill "$NGINX_PID" 2>/dev/null || true; stop_stack; rm -rf "$WORK"' EXIT
command -v valgrind >/dev/null || fail "valgrind is not installed (apt-get install valgrind)"

CALLGRIND_OPTS=${CALLGRIND_OPTS:-}
cg() { echo "valgrind --tool=callgrind --instr-atstart=no $CALLGRIND_OPTS --callgrind-out-file=$OUT_DIR/$1.out"; }
NODE_WRAP=$(cg node) EDGE_WRAP=$(cg edge) start_stack cg
id=$(register warm warm.bench.test none 3600)
wait_known warm.bench.test
wait_http "http://127.0.0.1:$EPORT/" warm.bench.test 600 || fail "the app does not answer through the edge"
cid=$(containers_of "$id"); cport=$(app_port "$cid")

# measure WHO PID URL: instructions of PID while wrk runs against URL, per request.
measure() {
  local who=$1 pid=$2 url=$3 out requests
  wrk -t1 -c8 -d1s -H 'Host: warm.bench.test' "$url" >/dev/null  # connections and pools warm
  callgrind_control -z "$pid" >/dev/null
  callgrind_control -i on "$pid" >/dev/null
  out=$(wrk -t1 -c8 -d"${SECONDS_}s" -H 'Host: warm.bench.test' "$url")
  callgrind_control -i off "$pid" >/dev/null
  callgrind_control -d "$who" "$pid" >/dev/null
  requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$out")
  local file; file=$(ls -t "$OUT_DIR/$who.out"* | head -1)
  callgrind_annotate --inclusive=yes "$file" >"$OUT_DIR/$who.inclusive.txt" 2>/dev/null
  callgrind_annotate "$file" >"$OUT_DIR/$who.self.txt" 2>/dev/null
  local total
  total=$(awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }' "$OUT_DIR/$who.self.txt")
  echo "$who $(( total / requests )) $requests$(per_request_misses "$OUT_DIR/$who.self.txt" "$requests")"
}

# per_request_misses ANNOTATION REQUESTS: " I1mr=… D1mr=… D1mw=…" per request when the profile
# has cache events (CALLGRIND_OPTS=--cache-sim=yes), else nothing.
per_request_misses() {
  python3 - "$1" "$2" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
events = re.search(r"^Events recorded:\s+(.*)$", text, re.M).group(1).split()
totals = [l for l in text.splitlines() if "PROGRAM TOTALS" in l][0]
counts = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) \(", totals)]
wanted = [e for e in ("I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw") if e in events]
print("".join(f" {e}={counts[events.index(e)] / int(sys.argv[2]):.0f}" for e in wanted), end="")
PY
}

measure node "$NODE_PID" "http://127.0.0.1:$NPORT/"
measure edge "$EDGE_PID" "http://127.0.0.1:$EPORT/"

n1=$(free_port)
nginx_conf "$WORK/nginx" "$n1" "$cport"
sed -i 's/^worker_processes auto;/worker_processes 1; master_process off;/' "$WORK/nginx/nginx.conf"
# shellcheck disable=SC2086
valgrind --tool=callgrind --instr-atstart=no $CALLGRIND_OPTS --callgrind-out-file="$OUT_DIR/nginx.out" \
  nginx -e stderr -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' 2>>"$WORK/nginx.log" &
NGINX_PID=$!
wait_http "http://127.0.0.1:$n1/" warm.bench.test 600 || fail "nginx does not answer ($WORK/nginx.log)"
measure nginx "$NGINX_PID" "http://127.0.0.1:$n1/"
echo "profiles: $OUT_DIR" >&2

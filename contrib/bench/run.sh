#!/usr/bin/env bash
# Shadow's benchmarks, side by side with the direct path, nginx and bare Docker, on this machine,
# in one run: every figure in docs/benchmarks.md is a ratio of two things measured here, now.
#
#   contrib/bench/run.sh            # full: release binaries, writes docs/benchmarks.md (minutes)
#   contrib/bench/run.sh --short    # CI: debug binaries, small sizes, seconds per part; writes a
#                                   # temp file (or --out FILE); fails if a part breaks
#   contrib/bench/run.sh --only warm,herd   # some parts: warm coldstart volume herd reap scale failover frozen instructions
#
# Parts, one file each under contrib/bench/: warm.sh (1. warm path: wrk direct / node / edge+node /
# nginx+nginx), coldstart.sh (2. cold start vs docker run), volume.sh (3. S3 restore/persist vs
# raw GET/PUT), herd.sh (4. thundering herd), reap.sh (5. reap precision), scale.sh (6. memory
# with many idle tasks, routing lookup), failover.sh (7. kill -9 failover, cut links, a stopped
# master: the lease fault tests; not in --short, where CI runs those tests anyway), frozen.sh (8. thaw
# on request vs Docker's unpause + request, memory per frozen app, the busy check's cost), instructions.sh (9. user-space
# instructions per warm request under callgrind, Shadow's proxies and nginx; not in --short). Timing goals live here, never in timed tests; the short
# mode checks only correctness (herd: one container, every answer 200).
#
# Needs: cargo, Docker Engine, python3, curl; wrk and nginx (installed from Debian's packages if
# absent), valgrind for part 9 (likewise); s3s-fs for part 3 (`cargo install s3s-fs --version 0.14.1 --features binary`).
# Traffic stays on 127.0.0.1; nothing is pulled from a registry.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

SHORT=0; OUT=""; ALL="warm,coldstart,volume,herd,reap,scale,failover,frozen,instructions"; ONLY=$ALL
while [ $# -gt 0 ]; do
  case $1 in
    --short) SHORT=1 ;;
    --out) OUT=$2; shift ;;
    --only) ONLY=$2; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$SHORT" = 1 ]; then
  PROFILE=debug WRK_THREADS=1 WRK_CONNS=8 WARM_SECONDS=1 WARM_ROUNDS=1 COLD_PAIRS=2 VOLUME_SIZES_MIB=1 VOLUME_REPEAT=1
  HERD_N=1000 REAP_RUNS=1 REAP_IDLE_S=1 SCALE_COUNTS="1000" LOOKUP_TASKS="1000" FROZEN_PAIRS=2 FROZEN_STATS_CALLS=5 INSTR_SECONDS=2
else
  PROFILE=release WRK_THREADS=2 WRK_CONNS=64 WARM_SECONDS=5 WARM_ROUNDS=5 COLD_PAIRS=10 VOLUME_SIZES_MIB=10,100,1024 VOLUME_REPEAT=5
  HERD_N=1000 REAP_RUNS=10 REAP_IDLE_S=5 SCALE_COUNTS="10000 100000" LOOKUP_TASKS="10000 100000" FROZEN_PAIRS=10 FROZEN_STATS_CALLS=50 INSTR_SECONDS=8
fi
# Every knob can be overridden from the environment, e.g. COLD_PAIRS=20 contrib/bench/run.sh.
for v in WRK_THREADS WRK_CONNS WARM_SECONDS WARM_ROUNDS COLD_PAIRS VOLUME_SIZES_MIB VOLUME_REPEAT HERD_N REAP_RUNS REAP_IDLE_S SCALE_COUNTS LOOKUP_TASKS FROZEN_PAIRS FROZEN_STATS_CALLS INSTR_SECONDS; do
  o=BENCH_$v; [ -z "${!o:-}" ] || printf -v "$v" '%s' "${!o}"
done
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=$TARGET_DIR/$PROFILE
IMAGE=${IMAGE:-shadow-test/counter:latest}

WORK=$(mktemp -d /tmp/shadow-bench.XXXXXX)
OUT_MD=$WORK/benchmarks.md
NGINX_PIDS=()
# shellcheck source=contrib/bench/lib.sh
source contrib/bench/lib.sh
for part in warm coldstart volume herd reap scale failover frozen instructions; do
  # shellcheck disable=SC1090
  source "contrib/bench/$part.sh"
done

cleanup() {
  local p
  for p in "${NGINX_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_stack
  docker ps -aq --filter "label=shadow.bench=$$" | xargs -r docker rm -f >/dev/null
  if [ "${KEEP_WORK:-0}" = 1 ]; then log "scratch kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# --- prerequisites ------------------------------------------------------------------------------
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  log "installing wrk and nginx from Debian's packages"
  sudo_=(); [ "$(id -u)" = 0 ] || sudo_=(sudo)
  "${sudo_[@]}" apt-get install -y wrk nginx >/dev/null 2>&1 \
    || { "${sudo_[@]}" apt-get update >/dev/null && "${sudo_[@]}" apt-get install -y wrk nginx >/dev/null; }
fi
docker info >/dev/null 2>&1 || fail "Docker Engine is not reachable"
export PATH=$PATH:${CARGO_HOME:-$HOME/.cargo}/bin

want() { [[ ",$ONLY," == *",$1,"* ]]; }
if want instructions && [ "$SHORT" = 0 ] && ! command -v valgrind >/dev/null; then
  log "installing valgrind from Debian's packages"
  sudo_=(); [ "$(id -u)" = 0 ] || sudo_=(sudo)
  "${sudo_[@]}" apt-get install -y valgrind >/dev/null 2>&1 \
    || { "${sudo_[@]}" apt-get update >/dev/null && "${sudo_[@]}" apt-get install -y valgrind >/dev/null; }
fi

began=$(date +%s)
flag=()
# Part 7 builds and runs its own tests; the others need the release programs and the image.
if want warm || want coldstart || want volume || want herd || want reap || want scale || want frozen || want instructions; then
  log "building the three programs ($PROFILE) and the test image $IMAGE"
  [ "$PROFILE" = release ] && flag=(--release)
  # SKIP_BUILD=1 uses the binaries and image as they are (e.g. built just before).
  if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build -q "${flag[@]}" -p shadow-master -p shadow-nodeproxy -p shadow-edgeproxy --bins
    HOST_TRIPLE=$(rustc -vV | sed -n 's/^host: //p')  # x86_64 or aarch64, whatever this machine is
    RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release -p shadow-counter -p shadow-pause --target "$HOST_TRIPLE"
    ctx=$(mktemp -d -p "$WORK")
    cp "$TARGET_DIR/$HOST_TRIPLE/release/counter" contrib/apps/counter/Dockerfile "$ctx"
    DOCKER_BUILDKIT=0 docker build --quiet -t "$IMAGE" "$ctx" >/dev/null
  fi
  for b in master nodeproxy edgeproxy; do [ -x "$BIN_DIR/shadow-$b" ] || fail "no $BIN_DIR/shadow-$b"; done
  # The sandboxes' process, static (the node makes its image FROM scratch).
  PAUSE_BIN=$TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release/shadow-pause
  [ -x "$PAUSE_BIN" ] || fail "no $PAUSE_BIN"
fi

# --- the parts ----------------------------------------------------------------------------------
: >"$OUT_MD"
declare -A TOOK
# run_part NAME: runs part_NAME, its section going to $WORK/section-NAME.md.
run_part() {
  local t; t=$(date +%s)
  OUT_MD=$WORK/section-$1.md; : >"$OUT_MD"
  "part_$1"
  TOOK[$1]=$(( $(date +%s) - t ))
}
if want warm || want coldstart || want herd || want reap || want frozen; then
  start_stack main
  for part in warm coldstart herd reap frozen; do
    if want $part; then run_part $part; fi
  done
  stop_stack
fi
if want volume; then run_part volume; fi
if want scale; then
  start_stack scale
  run_part scale
  stop_stack
fi
if want failover && [ "$SHORT" = 0 ]; then run_part failover; fi
if want instructions && [ "$SHORT" = 0 ]; then run_part instructions; fi
# The sections in order: 1 warm, 2 cold start, 3 volume, 4 herd, 5 reap, 6 scale, 7 failover, 8 frozen,
# 9 instructions.
OUT_MD=$WORK/benchmarks.md
for part in warm coldstart volume herd reap scale failover frozen instructions; do
  [ ! -f "$WORK/section-$part.md" ] || cat "$WORK/section-$part.md" >>"$OUT_MD"
done

# --- the page -----------------------------------------------------------------------------------
mode="full"; cmd="contrib/bench/run.sh"
[ "$SHORT" = 0 ] || { mode="short (CI)"; cmd="contrib/bench/run.sh --short"; }
[ "$ONLY" = "$ALL" ] || cmd="$cmd --only $ONLY"
took=""; for p in "${!TOOK[@]}"; do took="$took $p ${TOOK[$p]} s,"; done
{
  echo "# Benchmarks"
  echo
  echo "Written by \`$cmd\` ($mode mode), which measured every figure below in one run on one"
  echo "machine; each comparison is a ratio of two things measured side by side in that run (these"
  echo "machines are shared and noisy: compare ratios, not absolute numbers, across runs)."
  echo "Timing goals live here, never in timed tests."
  echo
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- Commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "- Machine: $(nproc) CPUs ($(awk -F: '/model name/ { gsub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) memory, $(uname -sr), Docker $(docker version --format '{{.Server.Version}}'), $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
  echo "- Binaries: target/$PROFILE (cargo build${flag[*]:+ ${flag[*]}}); everything on 127.0.0.1"
  echo "- Run again: \`$cmd\` (took $(( $(date +%s) - began )) s:${took%,})"
  echo
  echo "## Summary"
  echo
  echo "| goal | target | this run |"
  echo "| --- | --- | --- |"
  [ -z "${WARM_RATIO_NGINX:-}" ] || echo "| warm path: Shadow's two hops / nginx's two hops (req/s) | ≥ 1.3 | $WARM_RATIO_NGINX |"
  [ -z "${WARM_CPU_RATIO:-}" ] || echo "| warm path: nginx's / Shadow's CPU per request, two hops | ≥ 1.0 | $WARM_CPU_RATIO |"
  [ -z "${WARM_PAIRED_CPU:-}" ] || echo "| warm path, paired by round (median of $WARM_ROUNDS): nginx's / Shadow's CPU; Shadow / nginx req/s | ≥ 1.0; ≥ 1.0 | $WARM_PAIRED_CPU; $WARM_PAIRED_RPS |"
  [ -z "${INSTR_RATIO:-}" ] || echo "| warm path: nginx's / Shadow's user-space instructions per request, two hops | ≥ 1.0 | $INSTR_RATIO |"
  [ -z "${COLD_RATIO:-}" ] || echo "| cold start: Shadow (sandbox pool) / bare docker run + poll (median) | ≤ 0.6 | $COLD_RATIO |"
  [ -z "${VOLUME_WORST:-}" ] || echo "| volume: Shadow / raw S3 throughput (worst case) | ≥ 0.8 | $VOLUME_WORST |"
  [ -z "${FAILOVER_MEDIAN:-}" ] || echo "| failover: a dead node's stateful app answers again (median) | ≤ 6000 ms | $FAILOVER_MEDIAN ms |"
  [ -z "${FROZEN_MEDIAN:-}" ] || echo "| resume from frozen: first byte through edge + node (median) | ≤ 20 ms | $FROZEN_MEDIAN ms |"
  echo
  cat "$OUT_MD"
  # Hand-written notes (profiles, proposed fixes): kept in contrib/bench/notes.md, not measured here.
  [ "$SHORT" = 1 ] || [ ! -f contrib/bench/notes.md ] || cat contrib/bench/notes.md
} >"$WORK/page.md"

if [ -n "$OUT" ]; then dest=$OUT
elif [ "$SHORT" = 1 ]; then dest=$(mktemp /tmp/shadow-bench-short.XXXXXX.md)
else dest=docs/benchmarks.md
fi
cp "$WORK/page.md" "$dest"
log "done in $(( $(date +%s) - began )) s; wrote $dest"
[ "$SHORT" = 0 ] || cat "$dest"

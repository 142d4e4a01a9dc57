# Part 8, the frozen tier (sourced by run.sh, after lib.sh). An app idle past its idle timeout is
# paused, not stopped; the next request thaws it. Measured side by side, alternated, $FROZEN_PAIRS
# pairs: a request to a frozen app through edge and node (time to first byte), against Docker's
# own floor, an unpause through its API plus a direct request to the same image. Then the memory
# a frozen app holds, and what the busy check (one Docker stats call per running app per
# window) costs.

paused() { [ "$(docker inspect -f '{{.State.Paused}}' "$1" 2>/dev/null)" = true ]; }

# until_paused CONTAINER: waits (at most 30 s) until the node has frozen it.
until_paused() {
  local n=600
  until paused "$1"; do
    n=$((n - 1)); [ $n -gt 0 ] || fail "frozen: $1 was not paused"; sleep 0.05
  done
}

part_frozen() {
  local domain="frozen-$RANDOM.bench.test" id cid bare port i shadow=() direct=() mem=()
  log "frozen: $FROZEN_PAIRS pairs"
  # idle_timeout_s = 1, frozen for up to 10 minutes.
  id=$(register frozen "$domain" local 1 600)
  wait_known "$domain"
  curl -sf -o /dev/null -H "Host: $domain" "http://127.0.0.1:$EPORT/" || fail "frozen: no first answer"
  cid=$(containers_of "$id")
  [ -n "$cid" ] || fail "frozen: no container for $domain"
  bare=$(docker run -d --label "shadow.bench=$$" -p 127.0.0.1::8000 "$IMAGE")
  port=$(published_port "$bare")
  wait_http "http://127.0.0.1:$port/" localhost || fail "frozen: the bare container does not answer"
  for i in $(seq 1 "$FROZEN_PAIRS"); do
    local s_ms b_ms
    until_paused "$cid"
    mem+=("$(python3 "$BENCH_PY" memory "$cid")")
    docker pause "$bare" >/dev/null
    if [ $((i % 2)) = 1 ]; then
      s_ms=$(python3 "$BENCH_PY" ttfb "127.0.0.1:$EPORT" "$domain") || fail "frozen: no answer"
      b_ms=$(python3 "$BENCH_PY" unpause-ttfb "$bare" "$port") || fail "frozen: bare unpause"
    else
      b_ms=$(python3 "$BENCH_PY" unpause-ttfb "$bare" "$port") || fail "frozen: bare unpause"
      s_ms=$(python3 "$BENCH_PY" ttfb "127.0.0.1:$EPORT" "$domain") || fail "frozen: no answer"
    fi
    shadow+=("$s_ms"); direct+=("$b_ms")
  done
  [ "$(containers_of "$id")" = "$cid" ] || fail "frozen: the thaws did not keep the same container"
  local sm sx bm bx mm mx cost cg wall cpu
  read -r sm sx <<<"$(stats "${shadow[@]}")"
  read -r bm bx <<<"$(stats "${direct[@]}")"
  read -r mm mx <<<"$(stats "${mem[@]}")"
  FROZEN_MEDIAN=$sm
  cost=$(python3 "$BENCH_PY" busy-cost "$bare" "$FROZEN_STATS_CALLS")
  read -r cg wall cpu <<<"$cost"
  docker rm -f "$bare" >/dev/null

  md "## 8. Frozen tier"
  md ""
  md "An app idle past its \`idle_timeout_s\` (1 s here) is paused, not stopped. A request to it through edge and node (time to first byte, a new connection) against Docker's floor: \`POST /containers/{id}/unpause\` through its API, then a direct GET to the same image's published port. Alternated, $FROZEN_PAIRS pairs; the app is frozen again before each pair."
  md ""
  md "| | median ms | max ms | all (ms) |"
  md "| --- | ---: | ---: | --- |"
  md "| Shadow: thaw on request (edge → node → unpause → container) | $sm | $sx | ${shadow[*]} |"
  md "| Docker API unpause + direct request | $bm | $bx | ${direct[*]} |"
  md ""
  md "- Median ratio Shadow / unpause + request: **$(ratio "$sm" "$bm")**; target ≤ 20 ms median: $(awk -v r="$sm" 'BEGIN { print (r <= 20 ? "met" : "**missed**") }')"
  md "- Memory a frozen app holds (the counter app, its cgroup's count while paused): median $mm MiB, max $mx MiB. It stays within its task's memory limit, which the node's memory budget keeps reserved until the app is stopped (a start short of memory stops frozen apps, least recently used first)."
  md "- The busy check's cost: one read of the app's cgroup CPU counter per running app per \`SHADOW_BUSY_WINDOW_MS\` (5 s), in its own task beside the app's supervisor: median $cg µs per read over $FROZEN_STATS_CALLS reads. Where the node cannot see the cgroup it asks Docker (one-shot stats): median $wall ms wall and $cpu ms of dockerd CPU per call here, about $(awk -v c="$cpu" 'BEGIN { printf "%.3f", c / 5000 * 100 }') % of one CPU per running app."
  md ""
}

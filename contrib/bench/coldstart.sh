# Part 2, cold start (sourced by run.sh, after lib.sh). For a stopped app with an empty `local`
# volume: time to first byte through the edge, against a bare `docker run` + poll-until-200 of the
# same image, alternated (the order flips every pair), $COLD_PAIRS pairs; then Shadow's own
# breakdown by phase from the node's metrics (shadow_node_cold_start_seconds, by phase).

# node_phase_sums: "phase sum count" lines of the node's cold-start histogram.
node_phase_sums() {
  curl -s -H 'Host: shadow.invalid' "http://127.0.0.1:$NPORT/metrics" | awk '
    /^shadow_node_cold_start_seconds_(sum|count)\{/ {
      match($0, /phase="[^"]*"/); p = substr($0, RSTART + 7, RLENGTH - 8)
      if ($0 ~ /_sum\{/) s[p] = $2; else c[p] = $2
    }
    END { for (p in s) print p, s[p], c[p] }'
}

cold_shadow() { # pair number: prints ms to first byte through the edge
  local domain="cold-$1-$RANDOM.bench.test" id t
  # idle_timeout_s = 1: after the measured request it is reaped, and we wait for that, so the next
  # pair starts on an idle machine. (Deleting the task does not stop its container: the node
  # keeps it until its idle timeout.)
  id=$(register "cold-$1" "$domain" local 1)
  wait_known "$domain"
  t=$(curl -sf -o /dev/null -w '%{time_starttransfer}' -H "Host: $domain" "http://127.0.0.1:$EPORT/") \
    || fail "cold start: no 200 through the edge for $domain"
  awk -v t="$t" 'BEGIN { printf "%.0f\n", t * 1000 }'
  local n=300
  while [ -n "$(containers_of "$id")" ]; do
    n=$((n - 1)); [ $n -gt 0 ] || fail "cold start: the container of $domain was not reaped"; sleep 0.05
  done
}

cold_bare() { # prints ms from `docker run` to the first 200
  local t0 t1 cid port
  t0=$(now_ms)
  cid=$(docker run -d --label "shadow.bench=$$" -p 127.0.0.1::8000 "$IMAGE")
  port=$(published_port "$cid")
  until curl -sf -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.005; done
  t1=$(now_ms)
  echo $((t1 - t0))
  docker rm -f "$cid" >/dev/null
}

part_coldstart() {
  local shadow=() bare=() i before after
  before=$(node_phase_sums)
  log "cold start: $COLD_PAIRS pairs"
  for i in $(seq 1 "$COLD_PAIRS"); do
    local s_ms b_ms
    if [ $((i % 2)) = 1 ]; then
      s_ms=$(cold_shadow "$i") || exit 1; b_ms=$(cold_bare) || exit 1
    else
      b_ms=$(cold_bare) || exit 1; s_ms=$(cold_shadow "$i") || exit 1
    fi
    shadow+=("$s_ms"); bare+=("$b_ms")
  done
  after=$(node_phase_sums)
  local s b sm bm
  read -r sm s <<<"$(stats "${shadow[@]}")"
  read -r bm b <<<"$(stats "${bare[@]}")"
  COLD_RATIO=$(ratio "$sm" "$bm")

  md "## 2. Cold start"
  md ""
  md "Stopped app, empty \`local\` volume, GET / through the edge (time to first byte, curl) against \`docker run -d -p 127.0.0.1::8000\` + poll every 5 ms until 200, alternated, $COLD_PAIRS pairs."
  md ""
  md "| | median ms | max ms | all (ms) |"
  md "| --- | ---: | ---: | --- |"
  md "| Shadow (edge → node → container) | $sm | $s | ${shadow[*]} |"
  md "| bare docker run + poll | $bm | $b | ${bare[*]} |"
  md ""
  md "- Median ratio Shadow / bare: **$COLD_RATIO** (target ≤ 0.6, with the node's sandbox pool: $(awk -v r="$COLD_RATIO" 'BEGIN { print (r <= 0.6 ? "met" : "**missed**") }'))"
  md ""
  md "Shadow's phases (mean over these $COLD_PAIRS starts, from \`shadow_node_cold_start_seconds\`; create and start are one phase there; first byte = curl's time to first byte minus the node's total):"
  md ""
  md "| phase | mean ms |"
  md "| --- | ---: |"
  local phase total_ms=0 mean_ttfb
  for phase in lease volume image create_start ready total; do
    local m
    m=$(awk -v p="$phase" -v before="$before" -v after="$after" 'BEGIN {
        n = split(before, bl, "\n"); for (i = 1; i <= n; i++) { split(bl[i], f, " "); bs[f[1]] = f[2]; bc[f[1]] = f[3] }
        n = split(after, al, "\n"); for (i = 1; i <= n; i++) { split(al[i], f, " "); as[f[1]] = f[2]; ac[f[1]] = f[3] }
        c = ac[p] - bc[p]; if (c > 0) printf "%.1f", (as[p] - bs[p]) / c * 1000; else print "n/a" }')
    md "| $phase | $m |"
    [ "$phase" != total ] || total_ms=$m
  done
  mean_ttfb=$(printf '%s\n' "${shadow[@]}" | awk '{ s += $1 } END { printf "%.1f", s / NR }')
  md "| first byte (TTFB − total) | $(awk -v a="$mean_ttfb" -v b="$total_ms" 'BEGIN { printf "%.1f", a - b }') |"
  md ""
}

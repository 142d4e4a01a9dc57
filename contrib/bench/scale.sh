# Part 6, scale of idle apps (sourced by run.sh, after lib.sh): resident memory (VmRSS) of master,
# edge and node with 0 and then $SCALE_COUNTS registered tasks (through the API, concurrently),
# and the routing lookup per request from the criterion bench edgeproxy/benches/lookup.rs.

# caught_up NAME: registers one more task with the real image and asks the edge for it; its 200
# means edge and node have followed the watch past every task registered before it.
caught_up() {
  local domain="$1.bench.test" id n=600
  id=$(register "$1" "$domain" none 5)
  until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $domain" "http://127.0.0.1:$EPORT/")" = 200 ]; do
    n=$((n - 1)); [ $n -gt 0 ] || fail "scale: the edge never routed $domain"; sleep 0.1
  done
  curl -sf -o /dev/null -X DELETE -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$MPORT/tasks/$id"
}

scale_row() { # label seconds
  sleep 1
  md "| $1 | $(( $(rss_kib "$MASTER_PID") / 1024 )) | $(( $(rss_kib "$EDGE_PID") / 1024 )) | $(( $(rss_kib "$NODE_PID") / 1024 )) | $2 |"
}

part_scale() {
  local have=0 count took
  md "## 6. Scale of idle apps"
  md ""
  md "Resident memory (VmRSS, MiB) after registering the tasks through the API (16 connections at once), once the edge and the node have followed them."
  md ""
  md "| registered tasks | master MiB | edge MiB | node MiB | registration took |"
  md "| ---: | ---: | ---: | ---: | ---: |"
  caught_up scale-probe-0
  scale_row 0 -
  for count in $SCALE_COUNTS; do
    log "scale: registering up to $count tasks"
    took=$(python3 "$BENCH_PY" register "http://127.0.0.1:$MPORT" "$TOKEN" $((count - have)) "idle$count" "$IMAGE" 16) \
      || fail "scale: registration failed"
    have=$count
    caught_up "scale-probe-$count"
    scale_row "$count" "${took} s"
  done
  md ""

  local out n
  if [ "$SHORT" = 1 ]; then
    # Test mode: every benchmark runs once, in the debug profile; proves it builds and runs.
    for n in $LOOKUP_TASKS; do
      log "scale: routing lookup bench, test mode, $n tasks"
      out=$(SHADOW_BENCH_TASKS=$n cargo test -q -p shadow-edgeproxy --bench lookup 2>&1) \
        || { echo "$out" >&2; fail "scale: the lookup bench failed"; }
    done
    md "Routing lookup: the criterion bench ran once in test mode ($LOOKUP_TASKS tasks; short mode, no timing)."
  else
    md "Routing lookup per request (\`SHADOW_BENCH_TASKS=N cargo bench -p shadow-edgeproxy --bench lookup\`, criterion's middle estimate):"
    md ""
    md "| benchmark | time per lookup |"
    md "| --- | ---: |"
    for n in $LOOKUP_TASKS; do
      log "scale: routing lookup bench (criterion), $n tasks"
      out=$(SHADOW_BENCH_TASKS=$n cargo bench -q -p shadow-edgeproxy --bench lookup 2>&1) \
        || { echo "$out" >&2; fail "scale: the lookup bench failed"; }
      echo "$out" >>"$WORK/lookup.log"
      # criterion prints "name  time:   [low mid high]", the name on its own line when long.
      echo "$out" | awk '
        / time: / { line = $0; name = $0; sub(/ *time:.*/, "", name); if (name == "") name = prev
                    sub(/.*time: *\[/, "", line); split(line, f, " ")
                    printf "| %s | %s %s |\n", name, f[3], f[4] }
        { prev = $0 }' >>"$OUT_MD"
    done
  fi
  md ""
}

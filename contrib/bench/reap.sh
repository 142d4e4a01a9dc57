# Part 5, reap precision (sourced by run.sh, after lib.sh): with idle_timeout_s = $REAP_IDLE_S,
# the time from the last response to the container being stopped (docker `die`) and gone
# (`destroy`), $REAP_RUNS runs, timed by Docker's own event clock.

part_reap() {
  local i domain id ev last t_die t_gone die=() gone=()
  log "reap: $REAP_RUNS runs, idle_timeout_s = $REAP_IDLE_S"
  for i in $(seq 1 "$REAP_RUNS"); do
    domain="reap-$i-$RANDOM.bench.test"
    id=$(register "reap-$i" "$domain" none "$REAP_IDLE_S")
    wait_known "$domain"
    ev=$WORK/reap-events-$i
    docker events --filter "label=shadow.task=$id" --filter event=die --filter event=destroy \
      --format '{{.Action}} {{.TimeNano}}' >"$ev" &
    local events_pid=$!
    curl -sf -o /dev/null -H "Host: $domain" "http://127.0.0.1:$EPORT/" || fail "reap: no answer"
    curl -sf -o /dev/null -H "Host: $domain" "http://127.0.0.1:$EPORT/" || fail "reap: no answer"
    last=$(date +%s%N)
    local n=$(( (REAP_IDLE_S + 30) * 20 ))
    until grep -q '^destroy' "$ev"; do
      n=$((n - 1)); [ $n -gt 0 ] || fail "reap: the container of $domain was not removed"; sleep 0.05
    done
    kill "$events_pid" 2>/dev/null; wait "$events_pid" 2>/dev/null || true
    t_die=$(awk '$1=="die" {print $2; exit}' "$ev"); t_gone=$(awk '$1=="destroy" {print $2; exit}' "$ev")
    die+=("$(( (t_die - last) / 1000000 ))"); gone+=("$(( (t_gone - last) / 1000000 ))")
  done
  local dm dx gm gx
  read -r dm dx <<<"$(stats "${die[@]}")"
  read -r gm gx <<<"$(stats "${gone[@]}")"
  md "## 5. Reap precision"
  md ""
  md "\`idle_timeout_s\` = $REAP_IDLE_S; from the end of the last response (through the edge) to Docker's \`die\` and \`destroy\` events of the container, $REAP_RUNS runs."
  md ""
  md "| | median ms | max ms | over the timeout (median) | all (ms) |"
  md "| --- | ---: | ---: | ---: | --- |"
  md "| stopped (die) | $dm | $dx | $(awk -v a="$dm" -v t="$REAP_IDLE_S" 'BEGIN { printf "%+.0f ms", a - t * 1000 }') | ${die[*]} |"
  md "| gone (destroy) | $gm | $gx | $(awk -v a="$gm" -v t="$REAP_IDLE_S" 'BEGIN { printf "%+.0f ms", a - t * 1000 }') | ${gone[*]} |"
  md ""
}

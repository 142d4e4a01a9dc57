# Part 4, thundering herd (sourced by run.sh, after lib.sh): $HERD_N concurrent first requests,
# through the edge, to one stopped app. Correctness, checked: one container started, every
# answer a 200.

part_herd() {
  local domain=herd.bench.test id out ok started errors last
  id=$(register herd "$domain" local 600)
  wait_known "$domain"
  log "herd: $HERD_N concurrent first requests"
  out=$(python3 "$BENCH_PY" herd "127.0.0.1:$EPORT" "$domain" "$HERD_N")
  ok=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["answers"].get("200", 0))' "$out")
  errors=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(sum(v for k, v in d["answers"].items() if k != "200") + d["errors"])' "$out")
  last=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["last_s"])' "$out")
  started=$(containers_of "$id" | wc -l)

  md "## 4. Thundering herd"
  md ""
  md "$HERD_N concurrent first requests (one connection each) through the edge to one stopped app."
  md ""
  md "| containers started | 200 answers | other answers / errors | time to last answer |"
  md "| ---: | ---: | ---: | ---: |"
  md "| $started (must be 1) | $ok (must be $HERD_N) | $errors | $last s |"
  md ""
  [ "$started" = 1 ] || fail "herd: $started containers started, not 1 ($out)"
  [ "$ok" = "$HERD_N" ] || fail "herd: $ok answers were 200, not $HERD_N ($out)"
}

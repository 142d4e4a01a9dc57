# Part 7, failover (sourced by run.sh, after lib.sh): the lease fault tests
# (tests/tests/lease_faults.rs, debug build, real Docker, s3s-fs, loopback) print one FIGURE line
# per case: kill -9 of the node running an `s3` app under 20 POST/s through the edge (3 runs),
# its link to the master blackholed or refused at three points of the renewal period, and the
# master stopped for longer than the TTL. At the node's default lease settings (docs/leases.md).

part_failover() {
  log "failover: the lease fault tests (debug build)"
  local out=$WORK/failover.log
  cargo test -q --workspace --test lease_faults -- --nocapture --test-threads=1 >"$WORK/failover-raw.log" 2>&1 \
    || { tail -40 "$WORK/failover-raw.log" >&2; fail "failover: the lease fault tests failed"; }
  # The programs under test log to the same output: a FIGURE may not start its line.
  grep -o 'FIGURE .*' "$WORK/failover-raw.log" >"$out"
  field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
  md "## 7. Failover and leases"
  md ""
  md "The lease fault tests (\`cargo test --workspace --test lease_faults -- --nocapture\`, debug build) at the default lease settings: TTL 4 s, one renewal call per node per second, kill 1 s before the deadline, master grace 0.5 s ([leases.md](leases.md) has the arithmetic). The counter app on an \`s3\` volume, 20 POST/s through the edge."
  md ""
  md "Kill -9 of the node serving the app (then \`shadow-nodeproxy cleanup\`, as the systemd unit's ExecStopPost does): time from the kill to the first answer from the other node, and requests that failed (all of them sent before the kill, to the dead node)."
  md ""
  md "| run | failover ms | requests | failed |"
  md "| ---: | ---: | ---: | ---: |"
  grep '^FIGURE kill run=' "$out" | while read -r line; do
    md "| $(field run <<<"$line") | $(field failover_ms <<<"$line") | $(field requests <<<"$line") | $(field failed <<<"$line") |"
  done
  FAILOVER_MEDIAN=$(grep '^FIGURE kill median' "$out" | field median_failover_ms)
  md ""
  md "- Median failover after kill -9: **${FAILOVER_MEDIAN} ms** (goal: within 6 s)"
  md ""
  md "The link from the serving node (A) to the master cut while the edge still reaches it: when A's app was killed, when B was granted the lease (both after the cut), and by how much A's container was dead before B's grant (Docker's event clock)."
  md ""
  md "| cut | after a renewal | A's app killed ms | B granted ms | A dead before grant ms | requests | failed | renewal calls/s (A) |"
  md "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  grep '^FIGURE partition' "$out" | while read -r line; do
    md "| $(field mode <<<"$line") | $(field offset_ms <<<"$line") ms | $(field a_killed_after_cut_ms <<<"$line") | $(field b_granted_after_cut_ms <<<"$line") | $(field a_dead_before_grant_ms <<<"$line") | $(field requests <<<"$line") | $(field failed <<<"$line") | $(field renewal_calls_per_s <<<"$line") |"
  done
  md ""
  md "- The master stopped: the running app was killed **$(grep '^FIGURE master_down' "$out" | field app_killed_after_ms) ms** into the outage (the arithmetic: between 2000 and 3000 ms); a cold start sent during the outage waited and was served once the master was back."
  md ""
}

# Part 9, instructions per request (sourced by run.sh, after lib.sh): contrib/bench/callgrind-warm.sh
# on the same release binaries, with its own stack: the user-space instructions each proxy
# executes per warm request under callgrind, and one nginx hop's. Not timed: the count of one
# binary does not move with the machine's load, so it is the figure to judge a change of the
# request path by, where part 1's timed figures move by more than the change. Kernel time is not
# in it (part 1's CPU columns have both). Full mode only; needs valgrind.

part_instructions() {
  local out node edge ngx
  out=$(BIN_DIR=$BIN_DIR PAUSE_BIN=$PAUSE_BIN IMAGE=$IMAGE \
    bash contrib/bench/callgrind-warm.sh "$INSTR_SECONDS" "$WORK/callgrind" 2>>"$WORK/callgrind.log") \
    || fail "instructions: callgrind-warm.sh failed ($WORK/callgrind.log)"
  node=$(awk '$1=="node" {print $2}' <<<"$out")
  edge=$(awk '$1=="edge" {print $2}' <<<"$out")
  ngx=$(awk '$1=="nginx" {print $2}' <<<"$out")
  [ -n "$node" ] && [ -n "$edge" ] && [ -n "$ngx" ] || fail "instructions: no counts in: $out"
  INSTR_RATIO=$(ratio $((2 * ngx)) $((node + edge)))

  md "## 9. Instructions per request (callgrind)"
  md ""
  md "\`contrib/bench/callgrind-warm.sh $INSTR_SECONDS\`: each proxy under valgrind's callgrind, counting only while \`wrk -t1 -c8 -d${INSTR_SECONDS}s\` sends GET / of the counter app (node: wrk → node; edge: wrk → edge → node; nginx: one hop with part 1's upstream keep-alive). User space only: the kernel's share is in part 1's CPU columns."
  md ""
  md "| proxy | instructions per request | requests counted |"
  md "| --- | ---: | ---: |"
  while read -r who per n; do
    md "| $who | $per | $n |"
  done <<<"$out"
  md ""
  md "- nginx's two hops / Shadow's two hops, user-space instructions per request: **$INSTR_RATIO** (above 1: Shadow executes fewer)"
  md ""
}

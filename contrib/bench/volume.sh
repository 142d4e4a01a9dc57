# Part 3, volume (sourced by run.sh, after lib.sh): restore and persist of $VOLUME_SIZES_MIB MiB
# volumes, incompressible and compressible, through the S3 backend against a raw GET/PUT of the
# same bytes on the same server (s3s-fs), by the ignored test `throughput_against_raw_transfers`
# in nodeproxy/tests/s3_volume.rs; it prints one "BENCH-S3 ..." line per size and kind.

part_volume() {
  local out profile=()
  [ "$SHORT" = 1 ] || profile=(--release)
  log "volume: sizes $VOLUME_SIZES_MIB MiB (cargo test ${profile[*]} --workspace --test s3_volume)"
  # --workspace, as the test step runs: the same feature set, so the test builds are reused.
  out=$(SHADOW_BENCH_SIZES_MIB=$VOLUME_SIZES_MIB SHADOW_BENCH_REPEAT=$VOLUME_REPEAT cargo test -q "${profile[@]}" --workspace --test s3_volume \
        -- --ignored --exact throughput_against_raw_transfers --nocapture 2>&1) \
    || { echo "$out" >&2; fail "volume: the throughput test failed"; }
  echo "$out" | grep '^BENCH-S3' >"$WORK/volume.txt" || { echo "$out" >&2; fail "volume: no BENCH-S3 lines"; }

  md "## 3. Volume (S3 backend)"
  md ""
  md "Persist (pack + zstd + multipart upload + pointer flip) and restore (pointer read + download + unpack) of a volume holding one file, against a raw PUT of that file read from disk and a raw GET written to a file, on the same S3 server (s3s-fs on loopback). The volume moves to a fresh node for each restore. Each figure is the median of $VOLUME_REPEAT rounds, Shadow and raw alternating. Ratio = raw time / Shadow time (≥ 1 is faster than raw)."
  md ""
  md "| size | data | persist s | raw PUT s | persist / raw | restore s | raw GET s | restore / raw |"
  md "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  VOLUME_WORST=""
  local line
  while read -r line; do
    eval "$(echo "$line" | cut -d' ' -f2-)"  # size_mib= kind= persist_s= raw_put_s= restore_s= raw_get_s=
    # shellcheck disable=SC2154
    local pr gr
    pr=$(ratio "$raw_put_s" "$persist_s"); gr=$(ratio "$raw_get_s" "$restore_s")
    md "| $size_mib MiB | $kind | $persist_s | $raw_put_s | $pr | $restore_s | $raw_get_s | $gr |"
    VOLUME_WORST=$(printf '%s\n' $VOLUME_WORST "$pr" "$gr" | sort -n | head -1)
  done <"$WORK/volume.txt"
  md ""
  md "- Worst ratio: **$VOLUME_WORST** (target ≥ 0.8: $(awk -v r="$VOLUME_WORST" 'BEGIN { print (r >= 0.8 ? "met" : "**missed**") }'))"
  md ""
}

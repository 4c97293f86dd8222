#!/usr/bin/env bash
# Two efa-perf builds beside perftest in one VM run: the engine's latency tests (and optionally
# any other) through build A (EFA_PERF_A, for instance the last commit's binary in a shared
# directory) and build B (EFA_PERF, default this checkout's release build), alternating with
# perftest REPS times (default 5), so a change is measured against its base in the same guest
# and the same hour:
#
#   cargo build --release -p efa-perf && cp target/release/efa-perf /tmp/ab/efa-perf.a   # at the base
#   ... change, build again ...
#   tests/vm/run --share /tmp/ab --env EFA_PERF_A=/tmp/ab/efa-perf.a --timeout 2400 \
#     --script efa-perf/scripts/vm-ab.sh
#
# Prints one row per point: perftest's, A's and B's medians with their spreads (latency:
# t_typical, us; bandwidth: average MB/s), A and B over perftest, and B against A run by run (A
# and B ran next to each other in each round, perftest first in even rounds and last in odd ones,
# B then first): the median of B / A and the rounds where B was faster. Then
# every run's value, in order. TESTS (default "write_lat read_lat"; bandwidth tests such as
# write_bw too) and SIZES (default "2 4096") choose the points; LAT_ITERS (default 1000) and
# BW_ITERS (default 5000) the iterations; pass them with --env.
set -uo pipefail
PORT_BASE=19100
source "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
a=${EFA_PERF_A:?EFA_PERF_A names the base build (see the header)}
[[ -x $a ]] || { echo "EFA_PERF_A=$a is not an executable" >&2; exit 2; }
reps=${REPS:-5}
lat_iters=${LAT_ITERS:-1000}
bw_iters=${BW_ITERS:-5000}
common=(-d "$dev" -x "$gid" -F)

echo "reps $reps, $lat_iters latency and $bw_iters bandwidth iterations; t_typical in us or MB/s, median (min-max)"
echo "| test | bytes | perftest | A | B | A / perftest | B / perftest | B / A by round | B faster |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
log=()
for test in ${TESTS:-write_lat read_lat}; do
  # Latency: t_typical (column 5), lower is faster; bandwidth: average MB/s (column 4), higher.
  col=5 iters=$lat_iters better=lower
  [[ $test == *_bw ]] && col=4 iters=$bw_iters better=higher
  for size in ${SIZES:-2 4096}; do
    p=() x=() y=()
    for ((r = 0; r < reps; r++)); do
      # perftest, A, B in even rounds, the reverse in odd ones: no run is always another's follower.
      for run in $(in_turn "$r" pt a b); do
        case $run in
          pt) sample "pt-$test-$size-$r" "$size" $col "ib_$test" "${common[@]}" -n "$iters"; p[r]=$got ;;
          a) sample "a-$test-$size-$r" "$size" $col "$a" "${test/_/-}" --fabric verbs "${common[@]}" -n "$iters"; x[r]=$got ;;
          b) sample "b-$test-$size-$r" "$size" $col "$bin" "${test/_/-}" --fabric verbs "${common[@]}" -n "$iters"; y[r]=$got ;;
        esac
      done
    done
    pm=$(median "${p[@]}")
    # Rounds where both builds ran: B / A, and whether B was faster.
    pairs=() faster=0 both=0
    for ((r = 0; r < reps; r++)); do
      [[ -n ${x[r]} && -n ${y[r]} ]] || continue
      pairs+=("$(ratio "${y[r]}" "${x[r]}")")
      both=$((both + 1))
      awk -v a="${x[r]}" -v b="${y[r]}" -v hi="$better" 'BEGIN { exit !(hi == "higher" ? b > a : b < a) }' &&
        faster=$((faster + 1))
    done
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s of %s |\n' "$test" "$size" "$(stats "${p[@]}")" \
      "$(stats "${x[@]}")" "$(stats "${y[@]}")" "$(ratio "$(median "${x[@]}")" "$pm")" \
      "$(ratio "$(median "${y[@]}")" "$pm")" "$(median "${pairs[@]}")" "$faster" "$both"
    log+=("$test $size perftest: ${p[*]}" "$test $size A: ${x[*]}" "$test $size B: ${y[*]}")
  done
done
printf '%s\n' "${log[@]}"

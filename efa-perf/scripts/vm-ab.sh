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
# Prints one row per point: perftest's, A's and B's medians with their spreads (t_typical, us),
# and A and B over perftest. TESTS (default "write_lat read_lat") and SIZES (default "2 4096")
# choose the points; LAT_ITERS (default 1000) the iterations; pass them with --env.
set -uo pipefail
PORT_BASE=19100
source "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
a=${EFA_PERF_A:?EFA_PERF_A names the base build (see the header)}
[[ -x $a ]] || { echo "EFA_PERF_A=$a is not an executable" >&2; exit 2; }
reps=${REPS:-5}
iters=${LAT_ITERS:-1000}
common=(-d "$dev" -x "$gid" -F)

# one NAME COL SIZE CMD...: runs CMD as server and client with -s SIZE; prints field COL of the
# client's row for SIZE (nothing when the run failed).
one() {
  local name=$1 col=$2 size=$3
  shift 3
  run_pair "$name" "$@" -s "$size" -- "$@" -s "$size" && column "$out/$name.client" "$size" "$col"
}

echo "reps $reps, $iters iterations; t_typical in us, median (min-max)"
echo "| test | bytes | perftest | A | B | A / perftest | B / perftest |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for test in ${TESTS:-write_lat read_lat}; do
  for size in ${SIZES:-2 4096}; do
    p=() x=() y=()
    for ((r = 0; r < reps; r++)); do
      p+=("$(one "pt-$test-$size-$r" 5 "$size" "ib_$test" "${common[@]}" -n "$iters")")
      x+=("$(one "a-$test-$size-$r" 5 "$size" "$a" "${test/_/-}" --fabric verbs "${common[@]}" -n "$iters")")
      y+=("$(one "b-$test-$size-$r" 5 "$size" "$bin" "${test/_/-}" --fabric verbs "${common[@]}" -n "$iters")")
    done
    pm=$(median "${p[@]}")
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$test" "$size" "$(stats "${p[@]}")" "$(stats "${x[@]}")" \
      "$(stats "${y[@]}")" "$(ratio "$(median "${x[@]}")" "$pm")" "$(ratio "$(median "${y[@]}")" "$pm")"
  done
done

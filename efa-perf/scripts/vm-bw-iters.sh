#!/bin/bash
# WRITE and READ bandwidth at one size and several iteration counts, three tools alternating:
# perftest, efa-perf through the engine (its defaults) and efa-perf --raw (the efa crate's RC
# queue pairs, one signaled send in 100 as perftest's --cq-mod). Short runs at small sizes swing
# with the guests' load; longer ones show whether a ratio holds.
#
#   VM_ENV_REPS=3 tests/vm/run --hosts 2 --timeout 2800 --script efa-perf/scripts/vm-bw-iters.sh
#
# From the host pass SIZE (default 4096), ITERS (default "1000 5000") and REPS (default 3) as
# VM_ENV_SIZE=... and so on. Prints MB/s median (min-max) per tool and the ratios of the medians.
set -uo pipefail
PORT_BASE=18900
source "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
reps=${REPS:-3}
size=${SIZE:-4096}
common=(-d "$dev" -x "$gid" -F)
echo "size $size, reps $reps"
echo "| test | iterations | perftest | engine | raw | engine / perftest | raw / perftest |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for n in ${ITERS:-1000 5000}; do
  for t in write read; do
    p=() e=() w=()
    for ((r = 0; r < reps; r++)); do
      sample "pt-$t-$n-$r" "$size" 4 "ib_${t}_bw" "${common[@]}" -n "$n" && p+=("$got")
      sample "ep-$t-$n-$r" "$size" 4 "$bin" "$t-bw" --fabric verbs "${common[@]}" -n "$n" && e+=("$got")
      sample "raw-$t-$n-$r" "$size" 4 "$bin" "$t-bw" --raw --fabric verbs "${common[@]}" -n "$n" && w+=("$got")
    done
    echo "| $t | $n | $(stats "${p[@]}") | $(stats "${e[@]}") | $(stats "${w[@]}") |" \
      "$(ratio "$(median "${e[@]}")" "$(median "${p[@]}")") | $(ratio "$(median "${w[@]}")" "$(median "${p[@]}")") |"
  done
done
echo "logs: $out"

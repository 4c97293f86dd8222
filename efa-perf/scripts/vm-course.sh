#!/usr/bin/env bash
# How each tool's latency moves over a run: perftest's and efa-perf's ping-pongs on rxe0, each
# client with -U (every sample in the order measured, perftest's format in both tools), the run
# cut into BLOCKS blocks (default 20) of consecutive round trips and each block's median printed,
# then the run's t_typical. A tool whose median is high because it keeps falling into a slow mode
# shows blocks at the other tool's level between slow ones; one that is slow throughout does not.
#
#   tests/vm/run --pin-vcpus --timeout 1500 --script efa-perf/scripts/vm-course.sh
#
# TESTS (default "write_lat send_lat"; write_lat_raw runs efa-perf's write-lat --raw), SIZE
# (default 2), ITERS (default 20000), ROUNDS (default 3) and BLOCKS choose the runs; perftest goes
# first in odd rounds, efa-perf in even ones (ORDER, "efa-perf perftest" say, fixes one order); the
# server runs on cpu0 and the client on cpu1 (PIN_SERVER / PIN_CLIENT change them). MARKS=1 marks
# each run on the console for vm-profile.py (where the emulator spends the time). Pass them with
# --env.
set -uo pipefail
PORT_BASE=27900
source "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
size=${SIZE:-2}
iters=${ITERS:-20000}
blocks=${BLOCKS:-20}
# vm-lib's run_pair pins the sides with these; here they are pinned unless told otherwise.
pin_server=${PIN_SERVER:-0}
pin_client=${PIN_CLIENT:-1}

# samples FILE: the first -U list of a client's output, one sample (us) a line, in order.
samples() { awk -F', ' '$0 == "#, usec" { lists++; next } lists == 1 && NF == 2 { print $2 }' "$1"; }

# course FILE: the medians of the first -U list's blocks, then the row's t_typical (plain awk,
# sort and sed: the guest's awk is mawk).
course() {
  local values=$out/course-values n per b line blocks_out=""
  samples "$1" >"$values"
  n=$(wc -l <"$values")
  per=$((n / blocks))
  ((per > 0)) || { echo "no samples"; return; }
  for ((b = 0; b < blocks; b++)); do
    line=$(sed -n "$((b * per + 1)),$(((b + 1) * per))p" "$values" | sort -g | sed -n "$(((per + 1) / 2))p")
    blocks_out+="$(printf '%.1f' "$line") "
  done
  echo "$blocks_out| $(awk -v size="$size" '$1 == size && NF >= 5 { t = $5 } END { print t }' "$1")"
}

# mark_end NAME FILE: the console line vm-profile.py cuts its samples by: the run's round trips
# and its loop's length in seconds (the -U list holds half round trips).
mark_end() {
  samples "$2" | awk -v name="$1" '{ n++; s += $1 } END { printf "MARK end %s %d %.3f\n", name, n, 2 * s / 1e6 }'
}

echo "samples ${size} B, ${iters} iterations, medians of ${blocks} blocks in order | t_typical (us)"
for ((r = 1; r <= ${ROUNDS:-3}; r++)); do
  # The tools take turns to go first, round by round (ORDER fixes one order).
  order=${ORDER:-$(in_turn $((r - 1)) perftest efa-perf)}
  for test in ${TESTS:-write_lat send_lat}; do
    for tool in $order; do
      common=(-d "$dev" -x "$gid" -F -s "$size" -n "$iters")
      case $tool/$test in
        perftest/write_lat*) cmd=(ib_write_lat "${common[@]}") ;;
        perftest/send_lat) cmd=(ib_send_lat "${common[@]}") ;;
        efa-perf/write_lat) cmd=("$bin" write-lat "${common[@]}") ;;
        efa-perf/write_lat_raw) cmd=("$bin" write-lat --raw "${common[@]}") ;;
        efa-perf/send_lat) cmd=("$bin" send-lat "${common[@]}") ;;
        *) echo "unknown test $test" >&2; exit 2 ;;
      esac
      name="$tool-$test-$r"
      ((${MARKS:-0})) && echo "MARK start $name"
      run_pair "$name" "${cmd[@]}" -- "${cmd[@]}" -U || continue
      ((${MARKS:-0})) && mark_end "$name" "$out/$name.client"
      echo "round $r $test $tool: $(course "$out/$name.client")"
    done
  done
done

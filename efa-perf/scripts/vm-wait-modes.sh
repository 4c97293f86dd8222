#!/usr/bin/env bash
# efa-perf's WRITE and READ bandwidth through the engine in each worker wait mode (--wait busy, as
# perftest polls; --wait adaptive, the engine's own default and efa-perf's for bandwidth; -e), and with
# --raw, beside perftest polling and, for READ, perftest -e (events; ib_write_bw refuses -e:
# "Events feature not available on WRITE verb"), at 4 KiB and 64 KiB: REPS runs
# per row (default 3), medians with the spread. Made for two 1-vCPU guests, where a polling thread
# and the device's kernel work share the one CPU:
#
#   tests/vm/run --hosts 2 --timeout 1500 --script efa-perf/scripts/vm-wait-modes.sh
#
# Prints "NAME SIZE MEDIAN (MIN-MAX)" in MB/s per row (VM 0; VM 1 serves). Runs in one VM too.
set -uo pipefail
PORT_BASE=18800
source "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
common=(-d "$dev" -x "$gid" -F)
reps=${REPS:-3}
# row NAME SIZE CMD...: REPS runs of CMD as server and client with -s SIZE; one line.
row() {
  local name=$1 size=$2 v=() r
  shift 2
  for ((r = 0; r < reps; r++)); do
    sample "$name-$size-$r" "$size" 4 "$@"
    v+=("$got")
  done
  echo "$name $size $(stats "${v[@]}")"
}
# SIZES (default "4096 65536"; 1048576 runs 200 iterations, as vm-matrix.sh does).
for size in ${SIZES:-4096 65536}; do
  n=1000; ((size < 1048576)) || n=200
  for t in write read; do
    row "perftest-$t" "$size" "ib_${t}_bw" "${common[@]}" -n "$n"
    [[ $t == read ]] && row "perftest-$t-e" "$size" "ib_${t}_bw" -e "${common[@]}" -n "$n"
    row "engine-$t-busy" "$size" "$bin" "$t-bw" --fabric verbs --wait busy "${common[@]}" -n "$n"
    row "engine-$t-adaptive" "$size" "$bin" "$t-bw" --fabric verbs --wait adaptive "${common[@]}" -n "$n"
    row "engine-$t-e" "$size" "$bin" "$t-bw" --fabric verbs -e "${common[@]}" -n "$n"
    row "raw-$t" "$size" "$bin" "$t-bw" --raw --fabric verbs "${common[@]}" -n "$n"
  done
done

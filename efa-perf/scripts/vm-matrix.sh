#!/bin/bash
# efa-perf beside perftest on the same Soft-RoCE device, every point REPS times, in one VM run:
# write, read and send bandwidth at 4 KiB, 64 KiB and 1 MiB, write and send latency at 2 B and
# 4 KiB, the latency tests again with -e (perftest's ib_write_lat has no -e), and efa-perf's
# WRITE and READ tests again with --raw (on the efa crate, no engine), with read latency. Each run
# is a server and a client process on rxe0; perftest's and efa-perf's runs alternate, each tool
# going first in every other round.
#
#   tests/vm/run --timeout 3600 --script efa-perf/scripts/vm-matrix.sh
#
# Per point: the median and the spread (min-max) over REPS runs of each tool's figure (bandwidth:
# average MB/s; latency: t_typical us), their ratio (efa-perf / perftest), and each tool's CPU use:
# the client's and the server's CPU time (user + system, from the shell's `times`) over the
# client's wall time, in % of one core, medians. efa-perf's write and read tests run through the
# engine (verbs fabric, its defaults: one rail, so one work request per message); send-bw and send-lat run
# on the efa crate's RC queue pairs, as perftest does. efa-perf's bandwidth tests touch the memory
# perftest's touch: --cycle-buffer of one page, perftest's cycle buffer (CYCLE=default gives
# efa-perf's own footprint, a place per message in flight), and poll as perftest polls: --wait
# busy (BW_WAIT=adaptive gives efa-perf's own default for bandwidth, the engine's, which sleeps
# when completions come slower than its spin). EFA_PERF names the binary (default:
# $CARGO_TARGET_DIR/release/efa-perf); from the host pass BW_ITERS, BW_ITERS_4K (4 KiB runs: a
# run of 5000 lasts half a second under emulation, where both tools still speed up as the emulator
# translates their code; 50000 lasts seconds, as the larger sizes do), BW_ITERS_1M, LAT_ITERS, REPS,
# LAT_BOUND (seconds a latency run may take, default 120), PARTS ("bw lat events raw", the
# default, or some of them), CYCLE (bytes, or default), BW_WAIT (busy, adaptive or block) and
# PIN_SERVER / PIN_CLIENT (cpu lists: every server and client of both tools under `taskset -c`)
# as VM_ENV_BW_ITERS=... and so on
# (tests/vm/README.md).
set -euo pipefail
PORT_BASE=18700
source "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
bw_iters=${BW_ITERS:-1000}
bw_iters_4k=${BW_ITERS_4K:-$bw_iters}
bw_iters_1m=${BW_ITERS_1M:-200}
lat_iters=${LAT_ITERS:-1000}
reps=${REPS:-3}
parts=${PARTS:-bw lat events raw}
cycle=${CYCLE:-$(getconf PAGESIZE)}
footprint=()
[[ $cycle == default ]] || footprint=(--cycle-buffer "$cycle")
bw_wait=${BW_WAIT:-busy}
case $bw_wait in
  busy | adaptive | block) ;;
  *) echo "vm-matrix: BW_WAIT is busy, adaptive or block, not $bw_wait" >&2; exit 2 ;;
esac

# take NAME SIZE COL VALUES CLIENT_CPUS SERVER_CPUS CMD...: one run of CMD as both server and client
# (sample), its figure appended to the array named VALUES and its CPU use to the other two.
take() {
  local name=$1 size=$2 col=$3
  local -n values=$4 client_cpus=$5 server_cpus=$6
  shift 6
  sample "$name" "$size" "$col" "$@" || return 0
  values+=("$got")
  local use
  use=($(cpu_pct "$name"))
  client_cpus+=("${use[0]:-}")
  server_cpus+=("${use[1]:-}")
}

# point TEST SIZE COL PT_CMD... -- EP_CMD...: REPS runs of each tool (each command runs as both
# server and client, with -s SIZE), the tools taking turns to go first (a run can find the guest
# slower than the run before it found it: BENCHMARKS.md); prints one table row.
point() {
  local test=$1 size=$2 col=$3
  shift 3
  local pt=() ep=()
  while [[ $1 != -- ]]; do pt+=("$1"); shift; done
  shift
  ep=("$@")
  local p=() e=() pc=() ps=() ec=() es=() r tool
  for ((r = 0; r < reps; r++)); do
    for tool in $(in_turn "$r" pt ep); do
      case $tool in
        pt) take "pt-$test-$size-$r" "$size" "$col" p pc ps "${pt[@]}" ;;
        ep) take "ep-$test-$size-$r" "$size" "$col" e ec es "${ep[@]}" ;;
      esac
    done
  done
  printf '| %s | %s | %s | %s | %s | %s/%s | %s/%s |\n' "$test" "$size" "$(stats "${p[@]}")" "$(stats "${e[@]}")" \
    "$(ratio "$(median "${e[@]}")" "$(median "${p[@]}")")" \
    "$(whole_median "${pc[@]}")" "$(whole_median "${ps[@]}")" "$(whole_median "${ec[@]}")" "$(whole_median "${es[@]}")"
}

common=(-d "$dev" -x "$gid" -F)
# bw_iters_of SIZE: the bandwidth iterations of a message size.
bw_iters_of() {
  case $1 in 4096) echo "$bw_iters_4k" ;; 1048576) echo "$bw_iters_1m" ;; *) echo "$bw_iters" ;; esac
}
echo "reps $reps, bandwidth $bw_iters iterations ($bw_iters_4k at 4 KiB, $bw_iters_1m at 1 MiB), latency $lat_iters, efa-perf cycle buffer $cycle, engine bandwidth --wait $bw_wait"
echo "| test | bytes | perftest | efa-perf | ratio | perftest CPU % client/server | efa-perf CPU % client/server |"
echo "|---|---:|---:|---:|---:|---:|---:|"
if [[ " $parts " == *" bw "* ]]; then
  for size in 4096 65536 1048576; do
    n=$(bw_iters_of "$size")
    for t in write read; do
      point "${t}_bw" "$size" 4 "ib_${t}_bw" "${common[@]}" -n "$n" -- \
        "$bin" "$t-bw" --fabric verbs "${common[@]}" -n "$n" "${footprint[@]}" --wait "$bw_wait"
    done
    point send_bw "$size" 4 ib_send_bw "${common[@]}" -n "$n" -- \
      "$bin" send-bw --fabric verbs "${common[@]}" -n "$n" "${footprint[@]}"
  done
fi
# Every run from here takes seconds (latency, and --raw bandwidth of BW_ITERS); one that hangs
# (ib_send_lat -e on a full CQ, see BENCHMARKS.md) fails after LAT_BOUND seconds, not 300.
client_bound=${LAT_BOUND:-120}
if [[ " $parts " == *" lat "* ]]; then
  for size in 2 4096; do
    point write_lat "$size" 5 ib_write_lat "${common[@]}" -n "$lat_iters" -- \
      "$bin" write-lat --fabric verbs "${common[@]}" -n "$lat_iters"
    point send_lat "$size" 5 ib_send_lat "${common[@]}" -n "$lat_iters" -- \
      "$bin" send-lat --fabric verbs "${common[@]}" -n "$lat_iters"
  done
fi
# -e: both tools sleep on completion events. perftest's ib_write_lat has none ("Events feature not
# available on WRITE verb"): efa-perf's write-lat -e is set beside perftest's polling figure.
if [[ " $parts " == *" events "* ]]; then
  for size in 2 4096; do
    point "write_lat -e (perftest polls)" "$size" 5 ib_write_lat "${common[@]}" -n "$lat_iters" -- \
      "$bin" write-lat --fabric verbs "${common[@]}" -n "$lat_iters" -e
    point "send_lat -e" "$size" 5 ib_send_lat "${common[@]}" -n "$lat_iters" -e -- \
      "$bin" send-lat --fabric verbs "${common[@]}" -n "$lat_iters" -e
  done
fi
# --raw: efa-perf's WRITE and READ straight on the efa crate's RC queue pairs, as perftest posts them.
if [[ " $parts " == *" raw "* ]]; then
  for size in 4096 65536 1048576; do
    n=$(bw_iters_of "$size")
    for t in write read; do
      point "${t}_bw --raw" "$size" 4 "ib_${t}_bw" "${common[@]}" -n "$n" -- \
        "$bin" "$t-bw" --raw --fabric verbs "${common[@]}" -n "$n" "${footprint[@]}"
    done
  done
  for size in 2 4096; do
    for t in write read; do
      point "${t}_lat --raw" "$size" 5 "ib_${t}_lat" "${common[@]}" -n "$lat_iters" -- \
        "$bin" "$t-lat" --raw --fabric verbs "${common[@]}" -n "$lat_iters"
    done
    point read_lat "$size" 5 ib_read_lat "${common[@]}" -n "$lat_iters" -- \
      "$bin" read-lat --fabric verbs "${common[@]}" -n "$lat_iters"
  done
fi
echo "logs: $out"

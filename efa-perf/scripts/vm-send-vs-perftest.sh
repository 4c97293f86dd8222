#!/bin/bash
# efa-perf send-bw / send-lat (SEND/RECV on the efa crate's RC queue pairs) beside perftest's
# ib_send_bw / ib_send_lat on the same Soft-RoCE device, sizes and iteration counts, in one VM run,
# each as a server and a client process on rxe0. First a loopback check of both tests.
#
#   tests/vm/run --timeout 1500 --script efa-perf/scripts/vm-send-vs-perftest.sh
#
# Prints one line per test and size with both figures (bandwidth: average MB/s; latency: t_typical
# us), each the median of REPS runs (default 3; efa-perf's and perftest's interleaved, as a 2-vCPU
# guest stalls on scheduler ticks now and then), and their ratio (efa-perf / perftest). EFA_PERF
# names the binary (default: $CARGO_TARGET_DIR/release/efa-perf); from the host, pass BW_ITERS,
# LAT_ITERS and REPS as VM_ENV_BW_ITERS=... and so on.
set -euo pipefail
PORT_BASE=18600
source "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
bw_iters=${BW_ITERS:-1000}
lat_iters=${LAT_ITERS:-500}
reps=${REPS:-3}

for t in send-bw send-lat; do
  "$bin" "$t" --loopback --fabric verbs -d "$dev" -x "$gid" -s 4096 -n 100 -q 1 2>&1 | sed -n '/Test$/p;/#bytes/,+1p'
done

printf '%-10s %9s %6s %14s %14s %7s\n' test bytes iters perftest efa-perf ratio
# pair KIND SIZE ITERS COLUMN: medians of perftest's and efa-perf's figure, interleaved runs.
pair() {
  local kind=$1 size=$2 iters=$3 col=$4 p=() e=() r
  for ((r = 0; r < reps; r++)); do
    run_pair "pt-$kind-$size" "ib_send_$kind" -d "$dev" -x "$gid" -F -s "$size" -n "$iters" -- \
      "ib_send_$kind" -d "$dev" -x "$gid" -F -s "$size" -n "$iters"
    p+=("$(column "$out/pt-$kind-$size.client" "$size" "$col")")
    run_pair "ep-$kind-$size" "$bin" "send-$kind" --fabric verbs -d "$dev" -x "$gid" -F -- \
      "$bin" "send-$kind" --fabric verbs -d "$dev" -x "$gid" -F -s "$size" -n "$iters"
    e+=("$(column "$out/ep-$kind-$size.client" "$size" "$col")")
  done
  echo "$(median "${p[@]}") $(median "${e[@]}")"
}
for size in 64 4096 65536; do
  res=$(pair bw "$size" "$bw_iters" 4); p=${res% *}; e=${res#* }
  printf '%-10s %9s %6s %9s MB/s %9s MB/s %7s\n' send_bw "$size" "$bw_iters" "$p" "$e" "$(ratio "$e" "$p")"
done
for size in 2 64 4096; do
  res=$(pair lat "$size" "$lat_iters" 5); p=${res% *}; e=${res#* }
  printf '%-10s %9s %6s %11s us %11s us %7s\n' send_lat "$size" "$lat_iters" "$p" "$e" "$(ratio "$e" "$p")"
done
echo "logs: $out"

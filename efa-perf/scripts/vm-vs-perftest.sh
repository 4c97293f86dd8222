#!/bin/bash
# efa-perf beside perftest on the same Soft-RoCE device, sizes and iteration counts, in one VM run:
# write_bw, read_bw (RC, RDMA WRITE/READ), write_lat and send_lat, each as a server and a client process on rxe0.
#
#   tests/vm/run --timeout 1500 --script efa-perf/scripts/vm-vs-perftest.sh
#
# Prints one line per test and size with both figures (bandwidth: average MB/s; latency: t_typical us).
# efa-perf bandwidth runs post each message as one work request, as perftest (the engine's default on one rail).
# Runs inside the guest; EFA_PERF names the binary (default: $CARGO_TARGET_DIR/release/efa-perf).
set -euo pipefail
PORT_BASE=18515
source "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
bw_iters=${BW_ITERS:-200}
lat_iters=${LAT_ITERS:-200}

printf '%-10s %9s %6s %18s %18s\n' test bytes iters perftest efa-perf
for size in 4096 65536 1048576; do
  for t in write read; do
    run_pair "pt-$t-$size" "ib_${t}_bw" -d "$dev" -x "$gid" -F -s "$size" -n "$bw_iters" -- \
      "ib_${t}_bw" -d "$dev" -x "$gid" -F -s "$size" -n "$bw_iters"
    run_pair "ep-$t-$size" "$bin" "$t-bw" --fabric verbs -d "$dev" -x "$gid" -F -- \
      "$bin" "$t-bw" --fabric verbs -d "$dev" -x "$gid" -F -s "$size" -n "$bw_iters"
    printf '%-10s %9s %6s %12s MB/s %12s MB/s\n' "${t}_bw" "$size" "$bw_iters" \
      "$(column "$out/pt-$t-$size.client" "$size" 4)" "$(column "$out/ep-$t-$size.client" "$size" 4)"
  done
done
for size in 2 4096; do
  run_pair "pt-wlat-$size" ib_write_lat -d "$dev" -x "$gid" -F -s "$size" -n "$lat_iters" -- \
    ib_write_lat -d "$dev" -x "$gid" -F -s "$size" -n "$lat_iters"
  run_pair "ep-wlat-$size" "$bin" write-lat --fabric verbs -d "$dev" -x "$gid" -F -- \
    "$bin" write-lat --fabric verbs -d "$dev" -x "$gid" -F -s "$size" -n "$lat_iters"
  printf '%-10s %9s %6s %13s us %13s us\n' write_lat "$size" "$lat_iters" \
    "$(column "$out/pt-wlat-$size.client" "$size" 5)" "$(column "$out/ep-wlat-$size.client" "$size" 5)"
done
for size in 2 64 4096; do
  run_pair "pt-lat-$size" ib_send_lat -d "$dev" -x "$gid" -F -s "$size" -n "$lat_iters" -- \
    ib_send_lat -d "$dev" -x "$gid" -F -s "$size" -n "$lat_iters"
  run_pair "ep-lat-$size" "$bin" send-lat --fabric verbs -d "$dev" -x "$gid" -F -- \
    "$bin" send-lat --fabric verbs -d "$dev" -x "$gid" -F -s "$size" -n "$lat_iters"
  printf '%-10s %9s %6s %13s us %13s us\n' send_lat "$size" "$lat_iters" \
    "$(column "$out/pt-lat-$size.client" "$size" 5)" "$(column "$out/ep-lat-$size.client" "$size" 5)"
done
echo "logs: $out"

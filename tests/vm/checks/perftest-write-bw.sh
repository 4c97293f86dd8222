#!/bin/bash
# perftest ib_write_bw between two processes sharing rxe0 in one VM (RC, RDMA WRITE, RoCEv2 GID 1).
# vm-timeout: 180
set -euo pipefail
source "$(dirname "$0")/lib.bash"
size=65536 iters=200 port=18515
ib_write_bw -d rxe0 -x 1 -F -s "$size" -n "$iters" -p "$port" >/tmp/write_bw.server 2>&1 &
server=$!
vm-wait-listen "$port" 30
timeout 120 ib_write_bw -d rxe0 -x 1 -F -s "$size" -n "$iters" -p "$port" "$VM_SELF_IP" | tee /tmp/write_bw.client
wait_pid "$server" 30
bw=$(perftest_result /tmp/write_bw.client "$size")
echo "check: ib_write_bw rxe0 loopback: $iters x $size B, average $bw MB/s"

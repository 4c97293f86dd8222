#!/bin/bash
# perftest ib_send_bw over a UD QP between two processes sharing rxe0 in one VM (datagrams up to the MTU).
# vm-timeout: 180
set -euo pipefail
source "$(dirname "$0")/lib.bash"
size=1024 iters=500 port=18516
ib_send_bw -d rxe0 -x 1 -F -c UD -s "$size" -n "$iters" -p "$port" >/tmp/ud_send.server 2>&1 &
server=$!
vm-wait-listen "$port" 30
timeout 120 ib_send_bw -d rxe0 -x 1 -F -c UD -s "$size" -n "$iters" -p "$port" "$VM_SELF_IP" | tee /tmp/ud_send.client
wait_pid "$server" 30
bw=$(perftest_result /tmp/ud_send.client "$size")
echo "check: ib_send_bw UD rxe0 loopback: $iters x $size B, average $bw MB/s"

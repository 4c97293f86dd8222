#!/bin/bash
# perftest ib_write_bw from VM 1 to VM 0 over the emulated link: two kernels, two rxe devices.
# vm-hosts: 2
# vm-timeout: 300
set -euo pipefail
source "$(dirname "$0")/lib.bash"
size=65536 iters=100 port=18515
if ((VM_HOST_INDEX == 0)); then
  ib_write_bw -d rxe0 -x 1 -F -s "$size" -n "$iters" -p "$port" >/tmp/server.log 2>&1 &
  server=$!
  vm-wait-listen "$port" 30
  vm-signal write-bw-server-up
  wait_pid "$server" 180 || { cat /tmp/server.log; exit 1; }
  cat /tmp/server.log
else
  vm-wait-signal write-bw-server-up 60
  timeout 180 ib_write_bw -d rxe0 -x 1 -F -s "$size" -n "$iters" -p "$port" "$VM_PEER_IP" | tee /tmp/client.log
  bw=$(perftest_result /tmp/client.log "$size")
  echo "check: ib_write_bw $VM_SELF_IP -> $VM_PEER_IP: $iters x $size B, average $bw MB/s"
fi

#!/bin/bash
# Fault: VM 0 streams RDMA WRITEs to VM 1, then has VM 1 killed (power cut). The writer must end with an
# error completion (retry exceeded) in bounded time instead of hanging.
# vm-hosts: 2
# vm-timeout: 300
set -uo pipefail
size=65536 port=18517
if ((VM_HOST_INDEX == 1)); then
  ib_write_bw -d rxe0 -x 1 -F -s "$size" -n 1000000 -p "$port" >/tmp/server.log 2>&1 &
  vm-wait-listen "$port" 30 && vm-signal victim-up
  sleep 600 # killed from the other side long before this
  exit 1
fi
vm-wait-signal victim-up 60 || exit 1
# -u 14 / retry count 7: about 0.5 s of retries before the QP reports the peer gone.
timeout 120 ib_write_bw -d rxe0 -x 1 -F -s "$size" -n 1000000 -u 14 -p "$port" "$VM_PEER_IP" >/tmp/client.log 2>&1 &
client=$!
sleep 3
vm-kill-host 1
wait "$client"
rc=$?
cat /tmp/client.log
if ((rc == 124)); then echo "check: the writer hung after its peer died" >&2; exit 1; fi
if ((rc == 0)); then echo "check: the writer finished 1000000 writes to a dead peer?" >&2; exit 1; fi
grep -qiE 'completion with error|retry exc|status' /tmp/client.log ||
  { echo "check: the writer failed without an error completion" >&2; exit 1; }
echo "check: writer saw an error completion after its peer was killed (exit $rc)"

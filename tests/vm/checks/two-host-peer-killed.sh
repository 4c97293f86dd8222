#!/bin/bash
# Fault: VM 0 streams RDMA WRITEs to VM 1, then has VM 1 power-cut. The writer must end with an error
# completion (transport retry exceeded) in bounded time instead of hanging.
# vm-hosts: 2
# vm-timeout: 300
set -uo pipefail
size=65536 port=18517
# rdma_cm mode (-R) is what lets perftest set the retry count: rxe treats retry count 7 (perftest's
# default otherwise) as "retry forever". -u 14 with 3 retries gives up after about 0.3 s of silence.
if ((VM_HOST_INDEX == 1)); then
  stdbuf -oL ib_write_bw -d rxe0 -R -F -s "$size" -n 1000000 -p "$port" >/tmp/server.log 2>&1 &
  # An rdma_cm server listens on no TCP port; its banner says when it is ready.
  for ((i = 0; i < 300; i++)); do
    grep -q 'Waiting for client' /tmp/server.log && break
    sleep 0.1
  done
  grep -q 'Waiting for client' /tmp/server.log || { cat /tmp/server.log; exit 1; }
  vm-signal victim-up
  sleep 240 # the other VM has this one killed long before
  exit 1
fi
vm-wait-signal victim-up 60 || exit 1
timeout 60 stdbuf -oL ib_write_bw -d rxe0 -R -F -s "$size" -n 1000000 -u 14 --retry_count=3 -p "$port" "$VM_PEER_IP" \
  >/tmp/client.log 2>&1 &
client=$!
sleep 3
vm-kill-host 1
wait "$client"
rc=$?
cat /tmp/client.log
if ((rc == 124)); then echo "check: the writer hung for 60 s after its peer died" >&2; exit 1; fi
if ((rc == 0)); then echo "check: the writer finished 1000000 writes to a dead peer?" >&2; exit 1; fi
grep -qiE 'completion with error|retry' /tmp/client.log ||
  { echo "check: the writer failed, but not with an error completion" >&2; exit 1; }
echo "check: the writer saw an error completion after its peer was killed (exit status $rc)"

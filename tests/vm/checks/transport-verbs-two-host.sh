#!/bin/bash
# The transport's verbs fabric across two VMs: VM 0 serves an 8 MiB segment, VM 1 opens it through the
# descriptor, READs the first half and WRITEs the second, both checked byte for byte (verbs_peer example).
# vm-hosts: 2
# vm-timeout: 300
set -euo pipefail
source "$(dirname "$0")/transport-lib.bash"
peer=$(verbs_peer_bin) || exit 1
dir=$VM_JOB_DIR/transport-verbs-two-host
mkdir -p "$dir"
if ((VM_HOST_INDEX == 0)); then
  timeout 240 "$peer" serve "$dir" $((8 << 20))
  echo "check: VM 0 verified the bytes VM 1 wrote over rxe0"
else
  timeout 240 "$peer" fetch "$dir"
  echo "check: VM 1 read and wrote 8 MiB on VM 0 through the verbs fabric ($VM_SELF_IP -> $VM_PEER_IP)"
fi

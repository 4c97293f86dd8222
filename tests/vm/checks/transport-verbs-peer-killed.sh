#!/bin/bash
# The transport's verbs fabric with a dead peer: VM 0 transfers to VM 1 (checked), keeps writing, and has VM 1
# power-cut; its next request must end failed (UNRESP_REMOTE / FLUSHED) or timed out within the configured
# 4 s unresponsive timeout plus slack, never hang (verbs_peer hammer).
# vm-hosts: 2
# vm-timeout: 300
set -uo pipefail
source "$(dirname "$0")/transport-lib.bash"
peer=$(verbs_peer_bin) || exit 1
dir=$VM_JOB_DIR/transport-verbs-peer-killed
mkdir -p "$dir"
if ((VM_HOST_INDEX == 1)); then
  timeout 280 "$peer" serve "$dir" $((1 << 20)) linger
  exit 1 # killed from the other side long before this
fi
timeout 200 "$peer" hammer "$dir" 4 >"$dir/hammer.log" 2>&1 &
hammer=$!
for ((i = 0; i < 1200; i++)); do
  [[ -e $dir/verified ]] && break
  sleep 0.1
done
[[ -e $dir/verified ]] || { cat "$dir/hammer.log"; echo "check: the first transfer was not verified" >&2; exit 1; }
sleep 2
vm-kill-host 1
wait "$hammer"
rc=$?
cat "$dir/hammer.log"
if ((rc == 124)); then echo "check: the writer hung after its peer died" >&2; exit 1; fi
((rc == 0)) || { echo "check: verbs_peer hammer failed (exit $rc)" >&2; exit 1; }
echo "check: requests to the killed peer ended with a typed failure in bounded time"

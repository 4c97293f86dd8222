#!/usr/bin/env bash
# Both sides of a latency test on rxe0 (the engine's write_lat unless TEST says otherwise) under
# callgrind (or with TOOL=dhat, DHAT: which heap blocks each side reads and writes how much), with
# the host's valgrind: the guest has none, so share /usr/libexec/valgrind and a directory VG holding
# a copy of /usr/bin/valgrind.bin, and OUT, where the two profiles go (TOOL.server, TOOL.client):
#
#   mkdir -p /tmp/vg /tmp/cg && cp /usr/bin/valgrind.bin /tmp/vg/
#   tests/vm/run --share /tmp/vg --share /tmp/cg --share /usr/libexec/valgrind --env VG=/tmp/vg \
#     --env OUT=/tmp/cg --timeout 1200 --script efa-perf/scripts/vm-callgrind.sh
#
# Symbols stay mangled (--demangle=no), so a profile's names can feed the linker. TEST (default
# write-lat; send-lat, which runs on the efa crate), RAW=1 (the test with --raw: write-lat on the
# efa crate too), ITERS (default 300) and SIZE (default 2) choose the run; pass them with --env.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
vg=${VG:?VG names a --share directory holding a copy of valgrind.bin (see the header)}
dest=${OUT:?OUT names a --share directory for the profiles (see the header)}
export VALGRIND_LIB=/usr/libexec/valgrind
port=$((port + 1))
tool=${TOOL:-callgrind}
case $tool in
  callgrind) opts=(--tool=callgrind --demangle=no) ;;
  dhat) opts=(--tool=dhat) ;;
  *) echo "TOOL must be callgrind or dhat, got '$tool'" >&2; exit 2 ;;
esac
grind() { "$vg/valgrind.bin" "${opts[@]}" --fair-sched=yes "--$tool-out-file=$dest/$tool.$1" "${@:2}"; }
raw=()
[[ ${RAW:-} == 1 ]] && raw=(--raw)
args=("${TEST:-write-lat}" "${raw[@]}" --fabric verbs -d "$dev" -x "$gid" -F -s "${SIZE:-2}" -n "${ITERS:-300}" --timeout 600 -p "$port")
grind server "$bin" "${args[@]}" >"$dest/server.log" 2>&1 &
spid=$!
# The server listens once valgrind has started it, seconds on the software CPU.
vm-wait-listen "$port" 300 || { echo "the server did not listen" >&2; cat "$dest/server.log" >&2; kill $spid; exit 1; }
grind client "$bin" "${args[@]}" "$ip" >"$dest/client.log" 2>&1
rc=$?
wait $spid || rc=1
cat "$dest/client.log"
exit $rc

#!/usr/bin/env bash
# The pages a write_lat ping-pong touches, tool by tool: perftest, efa-perf --raw and efa-perf
# through the engine run on rxe0 one after the other; in the middle of each run the script clears
# both processes' referenced bits (/proc/PID/clear_refs), waits WINDOW seconds (default 0.05, a
# few hundred round trips), and prints each process's private mappings with the kB referenced
# since (/proc/PID/smaps). Shared libraries are left out: their pages count as referenced when any
# process touches them.
#
#   tests/vm/run --timeout 900 --script efa-perf/scripts/vm-pages.sh
#
# Under the software CPU a page touched after the kernel's work on a CPU costs a walk of the page
# tables again (BENCHMARKS.md, "its CPU and its pages per message"), so the count of pages a message touches
# weighs on latency there. The window spans many messages: a ring that moves on by one slot per
# message (the send queue, the CQ) shows more pages than one message touches.
#
# SIZE (default 2), WINDOW, TOOLS (default "pt raw eng") and SETTLE (seconds from the client's start to
# the clearing, default 12: setup takes seconds on the software CPU) choose what runs; pass them
# with --env.
set -uo pipefail
PORT_BASE=25900
source "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
size=${SIZE:-2}
window=${WINDOW:-0.05}
read -ra long <<<"$(long_run "$size")"

# private PID: "kB mapping" per private mapping with pages referenced, largest first, and a total.
private() {
  awk '/^[0-9a-f]+-[0-9a-f]+ / { name = $6; if (name == "") name = "[anon]" }
       /^Referenced:/ { if ($2 > 0 && name !~ /\.so/) r[name] += $2 }
       END { for (n in r) { printf "%6d kB %s\n", r[n], n; t += r[n] } printf "%6d kB in all (%d pages)\n", t, t / 4 }' \
    "/proc/$1/smaps" | sort -rn
}

# probe NAME CMD...: CMD as server and client (-p, the client also the address), both measured.
probe() {
  local name=$1 spid cpid
  shift
  start_pair "$name" "$@" || return 1
  echo 1 >"/proc/$cpid/clear_refs"
  echo 1 >"/proc/$spid/clear_refs"
  sleep "$window"
  echo "== $name client"
  private $cpid
  echo "== $name server"
  private $spid
  kill $cpid $spid 2>/dev/null
  wait 2>/dev/null
}

echo "pages referenced in ${window} s of a ${size} B write_lat ping-pong, private mappings"
for tool in ${TOOLS:-pt raw eng}; do
  case $tool in
    pt) probe perftest ib_write_lat "${long[@]}" ;;
    raw) probe raw "$bin" write-lat --fabric verbs --raw "${long[@]}" ;;
    eng) probe engine "$bin" write-lat --fabric verbs "${long[@]}" ;;
  esac
done

#!/usr/bin/env bash
# What a write_lat round trip costs the guest's kernel, tool by tool: perftest, efa-perf --raw and
# efa-perf through the engine run on rxe0 one after the other, and in the middle of each run the
# script reads the kernel's counters twice, WINDOW seconds apart (default 2), and prints their
# growth per round trip: the system's context switches, rescheduling IPIs (RES), local timer
# interrupts (LOC) and softirqs; and for every thread of both processes its CPU time (user and
# system, in clock ticks over the window), its minor page faults, and its voluntary and
# involuntary context switches. Round trips are counted by the device: rxe's sent_pkts grows by
# four a round trip (two WRITEs, two ACKs). Where strace is installed, it then counts the server's
# system calls for STRACE seconds (default 1, a run slowed by the tracing), per round trip.
#
#   tests/vm/run --pin-vcpus --env PIN_SERVER=0 --env PIN_CLIENT=1 --timeout 900 \
#     --script efa-perf/scripts/vm-counters.sh
#
# The guest boots on the TSC or, in some boots, on the HPET, where every clock read is a system
# call; the first line says which. VM_APPEND="clocksource=hpet" before tests/vm/run forces the HPET.
#
# SIZE (default 2), WINDOW, STRACE, TOOLS (default "pt raw eng"), ROUNDS (default 1) and SETTLE
# (seconds from the client's start to the first reading, default 12: setup takes seconds on the
# software CPU) choose what runs; pass them with --env.
set -uo pipefail
PORT_BASE=26900
source "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
size=${SIZE:-2}
window=${WINDOW:-2}
read -ra long <<<"$(long_run "$size")"
pkts=/sys/class/infiniband/$dev/ports/1/hw_counters/sent_pkts
# Packets a round trip sends: two WRITEs and their two ACKs.
per_trip=4

# snap PID...: one line per counter, "name value", read by one process (each process the guest
# starts takes a CPU from the tools for a while under the software CPU).
snap() {
  local files=("$pkts" /proc/uptime /proc/stat /proc/interrupts /proc/softirqs) p
  for p in "$@"; do files+=(/proc/"$p"/task/*/stat /proc/"$p"/task/*/status); done
  awk -v pkts="$pkts" '
    FILENAME == pkts { print "pkts", $1; next }
    FILENAME == "/proc/uptime" { print "uptime", $1; next }
    FILENAME == "/proc/stat" { if ($1 == "ctxt") print "ctxt", $2; next }
    FILENAME == "/proc/interrupts" {
      if ($1 == "RES:" || $1 == "LOC:") { t = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) t += $i; print substr($1, 1, 3), t }
      next }
    FILENAME == "/proc/softirqs" { if (FNR > 1) for (i = 2; i <= NF; i++) sirq += $i; next }
    FILENAME ~ /\/stat$/ { split(FILENAME, f, "/"); k = f[3] "/" f[5] "/" substr($2, 2, length($2) - 2)
      print k ":user", $14; print k ":sys", $15; print k ":minflt", $10; next }
    /^Name:/ { split(FILENAME, f, "/"); t = f[3] "/" f[5] "/" $2 }
    /^voluntary_ctxt/ { vol[t] = $2 }
    /^nonvoluntary_ctxt/ { invol[t] = $2 }
    END { print "softirqs", sirq; for (t in vol) { print t ":vol", vol[t]; print t ":invol", invol[t] } }' "${files[@]}"
}

# per_rt BEFORE AFTER: every counter's growth per round trip (threads: the ticks themselves for
# CPU time; a thread's counters that did not grow are left out), the round trips first.
per_rt() {
  awk -v per_trip=$per_trip 'NR == FNR { a[$1] = $2; next }
       $1 == "pkts" { rt = ($2 - a[$1]) / per_trip; next }
       $1 == "uptime" { w = $2 - a[$1]; next }
       { d[$1] = $2 - a[$1]; if (d[$1] != 0 || $1 !~ /:/) order[++n] = $1 }
       END { printf "%d round trips in %.2f s (%.1f us each)\n", rt, w, (rt > 0 ? w * 1e6 / rt : 0)
             for (i = 1; i <= n; i++) { k = order[i]
               if (k ~ /:(user|sys)$/) printf "  %-40s %6d ticks\n", k, d[k]
               else printf "  %-40s %8.3f\n", k, (rt > 0 ? d[k] / rt : 0) } }' "$1" "$2"
}

# probe NAME CMD...: CMD as server and client (-p, the client also the address), both counted.
probe() {
  local name=$1 spid cpid
  shift
  start_pair "$name" "$@" || return 1
  snap $spid $cpid >"$out/$name.0"
  sleep "$window"
  snap $spid $cpid >"$out/$name.1"
  echo "== $name (server $spid, client $cpid): per round trip over $window s"
  per_rt "$out/$name.0" "$out/$name.1"
  if command -v strace >/dev/null; then
    local p0 p1
    p0=$(cat "$pkts")
    timeout -s INT "${STRACE:-1}" strace -c -f -p $spid -o "$out/$name.strace" 2>/dev/null
    p1=$(cat "$pkts")
    echo "  server's system calls per round trip, traced:"
    awk -v rt=$(((p1 - p0) / per_trip)) '$NF ~ /^[a-z_0-9]+$/ && $NF != "syscall" && $NF != "total" && rt > 0 { printf "    %-20s %8.3f\n", $NF, $4 / rt }' \
      "$out/$name.strace"
  fi
  kill $cpid $spid 2>/dev/null
  wait 2>/dev/null
}

# Clock reads are system calls on the HPET and not on the TSC: say which this boot has.
echo "a ${size} B write_lat ping-pong's counters, per round trip (clock source:" \
  "$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource))"
for ((r = 0; r < ${ROUNDS:-1}; r++)); do
  for tool in ${TOOLS:-pt raw eng}; do
    case $tool in
      pt) probe "perftest-$r" ib_write_lat "${long[@]}" ;;
      raw) probe "raw-$r" "$bin" write-lat --fabric verbs --raw "${long[@]}" ;;
      eng) probe "engine-$r" "$bin" write-lat --fabric verbs "${long[@]}" ;;
    esac
  done
done

#!/usr/bin/env bash
# Where a write_lat round trip goes, tool by tool: one run each of perftest, efa-perf --raw and
# efa-perf through the engine on rxe0, with the kernel tracing the scheduler (switches, wake-ups)
# and rxe's entry points (the doorbell's system call, requester, receiver, completer, CQ posts)
# for TRACE_SECS (default 0.4) seconds in the middle of each run. The traces go to OUT (a --share
# directory), and trace-summary.py, on the host, prints per CPU who ran, where rxe's work ran, and
# per direction the time from one side's doorbell to the other's and from a side's switch-in to its
# doorbell:
#
#   mkdir -p /tmp/tr && tests/vm/run --share /tmp/tr --env OUT=/tmp/tr --timeout 900 \
#     --script efa-perf/scripts/vm-trace.sh
#   python3 efa-perf/scripts/trace-summary.py /tmp/tr/*.trace
#
# ITERS (default 30000; each run must outlast DELAY, default 5 s, plus the trace), SIZE (default
# 2), TOOLS (default "pt raw eng") and ROUNDS (default 1) choose what runs, BUFFER_KB (default
# 16384 per CPU) the trace buffer for longer traces, and PIN_SERVER / PIN_CLIENT pin the sides as
# the other scripts do; pass them with --env. `trace-summary.py --windows MS` cuts a trace into
# windows: how a run's latency, the CPU doing rxe's work and the wake-ups across CPUs move
# together.
# The function tracer slows the kernel's work: compare tools within one run, not with untraced
# figures.
set -uo pipefail
PORT_BASE=25700
source "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
iters=${ITERS:-30000}
size=${SIZE:-2}
dest=${OUT:?OUT names a --share directory for the traces (see the header)}
common=(-d "$dev" -x "$gid" -F)
T=/sys/kernel/tracing
mountpoint -q $T || mount -t tracefs nodev $T
echo "${BUFFER_KB:-16384}" >$T/buffer_size_kb
echo nop >$T/current_tracer
: >$T/set_ftrace_filter
# rxe's task entry points on 6.12 (other kernels name some differently: those are skipped).
for f in ib_uverbs_write rxe_post_send rxe_sched_task rxe_run_task do_task rxe_requester \
  rxe_receiver rxe_responder rxe_completer rxe_rcv rxe_xmit_packet rxe_cq_post; do
  echo "$f" >>$T/set_ftrace_filter 2>/dev/null || echo "vm-trace: no function $f in this kernel"
done
echo function >$T/current_tracer
for e in sched/sched_switch sched/sched_wakeup; do echo 1 >$T/events/$e/enable; done
echo "kernel $(uname -r), $(nproc) CPUs, $iters iterations of $size B"

trace_run() {
  local name=$1
  shift
  local server client
  split_cmds "$@"
  pin_cmds
  port=$((port + 1))
  echo 0 >$T/tracing_on
  : >$T/trace
  "${server[@]}" -s "$size" -p "$port" >"$out/$name.server" 2>&1 &
  local spid=$!
  vm-wait-listen "$port" 120 || { echo "$name: server did not listen" >&2; cat "$out/$name.server" >&2; return 1; }
  timeout 300 "${client[@]}" -s "$size" -p "$port" "$ip" >"$out/$name.client" 2>&1 &
  local cpid=$!
  sleep "${DELAY:-5}"
  kill -0 "$cpid" 2>/dev/null || echo "$name: the run ended before the trace (raise ITERS)" >&2
  echo 1 >$T/tracing_on
  sleep "${TRACE_SECS:-0.4}"
  echo 0 >$T/tracing_on
  wait "$cpid" || { echo "$name: client failed" >&2; cat "$out/$name.client" >&2; }
  wait "$spid"
  cp $T/trace "$dest/$name.trace"
  echo "$name: t_typical $(column "$out/$name.client" "$size" 5) us (traced), $dest/$name.trace"
}

tools=${TOOLS:-pt raw eng}
for ((r = 1; r <= ${ROUNDS:-1}; r++)); do
  if [[ $tools == *pt* ]]; then
    trace_run "pt$r" ib_write_lat "${common[@]}" -n "$iters" -- ib_write_lat "${common[@]}" -n "$iters"
  fi
  if [[ $tools == *raw* ]]; then
    trace_run "raw$r" "$bin" write-lat --raw --fabric verbs "${common[@]}" -n "$iters" -- \
      "$bin" write-lat --raw --fabric verbs "${common[@]}" -n "$iters"
  fi
  if [[ $tools == *eng* ]]; then
    trace_run "eng$r" "$bin" write-lat --fabric verbs "${common[@]}" -n "$iters" -- \
      "$bin" write-lat --fabric verbs "${common[@]}" -n "$iters"
  fi
done

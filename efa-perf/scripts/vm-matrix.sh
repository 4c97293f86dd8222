#!/bin/bash
# efa-perf beside perftest on the same Soft-RoCE device, every point REPS times, in one VM run:
# write, read and send bandwidth at 4 KiB, 64 KiB and 1 MiB, write and send latency at 2 B and
# 4 KiB, and the latency tests again with -e (both tools sleep on completion events). Each run is
# a server and a client process on rxe0; perftest's and efa-perf's runs alternate.
#
#   tests/vm/run --timeout 3600 --script efa-perf/scripts/vm-matrix.sh
#
# Per point: the median and the spread (min-max) over REPS runs of each tool's figure (bandwidth:
# average MB/s; latency: t_typical us), their ratio (efa-perf / perftest), and each tool's CPU use:
# the client's and the server's CPU time (user + system, from the shell's `times`) over the
# client's wall time, in % of one core, medians. efa-perf's write and read tests run through the
# engine (verbs fabric, one work request per message: --slice-size SIZE); send-bw and send-lat run
# on the efa crate's RC queue pairs, as perftest does. EFA_PERF names the binary (default:
# $CARGO_TARGET_DIR/release/efa-perf); from the host pass BW_ITERS, BW_ITERS_1M, LAT_ITERS and
# REPS as --env VM_ENV_BW_ITERS=... and so on (tests/vm/README.md).
set -euo pipefail
bin=${EFA_PERF:-${CARGO_TARGET_DIR:-target}/release/efa-perf}
dev=${VM_RDMA_DEV:-rxe0}
gid=${VM_GID_INDEX:-1}
ip=${VM_SELF_IP:-127.0.0.1}
bw_iters=${BW_ITERS:-1000}
bw_iters_1m=${BW_ITERS_1M:-200}
lat_iters=${LAT_ITERS:-1000}
reps=${REPS:-3}
port=18700
out=$(mktemp -d)

# now_ns: the wall clock in nanoseconds.
now_ns() { date +%s%N; }
# cpu_of FILE: children's user + system seconds from a `times` output.
cpu_of() { awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] } print t }' "$1"; }

# run_pair NAME SERVER_CMD... -- CLIENT_CMD...: server in the background, client once it
# listens; leaves NAME.client, NAME.server and NAME.cpu ("client_cpu server_cpu wall" seconds).
run_pair() {
  local name=$1
  shift
  local server=() client=()
  while [[ $1 != -- ]]; do server+=("$1"); shift; done
  shift
  client=("$@")
  port=$((port + 1))
  ( "${server[@]}" -p "$port" >"$out/$name.server" 2>&1; rc=$?; times >"$out/$name.stimes"; exit $rc ) &
  local pid=$!
  if ! vm-wait-listen "$port" 120; then
    echo "$name: server did not listen:" >&2
    cat "$out/$name.server" >&2
    kill "$pid" 2>/dev/null || true
    return 1
  fi
  local t0 t1
  t0=$(now_ns)
  if ! ( timeout 300 "${client[@]}" -p "$port" "$ip" >"$out/$name.client" 2>&1; rc=$?; times >"$out/$name.ctimes"; exit $rc ); then
    echo "$name: client failed:" >&2
    cat "$out/$name.client" "$out/$name.server" >&2
    kill "$pid" 2>/dev/null || true
    return 1
  fi
  t1=$(now_ns)
  wait "$pid" || { echo "$name: server failed:" >&2; cat "$out/$name.server" >&2; return 1; }
  echo "$(cpu_of "$out/$name.ctimes") $(cpu_of "$out/$name.stimes") $(((t1 - t0) / 1000000))" >"$out/$name.cpu"
}

# column LOG SIZE N: field N of the result row for SIZE bytes.
column() {
  awk -v size="$2" -v n="$3" '$1 == size && NF >= 5 { v = $n } END { print v }' "$1"
}
# stats VALUES...: "median (min-max)" of the numeric values.
stats() {
  printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g |
    awk '{v[NR]=$1} END {if (NR == 0) {print "-"; exit}; printf "%.2f (%.2f-%.2f)", v[int((NR+1)/2)], v[1], v[NR]}'
}
median() { stats "$@" | awk '{print $1}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }
# cpu_pct NAME: "client% server%" of one run.
cpu_pct() { awk '{ if ($3 > 0) printf "%.0f %.0f", 100 * $1 / ($3 / 1000), 100 * $2 / ($3 / 1000) }' "$out/$1.cpu"; }

# point TEST SIZE COL PT_CMD... -- EP_CMD...: REPS alternating runs of both tools (each command
# runs as both server and client, with -s SIZE); prints one table row.
point() {
  local test=$1 size=$2 col=$3
  shift 3
  local pt=() ep=()
  while [[ $1 != -- ]]; do pt+=("$1"); shift; done
  shift
  ep=("$@")
  local p=() e=() pc=() ps=() ec=() es=() r c
  for ((r = 0; r < reps; r++)); do
    if run_pair "pt-$test-$size-$r" "${pt[@]}" -s "$size" -- "${pt[@]}" -s "$size"; then
      p+=("$(column "$out/pt-$test-$size-$r.client" "$size" "$col")")
      c=($(cpu_pct "pt-$test-$size-$r")); pc+=("${c[0]:-}"); ps+=("${c[1]:-}")
    fi
    if run_pair "ep-$test-$size-$r" "${ep[@]}" -s "$size" -- "${ep[@]}" -s "$size"; then
      e+=("$(column "$out/ep-$test-$size-$r.client" "$size" "$col")")
      c=($(cpu_pct "ep-$test-$size-$r")); ec+=("${c[0]:-}"); es+=("${c[1]:-}")
    fi
  done
  printf '| %s | %s | %s | %s | %s | %s/%s | %s/%s |\n' "$test" "$size" "$(stats "${p[@]}")" "$(stats "${e[@]}")" \
    "$(ratio "$(median "${e[@]}")" "$(median "${p[@]}")")" \
    "$(median "${pc[@]}")" "$(median "${ps[@]}")" "$(median "${ec[@]}")" "$(median "${es[@]}")"
}

common=(-d "$dev" -x "$gid" -F)
echo "reps $reps, bandwidth $bw_iters iterations ($bw_iters_1m at 1 MiB), latency $lat_iters"
echo "| test | bytes | perftest | efa-perf | ratio | perftest CPU % client/server | efa-perf CPU % client/server |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for size in 4096 65536 1048576; do
  n=$bw_iters; ((size < 1048576)) || n=$bw_iters_1m
  for t in write read; do
    point "${t}_bw" "$size" 4 "ib_${t}_bw" "${common[@]}" -n "$n" -- \
      "$bin" "$t-bw" --fabric verbs "${common[@]}" -n "$n" --slice-size "$size"
  done
  point send_bw "$size" 4 ib_send_bw "${common[@]}" -n "$n" -- "$bin" send-bw --fabric verbs "${common[@]}" -n "$n"
done
for ev in "" -e; do
  for size in 2 4096; do
    point "write_lat${ev:+ $ev}" "$size" 5 ib_write_lat "${common[@]}" -n "$lat_iters" $ev -- \
      "$bin" write-lat --fabric verbs "${common[@]}" -n "$lat_iters" $ev
    point "send_lat${ev:+ $ev}" "$size" 5 ib_send_lat "${common[@]}" -n "$lat_iters" $ev -- \
      "$bin" send-lat --fabric verbs "${common[@]}" -n "$lat_iters" $ev
  done
done
echo "logs: $out"

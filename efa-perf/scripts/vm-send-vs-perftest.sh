#!/bin/bash
# efa-perf send-bw / send-lat (SEND/RECV on the efa crate's RC queue pairs) beside perftest's
# ib_send_bw / ib_send_lat on the same Soft-RoCE device, sizes and iteration counts, in one VM run,
# each as a server and a client process on rxe0. First a loopback check of both tests.
#
#   tests/vm/run --timeout 1500 --script efa-perf/scripts/vm-send-vs-perftest.sh
#
# Prints one line per test and size with both figures (bandwidth: average MB/s; latency: t_typical
# us), each the median of REPS runs (default 3; efa-perf's and perftest's interleaved, as a 2-vCPU
# guest stalls on scheduler ticks now and then), and their ratio (efa-perf / perftest). EFA_PERF
# names the binary (default: $CARGO_TARGET_DIR/release/efa-perf); from the host, pass BW_ITERS,
# LAT_ITERS and REPS as VM_ENV_BW_ITERS=... and so on.
set -euo pipefail
bin=${EFA_PERF:-${CARGO_TARGET_DIR:-target}/release/efa-perf}
dev=${VM_RDMA_DEV:-rxe0}
gid=${VM_GID_INDEX:-1}
ip=${VM_SELF_IP:-127.0.0.1}
bw_iters=${BW_ITERS:-1000}
lat_iters=${LAT_ITERS:-500}
reps=${REPS:-3}
port=18600
out=$(mktemp -d)

# run_pair NAME SERVER_CMD... -- CLIENT_CMD...: server in the background, client once it listens.
run_pair() {
  local name=$1
  shift
  local server=() client=()
  while [[ $1 != -- ]]; do server+=("$1"); shift; done
  shift
  client=("$@")
  port=$((port + 1))
  "${server[@]}" -p "$port" >"$out/$name.server" 2>&1 &
  local pid=$!
  if ! vm-wait-listen "$port" 120; then
    echo "$name: server did not listen:" >&2
    cat "$out/$name.server" >&2
    kill "$pid" 2>/dev/null || true
    return 1
  fi
  if ! timeout 300 "${client[@]}" -p "$port" "$ip" >"$out/$name.client" 2>&1; then
    echo "$name: client failed:" >&2
    cat "$out/$name.client" "$out/$name.server" >&2
    kill "$pid" 2>/dev/null || true
    return 1
  fi
  wait "$pid" || { echo "$name: server failed:" >&2; cat "$out/$name.server" >&2; return 1; }
}

# column LOG SIZE N: field N of the result row for SIZE bytes.
column() {
  awk -v size="$2" -v n="$3" '$1 == size && NF >= 5 { v = $n } END { print v }' "$1"
}
median() { printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g | awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)]; else print "-"}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }

for t in send-bw send-lat; do
  "$bin" "$t" --loopback --fabric verbs -d "$dev" -x "$gid" -s 4096 -n 100 -q 1 2>&1 | sed -n '/Test$/p;/#bytes/,+1p'
done

printf '%-10s %9s %6s %14s %14s %7s\n' test bytes iters perftest efa-perf ratio
# pair KIND SIZE ITERS COLUMN: medians of perftest's and efa-perf's figure, interleaved runs.
pair() {
  local kind=$1 size=$2 iters=$3 col=$4 p=() e=() r
  for ((r = 0; r < reps; r++)); do
    run_pair "pt-$kind-$size" "ib_send_$kind" -d "$dev" -x "$gid" -F -s "$size" -n "$iters" -- \
      "ib_send_$kind" -d "$dev" -x "$gid" -F -s "$size" -n "$iters"
    p+=("$(column "$out/pt-$kind-$size.client" "$size" "$col")")
    run_pair "ep-$kind-$size" "$bin" "send-$kind" --fabric verbs -d "$dev" -x "$gid" -F -- \
      "$bin" "send-$kind" --fabric verbs -d "$dev" -x "$gid" -F -s "$size" -n "$iters"
    e+=("$(column "$out/ep-$kind-$size.client" "$size" "$col")")
  done
  echo "$(median "${p[@]}") $(median "${e[@]}")"
}
for size in 64 4096 65536; do
  res=$(pair bw "$size" "$bw_iters" 4); p=${res% *}; e=${res#* }
  printf '%-10s %9s %6s %9s MB/s %9s MB/s %7s\n' send_bw "$size" "$bw_iters" "$p" "$e" "$(ratio "$e" "$p")"
done
for size in 2 64 4096; do
  res=$(pair lat "$size" "$lat_iters" 5); p=${res% *}; e=${res#* }
  printf '%-10s %9s %6s %11s us %11s us %7s\n' send_lat "$size" "$lat_iters" "$p" "$e" "$(ratio "$e" "$p")"
done
echo "logs: $out"

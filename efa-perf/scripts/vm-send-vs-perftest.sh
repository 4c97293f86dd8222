#!/bin/bash
# efa-perf send-bw / send-lat (SEND/RECV on the efa crate's RC queue pairs) beside perftest's
# ib_send_bw / ib_send_lat on the same Soft-RoCE device, sizes and iteration counts, in one VM run,
# each as a server and a client process on rxe0. First a loopback check of both tests.
#
#   tests/vm/run --timeout 1500 --script efa-perf/scripts/vm-send-vs-perftest.sh
#
# Prints one line per test and size with both figures (bandwidth: average MB/s; latency: t_typical
# us) and their ratio (efa-perf / perftest). EFA_PERF names the binary (default:
# $CARGO_TARGET_DIR/release/efa-perf).
set -euo pipefail
bin=${EFA_PERF:-${CARGO_TARGET_DIR:-target}/release/efa-perf}
dev=${VM_RDMA_DEV:-rxe0}
gid=${VM_GID_INDEX:-1}
ip=${VM_SELF_IP:-127.0.0.1}
bw_iters=${BW_ITERS:-1000}
lat_iters=${LAT_ITERS:-500}
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
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }

for t in send-bw send-lat; do
  "$bin" "$t" --loopback --fabric verbs -d "$dev" -x "$gid" -s 4096 -n 100 -q 1 2>&1 | sed -n '/Test$/p;/#bytes/,+1p'
done

printf '%-10s %9s %6s %14s %14s %7s\n' test bytes iters perftest efa-perf ratio
for size in 64 4096 65536; do
  run_pair "pt-bw-$size" ib_send_bw -d "$dev" -x "$gid" -F -s "$size" -n "$bw_iters" -- \
    ib_send_bw -d "$dev" -x "$gid" -F -s "$size" -n "$bw_iters"
  run_pair "ep-bw-$size" "$bin" send-bw --fabric verbs -d "$dev" -x "$gid" -F -- \
    "$bin" send-bw --fabric verbs -d "$dev" -x "$gid" -F -s "$size" -n "$bw_iters"
  p=$(column "$out/pt-bw-$size.client" "$size" 4); e=$(column "$out/ep-bw-$size.client" "$size" 4)
  printf '%-10s %9s %6s %9s MB/s %9s MB/s %7s\n' send_bw "$size" "$bw_iters" "$p" "$e" "$(ratio "$e" "$p")"
done
for size in 2 64 4096; do
  run_pair "pt-lat-$size" ib_send_lat -d "$dev" -x "$gid" -F -s "$size" -n "$lat_iters" -- \
    ib_send_lat -d "$dev" -x "$gid" -F -s "$size" -n "$lat_iters"
  run_pair "ep-lat-$size" "$bin" send-lat --fabric verbs -d "$dev" -x "$gid" -F -- \
    "$bin" send-lat --fabric verbs -d "$dev" -x "$gid" -F -s "$size" -n "$lat_iters"
  p=$(column "$out/pt-lat-$size.client" "$size" 5); e=$(column "$out/ep-lat-$size.client" "$size" 5)
  printf '%-10s %9s %6s %11s us %11s us %7s\n' send_lat "$size" "$lat_iters" "$p" "$e" "$(ratio "$e" "$p")"
done
echo "logs: $out"

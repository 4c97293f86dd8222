# What the VM comparison scripts share (sourced, not run): the binary and device settings, a
# server/client pair runner that also records each side's CPU time, and the table helpers.
# Runs inside the guest; EFA_PERF names the binary (default: $CARGO_TARGET_DIR/release/efa-perf).
#
# With two VMs (`tests/vm/run --hosts 2 --script ...`) both run the same script: VM 1 runs every
# server, VM 0 every client against it and prints the table (VM 1's stdout is dropped); the
# server's CPU is then not known to VM 0 and shows as "-".
bin=${EFA_PERF:-${CARGO_TARGET_DIR:-target}/release/efa-perf}
dev=${VM_RDMA_DEV:-rxe0}
gid=${VM_GID_INDEX:-1}
two_vms=0
[[ ${VM_HOSTS:-1} == 2 ]] && two_vms=1
if ((two_vms)); then
  ip=$VM_PEER_IP
  [[ $VM_HOST_INDEX == 1 ]] && exec >/dev/null
else
  ip=${VM_SELF_IP:-127.0.0.1}
fi
out=$(mktemp -d)
port=${PORT_BASE:-18600}
# Seconds a client may run before it counts as failed (a caller may lower it for short runs).
client_bound=${CLIENT_BOUND:-300}
# PIN_SERVER and PIN_CLIENT (Linux cpu lists, for instance 0 and 1): every server and every client,
# of every tool alike, runs under `taskset -c LIST`, as perftest is pinned from outside.
pin_server=${PIN_SERVER:-}
pin_client=${PIN_CLIENT:-}
# WQ_SCOPE (cpu, smt, cache, numa or system): the guest kernel's default affinity scope of unbound
# workqueues, rxe's among them, set before any run; where a message's rxe work may run.
if [[ -n ${WQ_SCOPE:-} ]]; then
  echo "$WQ_SCOPE" >/sys/module/workqueue/parameters/default_affinity_scope
  echo "workqueue default_affinity_scope: $(cat /sys/module/workqueue/parameters/default_affinity_scope)" >&2
fi

# now_ns: the wall clock in nanoseconds.
now_ns() { date +%s%N; }
# cpu_of FILE: children's user + system seconds from a `times` output.
cpu_of() { awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] } print t }' "$1"; }

# split_cmds SERVER_CMD... -- CLIENT_CMD...: sets the caller's `server` and `client` arrays.
split_cmds() {
  server=() client=()
  while [[ $1 != -- ]]; do server+=("$1"); shift; done
  shift
  client=("$@")
}

# pin_cmds: puts the caller's `server` and `client` arrays under `taskset -c` (PIN_SERVER,
# PIN_CLIENT), where given.
pin_cmds() {
  [[ -z $pin_server ]] || server=(taskset -c "$pin_server" "${server[@]}")
  [[ -z $pin_client ]] || client=(taskset -c "$pin_client" "${client[@]}")
}

# run_pair NAME SERVER_CMD... -- CLIENT_CMD...: server in the background, client once it
# listens (each gets -p PORT, the client the address too); leaves NAME.client, NAME.server and
# NAME.cpu ("client_cpu server_cpu wall_ms": CPU seconds of each process, the client's wall time).
run_pair() {
  local name=$1
  shift
  local server client
  split_cmds "$@"
  pin_cmds
  port=$((port + 1))
  if ((two_vms)); then
    run_split "$name"
    return
  fi
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
  if ! ( timeout "$client_bound" "${client[@]}" -p "$port" "$ip" >"$out/$name.client" 2>&1; rc=$?; times >"$out/$name.ctimes"; exit $rc ); then
    echo "$name: client failed:" >&2
    cat "$out/$name.client" "$out/$name.server" >&2
    kill "$pid" 2>/dev/null || true
    return 1
  fi
  t1=$(now_ns)
  wait "$pid" || { echo "$name: server failed:" >&2; cat "$out/$name.server" >&2; return 1; }
  echo "$(cpu_of "$out/$name.ctimes") $(cpu_of "$out/$name.stimes") $(((t1 - t0) / 1000000))" >"$out/$name.cpu"
}

# run_split NAME: run_pair across two VMs (server[] and client[] set by run_pair): VM 1 serves and
# says when it listens (or gave up), VM 0 then runs the client; only VM 0's files mean anything.
run_split() {
  local name=$1 rc=0
  if [[ $VM_HOST_INDEX == 1 ]]; then
    timeout 360 "${server[@]}" -p "$port" >"$out/$name.server" 2>&1 &
    local pid=$!
    vm-wait-listen "$port" 120 || { echo "$name: server did not listen" >&2; cat "$out/$name.server" >&2; }
    vm-signal "listening-$name"
    # VM 0 says when its client is over, however it ended: a server whose client gave up would
    # otherwise hold this VM, and every later pair, until its own timeout.
    vm-wait-signal "done-$name" 330 || true
    local i
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill "$pid" 2>/dev/null
    wait "$pid" || { echo "$name: server failed or was stopped:" >&2; cat "$out/$name.server" >&2; return 1; }
    return 0
  fi
  if ! vm-wait-signal "listening-$name" 180; then
    echo "$name: no server on VM 1" >&2
    vm-signal "done-$name"
    return 1
  fi
  local t0 t1
  t0=$(now_ns)
  ( timeout "$client_bound" "${client[@]}" -p "$port" "$ip" >"$out/$name.client" 2>&1; rc=$?; times >"$out/$name.ctimes"; exit $rc ) || rc=$?
  t1=$(now_ns)
  vm-signal "done-$name"
  if ((rc)); then
    echo "$name: client failed:" >&2
    cat "$out/$name.client" >&2
    return 1
  fi
  echo "$(cpu_of "$out/$name.ctimes") - $(((t1 - t0) / 1000000))" >"$out/$name.cpu"
}

# start_pair NAME CMD...: CMD as server and client in the background, for a probe that kills them
# (each gets -p PORT, the client the address too; pinned as PIN_SERVER and PIN_CLIENT say); sets
# `spid` and `cpid` and returns once the client has run SETTLE seconds (default 12: setup takes
# seconds on the software CPU).
start_pair() {
  local name=$1
  shift
  port=$((port + 1))
  local server client
  split_cmds "$@" -p "$port" -- "$@" -p "$port" "$ip"
  pin_cmds
  "${server[@]}" >"$out/$name.server" 2>&1 &
  spid=$!
  vm-wait-listen "$port" 120 || { echo "$name: server did not listen" >&2; kill $spid; return 1; }
  "${client[@]}" >"$out/$name.client" 2>&1 &
  cpid=$!
  sleep "${SETTLE:-12}"
}

# long_run SIZE: a latency run's arguments for SIZE-byte messages, with iterations enough to
# outlast any probe on the software CPU (the probe kills it).
long_run() { echo -d "$dev" -x "$gid" -F -s "$1" -n 3000000; }

# sample NAME SIZE COL CMD...: one run of CMD as both server and client with -s SIZE (not in a
# subshell, so each run takes the next port); sets `got` to field COL of the client's row for
# SIZE, empty when the run failed.
sample() {
  local name=$1 size=$2 col=$3
  shift 3
  got=
  run_pair "$name" "$@" -s "$size" -- "$@" -s "$size" && got=$(column "$out/$name.client" "$size" "$col")
}

# column LOG SIZE N: field N of the result row for SIZE bytes.
column() {
  [[ -f $1 ]] || return 0
  awk -v size="$2" -v n="$3" '$1 == size && NF >= 5 { v = $n } END { print v }' "$1"
}
# stats VALUES...: "median (min-max)" of the numeric values, "-" without any.
stats() {
  printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g |
    awk '{v[NR]=$1} END {if (NR == 0) {print "-"; exit}; printf "%.2f (%.2f-%.2f)", v[int((NR+1)/2)], v[1], v[NR]}'
}
# median VALUES...: the median of the numeric values, "-" without any.
median() { stats "$@" | awk '{print $1}'; }
# whole_median VALUES...: the median rounded to a whole number (CPU percentages), "-" without any.
whole_median() { median "$@" | awk '$1 == "-" { print; next } { printf "%.0f\n", $1 }'; }
# in_turn R ITEMS...: the items in order for round R even, reversed for R odd: the tools of a
# comparison take turns to go first (a run can find the guest slower than the run before it).
in_turn() {
  local r=$1 i out=()
  shift
  if ((r % 2 == 0)); then out=("$@"); else for ((i = $#; i >= 1; i--)); do out+=("${!i}"); done; fi
  echo "${out[*]}"
}
# ratio A B: A / B to two places, "-" when B is not positive.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }
# cpu_pct NAME: "client% server%" of one run, in % of one core over the client's wall time.
cpu_pct() {
  [[ -f $out/$1.cpu ]] || return 0
  awk '{ if ($3 > 0) { printf "%.0f ", 100 * $1 / ($3 / 1000); if ($2 == "-") print "-"; else printf "%.0f\n", 100 * $2 / ($3 / 1000) } }' "$out/$1.cpu"
}

# Shared helpers for the VM checks (sourced; runs inside the guest).

# perftest_result LOG SIZE: prints the average bandwidth (MB/s) of the result row for SIZE bytes, fails
# when the row is missing or the bandwidth is not positive.
perftest_result() {
  local log=$1 size=$2 avg
  avg=$(awk -v size="$size" '$1 == size && NF >= 5 { print $4 }' "$log" | tail -n1)
  if [[ -z $avg ]] || ! awk -v v="$avg" 'BEGIN { exit !(v > 0) }'; then
    echo "check: no positive bandwidth row for $size bytes in $log:" >&2
    cat "$log" >&2
    return 1
  fi
  echo "$avg"
}

# wait_pid PID SECS: waits for a background process at most SECS seconds; kills it and fails after that.
wait_pid() {
  local pid=$1 secs=$2 i
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid"; return; }
    sleep 0.1
  done
  echo "check: process $pid still running after $secs s; killing it" >&2
  kill -9 "$pid" 2>/dev/null
  return 124
}

#!/bin/bash
# efa-perf validate over the verbs fabric on rxe0 (RC, real libibverbs): READ, WRITE and WRITE_WITH_NOTIFY
# from one engine to two peer engines in one process, every byte checked on both sides, with rxe's
# hw_counters deltas; then a peer byte corrupted on purpose must fail the run, named by its address.
# vm-timeout: 240
set -uo pipefail
repo=$(cd "$(dirname "$0")/../../.." && pwd)
perf=
for c in ${EFA_PERF:-} "${CARGO_TARGET_DIR:-$repo/target}"/{debug,release}/efa-perf; do
  [[ -n $c && -x $c ]] && { perf=$c; break; }
done
[[ -n $perf ]] || { echo "check: efa-perf not found; build it with 'cargo build -p efa-perf' (or set EFA_PERF)" >&2; exit 1; }
timeout 150 "$perf" validate --fabric verbs -d rxe0 --peers 2 --ops 1000 --max-len 32K --seed 1 --counters \
  >/tmp/validate.log 2>&1
rc=$?
cat /tmp/validate.log
((rc == 0)) && grep -q '^validate: OK' /tmp/validate.log || { echo "check: efa-perf validate failed (exit $rc)" >&2; exit 1; }
timeout 60 "$perf" validate --fabric verbs -d rxe0 --ops 200 --seed 1 --inject-corruption >/tmp/validate-bad.log 2>&1
rc=$?
grep -m1 '^  mismatch:' /tmp/validate-bad.log
((rc == 1)) && grep -q '^  mismatch: segment validate/peer' /tmp/validate-bad.log ||
  { cat /tmp/validate-bad.log; echo "check: a corrupted byte was not caught (exit $rc)" >&2; exit 1; }
echo "check: efa-perf validate --fabric verbs on rxe0: 1000 requests checked byte for byte, corruption caught"

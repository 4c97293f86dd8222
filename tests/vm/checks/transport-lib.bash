# Helpers of the transport-* checks (sourced, not a check itself: hence not *.sh; runs inside the guest).

# verbs_peer_bin: prints the path of the transport's verbs_peer example ($VERBS_PEER, else the repository's
# target directory), or fails saying how to build it.
verbs_peer_bin() {
  local repo c
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
  for c in ${VERBS_PEER:-} "${CARGO_TARGET_DIR:-$repo/target}"/{debug,release}/examples/verbs_peer; do
    [[ -n $c && -x $c ]] && { echo "$c"; return 0; }
  done
  echo "check: verbs_peer not found; build it with 'cargo build -p transport --example verbs_peer'" \
    "(or set VERBS_PEER)" >&2
  return 1
}

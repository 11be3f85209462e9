#!/usr/bin/env bash
# Runs benchmark scenarios: scripts/bench.sh [SCENARIO|all] [N].
# Results go to bench/results/<date>-<scenario>.{json,md} and charts to
# bench/results/<date>-<scenario>-<chart>.png. "all" runs the standard set
# (about 14 minutes on 2 cores); N, when given, is passed as --n to each.
set -uo pipefail
cd "$(dirname "$0")/.."
scenario="${1:-all}"
n="${2:-}"
args=()
[ -n "$n" ] && args+=(--n "$n")
failed=()
start=$SECONDS
run() {
  local t=$SECONDS
  echo "== $1"
  if ! bin/pushbench "$@" "${args[@]}"; then
    failed+=("$1")
  fi
  echo "== $1: $((SECONDS - t)) s"
}
case "$scenario" in
  all)
    # The standard set. conns runs at its default 50,000; 200,000 with
    # `make bench SCENARIO=conns N=200000`.
    for s in edge unicast batch fanout netpoll proxy tls backpressure compress ring migrate baseline storm resize conns; do
      run "$s"
    done
    ;;
  *)
    run "$scenario"
    ;;
esac
echo "== total: $((SECONDS - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "== failed: ${failed[*]}" >&2
  exit 1
fi

#!/usr/bin/env bash
# Runs benchmark scenarios: scripts/bench.sh [SCENARIO|all] [N].
# Results go to bench/results/<date>-<scenario>.{json,md} and charts to
# bench/results/<date>-<scenario>-<chart>.png. "all" runs the standard set
# (under 30 minutes on 2 cores, peers and sweep about 7½ of them); N, when
# given, is passed as --n to each.
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
# peers and sweep run Centrifugo beside the edge: install it (once; cached
# in bin/) before them.
centrifugo() {
  if ! ./scripts/centrifugo.sh >/dev/null; then
    echo "== centrifugo: install failed (scripts/centrifugo.sh)" >&2
    return 1
  fi
}
case "$scenario" in
  all)
    # The standard set. conns runs at its default 50,000; 200,000 with
    # `make bench SCENARIO=conns N=200000`.
    centrifugo || failed+=(centrifugo-install)
    for s in edge unicast batch fanout netpoll proxy tls backpressure compress ring migrate baseline peers sweep storm resize conns; do
      run "$s"
    done
    ;;
  peers|sweep)
    if centrifugo; then run "$scenario"; else failed+=("$scenario"); fi
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

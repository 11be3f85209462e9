#!/usr/bin/env bash
# Runs benchmark scenarios: scripts/bench.sh [SCENARIO|all] [N].
# Results go to bench/results/<date>-<scenario>.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario="${1:-all}"
n="${2:-}"
args=()
[ -n "$n" ] && args+=(--n "$n")
run() { echo "== $1"; bin/pushbench "$@" "${args[@]}"; }
case "$scenario" in
  all)
    run edge
    run netpoll
    ;;
  *)
    run "$scenario"
    ;;
esac

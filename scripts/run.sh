#!/usr/bin/env bash
# Brings the push cluster up on this machine with embedded defaults and
# stops it cleanly on Ctrl-C. State (the dev secret, logs) lives in .run/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .run
if [ ! -s .run/secret ]; then
  head -c 48 /dev/urandom | od -An -tx1 | tr -d ' \n' > .run/secret
  chmod 600 .run/secret
fi
export PUSH_JWT_SECRET_FILE="$PWD/.run/secret"

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped"
}
trap stop INT TERM EXIT

bin/edge --id 1 --listen 127.0.0.1:8080 --grpc 127.0.0.1:9090 --admin 127.0.0.1:9100 \
  --dev --drain-period 2s --log-format text 2> .run/edge-1.log &
pids+=($!)

for _ in $(seq 50); do
  curl -fs http://127.0.0.1:9100/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
if ! curl -fs http://127.0.0.1:9100/readyz >/dev/null 2>&1; then
  echo "edge did not become ready; see .run/edge-1.log:" >&2
  tail -20 .run/edge-1.log >&2
  exit 1
fi

cat <<TXT
push cluster is up (logs in .run/):
  edge 1   WebSocket ws://127.0.0.1:8080/ws   gRPC 127.0.0.1:9090   admin http://127.0.0.1:9100/metrics

Try it (in another terminal, from this directory):
  export PUSH_JWT_SECRET_FILE=$PWD/.run/secret
  TOKEN=\$(bin/pushctl token --user alice)
  # connect: any WebSocket client, e.g. in a browser console:
  #   ws = new WebSocket("ws://127.0.0.1:8080/ws?uid=alice&token=\$TOKEN"); ws.onmessage = e => console.log(e.data)
  bin/pushctl publish --user alice --data '{"hello":"world"}'
  bin/pushctl presence alice

Ctrl-C stops everything.
TXT
wait

#!/usr/bin/env bash
# Brings the push cluster up on this machine with embedded defaults — one
# router, three edges, a ring in a file store and the demo page — and stops
# it cleanly on Ctrl-C. State (dev secret, ring, logs)
# lives in .run/.
#
# Every port is on 127.0.0.1, so the gRPC and admin ports run open. With
# PUSH_SECURE=1 they take the credentials of docs/security.md instead:
# TLS from a dev CA made here with openssl, backend tokens, an admin token.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .run
if [ ! -s .run/secret ]; then
  head -c 48 /dev/urandom | od -An -tx1 | tr -d ' \n' > .run/secret
  chmod 600 .run/secret
fi
export PUSH_JWT_SECRET_FILE="$PWD/.run/secret"
export PUSH_RING="file:$PWD/.run/ring.json"

if [ "${PUSH_SECURE:-}" = 1 ]; then
  tls="$PWD/.run/tls"
  mkdir -p "$tls"
  if [ ! -s "$tls/node.crt" ]; then
    curve=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
    openssl req -x509 "${curve[@]}" -days 30 -subj "/CN=push dev cluster CA" \
      -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
    openssl req "${curve[@]}" -subj "/CN=push-dev-node" -keyout "$tls/node.key" -out "$tls/node.csr" 2>/dev/null
    openssl x509 -req -in "$tls/node.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial -days 30 \
      -out "$tls/node.crt" -extfile <(printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        "extendedKeyUsage=serverAuth,clientAuth" "keyUsage=digitalSignature") 2>/dev/null
    head -c 48 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tls/backend-jwt.key"
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tls/admin.token"
    chmod 600 "$tls"/*.key "$tls/admin.token"
  fi
  # The daemons: TLS (the node certificate is also each member's client
  # certificate toward the others), backends' tokens, the admin token.
  export PUSH_GRPC_TLS_CERT_FILE="$tls/node.crt" PUSH_GRPC_TLS_KEY_FILE="$tls/node.key"
  export PUSH_CLUSTER_CA_FILE="$tls/ca.crt" PUSH_BACKEND_JWT_SECRET_FILE="$tls/backend-jwt.key"
  export PUSH_ADMIN_TOKEN_FILE="$tls/admin.token"
  # pushctl and the demo: the CA and a backend token with every scope.
  export PUSH_GRPC_CA_FILE="$tls/ca.crt"
  PUSH_GRPC_TOKEN=$(bin/pushctl token --scope "publish publish_multi broadcast kick presence" --user dev --ttl 24h)
  export PUSH_GRPC_TOKEN
fi

# A fresh ring each run: ids 1-3, WebSocket ports 8081-8083, gRPC 9091-9093.
rm -f .run/ring.json .run/ring.json.lock
bin/pushctl ring init --id 1 --name edge-1 --ws 127.0.0.1:8081 --grpc 127.0.0.1:9091 >/dev/null
for i in 2 3; do
  bin/pushctl ring add --force --keys 0 --id "$i" --name "edge-$i" --ws "127.0.0.1:808$i" --grpc "127.0.0.1:909$i" >/dev/null
done

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

wait_ready() { # name url
  for _ in $(seq 100); do
    curl -fs "$2" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$1 did not become ready; see .run/$1.log:" >&2
  tail -20 ".run/$1.log" >&2
  exit 1
}

for i in 1 2 3; do
  bin/edge --id "$i" --listen "127.0.0.1:808$i" --grpc "127.0.0.1:909$i" --admin "127.0.0.1:910$i" \
    --dev --drain-period 2s --log-format text 2> ".run/edge-$i.log" &
  pids+=($!)
done
for i in 1 2 3; do wait_ready "edge-$i" "http://127.0.0.1:910$i/readyz"; done

bin/router --listen 127.0.0.1:8080 --grpc 127.0.0.1:9090 --admin 127.0.0.1:9200 \
  --drain-period 2s --log-format text 2> .run/router.log &
pids+=($!)
wait_ready router http://127.0.0.1:9200/readyz

# The demo page: dev tokens and a publish form (--dev), the SDK on the same ring.
bin/demo --listen 127.0.0.1:8000 --dev --ws-url ws://127.0.0.1:8080/ws --log-format text 2> .run/demo.log &
pids+=($!)
wait_ready demo http://127.0.0.1:8000/

cat <<TXT
push cluster is up (logs and the ring in .run/):
  router   ws://127.0.0.1:8080/ws   gRPC 127.0.0.1:9090   admin http://127.0.0.1:9200/metrics
  edges    ws 127.0.0.1:8081-8083   gRPC 127.0.0.1:9091-9093   admin http://127.0.0.1:9101-9103/metrics
  demo     http://127.0.0.1:8000/?uid=alice   (pick a user, publish from the form; a second tab shares the connection)

Try it (in another terminal, from this directory):
  export PUSH_JWT_SECRET_FILE=$PWD/.run/secret PUSH_RING=$PUSH_RING${PUSH_GRPC_CA_FILE:+
  # PUSH_SECURE=1: TLS and a backend token for pushctl; /drain and pprof want the admin token
  export PUSH_GRPC_CA_FILE=$PUSH_GRPC_CA_FILE PUSH_ADMIN_TOKEN_FILE=$PUSH_ADMIN_TOKEN_FILE
  export PUSH_GRPC_TOKEN=\$(bin/pushctl token --scope 'publish publish_multi broadcast kick presence' --user dev --backend-jwt-secret-file $PUSH_BACKEND_JWT_SECRET_FILE)}
  TOKEN=\$(bin/pushctl token --user alice)
  # connect through the router with any WebSocket client, e.g. in a browser console:
  #   ws = new WebSocket("ws://127.0.0.1:8080/ws?uid=alice&token=\$TOKEN"); ws.onmessage = e => console.log(e.data)
  bin/pushctl publish --user alice --data '{"hello":"world"}'      # via the router's gRPC forwarder
  bin/pushctl presence alice
  bin/pushctl ring show                                             # members, shares, liveness
  bin/pushctl ring weight 1 2                                       # resize while it runs

Ctrl-C stops everything.
TXT
wait

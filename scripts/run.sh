#!/usr/bin/env bash
# Brings the push cluster up on this machine with embedded defaults — one
# router, three edges, a ring in a file store and the demo page — and stops
# it cleanly on Ctrl-C: each daemon gets one SIGTERM and drains (its clients
# get a close frame, 1001 or 4003), then the script exits 0.
#
# State (dev secret, ring, leases, logs, pid files) lives in $PUSH_RUN_DIR
# (default .run/). A second run while a cluster of this state directory is
# running, or while one of its ports is taken, refuses before it touches
# anything (exit 1).
#
# Environment:
#   PUSH_RUN_DIR          state directory (default .run)
#   PUSH_RUN_BIN          where the binaries are (default bin)
#   PUSH_SECURE=1         gRPC with TLS and tokens, an admin token (docs/security.md)
#   PUSH_RUN_PORT_OFFSET  added to every port below (default 0), to run a
#                         second cluster beside the first
# Ports (plus the offset): router ws 8080, gRPC 9090, admin 9200; edges ws
# 8081-8083, gRPC 9091-9093, admin 9101-9103; demo page 8000.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${PUSH_RUN_DIR:-.run}
BIN=${PUSH_RUN_BIN:-bin}
OFF=${PUSH_RUN_PORT_OFFSET:-0}
case $OFF in ''|*[!0-9]*) echo "run.sh: PUSH_RUN_PORT_OFFSET=$OFF: want a number" >&2; exit 2 ;; esac
if [ $((9200 + OFF)) -gt 65535 ]; then echo "run.sh: PUSH_RUN_PORT_OFFSET=$OFF: ports beyond 65535" >&2; exit 2; fi
port() { echo $(($1 + OFF)); }
H=127.0.0.1
ROUTER_WS=$H:$(port 8080) ROUTER_GRPC=$H:$(port 9090) ROUTER_ADMIN=$H:$(port 9200) DEMO=$H:$(port 8000)
edge_ws() { echo "$H:$(port $((8080 + $1)))"; }
edge_grpc() { echo "$H:$(port $((9090 + $1)))"; }
edge_admin() { echo "$H:$(port $((9100 + $1)))"; }
DAEMONS="edge-1 edge-2 edge-3 router demo"

mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)

# --- Is a cluster already running? Nothing is written before this. -----
refuse() {
  echo "run.sh: $1" >&2
  echo "Nothing was started or changed: the running cluster's ring and logs in $RUN_DIR are untouched." >&2
  exit 1
}
# alive NAME: the pid in NAME.pid if that process lives and runs the binary
# the file names (pids are reused).
alive() {
  local f="$RUN_DIR/$1.pid" pid exe
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  exe=${exe% (deleted)} # the binary was rebuilt while the daemon runs
  case $1 in
    run) [ "$(basename "$exe")" = bash ] || [ "$(basename "$exe")" = sh ] ;;
    *) [ "$(basename "$exe")" = "${1%-[0-9]}" ] ;;
  esac
}
running=()
for n in run $DAEMONS; do
  if alive "$n"; then running+=("$n (pid $(cat "$RUN_DIR/$n.pid"))"); fi
done
# The lock is held by this script and every daemon it starts (they inherit
# it), so it is busy exactly while any of them lives.
exec 9>>"$RUN_DIR/run.lock"
if ! flock -n 9 || [ ${#running[@]} -gt 0 ]; then
  if [ ${#running[@]} -eq 0 ]; then running=("a run.sh starting right now"); fi
  msg="a push cluster is already running from $RUN_DIR: ${running[*]}."
  if alive run; then
    msg+=" Stop it with Ctrl-C in its terminal (or: kill -INT $(cat "$RUN_DIR/run.pid")), or use it as it is."
  else
    pids=""
    for n in $DAEMONS; do
      if alive "$n"; then pids+="$(cat "$RUN_DIR/$n.pid") "; fi
    done
    if [ -n "$pids" ]; then
      msg+=" Its run.sh is gone; stop the daemons with: kill -TERM $pids"
    else
      msg+=" Another run.sh holds $RUN_DIR/run.lock (starting, or stopping its daemons)."
    fi
  fi
  refuse "$msg To run a second cluster beside it: PUSH_RUN_DIR=.run2 PUSH_RUN_PORT_OFFSET=100 make run"
fi
for a in "$ROUTER_WS" "$ROUTER_GRPC" "$ROUTER_ADMIN" "$DEMO" $(for i in 1 2 3; do edge_ws $i; edge_grpc $i; edge_admin $i; done); do
  if (exec 3<>"/dev/tcp/${a%:*}/${a##*:}") 2>/dev/null; then
    refuse "port $a is taken (a cluster of another checkout or state directory, or another program): set PUSH_RUN_PORT_OFFSET to use other ports."
  fi
done
echo $$ > "$RUN_DIR/run.pid"

if [ ! -s "$RUN_DIR/secret" ]; then
  head -c 48 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$RUN_DIR/secret"
  chmod 600 "$RUN_DIR/secret"
fi
export PUSH_JWT_SECRET_FILE="$RUN_DIR/secret"
export PUSH_RING="file:$RUN_DIR/ring.json"

# Every port is on 127.0.0.1, so the gRPC and admin ports run open. With
# PUSH_SECURE=1 they take the credentials of docs/security.md instead: TLS
# from a dev CA made here with openssl, backend tokens, an admin token.
if [ "${PUSH_SECURE:-}" = 1 ]; then
  tls="$RUN_DIR/tls"
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
  PUSH_GRPC_TOKEN=$("$BIN/pushctl" token --scope "publish publish_multi broadcast kick presence" --user dev --ttl 24h)
  export PUSH_GRPC_TOKEN
fi

# A fresh ring each run: ids 1-3.
rm -rf "$RUN_DIR/ring.json" "$RUN_DIR/ring.json.lock" "$RUN_DIR/ring.json.live"
"$BIN/pushctl" ring init --id 1 --name edge-1 --ws "$(edge_ws 1)" --grpc "$(edge_grpc 1)" >/dev/null
for i in 2 3; do
  "$BIN/pushctl" ring add --force --keys 0 --id "$i" --name "edge-$i" --ws "$(edge_ws $i)" --grpc "$(edge_grpc $i)" >/dev/null
done

pids=()
stopping=
sleeper=
# stop sends each daemon one SIGTERM and waits for it: the edges first
# (their 1001 and 4003 closes go out through the router), then the router
# and the demo page.
stop() {
  [ -n "$stopping" ] && return
  stopping=1
  trap '' INT TERM HUP
  # (echo may fail once the terminal is gone: stopping goes on)
  echo || true
  echo "stopping: draining the edges, then the router..." || true
  for n in edge-1 edge-2 edge-3; do
    if alive "$n"; then kill -TERM "$(cat "$RUN_DIR/$n.pid")" 2>/dev/null || true; fi
  done
  for n in edge-1 edge-2 edge-3; do
    if alive "$n"; then wait "$(cat "$RUN_DIR/$n.pid")" 2>/dev/null || true; fi
  done
  for n in router demo; do
    if alive "$n"; then kill -TERM "$(cat "$RUN_DIR/$n.pid")" 2>/dev/null || true; fi
  done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$sleeper" ]; then kill "$sleeper" 2>/dev/null || true; fi
  rm -f "$RUN_DIR"/*.pid
  echo "stopped" || true
}
trap 'stop; exit 0' INT TERM HUP
trap 'stop' EXIT

# start NAME CMD...: a daemon in a session of its own, so a Ctrl-C in the
# terminal reaches this script only, never the daemons directly.
start() {
  local name=$1
  shift
  setsid "$@" > "$RUN_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/$name.pid"
  pids+=($!)
}

wait_ready() { # name url
  for _ in $(seq 300); do
    curl -fs "$2" >/dev/null 2>&1 && return 0
    alive "$1" || break
    sleep 0.1
  done
  echo "$1 did not become ready; see $RUN_DIR/$1.log:" >&2
  tail -20 "$RUN_DIR/$1.log" >&2
  exit 1
}

for i in 1 2 3; do
  start "edge-$i" "$BIN/edge" --id "$i" --listen "$(edge_ws $i)" --grpc "$(edge_grpc $i)" --admin "$(edge_admin $i)" \
    --dev --drain-period 2s --log-format text
done
for i in 1 2 3; do wait_ready "edge-$i" "http://$(edge_admin $i)/readyz"; done

start router "$BIN/router" --listen "$ROUTER_WS" --grpc "$ROUTER_GRPC" --admin "$ROUTER_ADMIN" \
  --drain-period 2s --log-format text
wait_ready router "http://$ROUTER_ADMIN/readyz"

# The demo page: dev tokens and a publish form (--dev), the SDK on the same ring.
start demo "$BIN/demo" --listen "$DEMO" --dev --ws-url "ws://$ROUTER_WS/ws" --log-format text
wait_ready demo "http://$DEMO/"

flags=
if [ "$OFF" != 0 ]; then flags=" --ws-url ws://$ROUTER_WS/ws"; fi
pflags=
if [ "$OFF" != 0 ]; then pflags=" --grpc $ROUTER_GRPC"; fi
cat <<TXT
push cluster is up (ring, logs and pids in $RUN_DIR):
  router   ws://$ROUTER_WS/ws   gRPC $ROUTER_GRPC   admin http://$ROUTER_ADMIN/metrics
  console  http://$ROUTER_ADMIN/console/
  edges    ws $(edge_ws 1)-$(port 8083)   gRPC $(edge_grpc 1)-$(port 9093)   admin http://$(edge_admin 1)-$(port 9103)/metrics
  demo     http://$DEMO/?uid=alice   (pick a user, publish from the form; a second tab shares the connection)

Try it (from this directory; README.md walks through it):
  export PUSH_JWT_SECRET_FILE=$PUSH_JWT_SECRET_FILE PUSH_RING=$PUSH_RING${PUSH_GRPC_CA_FILE:+
  # PUSH_SECURE=1: TLS and a backend token for pushctl; /drain and pprof want the admin token
  export PUSH_GRPC_CA_FILE=$PUSH_GRPC_CA_FILE PUSH_ADMIN_TOKEN_FILE=$PUSH_ADMIN_TOKEN_FILE
  export PUSH_GRPC_TOKEN=\$(bin/pushctl token --scope 'publish publish_multi broadcast kick presence' --user dev --backend-jwt-secret-file $PUSH_BACKEND_JWT_SECRET_FILE)}
  # in one terminal: print alice's messages (Ctrl-C stops it)
  bin/pushctl listen --user alice$flags
  # in another: publish to her through the router, then resize the ring while she listens
  bin/pushctl publish --user alice --data '{"hi":1}'$pflags
  bin/pushctl ring show
  bin/pushctl ring weight 1 3

Ctrl-C stops everything (each daemon drains).
TXT

# Wait for Ctrl-C. On a terminal, a foreground job of its own gets the
# terminal's Ctrl-C (job control), so make, this script and the daemons do
# not: the job ends and the script stops the cluster and exits 0 — make
# reports no error. Without a terminal, SIGINT or SIGTERM to this script
# does the same through the trap.
if [ -t 0 ] && [ -t 1 ]; then
  set -m
  (trap 'exit 0' INT; while sleep 3600; do :; done) || true
  set +m
  stop
  exit 0
fi
while :; do
  sleep 3600 &
  sleeper=$!
  wait $sleeper || true
done

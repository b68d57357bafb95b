#!/usr/bin/env bash
# Starts a local three-server Xene cluster on loopback, checks that it replicates, and prints
# how to use it and how to stop it. Running it again replaces what the last run started.
#
#   deploy/local-cluster.sh            start (or restart) the cluster
#   deploy/local-cluster.sh stop       stop it
#
# Data and logs live in $XENE_LOCAL_DIR (default /tmp/xene-local).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

dir="${XENE_LOCAL_DIR:-/tmp/xene-local}"
secret="local-cluster-secret"
base_port="${XENE_LOCAL_PORT:-7400}"

stop_cluster() {
  for pidfile in "$dir"/node-*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
}

if [ "${1:-start}" = "stop" ]; then
  stop_cluster
  echo "stopped the cluster in $dir"
  exit 0
fi

echo "== building xene-server and xenectl (the first build takes about 20 minutes: RocksDB)"
cargo build --workspace --bins --locked
bin="$CARGO_TARGET_DIR/debug"

stop_cluster
rm -rf "$dir"
mkdir -p "$dir"

start_node() {
  local id=$1; shift
  local grpc=$((base_port + (id - 1) * 10)) http=$((base_port + (id - 1) * 10 + 1))
  "$bin/xene-server" --node-id "$id" --data-dir "$dir/node-$id" \
    --grpc-addr "127.0.0.1:$grpc" --http-addr "127.0.0.1:$http" \
    --cluster-secret "$secret" "$@" >"$dir/node-$id.log" 2>&1 &
  echo $! >"$dir/node-$id.pid"
}

echo "== starting three servers (data and logs in $dir)"
start_node 1 --bootstrap
for _ in $(seq 300); do [ -s "$dir/node-1/admin.token" ] && break; sleep 0.1; done
[ -s "$dir/node-1/admin.token" ] || { echo "server 1 did not start; see $dir/node-1.log" >&2; tail -20 "$dir/node-1.log" >&2; exit 1; }
start_node 2 --join "127.0.0.1:$base_port"
start_node 3 --join "127.0.0.1:$base_port"

servers="127.0.0.1:$base_port,127.0.0.1:$((base_port + 10)),127.0.0.1:$((base_port + 20))"
export XENE_SERVERS="$servers"
export XENE_TOKEN="$(cat "$dir/node-1/admin.token")"
for _ in $(seq 300); do
  voters=$("$bin/xenectl" cluster members 2>/dev/null | grep -cE 'voter|leader' || true)
  [ "$voters" = 3 ] && break
  sleep 0.2
done
"$bin/xenectl" cluster members

echo "== writing through one server and reading from each"
"$bin/xenectl" --servers "127.0.0.1:$((base_port + 10))" kv put /hello world
for port in $base_port $((base_port + 10)) $((base_port + 20)); do
  printf '  127.0.0.1:%s says /hello = ' "$port"
  "$bin/xenectl" --servers "127.0.0.1:$port" kv get /hello
done

cat <<MSG

The cluster is running. To use it:

  export XENE_SERVERS=$servers
  export XENE_TOKEN=\$(cat $dir/node-1/admin.token)
  $bin/xenectl cluster status

To stop it:

  deploy/local-cluster.sh stop
MSG

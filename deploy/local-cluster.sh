#!/usr/bin/env bash
# Starts a local three-server Xene cluster and one agent on loopback, applies
# examples/hello.yaml, runs it, follows its logs to the end, and prints how to use the cluster
# and how to stop it. Running it again replaces what the last run started.
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
  for pidfile in "$dir"/agent.pid "$dir"/node-*.pid; do
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

# Containers when Docker answers and the local image can be built (nothing is pulled);
# otherwise every step runs as a process on this machine.
executor=process
if docker info >/dev/null 2>&1 && bash scripts/busybox-image.sh >/dev/null 2>&1; then
  executor=docker
fi
echo "== starting an agent (executor: $executor)"
join_token=$("$bin/xenectl" token create --kind agent --ttl 1h --uses 1 --description "local agent" 2>/dev/null)
"$bin/xene-agent" --servers "$servers" --token "$join_token" --name local --labels os=linux \
  --data-dir "$dir/agent" --executor "$executor" >"$dir/agent.log" 2>&1 &
echo $! >"$dir/agent.pid"

echo "== applying examples/ and running hello/main"
"$bin/xenectl" apply -f examples/
for _ in $(seq 100); do
  "$bin/xenectl" get pipelines hello/main | grep -q ' Scheduled' && break
  sleep 0.2
done
"$bin/xenectl" agents
run=$("$bin/xenectl" run hello/main)
echo "run $run started; its logs:"
"$bin/xenectl" logs "$run" --follow
"$bin/xenectl" runs hello/main
phase=$("$bin/xenectl" runs hello/main | awk -v r="$run" '$1 == r {print $2}')
if [ "$phase" != "Success" ]; then
  echo "run $run ended $phase; see $dir/agent.log" >&2
  exit 1
fi

cat <<MSG

The cluster is running. To use it:

  export XENE_SERVERS=$servers
  export XENE_TOKEN=\$(cat $dir/node-1/admin.token)
  $bin/xenectl cluster status

To stop it:

  deploy/local-cluster.sh stop
MSG

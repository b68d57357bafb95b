#!/usr/bin/env bash
# Starts a local three-server Xene cluster and one agent on loopback, applies
# examples/hello.yaml and examples/fan-out-fan-in.yaml, runs hello/main, follows its logs to
# the end, and prints how to use the cluster and how to stop it. Running it again replaces
# what the last run started.
#
#   deploy/local-cluster.sh            start (or restart) the cluster
#   deploy/local-cluster.sh stop       stop it
#
# Data and logs live in $XENE_LOCAL_DIR (default /tmp/xene-local); the servers listen from
# port $XENE_LOCAL_PORT on (default 7400: gRPC 7400, 7410, 7420 and REST one above each).
set -euo pipefail
cd "$(dirname "$0")/.."

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

source scripts/env.sh

# On any failure: say where it stopped, show the logs' last lines, and stop what was started.
started=0
on_exit() {
  local status=$?
  if [ "$status" -ne 0 ] && [ "$started" = 1 ]; then
    echo "== failed (exit $status); the last lines of the logs in $dir:" >&2
    for log in "$dir"/node-*.log "$dir"/agent.log; do
      [ -f "$log" ] || continue
      echo "--- $log" >&2
      tail -n 15 "$log" >&2
    done
    stop_cluster
    echo "== stopped the cluster; its data and logs stay in $dir" >&2
  fi
}
trap on_exit EXIT

# fail MESSAGE: stops with MESSAGE (the trap above shows the logs).
fail() {
  echo "local-cluster: $*" >&2
  exit 1
}

echo "== building xene-server, xene-agent and xenectl (the first build takes about 20 minutes: RocksDB)"
cargo build --workspace --bins --locked
bin="$CARGO_TARGET_DIR/debug"

stop_cluster
rm -rf "$dir"
mkdir -p "$dir"
started=1

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
for _ in $(seq 300); do
  [ -s "$dir/node-1/admin.token" ] && break
  kill -0 "$(cat "$dir/node-1.pid")" 2>/dev/null || fail "server 1 exited"
  sleep 0.1
done
[ -s "$dir/node-1/admin.token" ] || fail "server 1 did not write its admin token within 30 s"
start_node 2 --join "127.0.0.1:$base_port"
start_node 3 --join "127.0.0.1:$base_port"

servers="127.0.0.1:$base_port,127.0.0.1:$((base_port + 10)),127.0.0.1:$((base_port + 20))"
export XENE_SERVERS="$servers"
export XENE_TOKEN="$(cat "$dir/node-1/admin.token")"
voters=0
for _ in $(seq 300); do
  voters=$("$bin/xenectl" cluster members 2>/dev/null | grep -cE 'voter|leader' || true)
  [ "$voters" = 3 ] && break
  sleep 0.2
done
"$bin/xenectl" cluster members
[ "$voters" = 3 ] || fail "the cluster has $voters voters of 3 after 60 s"

# Containers when Docker answers and the local image can be built (nothing is pulled);
# otherwise every step runs as a process on this machine.
executor=process
if ! docker info >/dev/null 2>&1; then
  echo "Docker does not answer (docker info failed): steps run as processes on this machine"
elif ! image_log=$(bash scripts/busybox-image.sh 2>&1); then
  echo "building the local image failed, so steps run as processes on this machine:"
  echo "$image_log" | tail -n 5
else
  executor=docker
fi
echo "== starting an agent (executor: $executor)"
join_token=$("$bin/xenectl" token create --kind agent --ttl 1h --uses 1 --description "local agent")
"$bin/xene-agent" --servers "$servers" --token "$join_token" --name local --labels os=linux \
  --data-dir "$dir/agent" --executor "$executor" >"$dir/agent.log" 2>&1 &
echo $! >"$dir/agent.pid"

# hello and fan-out-fan-in only: ping-ci's nightly cron would clone and build on this machine
# for as long as the cluster is left running.
echo "== applying examples/hello.yaml and examples/fan-out-fan-in.yaml, and running hello/main"
"$bin/xenectl" apply -f examples/hello.yaml
"$bin/xenectl" apply -f examples/fan-out-fan-in.yaml
placed=0
for _ in $(seq 150); do
  if "$bin/xenectl" get pipelines hello/main | grep -q ' Scheduled'; then placed=1; break; fi
  sleep 0.2
done
"$bin/xenectl" agents
[ "$placed" = 1 ] || fail "hello/main was not placed on the agent within 30 s"
run=$("$bin/xenectl" run hello/main)
echo "run $run started; its logs:"
timeout 300 "$bin/xenectl" logs "$run" --follow || fail "following run $run's logs failed or took over 5 minutes"
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

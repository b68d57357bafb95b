#!/usr/bin/env bash
# End-to-end test of the compose deployment (issue 9; chaos-tests/tests/compose.rs runs it).
#
# Builds the images from local files (deploy/build-image.sh, scripts/busybox-image.sh), starts
# deploy/compose/docker-compose.yml under a project name of its own with host ports that Docker
# picks, runs examples/hello to Success, stops the server that leads, runs
# examples/fan-out-fan-in to Success on the two left, starts the stopped server again and
# checks it rejoins, and removes everything it started (containers, network, volumes, step
# containers), also when a step fails or it is interrupted.
#
# Usage: deploy/compose-test.sh
#   XENE_BIN_DIR   the binaries (default /var/cache/xene/target/debug); xenectl runs from here
# Exits 0 when every step passed; otherwise says which step failed and prints the containers'
# state and logs.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin_dir="${XENE_BIN_DIR:-/var/cache/xene/target/debug}"
started=$(date +%s)
export COMPOSE_PROJECT_NAME="xene-ct-$$"
export XENE_CLUSTER_SECRET="compose-test-$$-$RANDOM$RANDOM"
# Empty host ports: Docker picks free ones, so tests and a running compose cluster never clash.
for n in 1 2 3; do export "XENE_PORT_${n}_GRPC=" "XENE_PORT_${n}_HTTP="; done
agents=("$COMPOSE_PROJECT_NAME-agent-1" "$COMPOSE_PROJECT_NAME-agent-2")
scratch="$(mktemp -d)"
up=""

say() { echo "== [$(($(date +%s) - started)) s] $*"; }
fail() {
  echo "compose-test: FAILED: $*" >&2
  exit 1
}

if docker compose version >/dev/null 2>&1; then
  dc=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  dc=(docker-compose)
else
  fail "neither \`docker compose\` nor \`docker-compose\` is installed (apt-get install docker-compose)"
fi
compose() { "${dc[@]}" -f "$root/deploy/compose/docker-compose.yml" "$@"; }

cleanup() {
  local status=$?
  set +e
  trap - INT TERM
  if [ -n "$up" ]; then
    if [ "$status" -ne 0 ]; then
      echo "---- containers" >&2
      compose ps >&2
      echo "---- logs (last 80 lines of each container)" >&2
      compose logs --no-color --tail=80 >&2
    fi
    say "tearing down $COMPOSE_PROJECT_NAME"
    compose down -v --remove-orphans -t 10 >/dev/null 2>&1 || echo "compose-test: docker-compose down failed" >&2
    # Step containers and run volumes are the agents' own (on the host's Docker); a run cut
    # short leaves some.
    for agent in "${agents[@]}"; do
      docker ps -aq --filter "label=xene.agent=$agent" | xargs -r docker rm -f >/dev/null
      docker volume ls -q --filter "label=xene.agent=$agent" | xargs -r docker volume rm -f >/dev/null
    done
  fi
  rm -rf "$scratch"
  if [ "$status" -eq 0 ]; then
    echo "compose-test: PASSED in $(($(date +%s) - started)) s"
  else
    echo "compose-test: FAILED (exit $status) after $(($(date +%s) - started)) s" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

# Runs "$@" every half second until it succeeds; fails the test after LIMIT seconds.
wait_for() {
  local what=$1 limit=$2
  shift 2
  local deadline=$(($(date +%s) + limit))
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$what: not within $limit s"
    sleep 0.5
  done
}

[ -x "$bin_dir/xenectl" ] || fail "$bin_dir/xenectl is missing: build the binaries or set XENE_BIN_DIR"
docker info >/dev/null 2>&1 || fail "cannot reach the Docker engine (is dockerd running, and may $(id -un) use its socket?)"

say "building the images xene/xene:latest and xene/busybox:latest from local files"
"$root/deploy/build-image.sh" "$bin_dir" || fail "deploy/build-image.sh"
bash "$root/scripts/busybox-image.sh" || fail "scripts/busybox-image.sh"

say "starting three servers and two agents (project $COMPOSE_PROJECT_NAME)"
up=1
compose up -d || fail "docker-compose up"

ports=()
for n in 1 2 3; do
  ports[n]=$(compose port "server-$n" 7400) || fail "no published gRPC port for server-$n"
done
servers="${ports[1]},${ports[2]},${ports[3]}"
admin_token() { compose exec -T server-1 cat /var/lib/xene/admin.token >"$scratch/token" 2>/dev/null && [ -s "$scratch/token" ]; }
wait_for "server-1's admin token" 60 admin_token
XENE_TOKEN="$(cat "$scratch/token")"
export XENE_TOKEN

ctl() { timeout 60 "$bin_dir/xenectl" --servers "$servers" --timeout 5 "$@"; }
three_voters() { [ "$(ctl cluster members 2>/dev/null | grep -cE 'voter|leader')" = 3 ]; }
agents_up() { [ "$(ctl agents 2>/dev/null | awk 'NR > 1 && $2 == "Up"' | wc -l)" = 2 ]; }
placed() { ctl get pipelines "$1" 2>/dev/null | grep -q ' Scheduled'; }
leader_id() { ctl cluster status 2>/dev/null | awk '/^leader:/ {print $2}'; }
# Runs WORKFLOW/PIPELINE, shows its task tree until it ends, fails unless it succeeded, then
# prints its logs; the run's ID is left in $run.
run_to_success() {
  say "running $1"
  timeout 180 "$bin_dir/xenectl" --servers "$servers" --timeout 5 run "$1" --watch >"$scratch/run" \
    || fail "the run of $1 did not end in Success"
  run=$(head -1 "$scratch/run")
  ctl logs "$run" | tee "$scratch/logs" || fail "reading the logs of $run"
}

wait_for "three voting servers" 60 three_voters
wait_for "two agents up" 60 agents_up
ctl cluster members
ctl agents

say "applying examples/hello.yaml and examples/fan-out-fan-in.yaml"
ctl apply -f "$root/examples/hello.yaml" || fail "xenectl apply examples/hello.yaml"
ctl apply -f "$root/examples/fan-out-fan-in.yaml" || fail "xenectl apply examples/fan-out-fan-in.yaml"
wait_for "hello/main placed on an agent" 30 placed hello/main
wait_for "fan-out-fan-in/shards placed on an agent" 30 placed fan-out-fan-in/shards
ctl get pipelines

run_to_success hello/main
grep -qx '\[greet/hello\] hello' "$scratch/logs" || fail "the logs of $run do not say hello"

leader=$(leader_id)
[[ "$leader" =~ ^[123]$ ]] || fail "no leader among server-1..3 (xenectl cluster status says ${leader:-nothing})"
say "stopping the leader, server-$leader"
compose stop -t 10 "server-$leader" || fail "docker-compose stop server-$leader"
left=()
for n in 1 2 3; do [ "$n" = "$leader" ] || left+=("${ports[n]}"); done
servers="${left[0]},${left[1]}"
new_leader() {
  local id
  id=$(leader_id)
  [[ "$id" =~ ^[123]$ ]] && [ "$id" != "$leader" ]
}
wait_for "a new leader after server-$leader stopped" 30 new_leader
ctl cluster status

run_to_success fan-out-fan-in/shards
grep -qx '\[report/total\] 465' "$scratch/logs" || fail "the report of $run is not 465 (the sum of 1..30)"

say "starting server-$leader again"
compose start "server-$leader" || fail "docker-compose start server-$leader"
# A restarted container gets a new host port when Docker picked the first one.
servers=$(compose port "server-$leader" 7400) || fail "no published gRPC port for server-$leader"
follows() { [[ "$(leader_id)" =~ ^[123]$ ]]; }
wait_for "server-$leader to know the leader again" 60 follows
ctl cluster status
ctl runs

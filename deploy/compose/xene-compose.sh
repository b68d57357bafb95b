#!/bin/sh
# The compose cluster's glue (deploy/compose/docker-compose.yml), mounted into its containers.
#
#   xene-compose.sh server  xene-server; on its first start, after the server named by
#                           $XENE_WAIT_FOR (HOST:REST_PORT) is ready, if set
#   xene-compose.sh init    once server-1 is ready: a single-use join token for each agent in
#                           $XENE_AGENTS that has not joined yet, written to /join/NAME.token
#   xene-compose.sh agent   xene-agent, with the join token from /join/$XENE_AGENT_NAME.token
#                           the first time (later its credential in $XENE_DATA_DIR is enough)
set -eu

log() { echo "xene-compose: $*" >&2; }

case "${1:-}" in
server)
  # Two servers asking to join at the same moment meet: the cluster refuses a membership
  # change while another is in progress, and the refused server retries with backoff. So
  # that the start is orderly and quick, on its first start (no store yet) a joining server
  # waits for the one before it.
  if [ -n "${XENE_WAIT_FOR:-}" ] && [ ! -d "$XENE_DATA_DIR/raft" ]; then
    log "waiting for $XENE_WAIT_FOR to be ready before joining"
    until busybox wget -q -O /dev/null "http://$XENE_WAIT_FOR/readyz" 2>/dev/null; do
      sleep 0.5
    done
  fi
  exec xene-server
  ;;
init)
  admin=/server-1/admin.token
  waited=0
  until [ -s "$admin" ]; do
    waited=$((waited + 1))
    if [ "$waited" -gt 120 ]; then
      log "$admin did not appear within 60 s; see: docker-compose logs server-1"
      exit 1
    fi
    sleep 0.5
  done
  XENE_TOKEN=$(cat "$admin")
  export XENE_TOKEN
  for agent in $XENE_AGENTS; do
    # An agent that already joined keeps its credential: no new token for it.
    if xenectl agents 2>/dev/null | awk 'NR > 1 {print $1}' | grep -qx "$agent"; then
      log "$agent has joined already"
      continue
    fi
    tries=0
    until xenectl token create --kind agent --ttl 1h --uses 1 --description "compose $agent" \
      >"/join/$agent.token.new" 2>/tmp/token.err; do
      tries=$((tries + 1))
      if [ "$tries" -ge 30 ]; then
        log "creating a join token for $agent failed: $(cat /tmp/token.err)"
        exit 1
      fi
      sleep 1
    done
    mv "/join/$agent.token.new" "/join/$agent.token"
    log "join token for $agent written to /join/$agent.token"
  done
  ;;
agent)
  if [ ! -f "$XENE_DATA_DIR/agent.json" ]; then
    token_file="/join/$XENE_AGENT_NAME.token"
    if [ ! -s "$token_file" ]; then
      log "$XENE_AGENT_NAME has no credential in $XENE_DATA_DIR and no join token in $token_file; run the init service (docker-compose up init)"
      exit 1
    fi
    XENE_TOKEN=$(cat "$token_file")
    export XENE_TOKEN
  fi
  exec xene-agent
  ;;
*)
  log "usage: xene-compose.sh server|init|agent"
  exit 2
  ;;
esac

#!/bin/sh
# The entrypoint of the xene/xene image (deploy/Dockerfile and deploy/build-image.sh).
#
#   docker run xene/xene --node-id 1 ...       flags alone: xene-server with those flags
#   docker run xene/xene xene-agent ...        a command: that command (xene-agent, xenectl, sh)
#
# Both programs handle SIGTERM themselves, so `exec` leaves them as PID 1 and `docker stop`
# shuts them down cleanly. An agent with the process executor starts child processes: give
# its container `init: true` (compose) or `--init` (docker run) so orphans are reaped.
set -e
case "${1:-}" in
  "" | -*) set -- xene-server "$@" ;;
esac
exec "$@"

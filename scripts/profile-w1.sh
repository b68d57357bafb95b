#!/usr/bin/env bash
# Where the servers' CPU goes under W1 (BENCHMARKS.md, "where the servers' CPU goes at 256
# clients"): runs `xene-bench --no-etcd w1`, records the three servers with call graphs for
# SECONDS in the middle of it, and prints the share of each component.
#
#   scripts/profile-w1.sh [BIN_DIR=target/dist] [CLIENTS=256] [SECONDS=8]
#
# BIN_DIR holds xene-bench, xene-server and xene-agent (cargo build --profile dist -p
# xene-server -p xene-agent -p xene-bench). Installs Debian's linux-perf when perf is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${1:-${CARGO_TARGET_DIR:-target}/dist}
clients=${2:-256}
seconds=${3:-8}
if ! command -v perf > /dev/null; then
  echo "profile-w1: installing linux-perf with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf > /dev/null
fi
for program in xene-bench xene-server xene-agent; do
  [ -x "$bin_dir/$program" ] || { echo "$bin_dir/$program is missing: build it, or pass its folder" >&2; exit 2; }
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run=$((seconds * 3))
"$bin_dir/xene-bench" --no-etcd --bin-dir "$bin_dir" w1 --clients "$clients" --seconds "$run" > "$out/bench.txt" 2>&1 &
bench=$!
# Past the servers' start and the first third of the measurement.
sleep $((run / 3 + 5))
pids=$(pgrep -d, -f "xene-server .*--http-addr" || true)
if [ -z "$pids" ]; then
  wait "$bench" || true
  echo "no xene-server was running; xene-bench said:" >&2
  cat "$out/bench.txt" >&2
  exit 1
fi
perf record -q -F 199 --call-graph dwarf,16384 -o "$out/perf.data" -p "$pids" -- sleep "$seconds" 2> /dev/null
if ! wait "$bench"; then
  echo "xene-bench failed:" >&2
  cat "$out/bench.txt" >&2
  exit 1
fi
grep 'W1' "$out/bench.txt" || true
perf script -i "$out/perf.data" 2> /dev/null | python3 scripts/perf-components.py

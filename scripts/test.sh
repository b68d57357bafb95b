#!/usr/bin/env bash
# The test command (README "Tests"): installs what the build needs, checks formatting and
# lints, builds everything and runs every test, printing the test runner's summary.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

start=$(date +%s)
# rustfmt and clippy come with rustup's default profile; a minimal toolchain lacks them.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  echo "== installing rustfmt and clippy (rustup components)"
  rustup component add rustfmt clippy
fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (binaries the process tests start)"
cargo build --workspace --bins --locked
echo "== tests"
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest, the test runner (from crates.io)"
  cargo install cargo-nextest --locked
fi
# The heavy tests (chaos scenarios, 100,000 log lines through Raft) run after the others,
# one at a time: on two cores they would starve the clusters of the tests beside them.
heavy='test(/logs_every_line/) | binary(/chaos_/) | binary(compose)'
status=0
cargo nextest run --workspace --locked --no-fail-fast --no-tests=fail --profile ci -E "not ($heavy)" || status=$?
echo "== heavy tests, one at a time"
cargo nextest run --workspace --locked --no-fail-fast --no-tests=fail --profile ci -E "$heavy" --test-threads 1 \
  || status=$?
# Coverage-guided fuzzing of the parsers of outside input, briefly (DESIGN §14); longer runs:
# scripts/fuzz.sh TARGET SECONDS. The corpus kept in the cache directory grows run by run.
echo "== fuzzing, ${XENE_FUZZ_SECONDS:-20} s per target"
XENE_FUZZ_SECONDS="${XENE_FUZZ_SECONDS:-20}" ./scripts/fuzz.sh || status=$?
[ "$status" -eq 0 ] || exit "$status"
echo "== done in $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# Coverage-guided fuzzing (DESIGN §14) of the parsers that read outside input: manifests,
# cron expressions and `when` conditions (crate `fuzz/`, libFuzzer through cargo-fuzz, with
# AddressSanitizer). Each target runs XENE_FUZZ_SECONDS (default 30) from a corpus kept in
# the cache directory, so later runs start where earlier ones stopped. A crash, a failed
# assertion, a leak or an input slower than 10 s fails the run; the input is left under
# fuzz/artifacts/TARGET/ and `cargo fuzz run TARGET FILE` (same environment) replays it.
#   scripts/fuzz.sh                 # every target, 30 s each
#   scripts/fuzz.sh manifest 600    # one target, ten minutes
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

# cargo-fuzz passes the compiler flags of nightly Rust (-Zsanitizer); this machine has only
# the stable toolchain, which takes them when told it is building itself.
export RUSTC_BOOTSTRAP=1
tools="$XENE_CACHE_DIR/tools"
if ! [ -x "$tools/bin/cargo-fuzz" ]; then
  echo "== installing cargo-fuzz 0.13.2 (from crates.io) into $tools"
  cargo install cargo-fuzz --version 0.13.2 --locked --root "$tools"
fi
export PATH="$tools/bin:$PATH"
# A target directory of its own: every crate is built with coverage instrumentation.
fuzz_target_dir="$XENE_CACHE_DIR/fuzz-target"

targets=(manifest cron condition)
[ "$#" -ge 1 ] && targets=("$1")
seconds="${2:-${XENE_FUZZ_SECONDS:-30}}"

for target in "${targets[@]}"; do
  corpus="$XENE_CACHE_DIR/fuzz-corpus/$target"
  mkdir -p "$corpus"
  # Seeds: the examples, and a few expressions in the targets' layout (a selector byte, for
  # cron four bytes of start time, then the text).
  case "$target" in
    manifest) cp examples/*.yaml "$corpus/" ;;
    cron)
      n=0
      for expression in '*/5 * * * *' '0 9 * * MON-FRI' '@daily' '0 0 29 2 *' '30 2 * * SUN' '0 0 L * *'; do
        printf '\x02\x00\x00\x80\x65%s' "$expression" > "$corpus/seed-$n"; n=$((n + 1))
      done ;;
    condition)
      n=0
      for expression in '{{ tasks.test.outputs.coverage }} > 80' "'{{ tasks.a.outputs.branch }}' == 'main'" \
        '{{ tasks.a.outputs.n }} + 1 >= {{ tasks.b.outputs.m }} && true' 'always' \
        "size('{{ tasks.a.outputs.s }}') < 3 || {{ tasks.a.outputs.f }} / 2.0 == 0.5"; do
        printf '\x01%s' "$expression" > "$corpus/seed-$n"; n=$((n + 1))
      done ;;
  esac
  echo "== fuzzing $target for $seconds s (corpus $corpus: $(find "$corpus" -type f | wc -l) inputs)"
  cargo fuzz run --fuzz-dir fuzz --target-dir "$fuzz_target_dir" --debug-assertions "$target" "$corpus" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1
done
echo "== fuzzing: ${#targets[@]} target(s), $seconds s each, no crash"

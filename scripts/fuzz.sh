#!/usr/bin/env bash
# Fuzzes the parsers of untrusted input with cargo-fuzz (libFuzzer) for SECONDS each (default
# 600): the prompt language, prompt files (JSONL and text) and sizes, uploaded pictures, and
# state read back from Redis. See the targets in fuzz/fuzz_targets/.
#
#   scripts/fuzz.sh [TARGET] [SECONDS]    # TARGET: prompt_parser, prompts_jsonl, upload_image,
#                                         # redis_state, or all (the default), one after another
#
# New inputs go to fuzz/corpus/TARGET/ (minimise them with `cargo fuzz cmin TARGET` before
# committing), crashes to fuzz/artifacts/TARGET/. cargo-fuzz needs a nightly compiler; on stable,
# RUSTC_BOOTSTRAP=1 unlocks the same flags. AddressSanitizer is used unless
# TESSERA_FUZZ_SANITIZER says otherwise (e.g. `none`, twice as fast, catches panics only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=${1:-all}
seconds=${2:-600}
sanitizer=${TESSERA_FUZZ_SANITIZER:-address}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
if [ "$target" = all ]; then
  targets=(prompt_parser prompts_jsonl upload_image redis_state)
else
  targets=("$target")
fi
for t in "${targets[@]}"; do
  echo "fuzzing $t for ${seconds}s (sanitizer: $sanitizer)"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" --sanitizer "$sanitizer" -- \
    -max_total_time="$seconds" -print_final_stats=1
done

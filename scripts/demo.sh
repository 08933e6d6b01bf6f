#!/usr/bin/env bash
# Sets up what is missing (scripts/setup.sh) and runs the main job: `tessera up`, a whole farm on
# this machine (a coordinator with its state in .tessera/ and two workers), renders the prompts of
# examples/prompts.txt with CLIP + VQGAN, upscales them 4x with Real-ESRGAN x4plus in tiles spread
# over both workers, stitches them, and fetches them into out/ with a manifest.json.
#
# Without the official CLIP and VQGAN checkpoints (an offline set-up), `tessera up` says how to get
# them and runs the upscale stage on the real Real-ESRGAN weights with a photo instead.
#
# On CPU the renders are kept small (256x256, 60 steps); on GPUs pass your own, e.g.
#   scripts/demo.sh --device cuda --workers 2 --size 496x496 --iterations 500
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo build --quiet -p tessera-cli -p tessera-coordinator -p tessera-worker
target/debug/tessera up --workers 2 --run examples/prompts.txt -o out \
  --size 256x256 --iterations 60 --seeds 1 --upscale realesrgan-x4plus \
  --fallback-pictures .deps/photos/astronaut.png "$@"
echo "pictures and manifest.json in out/"

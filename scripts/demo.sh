#!/usr/bin/env bash
# Sets up what is missing (scripts/setup.sh) and runs the main job: a real photo upscaled 4x by
# Real-ESRGAN x4plus (real weights), tiled with blended seams, written to out/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
mkdir -p out
cargo run --quiet -p tessera-worker -- models list
cargo run --quiet -p tessera-worker -- upscale --model realesrgan-x4plus \
  --input .deps/photos/astronaut.png --output out/astronaut-x4.png --tile 128
echo "wrote out/astronaut-x4.png"

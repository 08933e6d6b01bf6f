#!/usr/bin/env bash
# Prepares the GPU check of the generation loop (issue 5) for a lent device machine: that machine
# has PyTorch 2.11.0 (CUDA 13) and Python 3.12 but no Rust and no network. Run here, after
# scripts/setup.sh; it fills .deps/device/ (ignored by git, carried by the device tool):
#   tessera-worker     the worker built with --features cuda (libtorch's CUDA half linked), stripped
#   wheels/*.whl       what scripts/bench/loop_reference.py needs there beyond torch and numpy:
#                      kornia and kornia_rs, clip-anytorch, taming-transformers-rom1504
# Then, with the device tool: run `scripts/device/check.sh` with carry [".deps/device"].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

bundle=.deps/device
rm -rf "$bundle"
mkdir -p "$bundle/wheels"

cargo build -p tessera-worker --features cuda --bin tessera-worker
cp target/debug/tessera-worker "$bundle/tessera-worker"
strip "$bundle/tessera-worker"
# The CUDA half must be a dependency of the binary, or tch silently runs on the CPU there.
readelf -d "$bundle/tessera-worker" | grep -q 'libtorch_cuda.so' ||
  { echo "tessera-worker does not link libtorch_cuda.so" >&2; exit 1; }

# The same versions as the venv's (scripts/setup.sh), as wheels for the device's CPython 3.12.
versions() { .deps/venv/bin/python -m pip show "$@" | awk '/^Name:/ {n=$2} /^Version:/ {print n "==" $2}'; }
.deps/venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$bundle/wheels" $(versions kornia kornia_rs clip-anytorch taming-transformers-rom1504)

du -shc "$bundle"/*

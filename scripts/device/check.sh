#!/usr/bin/env bash
# The generation loop's GPU check (issue 5), one script for one device call: the worker built by
# scripts/device/prepare.sh, our loop against scripts/bench/loop_reference.py on the same GPU, at
# 496x496 with cutn 32. One process per cell, because CUDA's caching allocator keeps what earlier
# cells reserved (worker/src/peak_memory.rs). Writes the tables to $OUT/loop-gpu.txt.
#
# Knobs (environment): SIZE (496), CUTN (32), REPEATS (3), CELLS ("batch:variant,variant ..."),
# PYTHON (python3), REQUIRE_CUDA (1; 0 lets the script itself be tried on a CPU machine).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

bundle=.deps/device
python=${PYTHON:-python3}
size=${SIZE:-496}
cutn=${CUTN:-32}
repeats=${REPEATS:-3}
cells=${CELLS:-"1:full,fp16,recompute,fp16-recompute 4:full,fp16 8:full,fp16-recompute"}
out=${OUT:-/tmp/tessera-device}
mkdir -p "$out"
report="$out/loop-gpu.txt"

if ! "$python" -c 'import kornia, taming' 2>/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$bundle"/wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
torch_lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || exit 1
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

{
  date -u
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} | tee "$report"

status=0
for cell in $cells; do
  batch=${cell%%:*}
  variants=${cell#*:}
  echo "== batch $batch: $variants" | tee -a "$report"
  log=$("$bundle/tessera-worker" --models "$bundle" bench --python "$python" --repeats "$repeats" \
    loop --sizes "$size" --batches "$batch" --cutn "$cutn" --variants "$variants" 2>&1)
  code=$?
  echo "$log" | tee -a "$report"
  if [ "${REQUIRE_CUDA:-1}" = 1 ] && ! grep -q "random weights) on cuda" <<<"$log"; then
    echo "the worker did not run on CUDA (is libtorch_cuda.so linked and found?)" | tee -a "$report"
    exit 1
  fi
  [ $code = 0 ] || status=$code
done
exit $status

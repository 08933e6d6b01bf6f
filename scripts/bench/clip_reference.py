#!/usr/bin/env python3
"""PyTorch side of `tessera-worker bench clip`: forward plus backward (to the pixels) of OpenAI's
ViT-B/32 image encoder, random weights, batch 32 at 224x224, fp32, on the GPU when there is one.
Uses the real `clip.model.CLIP` from the `clip-anytorch` package. Prints the milliseconds per
iteration as the last line of stdout, alone.

Usage: .deps/venv/bin/python scripts/bench/clip_reference.py [--iters N]
"""
import argparse
import importlib.util
import sys
import time

import torch

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip_model_module():
    """clip/model.py without clip/__init__.py, which would import torchvision."""
    spec = importlib.util.find_spec("clip")
    path = spec.submodule_search_locations[0] + "/model.py"
    module_spec = importlib.util.spec_from_file_location("clip_model", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    clip_model = load_clip_model_module()
    # ViT-B/32: embed 512, 224 px, 12 layers of width 768, patch 32; text 77/49408/512/8/12.
    model = clip_model.CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12).to(device).eval()
    model.requires_grad_(False)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    pixels = torch.rand(32, 3, 224, 224, device=device, requires_grad=True)

    def step():
        features = model.encode_image((pixels - mean) / std)
        features = features / features.norm(dim=-1, keepdim=True)
        (grad,) = torch.autograd.grad(features.sum(), pixels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return grad

    step()
    iters = max(args.iters, 1)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    elapsed_ms = (time.perf_counter() - start) * 1000.0 / iters
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}", file=sys.stderr)
    print(f"{elapsed_ms:.3f}")


if __name__ == "__main__":
    main()
